"""Structured logs and request IDs (service/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.logs import JsonFormatter, RequestIdFilter, configure_logging, sane_request_id
from service.main import create_app
from service.settings import Settings

GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_sane_request_id_from_the_caller_is_returned(embedded_client: TestClient):
    for rid in ("abc-123", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a" * 128):
        r = embedded_client.post(
            "/recommend", json={"history": ["i1"]}, headers={"X-Request-ID": rid}
        )
        assert r.status_code == 200
        assert r.headers["x-request-id"] == rid


@pytest.mark.parametrize(
    "sent", ["", "a" * 129, "two words", 'quote"d', "<script>", "line\tbreak", "caf\u00e9"]
)
def test_an_insane_or_missing_request_id_is_replaced(embedded_client: TestClient, sent: str):
    r = embedded_client.get("/healthz", headers={"X-Request-ID": sent.encode()})
    assert GENERATED.fullmatch(r.headers["x-request-id"])
    assert GENERATED.fullmatch(embedded_client.get("/healthz").headers["x-request-id"])
    assert sane_request_id(None) != sane_request_id(None)


def test_every_answer_carries_a_request_id_and_server_timing(
    embedded_client: TestClient, admin_headers
):
    answers = [
        embedded_client.get("/nope"),  # 404
        embedded_client.post("/recommend", json={"history": ["i1"], "k": 0}),  # 422
        embedded_client.post("/recommend", content=b"x" * 70_000),  # 413, from the body limit
        embedded_client.get("/admin/bundles"),  # 401
        embedded_client.post("/admin/bundles/v9/activate", headers=admin_headers),  # 404
        embedded_client.get("/metrics"),
    ]
    assert [r.status_code for r in answers] == [404, 422, 413, 401, 404, 200]
    for r in answers:
        assert GENERATED.fullmatch(r.headers["x-request-id"])
        assert re.fullmatch(r"app;dur=\d+\.\d\d", r.headers["server-timing"])


def test_an_unhandled_error_answers_500_with_the_request_id(
    make_settings: Callable[..., Settings], v1_dir: Path
):
    app = create_app(make_settings(bootstrap_bundle=v1_dir))

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal Server Error"}
    assert r.headers["x-request-id"] == "req-500"
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a bug"):
        client.get("/boom")  # still raised to the server, which logs the traceback


def test_one_access_line_per_request_with_route_status_duration_and_version(
    embedded_client: TestClient, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.INFO, logger="service.access"):
        embedded_client.post(
            "/recommend", json={"history": ["i1"]}, headers={"X-Request-ID": "req-1"}
        )
        embedded_client.get("/items/12345", headers={"X-Request-ID": "req-2"})
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 2
    rec, unmatched = lines
    assert (rec.method, rec.route, rec.status, rec.model_version, rec.request_id) == (
        "POST",
        "/recommend",
        200,
        "v1",
        "req-1",
    )
    assert rec.duration_ms > 0
    assert rec.getMessage().startswith("POST /recommend 200 ")
    # A raw path that matches no route is logged as "unmatched", never verbatim.
    assert (unmatched.route, unmatched.model_version, unmatched.request_id) == (
        "unmatched",
        "none",
        "req-2",
    )


def test_records_logged_while_a_request_runs_carry_its_id(
    embedded_client: TestClient, admin_headers, v2_archive: bytes, caplog: pytest.LogCaptureFixture
):
    caplog.handler.addFilter(RequestIdFilter())
    embedded_client.post(
        "/admin/bundles",
        content=v2_archive,
        headers={**admin_headers, "Content-Type": "application/gzip"},
    )
    with caplog.at_level(logging.INFO, logger="service.registry"):
        r = embedded_client.post(
            "/admin/bundles/v2/activate", headers={**admin_headers, "X-Request-ID": "swap-42"}
        )
    assert r.status_code == 200
    (swap,) = [r for r in caplog.records if r.getMessage().startswith("activated model version v2")]
    assert swap.request_id == "swap-42"  # set in the thread pool


def test_json_formatter_writes_one_object_per_line_with_extra_fields():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "service.x", logging.ERROR, __file__, 1, "%s happened", ("it",), exc_info
    )
    record.request_id = "r-1"
    record.route = "/recommend"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "it happened"
    assert (entry["level"], entry["logger"], entry["request_id"]) == ("ERROR", "service.x", "r-1")
    assert entry["route"] == "/recommend"
    assert "ValueError: bad" in entry["exc_info"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert "args" not in entry and "msg" not in entry


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging rewires the root and uvicorn loggers; undo that afterwards."""
    loggers = [
        logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    ]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_logging_formats_every_logger_with_the_request_id(
    fmt: str, monkeypatch: pytest.MonkeyPatch
):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging(level="info", fmt=fmt)
    logging.getLogger("service.test").info("hello %s", "there")
    logging.getLogger("uvicorn.error").info("from uvicorn")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        first = json.loads(lines[0])
        assert (first["message"], first["request_id"]) == ("hello there", None)
        assert json.loads(lines[1])["logger"] == "uvicorn.error"
    else:
        assert lines[0].endswith("INFO service.test [-] hello there")


def test_log_format_setting_accepts_json_and_text_only(make_settings: Callable[..., Settings]):
    assert make_settings().log_format == "json"
    assert make_settings(log_format="text").log_format == "text"
    with pytest.raises(ValueError, match="log_format"):
        make_settings(log_format="xml")
