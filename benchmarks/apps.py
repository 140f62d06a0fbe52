"""The serving benchmark's own servers, next to the real service (`benchmarks/serve.py`).

    # the framework ceiling: the real app plus POST /bench/constant
    BOOTSTRAP_BUNDLE=... python -m uvicorn --factory benchmarks.apps:ceiling_app
    # the naive baseline: the teacher in PyTorch fp32, one request at a time
    NAIVE_BUNDLE=bundle-dir [NAIVE_CHECKPOINT=teacher.pt] python -m uvicorn --factory \\
        benchmarks.apps:naive_app

`ceiling_app` is `service.main.create_app` (same middleware, same lifespan, same bundle
loaded) with one more route that parses and validates the body exactly as /recommend does
(`service.routes.recommend.recommend_body`) and answers a constant of the same size: the
most any model could get out of this HTTP stack on one core.

`naive_app` is what one would write without this project: the teacher SASRec in PyTorch
fp32 (`torch.set_num_threads(1)`), one request at a time behind a lock, the full catalog
scored with a matmul against the item embedding, seen items masked, `torch.topk`. Same body
parsing, same answer shape. torch is imported only when `naive_app` builds its
`NaiveTeacher`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, FastAPI
from starlette.responses import Response

from service.main import create_app
from service.responses import OrjsonResponse
from service.routes.recommend import recommend_body
from service.schemas import RecommendRequest
from service.settings import get_settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONSTANT_PATH = "/bench/constant"
Body = Annotated[RecommendRequest, Depends(recommend_body)]


def _bundle_vocab_and_version(bundle_dir: Path | None) -> tuple[list[str], str]:
    if bundle_dir is None or not (bundle_dir / "manifest.json").is_file():
        return [], "bench"
    manifest = orjson.loads((bundle_dir / "manifest.json").read_bytes())
    vocab = orjson.loads((bundle_dir / "vocab.json").read_bytes())
    return [v for v in vocab if v], str(manifest.get("model_version", "bench"))


def constant_answer(vocab: list[str], model_version: str, k: int = 10) -> bytes:
    """A /recommend answer of the usual size: `k` catalog IDs with full-precision scores."""
    ids = vocab[:k] if len(vocab) >= k else [f"item-{i:06d}" for i in range(k)]
    return orjson.dumps(
        {
            "items": [
                {"item_id": i, "score": 6.3239617347717285 - 0.1 * n} for n, i in enumerate(ids)
            ],
            "model_version": model_version,
            "strategy": "model",
            "unknown_history": 0,
            "unknown_candidates": 0,
        }
    )


def ceiling_app() -> FastAPI:
    """`create_app()` plus POST /bench/constant (same body parsing, constant answer)."""
    settings = get_settings()
    app = create_app(settings)
    vocab, version = _bundle_vocab_and_version(settings.bootstrap_bundle)
    answer = constant_answer(vocab, version)

    @app.post(CONSTANT_PATH, include_in_schema=False)
    async def constant(body: Body) -> Response:
        # Parsed and validated like /recommend; the model is never asked. async: no thread hop.
        return Response(answer, media_type="application/json")

    return app


class NaiveTeacher:
    """The teacher SASRec in PyTorch fp32, 1 thread, one request at a time behind a lock: the
    whole catalog scored with a matmul, seen items masked, `torch.topk`."""

    def __init__(self, bundle_dir: Path, checkpoint: Path | None) -> None:
        import numpy as np
        import torch

        from benchmarks.serve_bundles import architecture_for, model_for
        from bundle import read_bundle

        torch.set_num_threads(1)
        b = read_bundle(bundle_dir)
        config, _ = architecture_for(b.manifest.model_dump(mode="json"), "teacher")
        self.model, _ = model_for(config, checkpoint)
        self.vocab = b.vocab
        self.index = {item: i for i, item in enumerate(self.vocab) if i > 0}
        self.popularity = torch.as_tensor(np.asarray(b.popularity, dtype=np.float32))
        self.popularity[0] = -float("inf")
        self.max_len = self.model.config.max_len
        self.version = f"{b.version}-naive-teacher"
        self.lock = threading.Lock()

    def _scores(self, history: list[int]) -> tuple[torch.Tensor, str]:
        """Every item's score for `history` (popularity when it is empty), and the strategy."""
        import torch

        if not history:
            return self.popularity.clone(), "popular"
        seq = torch.tensor([history[-self.max_len :]], dtype=torch.long)  # (1, T)
        user = self.model(seq)[0]  # (C,)
        scores = self.model.item_matrix() @ user  # (N,) the whole catalog
        scores[0] = -float("inf")
        return scores, "model"

    def answer(self, body: RecommendRequest) -> dict[str, Any]:
        """A /recommend answer of the service's shape."""
        import torch

        history = [self.index[i] for i in body.history if i in self.index]
        cands = None
        if body.candidates is not None:
            cands = torch.tensor(
                [self.index[i] for i in body.candidates if i in self.index], dtype=torch.long
            )
        with self.lock, torch.inference_mode():
            scores, strategy = self._scores(history)
            banned = [self.index[i] for i in body.exclude if i in self.index]
            if body.exclude_seen:
                banned += history
            if banned:
                scores[torch.tensor(banned, dtype=torch.long)] = -float("inf")
            ids = cands if cands is not None else torch.arange(len(self.vocab))
            pool = scores[ids]
            top = torch.topk(pool, min(body.k, int(torch.isfinite(pool).sum())))
            rows, values = ids[top.indices].tolist(), top.values.tolist()
        return {
            "items": [
                {"item_id": self.vocab[r], "score": v} for r, v in zip(rows, values, strict=True)
            ],
            "model_version": self.version,
            "strategy": strategy,
            "unknown_history": len(body.history) - len(history),
            "unknown_candidates": 0 if body.candidates is None else len(body.candidates) - len(ids),
        }


def naive_app() -> FastAPI:
    """The teacher in PyTorch fp32, one request at a time (env NAIVE_BUNDLE, NAIVE_CHECKPOINT)."""
    checkpoint = os.environ.get("NAIVE_CHECKPOINT")
    teacher = NaiveTeacher(
        Path(os.environ["NAIVE_BUNDLE"]), Path(checkpoint) if checkpoint else None
    )
    app = FastAPI(title="naive teacher (PyTorch fp32)", default_response_class=OrjsonResponse)
    app.state.settings = get_settings()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready", "model_version": teacher.version}

    @app.post("/recommend")
    def recommend(body: Body) -> OrjsonResponse:
        return OrjsonResponse(teacher.answer(body))

    return app
