"""What a shopper gets: answers and their cost measured through the service's own code.

Offline metrics score the exported encoder against the item matrix in a harness of their own;
this module instead runs the service's loader (`service.loading.load_model`, with the options
the service derives from its default `Settings`) and its request path
(`LoadedModel.recommend_batch`, in micro-batches of the service's size), so a benchmark
measures exactly the item lists `POST /recommend` returns, popularity fallback, banned seen
items and int8 scoring included.

    from benchmarks.service_eval import measure_e2e, ranks_from_answers, service_answers

    answers = service_answers(bundle_dir, histories, k=10)  # item IDs, best first
    ranks = ranks_from_answers(answers, targets)  # 0-based, -1 = not in the top k
    hr_at_10 = float((ranks >= 0).mean())

`measure_e2e` times one whole answer (encoder, then the catalog scorer) the way
`models.evaluate.measure_latency` times the encoder alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from service.loading import load_model
from service.model import LoadedModel, ModelOptions, RecRequest
from service.schemas import RecommendRequest
from service.scorer import CatalogScorer
from service.settings import Settings

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


class _DefaultSettings(Settings):
    """`Settings` from its declared defaults only. `Settings(_env_file=None)` still reads
    environment variables (SCORING_PRECISION, BATCH_MAX_SIZE, ...), which would silently
    change what a benchmark measures from one shell to the next."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def default_settings() -> Settings:
    """The service's settings when nothing is configured (no environment, no .env file)."""
    return _DefaultSettings()


def service_options() -> ModelOptions:
    """The `ModelOptions` the service loads bundles with under its default settings
    (tests/benchmarks/test_service_eval.py checks them against what the running app passes
    to `load_model`)."""
    return ModelOptions.from_settings(default_settings())


def _service_request(row: int, history: Sequence[str], k: int, settings: Settings) -> RecRequest:
    """The `RecRequest` that `POST /recommend` builds for the body {"history": ..., "k": k}:
    the body's schema defaults (exclude_seen, no candidates, nothing excluded) and the
    route's limits, so a request the service would refuse with 422 is refused here too."""
    if isinstance(history, str):  # a str is a Sequence[str]: its characters are not IDs
        raise TypeError(f"history {row} is a str, expected a sequence of item IDs")
    try:
        body = RecommendRequest.model_validate({"history": list(history), "k": k})
    except ValidationError as e:
        raise ValueError(f"history {row}: the service would refuse this request: {e}") from e
    if len(body.history) > settings.max_history:
        raise ValueError(
            f"history {row} has {len(body.history)} items; the service refuses more than "
            f"{settings.max_history} (MAX_HISTORY): pass the most recent ones"
        )
    if body.k > settings.max_k:
        raise ValueError(f"k is {body.k}; the service refuses more than {settings.max_k}")
    # Built exactly as service.routes.recommend builds it from the parsed body.
    return RecRequest(
        history=body.history,
        k=body.k,
        candidates=body.candidates,
        exclude=body.exclude,
        exclude_seen=body.exclude_seen,
    )


def service_answers(
    bundle: Path | LoadedModel,
    histories: Sequence[Sequence[str]],
    *,
    k: int,
    batch_size: int | None = None,
) -> list[list[str]]:
    """The item IDs, best first, that the service answers for each history (external IDs,
    most recent last) sent as {"history": h, "k": k}, run in micro-batches of `batch_size`
    (default: the service's `batch_max_size`) through `LoadedModel.recommend_batch`.
    `bundle`: a bundle directory (loaded as the service loads it) or a model so loaded.

    Unknown IDs are dropped and a history with none known gets the popularity fallback,
    as in the service; an answer is shorter than k only when fewer items are allowed."""
    settings = default_settings()
    size = settings.batch_max_size if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    requests = [_service_request(r, h, k, settings) for r, h in enumerate(histories)]
    model = load_model(bundle, service_options()) if isinstance(bundle, Path) else bundle
    answers: list[list[str]] = []
    for start in range(0, len(requests), size):
        answers.extend(
            rec.item_ids for rec in model.recommend_batch(requests[start : start + size])
        )
    return answers


def ranks_from_answers(answers: Sequence[Sequence[str]], targets: Sequence[str]) -> I64:
    """0-based position of each target in its answer, -1 where the answer lacks it."""
    if len(answers) != len(targets):
        raise ValueError(f"{len(answers)} answers but {len(targets)} targets")
    ranks = np.full(len(targets), -1, dtype=np.int64)
    for row, (answer, target) in enumerate(zip(answers, targets, strict=True)):
        if target in answer:
            ranks[row] = list(answer).index(target)
    return ranks


def measure_e2e(
    encode: Callable[[I64], F32],
    scorer: CatalogScorer,
    inputs: I64,
    banned: Sequence[Sequence[int]],
    *,
    k: int = 10,
    budget_s: float = 0.3,
) -> dict[str, float]:
    """µs per whole answer: `encode` then `scorer.top_k`, as `LoadedModel.recommend_batch`
    computes a full-catalog answer (without its per-request Python: ID lookups, answer
    records). `inputs` (n, L) are left-padded item indices, `banned[i]` the catalog rows
    row i must not get (its history). Median of timed repeats, as
    `models.evaluate.measure_latency`: "e2e_us_b1" per call at batch 1, "e2e_us_b32" per
    row at batch 32."""
    if len(inputs) != len(banned):
        raise ValueError(f"{len(inputs)} input rows but {len(banned)} banned lists")
    if len(inputs) == 0:
        raise ValueError("no input rows to time")
    if len(inputs) < 32:  # repeat rows, as measure_latency does; each keeps its banned list
        n = len(inputs)
        inputs = np.resize(inputs, (32, inputs.shape[1]))
        banned = [banned[r % n] for r in range(32)]
    out: dict[str, float] = {}
    for batch, key in ((1, "e2e_us_b1"), (32, "e2e_us_b32")):
        x = np.ascontiguousarray(inputs[:batch])
        rows = list(banned[:batch])
        scorer.top_k(encode(x), rows, k)  # warm-up
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
            t0 = time.perf_counter()
            scorer.top_k(encode(x), rows, k)
            times.append(time.perf_counter() - t0)
        out[key] = float(np.median(times) * 1e6 / batch)
    return out
