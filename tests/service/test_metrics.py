from __future__ import annotations

import re

from fastapi.testclient import TestClient


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, labels matched exactly (in any order)."""
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if got == labels:
            return float(m.group(2))
    raise AssertionError(f"no sample {name}{labels} in metrics")


def test_metrics_count_requests_by_route_template_and_status(embedded_client: TestClient):
    embedded_client.post("/recommend", json={"history": ["i1"]})
    embedded_client.post("/recommend", json={"history": ["i1"], "k": 0})
    embedded_client.get("/nope")
    text = embedded_client.get("/metrics").text
    ok = {"route": "/recommend", "method": "POST", "status": "200"}
    assert sample(text, "recsys_http_requests_total", **ok) == 1
    assert sample(text, "recsys_http_requests_total", **{**ok, "status": "422"}) == 1
    assert (
        sample(text, "recsys_http_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    timed = {**ok, "model_version": "v1"}
    assert sample(text, "recsys_http_request_duration_seconds_count", **timed) == 1
    assert sample(text, "recsys_http_request_duration_seconds_bucket", **timed, le="+Inf") == 1


def test_metrics_use_path_templates_not_raw_paths(embedded_client: TestClient, admin_headers):
    embedded_client.post("/admin/bundles/v1/activate", headers=admin_headers)
    text = embedded_client.get("/metrics").text
    assert 'route="/admin/bundles/{version}/activate"' in text
    assert 'route="/admin/bundles/v1/activate"' not in text


def test_metrics_count_413_from_the_body_limit(embedded_client: TestClient):
    embedded_client.post("/recommend", content=b"x" * 70_000)
    text = embedded_client.get("/metrics").text
    assert 'status="413"' in text


def test_metrics_report_model_version_inference_queue_time_and_batch_size(
    embedded_client: TestClient,
):
    embedded_client.post("/recommend", json={"history": ["i1", "i2"]})
    embedded_client.post("/recommend", json={"history": []})  # popular: no inference
    text = embedded_client.get("/metrics").text
    assert sample(text, "recsys_model_info", version="v1") == 1
    assert sample(text, "recsys_inference_duration_seconds_count") == 1  # per encoder run
    assert sample(text, "recsys_queue_duration_seconds_count") == 2  # both waited in the queue
    assert sample(text, "recsys_batch_size_count") == 2  # one after the other: two batches
    assert sample(text, "recsys_batch_size_sum") == 2
    assert sample(text, "recsys_recommendations_total", strategy="model") == 1
    assert sample(text, "recsys_recommendations_total", strategy="popular") == 1
    assert sample(text, "recsys_model_swaps_total") == 0


def swap_to_v2(client: TestClient, headers: dict[str, str], v2_archive: bytes) -> None:
    r = client.post(
        "/admin/bundles",
        content=v2_archive,
        headers={**headers, "Content-Type": "application/gzip"},
    )
    assert r.status_code == 201, r.text
    r = client.post("/admin/bundles/v2/activate", headers=headers)
    assert r.status_code == 200, r.text


def test_metrics_count_swaps_and_move_the_version_gauge(
    embedded_client: TestClient, admin_headers, v2_archive
):
    swap_to_v2(embedded_client, admin_headers, v2_archive)
    text = embedded_client.get("/metrics").text
    assert sample(text, "recsys_model_swaps_total") == 1
    assert sample(text, "recsys_model_info", version="v2") == 1
    assert 'recsys_model_info{version="v1"}' not in text


def test_latency_is_labelled_by_the_model_version_that_answered(
    embedded_client: TestClient, admin_headers, v2_archive
):
    embedded_client.post("/recommend", json={"history": ["i1"]})
    embedded_client.post("/recommend", json={"history": ["i1"], "k": 0})  # 422: no model answered
    embedded_client.get("/healthz")
    swap_to_v2(embedded_client, admin_headers, v2_archive)
    embedded_client.post("/recommend", json={"history": ["i1"]})
    text = embedded_client.get("/metrics").text
    count = "recsys_http_request_duration_seconds_count"
    ok = {"route": "/recommend", "method": "POST", "status": "200"}
    assert sample(text, count, **ok, model_version="v1") == 1
    assert sample(text, count, **ok, model_version="v2") == 1
    assert sample(text, count, **{**ok, "status": "422"}, model_version="none") == 1
    assert sample(text, count, route="/healthz", method="GET", status="200", model_version="none")


def test_last_swap_duration_is_set_by_every_activation(
    embedded_client: TestClient, admin_headers, v2_archive
):
    first = sample(embedded_client.get("/metrics").text, "recsys_last_swap_duration_seconds")
    assert 0 < first < 60  # the bootstrap activation: load, validate, warm up, switch
    swap_to_v2(embedded_client, admin_headers, v2_archive)
    text = embedded_client.get("/metrics").text
    assert sample(text, "recsys_model_swaps_total") == 1
    swap = sample(text, "recsys_last_swap_duration_seconds")
    assert 0 < swap < 60 and swap != first
    assert "# TYPE recsys_last_swap_duration_seconds gauge" in text


def test_metrics_show_the_canary_and_its_share_while_it_runs(
    embedded_client: TestClient, admin_headers, v2_archive
):
    embedded_client.post(
        "/admin/bundles",
        content=v2_archive,
        headers={**admin_headers, "Content-Type": "application/gzip"},
    )
    r = embedded_client.post(
        "/admin/activate", json={"version": "v2", "canary_percent": 15}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    text = embedded_client.get("/metrics").text
    assert sample(text, "recsys_canary_percent", version="v2") == 15
    assert sample(text, "recsys_model_info", version="v1") == 1
    embedded_client.post("/admin/canary/abort", headers=admin_headers)
    assert "recsys_canary_percent{" not in embedded_client.get("/metrics").text


def test_metrics_endpoint_speaks_the_prometheus_text_format(embedded_client: TestClient):
    r = embedded_client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE recsys_http_request_duration_seconds histogram" in r.text
