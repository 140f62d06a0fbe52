"""Static against dynamic INT8 activations for the served encoder: speed and batch independence.

    make bench-int8-activations          # = python -m benchmarks.int8_activations

The student of the Beauty recipe's shape (d=64, 2 blocks, 54,542 items, max_len 50) with
random weights: speed and batch behaviour depend on the shapes, not the training. Each encoder
(fp32, dynamic INT8, static INT8) runs in onnxruntime with one thread on the same 32 random
histories padded to max_len, as `benchmarks.compress_measure` times encoders; then 1,024
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
from models.evaluate import item_array, measure_latency, onnx_encoder
from models.export import export_onnx
from models.quantize import QuantizeConfig, quantize_onnx, share_item_table
from models.sasrec import SASRec, SASRecConfig

BEAUTY_ITEMS = 54_542
MAX_LEN = 50


def random_histories(n: int, n_items: int, *, seed: int) -> npt.NDArray[np.int64]:
    """Left-padded histories of 1..40 random items (Beauty's average is 9)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, MAX_LEN), dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(1, 41))
        out[row, MAX_LEN - length :] = rng.integers(1, n_items + 1, size=length)
    return out


def encoders(n_items: int) -> dict[str, bytes]:
    torch.manual_seed(0)
    config = SASRecConfig(
        n_items=n_items, max_len=MAX_LEN, dim=64, n_blocks=2, head_dim=32,
        n_heads=[2, 2], ffn_hidden=[128, 128], dropout=0.0,
    )  # fmt: skip
    model = SASRec(config).eval()
    fp32 = export_onnx(model)
    items = item_array(model)
    calibration = random_histories(1024, n_items, seed=1)
    out = {"fp32": fp32}
    for activations in ("dynamic", "static"):
        int8 = quantize_onnx(
            fp32,
            QuantizeConfig(activations=activations),
            calibration=calibration,
        )
        out[f"int8 {activations}"] = share_item_table(int8, items, "int8")
    return out


def measure(
    model: bytes, timing: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]
) -> dict[str, Any]:
    encode = onnx_encoder(model, threads=1)
    latency = measure_latency(encode, timing, budget_s=1.0)
    alone = np.concatenate([encode(rows[i : i + 1]) for i in range(len(rows))])
    batched = np.concatenate([encode(rows[i : i + 32]) for i in range(0, len(rows), 32)])
    return {
        "encoder_us_b1": round(latency["latency_us_b1"], 1),
        "encoder_us_b32": round(latency["latency_us_per_row_b32"], 1),
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
    results = {name: measure(m, timing, rows) for name, m in encoders(BEAUTY_ITEMS).items()}
    report = {"cpu": cpu_model(), "threads": 1, "max_len": MAX_LEN, "encoders": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
