"""Dynamic micro-batching: concurrent requests share one encoder call.

Like Triton's dynamic batcher
(https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/model_configuration.html#dynamic-batcher):
`submit` puts a request on a queue and awaits its answer; one worker task

1. waits for the first request,
2. takes whatever else is already queued, up to `max_batch_size`,
3. if the batch is not full, waits for more until `max_delay_s` after the first request
   arrived, but only while other requests are actually on their way: in the app (being
   read, validated, looked up in the answer cache: `ArrivalMiddleware` counts them) and not
   queued yet. Before deciding that none is, it gives the event loop a few turns to read
   what the sockets hold. A caller that sends one request at a time therefore never waits
   (nothing else can be coming while it waits for its answer), and a lone request at low
   load goes at once; under load the batch gathers whoever is in flight,
4. runs the batch with one `LoadedModel.recommend_batch` call per model object, right on
   the event loop. Requests that arrive meanwhile wait in the socket buffers and are read
   as soon as the batch is answered, which is what forms the next batch under load.

Why not a worker thread: the batch's Python work (ID lookups, building answers) and the event
loop's (HTTP parsing) then fight over the GIL, and each hand-over can wait for the
interpreter's 5 ms switch interval (`docs/decisions/2026-12-06-batching-waits-only-for-
requests-in-flight.md` keeps the measurement). `make bench-serve` measures the result end to
end.

A request carries the model it started with (read once by the route): if a swap happens while
requests are queued, one batch holds several model objects and is split into one call per
model, so every request is answered by, and names, its own version.

An exception in `recommend_batch` fails only the requests of that call, with that exception;
a waiter that went away (its client disconnected, so its future is cancelled) is skipped.
Neither ever stops the worker. `max_batch_size=1` turns batching off: one request per call.

Why wait at all: on this project's 2-core machines a batch's fixed cost dominates at
moderate load: between batches the item matrix and the encoder's weights leave the caches,
so every onnxruntime call starts cold, and fewer, bigger calls pay that less often
(`make bench-serve` compares shipped against the ceiling app, which never batches).

    async with MicroBatcher(max_batch_size=32, max_delay_s=0.008, metrics=metrics) as batcher:
        rec = await batcher.submit(model, RecRequest(history=["i1"], k=10))
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from service.metrics import Metrics
from service.model import LoadedModel, Recommendation, RecRequest

# Event-loop turns given to the sockets before a batch decides nobody else is coming: a
# request in the socket buffers reaches the app (and is counted) within a turn or two.
READ_TURNS = 3
# The request being handled in this task, while it has not reached the queue: [True] until
# it does (`MicroBatcher.arriving`, `submit`).
_ARRIVING: ContextVar[list[bool] | None] = ContextVar("recsys_arriving", default=None)
_WAKE = object()  # queued when an arriving request ends without a submit: re-check at once


@dataclass(frozen=True)
class _Pending:
    model: LoadedModel
    request: RecRequest
    future: asyncio.Future[Recommendation]
    arrived: float  # time.perf_counter() at submit


class MicroBatcher:
    def __init__(self, *, max_batch_size: int, max_delay_s: float, metrics: Metrics) -> None:
        if max_batch_size < 1 or max_delay_s < 0:
            raise ValueError(
                f"max_batch_size must be >= 1 and max_delay_s >= 0, "
                f"got {max_batch_size} and {max_delay_s}"
            )
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._metrics = metrics
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # _Pending, or _WAKE
        self._worker: asyncio.Task[None] | None = None
        self._arriving = 0  # requests in the app that have not reached the queue yet

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker task (call from inside the running event loop)."""
        if self._worker is not None:
            raise RuntimeError("the batcher is already running")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="recsys-batcher")

    async def stop(self) -> None:
        """Answer what is already queued, then end the worker."""
        worker = self._worker
        if worker is None:
            return
        self._worker = None  # submit refuses new requests from here on
        await self._queue.join()  # every queued request answered (or failed)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- request path ---------------------------------------------------------------------

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count the request this task handles as on its way to the queue until it submits
        (or ends without: a cache hit, a refused body); batches wait only for such ones."""
        state = [True]
        self._arriving += 1
        token = _ARRIVING.set(state)
        try:
            yield
        finally:
            _ARRIVING.reset(token)
            if state[0]:
                self._arriving -= 1
                self._queue.put_nowait(_WAKE)  # a batch waiting for it stops waiting

    @property
    def arriving_count(self) -> int:
        return self._arriving

    async def submit(self, model: LoadedModel, request: RecRequest) -> Recommendation:
        """The answer of `model` to `request`, computed in a batch with concurrent requests."""
        if self._worker is None:
            raise RuntimeError("the batcher is not running")
        state = _ARRIVING.get()
        if state is not None and state[0]:
            state[0] = False
            self._arriving -= 1
        future: asyncio.Future[Recommendation] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(model, request, future, time.perf_counter()))
        # Cancelling this await (the client went away) cancels the future; the worker skips it.
        return await future

    # --- the worker -----------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._run(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            # Let the loop read the sockets (and the answered requests respond) before the
            # next batch, even when more requests are already queued.
            await asyncio.sleep(0)

    async def _next_batch(self) -> list[_Pending]:
        batch = [await self._get()]
        deadline = batch[0].arrived + self.max_delay_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():  # already queued: take it without waiting
                self._take(self._queue.get_nowait(), batch)
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not await self._others_arriving():
                break
            try:
                # asyncio.timeout, not wait_for: no extra task per wait
                async with asyncio.timeout(deadline - time.perf_counter()):
                    self._take(await self._queue.get(), batch)
            except TimeoutError:
                break
        return batch

    async def _get(self) -> _Pending:
        """The next queued request (wake-ups skipped)."""
        while True:
            item = await self._queue.get()
            if item is not _WAKE:
                pending: _Pending = item
                return pending
            self._queue.task_done()

    def _take(self, item: Any, batch: list[_Pending]) -> None:
        if item is _WAKE:
            self._queue.task_done()
        else:
            batch.append(item)

    async def _others_arriving(self) -> bool:
        """Whether another request is on its way to the queue, after giving the event loop
        `READ_TURNS` turns to read the sockets."""
        for _ in range(READ_TURNS):
            if self._arriving > 0 or not self._queue.empty():
                return True
            await asyncio.sleep(0)
        return self._arriving > 0 or not self._queue.empty()

    async def _run(self, batch: list[_Pending]) -> None:
        """One `recommend_batch` call per model object; each future gets its own answer."""
        by_model: dict[LoadedModel, list[_Pending]] = {}  # keyed by identity, in arrival order
        for p in batch:
            if not p.future.done():  # a cancelled waiter needs no answer
                by_model.setdefault(p.model, []).append(p)
        for model, group in by_model.items():
            started = time.perf_counter()
            try:
                recs = model.recommend_batch([p.request for p in group])
                answers = [
                    rec._replace(queue_s=started - p.arrived)
                    for p, rec in zip(group, recs, strict=True)
                ]
            except Exception as e:  # the requests of this call fail, the worker goes on
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self._metrics.batch_size.observe(len(group))
            if any(a.strategy == "model" for a in answers):  # the encoder ran
                self._metrics.inference.observe(answers[0].inference_s)
            for p, answer in zip(group, answers, strict=True):
                self._metrics.queue.observe(answer.queue_s)
                if not p.future.done():
                    p.future.set_result(answer)


class ArrivalMiddleware:
    """Counts each `POST /recommend` as arriving from the moment the server hands it to the
    app until it reaches the batcher (`MicroBatcher.arriving`): the company a batch may wait
    for. The batcher is read from `app.state.batcher` per request (it starts with the app)."""

    def __init__(self, app: Any, *, path: str = "/recommend") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        batcher = getattr(scope["app"].state, "batcher", None) if "app" in scope else None
        if scope["type"] != "http" or scope["path"] != self.path or batcher is None:
            await self.app(scope, receive, send)
            return
        with batcher.arriving():
            await self.app(scope, receive, send)
