from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, SettingsError, get_settings

ENV_VARS = [
    "HOST",
    "PORT",
    "MODEL_DIR",
    "BOOTSTRAP_BUNDLE",
    "REDIS_URL",
    "ADMIN_TOKEN",
    "ENVIRONMENT",
    "MAX_HISTORY",
    "MAX_BODY_BYTES",
    "LOG_LEVEL",
    "ONNX_INTRA_OP_THREADS",
    "BATCH_MAX_SIZE",
    "BATCH_MAX_DELAY_MS",
    "ANSWER_CACHE_TTL_S",
    "GC_THRESHOLD",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_serve_on_port_8000_with_embedded_store_and_admin_disabled(clean_env):
    s = Settings(_env_file=None)
    assert (s.host, s.port) == ("0.0.0.0", 8000)
    assert s.model_dir == Path("var/models")
    assert s.redis_url is None
    assert s.admin_token is None and not s.admin_enabled
    assert s.max_history == 200
    assert s.max_body_bytes == 64 * 1024
    assert s.max_k == 1000 and s.max_candidates == 1000
    assert s.onnx_intra_op_threads == 1
    assert s.environment == "development"
    assert (s.batch_max_size, s.batch_max_delay_ms) == (32, 8.0)
    assert s.answer_cache_ttl_s == 0


def test_settings_are_read_from_the_environment(clean_env, tmp_path):
    clean_env.setenv("HOST", "127.0.0.1")
    clean_env.setenv("PORT", "9123")
    clean_env.setenv("MODEL_DIR", str(tmp_path))
    clean_env.setenv("BOOTSTRAP_BUNDLE", str(tmp_path / "demo.tar.gz"))
    clean_env.setenv("REDIS_URL", "redis://localhost:6379/2")
    clean_env.setenv("ADMIN_TOKEN", "tok")
    clean_env.setenv("MAX_HISTORY", "50")
    s = Settings(_env_file=None)
    assert (s.host, s.port, s.model_dir) == ("127.0.0.1", 9123, tmp_path)
    assert s.bootstrap_bundle == tmp_path / "demo.tar.gz"
    assert str(s.redis_url) == "redis://localhost:6379/2"
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "tok"
    assert s.max_history == 50


def test_empty_admin_token_disables_admin(clean_env):
    clean_env.setenv("ADMIN_TOKEN", "  ")
    assert not Settings(_env_file=None).admin_enabled


def test_empty_redis_url_means_embedded_store(clean_env):
    clean_env.setenv("REDIS_URL", "")
    assert Settings(_env_file=None).redis_url is None


def test_invalid_redis_url_is_rejected(clean_env):
    clean_env.setenv("REDIS_URL", "http://not-redis")
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(_env_file=None)


def test_admin_token_is_hidden_in_repr(clean_env):
    s = Settings(_env_file=None, admin_token="super-secret-value")
    assert "super-secret-value" not in repr(s)


@pytest.mark.parametrize("token", ["changethis", "short"])
def test_production_refuses_a_weak_admin_token(clean_env, token):
    with pytest.raises(ValidationError, match="ADMIN_TOKEN is too weak"):
        Settings(_env_file=None, environment="production", admin_token=token)


def test_production_accepts_a_strong_token_or_no_admin_at_all(clean_env):
    strong = Settings(_env_file=None, environment="production", admin_token="x" * 40)
    assert strong.admin_enabled
    assert not Settings(_env_file=None, environment="production").admin_enabled


def test_development_allows_a_weak_token(clean_env):
    assert Settings(_env_file=None, admin_token="dev").admin_enabled


def test_invalid_port_is_rejected(clean_env):
    clean_env.setenv("PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings(_env_file=None)


def test_batching_and_answer_cache_are_read_from_the_environment(clean_env):
    clean_env.setenv("BATCH_MAX_SIZE", "1")
    clean_env.setenv("BATCH_MAX_DELAY_MS", "0")
    clean_env.setenv("REDIS_URL", "redis://localhost:6379/0")
    clean_env.setenv("ANSWER_CACHE_TTL_S", "2.5")
    s = Settings(_env_file=None)
    assert (s.batch_max_size, s.batch_max_delay_ms, s.answer_cache_ttl_s) == (1, 0.0, 2.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [("BATCH_MAX_SIZE", "0"), ("BATCH_MAX_DELAY_MS", "-1"), ("ANSWER_CACHE_TTL_S", "-1")],
)
def test_invalid_batching_or_cache_values_are_rejected(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings(_env_file=None)


def test_answer_cache_without_redis_is_refused_with_a_clear_message(clean_env):
    clean_env.setenv("ANSWER_CACHE_TTL_S", "30")
    with pytest.raises(ValidationError, match="ANSWER_CACHE_TTL_S=30 needs REDIS_URL"):
        Settings(_env_file=None)


def test_get_settings_is_cached(clean_env):
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


def test_gc_threshold_is_read_from_the_environment_as_three_counts(clean_env):
    assert Settings(_env_file=None).gc_threshold == (10_000, 20, 100)
    clean_env.setenv("GC_THRESHOLD", "[700, 10, 10]")
    assert Settings(_env_file=None).gc_threshold == (700, 10, 10)


@pytest.mark.parametrize("value", ["[0, 10, 10]", "[700, 10]", "700"])
def test_a_gc_threshold_that_is_not_three_positive_counts_is_rejected(clean_env, value):
    clean_env.setenv("GC_THRESHOLD", value)
    with pytest.raises(ValidationError, match="gc_threshold"):
        Settings(_env_file=None)


SECRET = "weak-but-secret-9f3c"  # too short for production, and must never be printed


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "service"],
        [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app"],
    ],
)
def test_a_refused_secret_never_reaches_the_output(command, tmp_path):
    env = {**os.environ, "ENVIRONMENT": "production", "ADMIN_TOKEN": SECRET}
    env["MODEL_DIR"] = str(tmp_path)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert SECRET not in output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "ADMIN_TOKEN is too weak for ENVIRONMENT=production" in lines[0]


def test_a_bad_setting_names_the_variable_in_one_line(monkeypatch):
    monkeypatch.setenv("PORT", "not-a-port")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as refused:
        get_settings()
    get_settings.cache_clear()
    assert str(refused.value) == (
        "invalid settings: PORT: Input should be a valid integer, unable to parse string as an "
        "integer"
    )
