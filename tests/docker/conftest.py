"""Helpers for the checks of docker/ and docker-compose.yml: the repository's paths, the
routes the app really serves, and Redis's command lines (read, and run with a local
redis-server where one is installed). No Docker engine is needed (none is assumed)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from service.main import create_app
from service.settings import Settings
from testkit.tools import require_tool
from tests.factories import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="session")
def get_routes() -> set[str]:
    """Paths the app answers GET on, from its OpenAPI schema (create_app builds the routes;
    nothing is loaded)."""
    app = create_app(Settings(_env_file=None, admin_token="x" * 32))  # type: ignore[call-arg]
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


@pytest.fixture(scope="session")
def settings_env_vars() -> set[str]:
    """The environment variables Settings reads: its field names, upper-cased."""
    return {name.upper() for name in Settings.model_fields}


def redis_options(argv: list[str]) -> dict[str, str]:
    """`redis-server --name value ...` as {name: value} (a later option overrides an earlier
    one, as in redis-server)."""
    assert argv[0] == "redis-server", argv
    names, values = argv[1::2], argv[2::2]
    assert len(names) == len(values), f"an option without a value: {argv}"
    assert all(isinstance(v, str) for v in values), f"not all strings (YAML's yes?): {argv}"
    assert all(name.startswith("--") for name in names), argv
    return {name[2:]: value for name, value in zip(names, values, strict=True)}


def assert_redis_keeps_writes_across_a_crash(argv: list[str], workdir: Path) -> None:
    """Run redis-server with `argv` (its data directory moved to `workdir`, on a free local
    port), write, kill it with SIGKILL (no save on shutdown), start it again with the same
    options: the writes are back, read from the append-only file. Skipped without a local
    redis-server (failed under CI=true: `require_tool`)."""
    exe = require_tool("redis-server")
    port = free_port()
    # Replaced, not appended: redis-server changes into every --dir it is given, in turn.
    options = {**redis_options(argv), "dir": str(workdir), "port": str(port), "bind": "127.0.0.1"}
    command = [exe, *(arg for name, value in options.items() for arg in (f"--{name}", value))]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return proc
                except redis.ConnectionError:  # not up yet, or still loading the AOF
                    assert proc.poll() is None, f"redis-server exited: {command}"
                    time.sleep(0.05)
            raise AssertionError(f"redis-server did not answer on port {port}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            client.close()

    proc = start()
    try:
        client = redis.Redis(port=port)
        with client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            client.set("recsys:v1:active", "v2")
            client.hset("recsys:v1:bundle:v2", mapping={"archive": b"\x1f\x8b" * 1000})
    finally:
        proc.kill()  # a crash: nothing is saved on the way out
        proc.wait()
    assert (workdir / "appendonlydir").is_dir()
    proc = start()
    try:
        client = redis.Redis(port=port)
        with client:
            assert client.get("recsys:v1:active") == b"v2"
            assert client.hget("recsys:v1:bundle:v2", "archive") == b"\x1f\x8b" * 1000
    finally:
        proc.terminate()
        proc.wait()
