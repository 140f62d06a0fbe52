"""benchmarks/model_cost.py: the model's CPU time per request, by batch size."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import model_cost
from tests.factories import make_bundle_dir


def test_reports_every_batch_size_with_its_parts(tmp_path: Path) -> None:
    bundle = make_bundle_dir(tmp_path / "bundle")
    out = tmp_path / "model-cost.json"

    rc = model_cost.main(
        [
            "--bundle",
            str(bundle),
            "--data",
            str(tmp_path / "absent.txt"),
            "--reps",
            "1",
            "--out",
            str(out),
        ]
    )

    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["batch"] for r in rows] == list(model_cost.BATCHES)
    for r in rows:
        assert r["request_us"] > 0 and r["encoder_us"] > 0 and r["top_k_us"] > 0
        cold = [r["cold_request_us"], r["cold_encoder_us"], r["cold_top_k_us"]]
        if r["batch"] in model_cost.COLD_BATCHES:
            assert all(c is not None and c > 0 for c in cold)
        else:
            assert cold == [None, None, None]
    # Batching amortizes the per-call costs: a request in a batch of 32 costs less than alone.
    by_batch = {r["batch"]: r for r in rows}
    assert by_batch[32]["request_us"] < by_batch[1]["request_us"]
    assert result["cpu"] and result["bundle"] == str(bundle)
    assert result["evict_bytes"] >= model_cost.EVICT_MIN


def test_evicts_twice_the_l3_within_bounds() -> None:
    assert model_cost.evict_bytes({"L3": "65536K"}) == 128 << 20
    assert model_cost.evict_bytes({"L3": "8192K"}) == model_cost.EVICT_MIN
    assert model_cost.evict_bytes({"L3": "491520K"}) == model_cost.EVICT_MAX
    assert model_cost.evict_bytes({}) == model_cost.EVICT_MIN
