from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient


def test_recommend_answers_with_items_scores_and_the_version(client: TestClient):
    r = client.post("/recommend", json={"history": ["i12", "i7", "i99"], "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "v1"
    assert body["strategy"] == "model"
    assert body["unknown_history"] == 1  # the factory catalog has 60 items: i99 is unknown
    assert body["unknown_candidates"] == 0
    assert len(body["items"]) == 10
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert {"i12", "i7"}.isdisjoint(item["item_id"] for item in body["items"])


def test_recommend_accepts_json_sent_as_curl_d_form_encoding(embedded_client: TestClient):
    # `curl -d '{...}'` sends application/x-www-form-urlencoded.
    r = embedded_client.post(
        "/recommend",
        content=b'{"history": ["i12", "i7"], "k": 3}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3


def test_recommend_defaults_to_ten_items(embedded_client: TestClient):
    r = embedded_client.post("/recommend", json={"history": ["i1"]})
    assert len(r.json()["items"]) == 10


@pytest.mark.parametrize("history", [[], ["nope"]])
def test_empty_or_unknown_history_gets_popular_items(embedded_client: TestClient, history):
    r = embedded_client.post("/recommend", json={"history": history, "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["strategy"] == "popular"
    assert [i["item_id"] for i in body["items"]] == ["i1", "i2", "i3"]
    assert body["unknown_history"] == len(history)


def test_candidates_are_reranked_and_unknown_candidates_counted(embedded_client: TestClient):
    r = embedded_client.post(
        "/recommend",
        json={"history": ["i1"], "k": 5, "candidates": ["i3", "i4", "ghost", "i1"]},
    )
    body = r.json()
    assert sorted(i["item_id"] for i in body["items"]) == ["i3", "i4"]
    assert body["unknown_candidates"] == 1


def test_exclude_and_exclude_seen_are_honoured(embedded_client: TestClient):
    everything = {"history": ["i1"], "k": 1000, "exclude_seen": False}
    with_seen = embedded_client.post("/recommend", json=everything).json()
    assert "i1" in {i["item_id"] for i in with_seen["items"]}
    excluded = embedded_client.post(
        "/recommend", json={"history": ["i1"], "k": 1000, "exclude": ["i2", "i3"]}
    ).json()
    assert {"i1", "i2", "i3"}.isdisjoint(i["item_id"] for i in excluded["items"])


def test_user_id_is_accepted(embedded_client: TestClient):
    r = embedded_client.post("/recommend", json={"history": ["i1"], "user_id": "u-42"})
    assert r.status_code == 200


def test_history_longer_than_the_limit_is_422_with_a_message(embedded_client: TestClient):
    r = embedded_client.post("/recommend", json={"history": ["i1"] * 201})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "history"]
    assert error["msg"] == "history has 201 items; at most 200 are allowed"


def test_too_many_candidates_is_422(client_for, make_settings, v1_dir):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, max_candidates=3))
    r = client.post("/recommend", json={"history": [], "candidates": ["a", "b", "c", "d"]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == "candidates has 4 items; at most 3 are allowed"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"history": ["i1"], "k": 0}, ["body", "k"]),
        ({"history": ["i1"], "k": 1001}, ["body", "k"]),
        ({"history": ["i1"], "k": "ten"}, ["body", "k"]),
        ({"history": [1, 2]}, ["body", "history", 0]),
        ({"history": "i1"}, ["body", "history"]),
        ({"history": [""]}, ["body", "history", 0]),
        ({"history": ["i1"], "exclude_seen": "maybe"}, ["body", "exclude_seen"]),
        ({"history": ["i1"], "histroy": []}, ["body", "histroy"]),
        ([1, 2, 3], ["body"]),
    ],
    ids=["k0", "k1001", "k_str", "int_ids", "str_history", "empty_id", "bad_bool", "typo", "list"],
)
def test_invalid_bodies_are_422_with_pydantic_detail(embedded_client: TestClient, body, loc):
    r = embedded_client.post("/recommend", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == loc


def test_invalid_json_is_422(embedded_client: TestClient):
    r = embedded_client.post(
        "/recommend", content=b'{"history": [', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_body_over_the_limit_by_content_length_is_413(embedded_client: TestClient):
    history = [f"item-{n:06d}" for n in range(6000)]  # ~90 KB > 64 KiB
    r = embedded_client.post("/recommend", content=json.dumps({"history": history}).encode())
    assert r.status_code == 413
    assert r.json()["detail"] == "request body is larger than the limit of 65536 bytes"


def test_streamed_body_over_the_limit_is_413(embedded_client: TestClient):
    def chunks():
        yield b'{"history": ['
        for _ in range(100):
            yield b'"' + b"x" * 1000 + b'",'
        yield b'"i1"]}'

    r = embedded_client.post("/recommend", content=chunks())  # chunked: no Content-Length
    assert r.status_code == 413
    assert "65536 bytes" in r.json()["detail"]


def test_recommend_without_a_model_is_503(client_for, make_settings):
    client = client_for(make_settings())
    r = client.post("/recommend", json={"history": ["i1"]})
    assert r.status_code == 503
    assert r.json()["detail"] == "no model is loaded yet: upload and activate a bundle"
