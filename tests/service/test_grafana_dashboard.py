"""The example Grafana dashboard (docker/grafana/recsys-dashboard.json) queries only metrics
the service really exports: every PromQL expression is checked against a scrape of /metrics
from an app that has served, cached, swapped and run a canary."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import ROOT

DASHBOARD = ROOT / "docker" / "grafana" / "recsys-dashboard.json"

PROMQL_FUNCTIONS = frozenset(
    {
        "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile",
        "rate", "irate", "increase", "delta", "histogram_quantile", "clamp_min", "clamp_max",
        "label_replace", "vector", "scalar", "abs", "time", "max_over_time", "avg_over_time",
    }
)  # fmt: skip
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def referenced_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function names) of a PromQL expression."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors ([5m], [$__rate_interval])
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\$\w+", "", bare)  # dashboard variables
    metrics, functions = set(), set()
    for name, call in re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", bare):
        if call:
            functions.add(name)
        elif name not in PROMQL_KEYWORDS and not re.fullmatch(r"e\d*|inf|nan", name, re.I):
            metrics.add(name)
    return metrics, functions


def test_referenced_names_sees_through_promql_syntax():
    metrics, functions = referenced_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route="/x"}'
        "[$__rate_interval]))) / on(instance) b_total offset 5m"
    )
    assert metrics == {"a_seconds_bucket", "b_total"}
    assert functions == {"histogram_quantile", "sum", "rate"}


@pytest.fixture
def scrape(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
    v2_archive: bytes,
    redis_url: str,
    redis_prefix: str,
    admin_headers: dict[str, str],
) -> str:
    """/metrics of an app that answered (model, popular, cache hit), swapped to v2 and
    started a canary: every metric family then has samples."""
    client = client_for(
        make_settings(
            bootstrap_bundle=v1_dir,
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
            answer_cache_ttl_s=60,
        )
    )
    for body in ({"history": ["i1", "i2"]}, {"history": ["i1", "i2"]}, {"history": []}):
        assert client.post("/recommend", json=body).status_code == 200
    upload = {**admin_headers, "Content-Type": "application/gzip"}
    assert client.post("/admin/bundles", content=v2_archive, headers=upload).status_code == 201
    assert client.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    canary = {"version": "v1", "canary_percent": 10}
    assert client.post("/admin/activate", json=canary, headers=admin_headers).status_code == 200
    return client.get("/metrics").text


def exported_names(text: str) -> set[str]:
    return {
        m.group(1)
        for line in text.splitlines()
        if (m := re.match(r"([A-Za-z_:][\w:]*)[{ ]", line)) and not line.startswith("#")
    }


def test_dashboard_is_valid_grafana_json_with_the_expected_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    titles = " | ".join(p["title"].lower() for p in panels(dashboard))
    for wanted in (
        "request rate by status",
        "latency p50",
        "latency p99",
        "batch size",
        "queue time",
        "cache hit ratio",
        "swaps",
        "last swap duration",
        "model version",
    ):
        assert wanted in titles
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_query_uses_metrics_the_service_exports(scrape: str):
    exported = exported_names(scrape)
    assert "recsys_answer_cache_requests_total" in exported  # the scrape exercised everything
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for expr in expressions(dashboard):
        metrics, functions = referenced_names(expr)
        assert metrics, f"no metric in {expr!r}"
        assert metrics <= exported, f"{expr!r} queries {sorted(metrics - exported)}"
        assert functions <= PROMQL_FUNCTIONS, f"{expr!r} calls {sorted(functions)}"
        used |= metrics
    for name in (
        "recsys_http_requests_total",
        "recsys_http_request_duration_seconds_bucket",
        "recsys_batch_size_bucket",
        "recsys_queue_duration_seconds_bucket",
        "recsys_answer_cache_requests_total",
        "recsys_model_swaps_total",
        "recsys_last_swap_duration_seconds",
        "recsys_model_info",
    ):
        assert name in used, f"the dashboard does not chart {name}"
    # Latency panels group by labels the histogram really has.
    assert 'model_version="v1"' in scrape and 'route="/recommend"' in scrape
