"""`WORKERS=2`: two serving processes on one port, sharing the model directory; an admin
change made through either reaches both, with the embedded store and with Redis."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, service_process

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def serving_by_worker(url: str, expect: str, *, timeout_s: float = 60) -> dict[int, str]:
    """What each worker serves, asked over fresh connections (the kernel hands each to one
    of the workers) until two workers answered and both serve `expect`."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with httpx.Client(headers={**HEADERS, "Connection": "close"}) as client:
            status = client.get(f"{url}/admin/status").json()
        seen[status["pid"]] = status["serving"]
        if len(seen) >= 2 and set(seen.values()) == {expect}:
            break
        time.sleep(0.02)
    return seen


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_a_swap_and_a_rollback_reach_every_worker(
    tmp_path: Path, v1_dir: Path, v2_archive: bytes, store: str, request: pytest.FixtureRequest
) -> None:
    env = {
        "WORKERS": "2",
        "MODEL_DIR": str(tmp_path / "models"),
        "BOOTSTRAP_BUNDLE": str(v1_dir),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "FLEET_POLL_S": "0.2",
    }
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
        env["REDIS_KEY_PREFIX"] = request.getfixturevalue("redis_prefix")
    with service_process(env) as url:
        before = serving_by_worker(url, "v1")
        assert len(before) == 2 and set(before.values()) == {"v1"}, before
        with httpx.Client(headers=HEADERS, timeout=30) as admin:
            r = admin.post(
                f"{url}/admin/bundles",
                content=v2_archive,
                headers={"Content-Type": "application/gzip"},
            )
            assert r.status_code == 201, r.text
            assert admin.post(f"{url}/admin/bundles/v2/activate").status_code == 200
            swapped = serving_by_worker(url, "v2")
            assert len(swapped) == 2 and set(swapped.values()) == {"v2"}, swapped
            assert admin.post(f"{url}/admin/rollback").status_code == 200
            back = serving_by_worker(url, "v1")
            assert len(back) == 2 and set(back.values()) == {"v1"}, back
