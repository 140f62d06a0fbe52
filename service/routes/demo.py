"""The storefront demo page: GET /demo and the sample histories it offers.

    make serve    # then open http://localhost:8000/demo

/demo is one self-contained HTML file (service/static/demo.html: inline CSS and JS, nothing
from another origin, which its Content-Security-Policy enforces), read once. The page calls
the public API like any client: POST /recommend on its Shop tab; on its Admin tab, with the
token pasted there, the admin API: the versions with each one's own NDCG@10 / HR@10 from
its manifest (GET /admin/bundles), canary state (GET /admin/status), the catalog summary
(GET /admin/catalog), upload (POST /admin/bundles), activate or canary (POST /admin/activate),
promote, abort (POST /admin/canary/...) and rollback (POST /admin/rollback).
GET /demo/samples gives it a few browsing histories from the serving model's vocabulary.
DEMO_ENABLED=false leaves both routes out (404). Neither is part of the OpenAPI schema.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.deps import RegistryDep
from service.errors import NoModelLoaded
from service.schemas import DemoSamplesOut, SampleHistory

router = APIRouter(prefix="/demo", tags=["demo"], include_in_schema=False)

# Everything the page needs is inline; it may only talk back to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SAMPLE_SHOPPERS = 4
SAMPLE_LENGTH = 4


@functools.cache
def page() -> bytes:
    return (files("service") / "static" / "demo.html").read_bytes()


@router.get("", summary="The storefront demo page", response_class=HTMLResponse)
async def demo_page() -> HTMLResponse:
    """The page itself: one HTML file, nothing from another origin."""
    return HTMLResponse(
        page(),
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


def sample_histories(vocab: Sequence[str]) -> list[SampleHistory]:
    """A few histories of distinct items spread over the catalog, and an empty one (a new
    visitor, answered from popularity). `vocab[0]` is the padding entry."""
    n_items = len(vocab) - 1
    per_sample = min(SAMPLE_LENGTH, max(1, n_items // SAMPLE_SHOPPERS))
    step = max(1, n_items // (SAMPLE_SHOPPERS * per_sample))
    out = []
    for shopper in range(min(SAMPLE_SHOPPERS, n_items)):
        picks = [1 + (shopper + j * SAMPLE_SHOPPERS) * step for j in range(per_sample)]
        history = [vocab[i] for i in picks if i <= n_items]
        out.append(SampleHistory(name=f"Shopper {chr(ord('A') + shopper)}", history=history))
    out.append(SampleHistory(name="New visitor (no history)", history=[]))
    return out


@router.get("/samples", summary="Sample histories for the demo page")
async def samples(registry: RegistryDep) -> DemoSamplesOut:
    """A few browsing histories from the serving model's vocabulary (503 without a model)."""
    model = registry.current
    if model is None:
        raise NoModelLoaded()
    return DemoSamplesOut(model_version=model.version, histories=sample_histories(model.vocab))
