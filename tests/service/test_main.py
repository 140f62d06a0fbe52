from __future__ import annotations

import inspect
import subprocess
import sys

import httpx
import pytest

from service import deps
from service.main import create_app
from service.routes import recommend
from tests.conftest import ROOT, service_process


def test_service_imports_and_builds_an_app_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import service.main, service.__main__\n"
        "from service.settings import Settings\n"
        "app = service.main.create_app(Settings(_env_file=None))\n"
        "assert not any(m == 'models' or m.startswith('models.') for m in sys.modules)\n"
        "print('ok')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_creating_the_app_loads_nothing_until_the_lifespan_starts(make_settings, model_dir, v1_dir):
    app = create_app(make_settings(bootstrap_bundle=v1_dir))
    assert not hasattr(app.state, "registry")
    assert not model_dir.exists()


def test_lifespan_loads_the_model_and_shutdown_closes_the_store(make_settings, v1_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from service.store import EmbeddedStore

    closed: list[bool] = []
    monkeypatch.setattr(EmbeddedStore, "close", lambda self: closed.append(True))
    app = create_app(make_settings(bootstrap_bundle=v1_dir))
    with TestClient(app):
        assert app.state.registry.current.version == "v1"
        assert closed == []
    assert closed == [True]


def test_lifespan_sets_the_gc_thresholds_and_gives_the_old_ones_back(make_settings, v1_dir):
    import gc

    from fastapi.testclient import TestClient

    before = gc.get_threshold()
    app = create_app(make_settings(bootstrap_bundle=v1_dir, gc_threshold=(4321, 12, 34)))
    with TestClient(app):
        assert gc.get_threshold() == (4321, 12, 34)
    assert gc.get_threshold() == before


@pytest.mark.timeout(60)
def test_python_m_service_serves_on_port_with_the_bootstrap_bundle(tmp_path, v1_archive):
    archive = tmp_path / "demo.tar.gz"
    archive.write_bytes(v1_archive)
    env = {"MODEL_DIR": str(tmp_path / "models"), "BOOTSTRAP_BUNDLE": str(archive)}
    with service_process(env) as url:
        r = httpx.post(f"{url}/recommend", content=b'{"history": ["i12", "i7", "i99"], "k": 10}')
        assert r.status_code == 200
        assert r.json()["model_version"] == "v1" and len(r.json()["items"]) == 10
        assert httpx.get(f"{url}/admin/active").status_code == 404  # no ADMIN_TOKEN


def test_every_dependency_is_async_so_none_costs_a_thread_pool_hop():
    """A sync dependency runs in the thread pool: one hop per request for an in-memory read."""
    functions = [
        fn
        for module in (deps, recommend)
        for _, fn in inspect.getmembers(module, inspect.isfunction)
        if fn.__module__ == module.__name__ and not fn.__name__.startswith("_")
    ]
    names = {fn.__name__ for fn in functions}
    assert {"get_registry", "get_current_model", "require_admin", "recommend_body"} <= names
    assert [fn.__name__ for fn in functions if not inspect.iscoroutinefunction(fn)] == []
