"""The README stays true to the code: every setting is in its configuration table, every
Makefile benchmark target and every results file it links exists."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _configuration_table() -> str:
    start = README.index("## Configuration")
    return README[start : README.index("\n## ", start + 1)]


def test_every_setting_is_in_the_configuration_table() -> None:
    table = _configuration_table()
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in table]
    assert missing == []


def test_every_linked_repository_file_exists() -> None:
    links = re.findall(r"\]\(((?:benchmarks|docker|service|models|tests)/[^)#]+)\)", README)
    assert links, "the README links its result files"
    assert [p for p in links if not (ROOT / p).exists()] == []


def test_the_benchmark_commands_it_names_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in sorted(set(re.findall(r"make (bench-[a-z]+)", README))):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
