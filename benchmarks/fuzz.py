"""Fuzz the HTTP API from its own OpenAPI schema with schemathesis: every operation gets
`examples` generated requests (derandomized: the same requests every run), and every answer
is checked for a 5xx and against the response schema the API documents. Both of schemathesis'
generation modes run: positive (requests the schema allows) and negative (requests it
forbids: wrong types, missing or extra fields, out-of-range numbers), `examples` each.

    from benchmarks.fuzz import run_fuzz
    run_fuzz("http://localhost:8000", 50, token=os.environ["ADMIN_TOKEN"])  # a running service
    run_fuzz(app, 50, token=...)   # a FastAPI app in process (its lifespan is started for it)

Returns {"cases", "server_errors", "schema_violations", "operations", "statuses" (per
operation, how many answers of each status code), "failures": [...]};
`tests/service/test_fuzz.py` runs it against the app and demands zero of both. Failures are
recorded, not raised, so the count covers the whole run (hypothesis does not shrink).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypedDict

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

SERVER_ERROR = "server_error"
SCHEMA_VIOLATION = "schema_violation"


def _load(target: Any) -> Any:
    if isinstance(target, str):
        return schemathesis.openapi.from_url(target.rstrip("/") + "/openapi.json")
    return schemathesis.openapi.from_asgi("/openapi.json", target)


class FuzzFailure(TypedDict):
    operation: str
    status: int
    request: str  # as a curl command
    error: str
    body: str


class FuzzResult(TypedDict):
    cases: int
    server_errors: int
    schema_violations: int  # answers below 500 that do not match the documented schema
    operations: list[str]
    statuses: dict[str, dict[int, int]]  # per operation, answers per status code
    failures: list[FuzzFailure]  # the first MAX_FAILURES


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
MAX_FAILURES = 50  # failures recorded in full; the counts cover every case


@dataclass
class _Run:
    """What a fuzz run found so far."""

    base_url: str | None
    headers: dict[str, str]
    examples: int
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[FuzzFailure] = field(default_factory=list)

    def check(self, label: str, case: Any, seen: Counter[int]) -> None:
        """Send one case, count its status, check the answer against the schema."""
        self.counts["cases"] += 1
        response = case.call(base_url=self.base_url, headers=self.headers)
        seen[response.status_code] += 1
        if response.status_code >= 500:
            self.counts[SERVER_ERROR] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=self.headers)
        except (Failure, FailureGroup) as e:
            if response.status_code < 500:
                self.counts[SCHEMA_VIOLATION] += 1
            if len(self.failures) < MAX_FAILURES:
                self.failures.append(
                    {
                        "operation": label,
                        "status": response.status_code,
                        "request": case.as_curl_command(headers=self.headers),
                        "error": str(e).strip()[:500],
                        "body": response.text[:300],
                    }
                )

    def fuzz(self, label: str, strategy: Any, seen: Counter[int]) -> None:
        """`examples` derandomized cases of `strategy`, each checked."""

        @hypothesis.given(case=strategy)
        @hypothesis.settings(
            max_examples=self.examples,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def one(case: Any) -> None:
            self.check(label, case, seen)

        one()


def run_fuzz(target: Any, examples: int = 50, *, token: str | None = None) -> FuzzResult:
    """Fuzz every operation of `target` (a base URL or an ASGI app) with `examples` cases."""
    schema = _load(target)
    run = _Run(
        base_url=target.rstrip("/") if isinstance(target, str) else None,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        examples=examples,
    )
    operations = []
    statuses: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)
        seen = statuses.setdefault(operation.label, Counter())
        # Valid requests, then requests that break the schema (wrong types, missing fields).
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Unsatisfiable: nothing to break in an operation without parameters or body.
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                run.fuzz(operation.label, operation.as_strategy(mode), seen)
    return {
        "cases": run.counts["cases"],
        "server_errors": run.counts[SERVER_ERROR],
        "schema_violations": run.counts[SCHEMA_VIOLATION],
        "operations": operations,
        "statuses": {op: dict(sorted(c.items())) for op, c in statuses.items()},
        "failures": run.failures,
    }
