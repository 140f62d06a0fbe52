"""Upload the malicious-bundle corpus to a running service and report what it refused.

    from benchmarks.hostile import run_malicious_corpus
    report = run_malicious_corpus("http://localhost:8000", os.environ["ADMIN_TOKEN"],
                                  gates=("accuracy", "latency"))

The corpus (`testkit.hostile.hostile_corpus`: unsafe archives, checksum / signature /
vocabulary / NaN / golden / pickle / popularity cases, and one case per optional gate) is
built in a temporary directory with fresh version names, so a run never collides with an
earlier one. The optional-gate cases are only tried for the gates named in `gates`, i.e. the
ones the service was started with (GATE_MAX_NDCG_DROP, GATE_MAX_LATENCY_MS): against a
service without them those bundles are valid and would be installed. The accuracy case claims
a tenth of the serving version's `metric`; it is skipped when the serving manifest has none.

Returns {"tried", "rejected" (answered 4xx), "reason_matched" (4xx naming the expected
reason), "serving_version_changed", "installed_changed", "skipped": [names], "cases":
[{"name", "gate", "status", "reason", "expected", "matched"}]}. Only 4xx counts as a
rejection: a 5xx is a bug even when nothing was installed.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypedDict

import httpx

from testkit.hostile import HostileCase, hostile_corpus

DEFAULT_METRIC = "test_ndcg@10"


class CaseResult(TypedDict):
    name: str
    gate: str
    status: int
    reason: str  # the answer's detail, cut to 500 characters
    expected: str  # what the refusal must name
    matched: bool  # a 4xx naming it


class CorpusResult(TypedDict):
    tried: int
    rejected: int  # answered 4xx
    reason_matched: int
    serving_version_changed: bool
    installed_changed: bool
    skipped: list[str]
    cases: list[CaseResult]


def _state(client: httpx.Client, headers: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    r = client.get("/admin/active", headers=headers)
    r.raise_for_status()
    body = r.json()
    return body["version"], body.get("manifest") or {}


def _installed(client: httpx.Client, headers: dict[str, str]) -> list[str]:
    r = client.get("/admin/bundles", headers=headers)
    r.raise_for_status()
    return sorted(v["version"] for v in r.json()["versions"])


def _corpus(
    gates: Collection[str], metric: str, manifest: dict[str, Any]
) -> tuple[list[HostileCase], list[str]]:
    """The corpus under fresh version names, and the names of the cases left out: the
    optional-gate cases of gates the service does not have on."""
    value = (manifest.get("metrics") or {}).get(metric)
    serving_metric = (metric, float(value)) if "accuracy" in gates and value else None
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        corpus = hostile_corpus(
            Path(tmp), prefix=f"hostile-{uuid.uuid4().hex[:8]}", serving_metric=serving_metric
        )
    skipped = [c.name for c in corpus if c.gate != "mandatory" and c.gate not in gates]
    if serving_metric is None:  # the corpus then has no accuracy case at all
        skipped.append("accuracy_gate")
    return corpus, skipped


def _upload(http: httpx.Client, headers: dict[str, str], case: HostileCase) -> CaseResult:
    """Upload one case; its answer, and whether it was a 4xx naming the expected reason."""
    r = http.post(
        "/admin/bundles",
        content=case.archive,
        headers={**headers, "Content-Type": "application/gzip"},
    )
    try:
        reason = str(r.json().get("detail", r.text))
    except ValueError:
        reason = r.text
    return {
        "name": case.name,
        "gate": case.gate,
        "status": r.status_code,
        "reason": reason[:500],
        "expected": case.reason,
        "matched": 400 <= r.status_code < 500 and case.reason in reason,
    }


def run_malicious_corpus(
    base_url: str,
    token: str,
    *,
    gates: Collection[str] = (),
    metric: str = DEFAULT_METRIC,
    client: httpx.Client | None = None,
    timeout_s: float = 300.0,
) -> CorpusResult:
    """Upload every case of the corpus to `base_url`'s admin API; see the module docstring.

    `client` (e.g. a started `fastapi.testclient.TestClient`) replaces the HTTP client; the
    paths are then relative to its own base URL."""
    own = client is None
    http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        before, manifest = _state(http, headers)
        installed_before = _installed(http, headers)
        corpus, skipped = _corpus(gates, metric, manifest)
        cases = [_upload(http, headers, case) for case in corpus if case.name not in skipped]
        after, _ = _state(http, headers)
        installed_after = _installed(http, headers)
    finally:
        if own:
            http.close()
    return {
        "tried": len(cases),
        "rejected": sum(1 for c in cases if 400 <= c["status"] < 500),
        "reason_matched": sum(1 for c in cases if c["matched"]),
        "serving_version_changed": after != before,
        "installed_changed": installed_after != installed_before,
        "skipped": skipped,
        "cases": cases,
    }
