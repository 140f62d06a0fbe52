"""Programs the test suite runs (redis-server, nginx, docker-compose, a browser) and what a
test does when one is missing: it is skipped on a developer's machine, and it fails under
CI=true, where `.ci/tools` has installed every one Debian ships, so that a missing program
is a broken CI instead of a quiet skip.

    nginx = require_tool("nginx")  # its path, or the test is skipped (failed under CI=true)
    kubeconform = require_tool("kubeconform", in_ci=False)  # not in Debian: always a skip
"""

from __future__ import annotations

import os
import shutil

import pytest

# Debian puts daemons such as nginx in sbin, which a normal user's PATH leaves out.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, *, in_ci: bool = True) -> str:
    """The path of program `name`; without it the calling test is skipped, or failed under
    CI=true, where `.ci/tools` has installed it. `in_ci=False` marks a program `.ci/tools`
    does not install (Debian does not ship it, or only an outdated one), so its test is
    skipped in CI too."""
    __tracebackhide__ = True  # report the skip or failure at the test's line, not here
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))
    if path is not None:
        return path
    if not in_ci:
        pytest.skip(f"{name} is not installed (nor by .ci/tools: skipped in CI too)")
    message = f"{name} is not installed: `sudo .ci/tools` installs it"
    if running_in_ci():
        pytest.fail(f"{message}; CI=true, where every program the suite runs is required")
    pytest.skip(message)
