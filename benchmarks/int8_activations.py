"""Float, static and dynamic INT8 activations for the served encoder: speed, batch independence.

    make bench-int8-activations          # = python -m benchmarks.int8_activations

The student of the Beauty recipe's shape (d=64, 2 blocks of 2 heads and 128 FFN units,
54,542 items, max_len 50) and that shape pruned to 1 head and 64 FFN units per block, with
random weights: speed and batch behaviour depend on the shapes, not the training. Each encoder
(fp32; INT8 weights with float, dynamic or static activations) runs in onnxruntime with one
thread, as the service runs it (`bundle.ENCODER_SESSION_CONFIG`), on the same 32 random
histories padded to max_len, as `benchmarks.compress_measure` times encoders, in
`ROUNDS` interleaved rounds (medians), so a busy neighbour slows them all alike; then 1,024
histories are encoded one at a time and in batches of 32 and the rows compared bit for bit.
Pin it (`taskset -c 1`) and read the ratios: absolute times move with the host.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from benchmarks.provenance import cpu_model
from bundle.shared_items import share_item_table
from models.evaluate import item_array, measure_latency, onnx_encoder
from models.export import export_onnx
from models.quantize import QuantizeConfig, quantize_onnx
from models.sasrec import SASRec, SASRecConfig

BEAUTY_ITEMS = 54_542
MAX_LEN = 50
ROUNDS = 7


def random_histories(n: int, n_items: int, *, seed: int) -> npt.NDArray[np.int64]:
    """Left-padded histories of 1..40 random items (Beauty's average is 9)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, MAX_LEN), dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(1, 41))
        out[row, MAX_LEN - length :] = rng.integers(1, n_items + 1, size=length)
    return out


# The Beauty student's shape, and the shape pruning half its heads and FFN units leaves.
SHAPES = {"student": (2, 128), "pruned": (1, 64)}  # heads per block, FFN units per block


def encoders(n_items: int) -> dict[str, bytes]:
    """For each shape: fp32 and INT8 with each kind of activations, e.g. "pruned int8 float"."""
    calibration = random_histories(1024, n_items, seed=1)
    out: dict[str, bytes] = {}
    for shape, (heads, ffn) in SHAPES.items():
        torch.manual_seed(0)
        config = SASRecConfig(
            n_items=n_items,
            max_len=MAX_LEN,
            dim=64,
            n_blocks=2,
            head_dim=32,
            n_heads=[heads, heads],
            ffn_hidden=[ffn, ffn],
            dropout=0.0,
        )
        model = SASRec(config).eval()
        fp32 = export_onnx(model)
        items = item_array(model)
        out[f"{shape} fp32"] = fp32
        for activations in ("float", "dynamic", "static"):
            config_q = QuantizeConfig(activations=activations)
            int8 = quantize_onnx(fp32, config_q, calibration=calibration)
            out[f"{shape} int8 {activations}"] = share_item_table(int8, items, "int8")
    return out


def latencies(
    models: dict[str, bytes], timing: npt.NDArray[np.int64]
) -> dict[str, dict[str, float]]:
    """Median µs at batch 1 and per row at batch 32 over `ROUNDS` interleaved rounds."""
    encode = {name: onnx_encoder(m, threads=1) for name, m in models.items()}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, fn in encode.items():
            rounds[name].append(measure_latency(fn, timing, budget_s=0.3))
    return {
        name: {
            "encoder_us_b1": round(float(np.median([r["latency_us_b1"] for r in rs])), 1),
            "encoder_us_b32": round(float(np.median([r["latency_us_per_row_b32"] for r in rs])), 1),
        }
        for name, rs in rounds.items()
    }


def batch_behaviour(model: bytes, rows: npt.NDArray[np.int64]) -> dict[str, Any]:
    encode = onnx_encoder(model, threads=1)
    alone = np.concatenate([encode(rows[i : i + 1]) for i in range(len(rows))])
    batched = np.concatenate([encode(rows[i : i + 32]) for i in range(0, len(rows), 32)])
    return {
        "rows_identical_b1_vs_b32": int((alone == batched).all(axis=1).sum()),
        "rows": len(rows),
        "max_abs_diff_b1_vs_b32": float(np.abs(alone - batched).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    timing = random_histories(32, BEAUTY_ITEMS, seed=2)
    rows = random_histories(1024, BEAUTY_ITEMS, seed=3)
    models = encoders(BEAUTY_ITEMS)
    speed = latencies(models, timing)
    results = {name: {**speed[name], **batch_behaviour(m, rows)} for name, m in models.items()}
    report = {
        "cpu": cpu_model(),
        "threads": 1,
        "max_len": MAX_LEN,
        "rounds": ROUNDS,
        "encoders": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
