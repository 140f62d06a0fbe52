from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.loading import load_model
from service.metrics import Metrics
from service.model import LoadedModel, Recommendation, RecRequest
from tests.conftest import V2
from tests.factories import make_bundle_dir, varied_requests

# The batch window of the tests about who waits: long, so that "went at once" (well under
# half of it) and "waited for the window" stay apart on a busy machine too.
WINDOW_S = 2.0


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
    """Requests 0.05 s apart, max delay 2 s: none is in flight while another waits, so each
    goes at once (a fixed delay would hold every one for the whole window)."""

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=WINDOW_S, metrics=Metrics()) as b:
            answers = []
            for request in varied_requests(4, seed=4):
                answers.append(await b.submit(v1_model, request))
                await asyncio.sleep(0.05)
            return answers

    answers = run(scenario())
    assert max(a.queue_s for a in answers) < WINDOW_S / 2


async def _arrive(b: MicroBatcher, model: LoadedModel, request: RecRequest, after_s: float):
    """A request as the HTTP path brings it: counted as arriving while it is being read
    (`after_s`), then submitted (`ArrivalMiddleware` does the counting in the app)."""
    with b.arriving():
        await asyncio.sleep(after_s)
        return await b.submit(model, request)


def test_a_batch_waits_for_requests_that_are_on_their_way(v1_model):
    """Ten requests in the app at once, reaching the batcher over 9 ms, max delay 2 s: the
    first waits for the others, so they share one batch."""
    metrics = Metrics()

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=WINDOW_S, metrics=metrics) as b:
            requests = varied_requests(10, seed=5)
            return list(
                await asyncio.gather(
                    *(_arrive(b, v1_model, r, 0.001 * n) for n, r in enumerate(requests))
                )
            )

    answers = run(scenario())
    assert batch_sizes(metrics) == (1, 10)
    assert max(a.queue_s for a in answers) < WINDOW_S / 2  # it went when the last one came


def test_a_sequential_caller_never_waits_for_company(v1_model):
    """One request at a time, back to back, max delay 2 s: nothing else can be coming while
    the caller waits for its answer, so none of them waits."""

    async def scenario() -> list[Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=WINDOW_S, metrics=Metrics()) as b:
            return [await _arrive(b, v1_model, r, 0) for r in varied_requests(20, seed=6)]

    assert max(a.queue_s for a in run(scenario())) < WINDOW_S / 2


def test_a_request_that_ends_without_submitting_releases_the_batch(v1_model):
    """A second request is in the app (say, answered from the cache) for 50 ms and never
    submits: the waiting batch goes when it ends, not at the 2 s max delay."""

    async def cache_hit(b: MicroBatcher) -> None:
        with b.arriving():
            await asyncio.sleep(0.05)

    async def scenario() -> tuple[Recommendation, bool]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=WINDOW_S, metrics=Metrics()) as b:
            waiting = asyncio.ensure_future(cache_hit(b))
            await asyncio.sleep(0)
            answer = await b.submit(v1_model, varied_requests(1)[0])
            ended_first = waiting.done()
            await waiting
            return answer, ended_first

    answer, ended_first = run(scenario())
    assert ended_first  # the batch waited for the request in the app ...
    assert answer.queue_s < WINDOW_S / 2  # ... until it ended, not for the whole window


def test_sequential_http_requests_do_not_wait_the_batch_window(client_for, make_settings, v1_dir):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, batch_max_delay_ms=WINDOW_S * 1000))
    for n in range(10):
        r = client.post("/recommend", json={"history": [f"i{n + 1}"], "k": 5})
        assert r.status_code == 200
    metrics = client.app.state.metrics  # type: ignore[attr-defined]
    total = metrics.registry.get_sample_value("recsys_queue_duration_seconds_sum")
    # Ten requests together wait less than half of one window; the old arrival-rate rule
    # held each of them for up to a whole window.
    assert total < WINDOW_S / 2
    assert client.app.state.batcher.arriving_count == 0  # type: ignore[attr-defined]


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

    async def slow_arrival(b: MicroBatcher, cancelled: asyncio.Event) -> Recommendation:
        """In the app until the cancellations are done: the batch waits for it meanwhile."""
        with b.arriving():
            await cancelled.wait()
            return await b.submit(v1_model, requests[1])

    async def scenario() -> tuple[list[Any], Recommendation]:
        async with MicroBatcher(max_batch_size=64, max_delay_s=WINDOW_S, metrics=Metrics()) as b:
            cancelled = asyncio.Event()
            slow = asyncio.create_task(slow_arrival(b, cancelled))
            tasks = [asyncio.create_task(b.submit(v1_model, r)) for r in requests]
            for _ in range(5):
                await asyncio.sleep(0)  # all queued; the batch waits for the slow one
            for task in tasks[::2]:
                task.cancel()  # their clients disconnected
            cancelled.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            await slow
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
