from __future__ import annotations

import json
from pathlib import Path

from benchmarks.compress_trials import main
from models.synthetic import SyntheticConfig, write_synthetic


def test_trials_start_from_one_student_and_record_validation_only(tmp_path: Path) -> None:
    data = tmp_path / "shop.txt"
    write_synthetic(data, SyntheticConfig(n_users=400, n_items=120, seed=0))
    common = ["--data", str(data), "--recipe", "demo", "--work", str(tmp_path / "work"),
              "--results", str(tmp_path / "results")]  # fmt: skip
    assert main([*common, "student"]) == 0
    assert main([*common, "--save", "pruned.pt", "prune", "--ratio", "0.5", "--epochs", "1"]) == 0
    assert main([*common, "--base", "pruned.pt", "pq", "--subspaces", "4", "--epochs", "1",
                 "--reassign"]) == 0  # fmt: skip
    lines = (tmp_path / "results" / "compress-trials-shop.jsonl").read_text().splitlines()
    student, pruned, pq = (json.loads(line) for line in lines)
    assert student["trial"] == "student" and 0 < student["student_val"] <= 1
    assert pruned["encoder_params"] < pruned["base_encoder_params"]
    assert pq["base_encoder_params"] == pruned["encoder_params"]  # it started from the pruned
    assert pq["item_table"]["subspaces"] == 4 and "reassigned" in pq["item_table"]["assignment"]
    for record in (pruned, pq):
        assert 0 < record["val"] <= 1 and "test" not in json.dumps(record)
