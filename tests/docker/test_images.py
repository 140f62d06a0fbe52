"""docker/Dockerfile.*: slim, multi-stage, non-root, pinned images; no torch in the serving
image; a healthcheck on a route the app serves; every Python package pinned by
docker/constraints.txt to a version pyproject.toml allows. Checked by reading the files: no
image is built here (no Docker engine)."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.docker.conftest import DOCKER, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PYTHON_IMAGES = ("Dockerfile.serve", "Dockerfile.pipeline")


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pins() -> dict[str, Version]:
    out = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            out[canonicalize_name(name)] = Version(version)
    return out


def test_python_images_are_multi_stage_slim_pinned_and_run_as_a_user():
    for dockerfile in PYTHON_IMAGES:
        steps = instructions(dockerfile)
        [base] = [args for word, args in steps if word == "ARG" and "PYTHON_IMAGE=" in args]
        assert re.fullmatch(r"PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+", base), base
        stages = [args for word, args in steps if word == "FROM"]
        assert len(stages) >= 2 and all(s.startswith("${PYTHON_IMAGE}") for s in stages)
        final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
        [user] = [args for word, args in final if word == "USER"]
        assert user not in {"root", "0"}
        assert any(word == "COPY" and args.startswith("--from=build") for word, args in final)


def test_every_pip_install_is_constrained_to_the_pinned_versions():
    for dockerfile in PYTHON_IMAGES:
        installs = [a for w, a in instructions(dockerfile) if w == "RUN" and "pip install" in a]
        assert installs, dockerfile
        for args in installs:
            assert "-c constraints.txt" in args or "torch==" in args, args


def test_the_serving_image_has_no_torch_and_a_healthcheck_on_a_served_route(get_routes):
    steps = instructions("Dockerfile.serve")
    installs = " ".join(a for w, a in steps if w == "RUN" and "pip install" in a)
    assert "torch" not in installs and "[" not in installs  # no extras: serving deps only
    [healthcheck] = [a for w, a in steps if w == "HEALTHCHECK"]
    [path] = re.findall(r"\}(/\w+)'", healthcheck)
    assert path in get_routes
    assert ("VOLUME", '["/models"]') in steps
    assert any(w == "ENV" and "MODEL_DIR=/models" in a for w, a in steps)
    assert ("CMD", '["python", "-m", "service"]') in steps


def test_the_pipeline_image_installs_cpu_torch_at_the_pinned_version():
    torch = [a for w, a in instructions("Dockerfile.pipeline") if w == "RUN" and "torch==" in a]
    [args] = torch
    assert "/whl/cpu" in args
    [version] = re.findall(r"torch==(\S+)", args)
    assert Version(version) == pins()["torch"]
    assert "'.[pipeline]'" in " ".join(a for w, a in instructions("Dockerfile.pipeline"))


def test_the_locust_image_is_pinned():
    [base] = [a for w, a in instructions("Dockerfile.locust") if w == "ARG"]
    assert re.fullmatch(r"LOCUST_IMAGE=locustio/locust:\d+\.\d+\.\d+", base)


def test_constraints_pin_every_dependency_to_a_version_pyproject_allows():
    pinned = pins()
    required = [*PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"]["pipeline"]]
    for spec in required:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in docker/constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (spec, pinned[name])


def test_dockerignore_keeps_environments_data_and_secrets_out_of_the_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".env", "var", "bundles", "tests"} <= ignored
