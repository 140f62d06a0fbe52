"""The README stays true to the code: every setting is in its configuration table, every
Makefile benchmark target and every results file it links exists, and every `curl` it shows
works against a live service."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from service.settings import Settings
from tests.conftest import ADMIN_TOKEN, service_process

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
    for target in sorted(set(re.findall(r"make (bench-[a-z0-9-]*[a-z0-9])", README))):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


# --- every curl in the README, run against a live service ---------------------------------

# The README's curls, in an order in which each one can succeed on a service that starts
# serving v1 with nothing else installed: (fragment of the command, step).
CURL_STEPS = (
    ("/recommend", 0),
    ("/admin/bundles -H", 1),  # upload bundles/v2.tar.gz
    ('"canary_percent": 10', 2),
    ("/admin/canary/promote", 3),
    ("/admin/rollback", 4),
    ("/admin/bundles/v2/activate", 5),
    ("/admin/catalog/unavailable", 6),
)


def readme_curls() -> list[str]:
    """Every `curl` command of the README's shell blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.split(" #")[0].strip() for line in joined.splitlines()]
    return [c for c in commands if c.startswith("curl ")]


def _step(command: str) -> int:
    steps = [step for fragment, step in CURL_STEPS if fragment in command]
    assert steps, f"a README curl with no step in CURL_STEPS: {command}"
    return steps[0]


def test_every_curl_in_the_readme_succeeds_against_a_live_service(
    tmp_path: Path, v1_dir: Path, v2_archive: bytes
) -> None:
    commands = sorted(readme_curls(), key=_step)
    assert len(commands) >= 7
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "v2.tar.gz").write_bytes(v2_archive)
    env = {
        "MODEL_DIR": str(tmp_path / "models"),
        "BOOTSTRAP_BUNDLE": str(v1_dir),
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with service_process(env) as url:
        host = url.removeprefix("http://")
        for command in commands:
            live = re.sub(r"localhost:800\d", host, command)
            proc = subprocess.run(
                ["bash", "-c", f"{live} -s -o /dev/stderr -w '%{{http_code}}'"],
                cwd=tmp_path,
                env={**os.environ, "ADMIN_TOKEN": ADMIN_TOKEN},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.stdout.startswith("2"), f"{command}\n-> {proc.stdout}: {proc.stderr}"
