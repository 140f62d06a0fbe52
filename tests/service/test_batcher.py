from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.metrics import Metrics
from service.registry import load_model
from service.runner import LoadedModel, Recommendation, RecRequest
from tests.conftest import V2
from tests.factories import make_bundle_dir, varied_requests


@pytest.fixture(scope="module")
def v1_model(v1_dir: Path) -> LoadedModel:
    return load_model(v1_dir)


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(make_bundle_dir(tmp_path_factory.mktemp("batcher") / "v2", V2))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def submit_all(
    batcher: MicroBatcher, models: Sequence[LoadedModel], requests: Sequence[RecRequest]
) -> list[Recommendation]:
    """All requests at once, as concurrent clients would send them."""
    return list(
        await asyncio.gather(*(batcher.submit(m, r) for m, r in zip(models, requests, strict=True)))
    )


def batch_sizes(metrics: Metrics) -> tuple[float, float]:
    """(number of batches, requests in them) from the recsys_batch_size histogram."""
    count = metrics.registry.get_sample_value("recsys_batch_size_count")
    total = metrics.registry.get_sample_value("recsys_batch_size_sum")
    assert count is not None and total is not None
    return count, total


def batches_up_to(metrics: Metrics, size: int) -> float:
    value = metrics.registry.get_sample_value("recsys_batch_size_bucket", {"le": f"{size:.1f}"})
    assert value is not None
    return value


def assert_same_answer(got: Recommendation, expected: Recommendation) -> None:
    assert got.item_ids == expected.item_ids
    assert np.allclose(got.scores, expected.scores, rtol=1e-5)
    assert (got.model_version, got.strategy) == (expected.model_version, expected.strategy)
    assert got.unknown_history == expected.unknown_history
    assert got.unknown_candidates == expected.unknown_candidates


def test_concurrent_submits_are_batched_and_answer_exactly_as_one_at_a_time(v1_model):
    requests = varied_requests(50)
    metrics = Metrics()

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=0.02, metrics=metrics) as b:
            return await submit_all(b, [v1_model] * 50, requests)

    answers = run(scenario())

    assert {a.strategy for a in answers} == {"model", "popular"}  # both paths are covered
    for got, request in zip(answers, requests, strict=True):
        assert_same_answer(got, v1_model.recommend(request))
    n_batches, n_requests = batch_sizes(metrics)
    assert n_requests == 50
    assert batches_up_to(metrics, 1) < n_batches  # at least one batch held several requests
    # The batch was not full, so it waited for max_delay_s after the first request arrived.
    assert max(a.queue_s for a in answers) >= 0.015
    assert metrics.registry.get_sample_value("recsys_queue_duration_seconds_count") == 50


@pytest.mark.parametrize("max_batch_size", [1, 8])
def test_batches_never_exceed_max_batch_size(v1_model, max_batch_size):
    metrics = Metrics()

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(
            max_batch_size=max_batch_size, max_delay_s=0.02, metrics=metrics
        ) as b:
            return await submit_all(b, [v1_model] * 50, varied_requests(50, seed=1))

    assert len(run(scenario())) == 50
    n_batches, n_requests = batch_sizes(metrics)
    assert n_requests == 50
    assert n_batches >= math.ceil(50 / max_batch_size)
    assert batches_up_to(metrics, max_batch_size) == n_batches


def test_sparse_requests_do_not_wait_for_company_that_is_not_coming(v1_model):
    """Requests 0.25 s apart, max delay 0.1 s: the mean gap is longer than the wait could
    be, so each goes at once (a fixed delay would hold every one for 0.1 s)."""

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=0.1, metrics=Metrics()) as b:
            answers = []
            for request in varied_requests(4, seed=4):
                answers.append(await b.submit(v1_model, request))
                await asyncio.sleep(0.25)
            return answers

    answers = run(scenario())
    assert max(a.queue_s for a in answers) < 0.05


def test_requests_arriving_faster_than_the_delay_are_gathered(v1_model):
    """Requests 5 ms apart, max delay 0.1 s: the batcher waits, so they share batches."""
    metrics = Metrics()

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=0.1, metrics=metrics) as b:
            pending = []
            for request in varied_requests(20, seed=5):
                pending.append(asyncio.ensure_future(b.submit(v1_model, request)))
                await asyncio.sleep(0.005)
            return list(await asyncio.gather(*pending))

    assert len(run(scenario())) == 20
    n_batches, _ = batch_sizes(metrics)
    assert n_batches <= 5  # one at a time would be 20


def test_a_failing_batch_fails_its_own_requests_and_the_next_batch_works(v1_model):
    good = varied_requests(5, seed=2)
    # history=None makes the real model raise a TypeError (the route's validation never
    # lets such a request through): it poisons the one recommend_batch call it rides in.
    bad = RecRequest(history=None, k=3)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[Any], list[Recommendation]]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=0.02, metrics=Metrics()) as b:
            first = await asyncio.gather(
                *(b.submit(v1_model, r) for r in [*good, bad]), return_exceptions=True
            )
            second = await submit_all(b, [v1_model] * 5, good)
            return first, second

    first, second = run(scenario())
    assert all(isinstance(outcome, TypeError) for outcome in first)
    for got, request in zip(second, good, strict=True):
        assert_same_answer(got, v1_model.recommend(request))


def test_a_swap_while_requests_queue_answers_each_with_its_own_model(v1_model, v2_model):
    requests = varied_requests(20, seed=3)
    models = [v1_model if n % 2 == 0 else v2_model for n in range(20)]  # interleaved
    metrics = Metrics()

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=0.02, metrics=metrics) as b:
            return await submit_all(b, models, requests)

    answers = run(scenario())
    assert [a.model_version for a in answers] == [m.version for m in models]
    for got, model, request in zip(answers, models, requests, strict=True):
        assert_same_answer(got, model.recommend(request))
    assert batch_sizes(metrics) == (2, 20)  # one queue batch, one recommend_batch per model


def test_waiters_that_went_away_do_not_break_the_worker(v1_model):
    requests = varied_requests(10, seed=4)

    async def scenario() -> tuple[list[Any], Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=0.02, metrics=Metrics()) as b:
            tasks = [asyncio.create_task(b.submit(v1_model, r)) for r in requests]
            await asyncio.sleep(0.005)  # all queued; the batch waits for more
            for task in tasks[::2]:
                task.cancel()  # their clients disconnected
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            return outcomes, await b.submit(v1_model, requests[0])

    outcomes, after = run(scenario())
    for n, (outcome, request) in enumerate(zip(outcomes, requests, strict=True)):
        if n % 2 == 0:
            assert isinstance(outcome, asyncio.CancelledError)
        else:
            assert_same_answer(outcome, v1_model.recommend(request))
    assert_same_answer(after, v1_model.recommend(requests[0]))


def test_stop_answers_what_is_queued_then_refuses_new_requests(v1_model):
    requests = varied_requests(10, seed=5)

    async def scenario() -> list[Recommendation]:
        batcher = MicroBatcher(max_batch_size=4, max_delay_s=0.02, metrics=Metrics())
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(v1_model, r)) for r in requests]
        await asyncio.sleep(0)  # queued
        await batcher.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(v1_model, requests[0])
        return [t.result() for t in tasks]  # all done: stop waited for them

    for got, request in zip(run(scenario()), requests, strict=True):
        assert_same_answer(got, v1_model.recommend(request))


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(max_batch_size=0, max_delay_s=0.001, metrics=Metrics())
