"""Measuring through the service (`benchmarks.service_eval`): the answers are the ones
`POST /recommend` returns, the options are the ones the running app loads bundles with, and
the end-to-end timing runs the scorer the way the request path does."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.registry
from benchmarks.service_eval import (
    measure_e2e,
    ranks_from_answers,
    service_answers,
    service_options,
)
from bundle import read_bundle
from service.loading import load_model
from service.model import LoadedModel, ModelOptions, RecRequest
from service.scorer import F32, Rows, Scorer
from service.settings import Settings
from tests.conftest import V1
from tests.factories import item_ids

N_ITEMS = V1.n_items  # 60 items, max_len 12


def varied_histories(n: int = 40, seed: int = 3) -> list[list[str]]:
    """Known IDs only: short, longer than max_len, with repeats, nearly the whole catalog
    (fewer than k items left to answer) and one empty (the popularity fallback)."""
    rng = np.random.default_rng(seed)
    ids = item_ids(N_ITEMS)
    out: list[list[str]] = [[], ["i1"], ["i7", "i7", "i7"], ids[:55], ids[5:] * 2]
    while len(out) < n:
        length = int(rng.choice([1, 2, 3, 5, 8, 12, 13, 20, 30]))
        picked = [str(i) for i in rng.choice(ids, size=length)]  # with replacement: repeats
        out.append(picked)
    return out


def http_answers(client: TestClient, histories: Sequence[Sequence[str]], k: int) -> list[list[str]]:
    answers = []
    for h in histories:
        response = client.post("/recommend", json={"history": list(h), "k": k})
        assert response.status_code == 200, response.text
        answers.append([item["item_id"] for item in response.json()["items"]])
    return answers


def test_service_answers_equal_post_recommend_at_every_batch_size(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
) -> None:
    histories = varied_histories()
    expected = http_answers(client_for(make_settings(bootstrap_bundle=v1_dir)), histories, k=10)
    # Not a trivial comparison: the answers differ by history, the seen-items ban and the
    # nearly-exhausted catalog both show.
    assert len({tuple(a) for a in expected}) > len(histories) // 2
    assert not set(expected[3]) & set(histories[3]) and len(expected[3]) == N_ITEMS - 55
    for batch_size in (32, 1, 7):
        got = service_answers(v1_dir, histories, k=10, batch_size=batch_size)
        for row, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert g == e, f"batch_size={batch_size}, history {row}: {histories[row]}"
        assert len(got) == len(histories)


def test_service_answers_default_batch_is_the_service_batch_size(
    v1_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = LoadedModel.recommend_batch

    def spy(self: LoadedModel, requests: Sequence[RecRequest]) -> list[Any]:
        sizes.append(len(requests))
        return real(self, requests)

    histories = varied_histories(70)
    monkeypatch.setattr(LoadedModel, "recommend_batch", spy)
    service_answers(v1_dir, histories, k=5)
    batches = sizes[-3:]  # after load_model's warm-up call
    assert batches == [32, 32, 6]
    assert Settings.model_fields["batch_max_size"].default == 32


def test_service_answers_refuses_what_the_service_refuses(v1_dir: Path) -> None:
    with pytest.raises(ValueError, match="history 1 has 201 items"):
        service_answers(v1_dir, [["i1"], ["i2"] * 201], k=10)
    with pytest.raises(ValueError, match="history 0"):
        service_answers(v1_dir, [[""]], k=10)  # the schema wants non-empty IDs
    with pytest.raises(TypeError, match="history 0 is a str"):
        service_answers(v1_dir, ["i1"], k=10)


def test_service_options_are_what_the_app_loads_bundles_with(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[ModelOptions | None] = []
    real = service.registry.load_model

    def spy(path: Path, options: ModelOptions | None = None) -> LoadedModel:
        seen.append(options)
        return real(path, options)

    monkeypatch.setattr(service.registry, "load_model", spy)
    client_for(make_settings(bootstrap_bundle=v1_dir))  # none of its overrides are options
    assert seen and all(o == service_options() for o in seen)


def test_service_options_ignore_the_environment_and_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = service_options()
    assert defaults.scoring_precision == "int8" and defaults.intra_op_threads == 1
    monkeypatch.setenv("SCORING_PRECISION", "fp32")
    monkeypatch.setenv("ONNX_INTRA_OP_THREADS", "4")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ANN_MIN_ITEMS=10\nMODEL_LOADER_NICE=0\n")
    assert Settings().scoring_precision == "fp32"  # what a plain Settings() would have read
    assert service_options() == defaults


def test_ranks_from_answers() -> None:
    answers = [["a", "b", "c"], ["x", "y", "z", "t"], ["p", "q"]]
    ranks = ranks_from_answers(answers, ["a", "t", "missing"])
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [0, 3, -1]
    with pytest.raises(ValueError, match="2 answers but 1 targets"):
        ranks_from_answers(answers[:2], ["a"])


class RecordingScorer(Scorer):
    """A real scorer that records each `top_k` call's batch size, k and banned lists."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, list[list[int]]]] = []

    def top_k(self, users: F32, banned: Sequence[Rows], k: int) -> tuple[Any, F32]:
        self.calls.append((len(users), k, [list(b) for b in banned]))
        return super().top_k(users, banned, k)


def test_measure_e2e_times_the_service_computation(v1_dir: Path) -> None:
    b = read_bundle(v1_dir)
    model = load_model(v1_dir, service_options())
    scorer = RecordingScorer(b.items, b.item_scales, precision=service_options().scoring_precision)
    index = {item: r for r, item in enumerate(b.vocab)}
    histories = [["i1", "i2"], ["i9"], ["i3", "i30", "i3", "i44"], ["i60"] * 4, ["i5", "i6"]]
    max_len = b.manifest.max_len
    inputs = np.zeros((len(histories), max_len), dtype=np.int64)  # left-padded
    for r, h in enumerate(histories):
        inputs[r, max_len - len(h) :] = [index[i] for i in h]
    banned = [[index[i] for i in h] for h in histories]

    # What is timed is what the service answers: one row scored directly, as timed.
    top, _ = scorer.top_k(model.encode(inputs[:1]), banned[:1], 7)
    assert [b.vocab[i] for i in top[0]] == model.recommend(RecRequest(histories[0], 7)).item_ids
    scorer.calls.clear()

    out = measure_e2e(model.encode, scorer, inputs, banned, k=7, budget_s=0.02)
    assert set(out) == {"e2e_us_b1", "e2e_us_b32"}
    assert all(v > 0 and math.isfinite(v) for v in out.values())
    assert {k for _, k, _ in scorer.calls} == {7}
    by_batch = {n: [c for c in scorer.calls if c[0] == n] for n in (1, 32)}
    assert len(by_batch[1]) >= 6 and len(by_batch[32]) >= 6  # warm-up + at least 5 timed
    assert len(scorer.calls) == len(by_batch[1]) + len(by_batch[32])
    # Five rows repeated to 32, each with its own banned list.
    assert by_batch[1][0][2] == [banned[0]]
    assert by_batch[32][0][2] == [banned[r % 5] for r in range(32)]
