"""The README and docs/ stay true to the repository: every route the README names is served
by the app, every `make` target it names is in the Makefile, every relative link resolves,
every setting is on docs/configuration.md, and the README stays a short introduction (no
commit hashes, no references to a tracker's issues)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.routing import BaseRoute, Match

from service.main import create_app
from service.settings import Settings
from tests.conftest import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").rglob("*.md"))
MAX_README_LINES = 220

METHODS = "GET|POST|PUT|PATCH|DELETE"
# `POST /recommend`, `GET /admin/bundles`, ... anywhere in the text.
METHOD_AND_PATH = re.compile(rf"\b({METHODS}) (/[A-Za-z0-9_./{{}}-]*)")
# `/admin/...` paths named without a method, in an inline code span.
ADMIN_PATH = re.compile(r"`(/admin/[A-Za-z0-9_./{}-]*)`")
# A curl against the local service: its method (POST when it sends a body) and its path.
CURL = re.compile(r"curl [^\n]*?localhost:\d+(/[A-Za-z0-9_./-]*)")
LOCAL_URL = re.compile(r"<http://localhost:8000(/[A-Za-z0-9_./-]*)>")


def _code(text: str) -> list[str]:
    """The fenced blocks and inline code spans of a Markdown text."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.DOTALL)
    rest = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def named_routes(text: str) -> set[tuple[str | None, str]]:
    """(method or None for any, path) for every route the text names."""
    routes: set[tuple[str | None, str]] = set(METHOD_AND_PATH.findall(text))
    routes |= {(None, path) for path in ADMIN_PATH.findall(text)}
    for block in _code(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for path in CURL.findall(line):
                method = "POST" if re.search(r"-X POST|-d |--data", line) else "GET"
                routes.add((method, path))
    routes |= {("GET", path) for path in LOCAL_URL.findall(text)}
    return {(method, path.rstrip(".")) for method, path in routes if path not in ("", "/")}


def named_make_targets(text: str) -> set[str]:
    """Targets of every `make <target>` in the text's code."""
    return {
        target
        for code in _code(text)
        for target in re.findall(r"(?:^|[\s;&|(])make ([a-z][a-z0-9-]*)", code, re.MULTILINE)
    }


def relative_links(text: str) -> list[tuple[str, str]]:
    """(path, anchor) of every Markdown link that points into the repository; a link to a
    heading of the same page has the path ""."""
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [
        (path, anchor)
        for path, _, anchor in (link.partition("#") for link in links)
        if not re.match(r"[a-z][a-z0-9+.-]*:", path)
    ]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.fixture(scope="module")
def app_routes() -> list[BaseRoute]:
    # Admin routes exist only with a token; nothing is loaded until the lifespan runs.
    app = create_app(Settings(admin_token=SecretStr(ADMIN_TOKEN), demo_enabled=True))
    return list(app.router.routes)


def _served(routes: list[BaseRoute], method: str | None, path: str) -> bool:
    concrete = re.sub(r"\{[^}]+\}", "v1", path)
    for candidate in [method] if method else ["GET", "POST", "DELETE"]:
        scope = {"type": "http", "method": candidate, "path": concrete, "root_path": ""}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            return True
    return False


def test_the_readme_names_routes() -> None:
    routes = named_routes(README)
    assert ("POST", "/recommend") in routes
    assert any(path.startswith("/admin/") for _, path in routes)


def test_every_route_the_readme_names_is_served(app_routes: list[BaseRoute]) -> None:
    missing = sorted(
        f"{method or 'ANY'} {path}"
        for method, path in named_routes(README)
        if not _served(app_routes, method, path)
    )
    assert missing == []


def test_a_route_the_app_does_not_serve_is_caught(app_routes: list[BaseRoute]) -> None:
    assert not _served(app_routes, "POST", "/admin/models")
    assert not _served(app_routes, "GET", "/recommend")
    assert ("POST", "/admin/models") in named_routes("upload with `POST /admin/models`.")


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = named_make_targets(README)
    assert {"serve", "test"} <= targets
    missing = [t for t in sorted(targets) if not re.search(rf"^{t}:", makefile, re.MULTILINE)]
    assert missing == []


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= MAX_README_LINES


def test_the_readme_names_no_commit_hash() -> None:
    # 7 to 40 hex digits with at least one digit and one letter: what `git log` abbreviates to.
    hashes = re.findall(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", README)
    assert hashes == []


def test_the_readme_refers_to_no_tracker_issue() -> None:
    assert re.findall(r"\bissues? #?\d+", README, re.IGNORECASE) == []


@pytest.mark.parametrize("doc", [README_PATH, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for path, anchor in relative_links(text):
        target = (doc.parent / path) if path else doc
        if not target.exists():
            broken.append(path)
        elif (
            anchor
            and target.suffix == ".md"
            and anchor not in anchors(target.read_text(encoding="utf-8"))
        ):
            broken.append(f"{path}#{anchor}")
    assert broken == []


def test_every_setting_is_on_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in page]
    assert missing == []
