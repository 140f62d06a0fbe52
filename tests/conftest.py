"""Shared fixtures: a private real Redis, test bundles, settings and app clients.

No torch here: tests/service must run where torch is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from testkit.service_env import without_service_settings
from tests.factories import (
    BundleSpec,
    RedisServer,
    free_port,
    make_bundle_archive,
    make_bundle_dir,
)

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
V1 = BundleSpec(version="v1", seed=0)
V2 = BundleSpec(version="v2", seed=1)
V3 = BundleSpec(version="v3", seed=2)


ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def service_process(env: dict[str, str], *, ready_timeout_s: float = 60) -> Iterator[str]:
    """Run `python -m service` as a real process on a free port; yield its base URL once
    /readyz answers 200; stop it afterwards. `env` adds to a cleaned copy of os.environ."""
    port = free_port()
    full_env = without_service_settings()  # the developer's shell changes nothing
    full_env.update({"HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "warning", **env})
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                output = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"service did not become ready (exit code {proc.poll()}):\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the session: REDIS_URL when set, else a private redis-server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which the test may stop (degraded-mode tests)."""
    server = RedisServer(tmp_path / "redis-private")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """Keys of one test never meet another's, even on a shared REDIS_URL."""
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def bundle_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def v1_dir(bundle_work: Path) -> Path:
    return make_bundle_dir(bundle_work / "v1", V1)


@pytest.fixture(scope="session")
def v1_archive(bundle_work: Path) -> bytes:
    return make_bundle_archive(bundle_work, V1)


@pytest.fixture(scope="session")
def v2_archive(bundle_work: Path) -> bytes:
    return make_bundle_archive(bundle_work, V2)


@pytest.fixture(scope="session")
def v3_archive(bundle_work: Path) -> bytes:
    return make_bundle_archive(bundle_work, V3)


@pytest.fixture
def bad_bundle_dir(tmp_path: Path) -> Callable[[BundleSpec], Path]:
    """A fresh, valid bundle directory for a test to corrupt."""

    def make(spec: BundleSpec) -> Path:
        return make_bundle_dir(tmp_path / f"bad-{spec.version}-{uuid.uuid4().hex[:6]}", spec)

    return make


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def make_settings(model_dir: Path) -> Callable[..., Settings]:
    """Settings isolated from the environment and any .env file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "development",
            "model_dir": model_dir,
            "bootstrap_bundle": None,
            "redis_url": None,
            "admin_token": ADMIN_TOKEN,
            "log_level": "warning",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture(params=["embedded", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_settings(
    store_kind: str, request: pytest.FixtureRequest, redis_prefix: str
) -> dict[str, Any]:
    """Settings overrides selecting the store under test."""
    if store_kind == "embedded":
        return {"redis_url": None}
    url: str = request.getfixturevalue("redis_url")
    return {"redis_url": url, "redis_key_prefix": redis_prefix}


@pytest.fixture
def client_for() -> Iterator[Callable[[Settings], TestClient]]:
    """Start an app (lifespan included) for the given settings; all stopped at teardown."""
    started: list[TestClient] = []

    def start(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        client.__exit__(None, None, None)


@pytest.fixture
def client(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
    store_settings: dict[str, Any],
) -> TestClient:
    """The service on each store, serving bundle v1 (bootstrapped), admin enabled."""
    return client_for(make_settings(bootstrap_bundle=v1_dir, **store_settings))


@pytest.fixture
def embedded_client(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
) -> TestClient:
    """The service on the embedded store only, serving v1, admin enabled."""
    return client_for(make_settings(bootstrap_bundle=v1_dir))


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def stoppable_redis_client(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
    private_redis: RedisServer,
    redis_prefix: str,
) -> TestClient:
    """The service serving v1 on a Redis of this test's own (stop it with private_redis.stop)."""
    return client_for(
        make_settings(
            bootstrap_bundle=v1_dir,
            redis_url=private_redis.url,
            redis_key_prefix=redis_prefix,
            redis_timeout_s=0.3,
        )
    )


# --- a fleet: replicas sharing one real Redis ------------------------------------------------

Replica = Callable[..., TestClient]


@pytest.fixture
def replica_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, redis_url: str, redis_prefix: str
) -> Callable[..., Settings]:
    """Settings of a replica named `name` on the shared Redis, with a model directory of its
    own (the same directory for the same name: a restart)."""

    def make(name: str, **overrides: Any) -> Settings:
        return make_settings(
            model_dir=tmp_path / f"models-{name}",
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
            replica_id=name,
            **overrides,
        )

    return make


@pytest.fixture
def replica(
    client_for: Callable[[Settings], TestClient], replica_settings: Callable[..., Settings]
) -> Replica:
    """Start a replica named `name` (stopped at teardown)."""

    def start(name: str, **overrides: Any) -> TestClient:
        return client_for(replica_settings(name, **overrides))

    return start


@pytest.fixture
def pair(replica: Replica, v1_dir: Path) -> tuple[TestClient, TestClient]:
    """Replica a bootstrapped with v1; replica b started with nothing (it gets v1 from the
    fleet: the active version and its archive are in Redis)."""
    a = replica("a", bootstrap_bundle=v1_dir)
    b = replica("b")
    return a, b
