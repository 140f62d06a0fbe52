from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.serving import BUCKETS, Serving, bucket, in_canary
from tests.conftest import ROOT


def test_bucket_is_stable_across_processes():
    """sha256, not Python's salted hash(): another interpreter places users identically."""
    users = [f"user-{i}" for i in range(20)]
    code = f"from service.serving import bucket\nprint([bucket(u) for u in {users!r}])\n"
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([bucket(u) for u in users])
    assert all(0 <= b < BUCKETS for b in (bucket(u) for u in users))


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_sticky_split_is_close_to_the_percent_over_1000_users(percent):
    share = sum(in_canary(f"user-{i}", percent) for i in range(1000)) / 1000
    assert abs(share - percent / 100) < 0.04


def test_a_user_always_lands_on_the_same_side():
    assert all(in_canary(f"u{i}", 30) == in_canary(f"u{i}", 30) for i in range(500))


def test_growing_the_canary_keeps_its_users():
    small = {i for i in range(1000) if in_canary(f"u{i}", 10)}
    large = {i for i in range(1000) if in_canary(f"u{i}", 30)}
    assert small <= large


def test_requests_without_user_id_are_split_at_random():
    share = sum(in_canary(None, 20) for _ in range(5000)) / 5000
    assert abs(share - 0.2) < 0.03
    assert not any(in_canary(None, 0) for _ in range(100))


def test_serving_picks_the_canary_only_for_its_share():
    stable, canary = object(), object()
    serving = Serving(stable=stable, canary=canary, canary_percent=25)  # type: ignore[arg-type]
    picks = [serving.pick(f"u{i}") for i in range(1000)]
    assert {id(p) for p in picks} == {id(stable), id(canary)}
    assert Serving(stable=stable).pick("u1") is stable  # type: ignore[arg-type]
