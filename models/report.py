"""The compression report's table of stages, as text and as markdown (`models.compress`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageResult:
    """One row of the report: a stage's size, test metrics and latency."""

    stage: str
    params: int
    size_bytes: int
    size_kind: str
    metrics: dict[str, float]
    latency: dict[str, float] = field(default_factory=dict)


def _format_size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def format_table(
    stages: list[StageResult], popularity: dict[str, float], *, markdown: bool = False
) -> str:
    """Size, ranking metrics and latency of every stage beside popularity's, as aligned text
    (or a markdown table)."""
    header = ["stage", "params", "size", "size of", "HR@10", "NDCG@10", "MRR@10"]
    header += ["µs b1", "µs/row b32"]
    rows = [["popularity", "-", "-", "-"] + [f"{popularity[k]:.4f}" for k in _K10] + ["-", "-"]]
    for s in stages:
        rows.append(
            [s.stage, f"{s.params:,}", _format_size(s.size_bytes), s.size_kind]
            + [f"{s.metrics[k]:.4f}" for k in _K10]
            + [
                f"{s.latency.get('latency_us_b1', float('nan')):.0f}",
                f"{s.latency.get('latency_us_per_row_b32', float('nan')):.1f}",
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 4 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


_K10 = ("hr@10", "ndcg@10", "mrr@10")


def markdown_report(
    report: dict[str, Any], stages: list[StageResult], popularity: dict[str, float]
) -> str:
    """The report as markdown: data, the stage table, acceptance, parity and timings."""
    acc = report["acceptance"]
    ds = report["dataset"]
    return "\n".join(
        [
            f"# Compression report: {report['version']}",
            "",
            f"Data: `{ds['source']}` ({ds['format']}): {ds['users']} users, {ds['items']} items, "
            f"{ds['interactions']} interactions; {ds['dropped_users']} users dropped.",
            "",
            "Test split, full ranking over all items with seen items removed. Sizes: fp32 "
            f"ONNX file for the fp32 stages, the bundle archive (.tar.gz) for "
            f"{report['served_stage']}. "
            "Latency: onnxruntime, 1 thread.",
            "",
            format_table(stages, popularity, markdown=True),
            "",
            f"Served NDCG@10 / popularity NDCG@10 = {acc['ndcg@10_vs_popularity']:.2f} "
            f"(required ≥ {acc['required']}: {'PASS' if acc['passed'] else 'FAIL'}).",
            "",
            f"ONNX parity (max abs diff vs PyTorch): {report['recipe']['onnx_parity_max_abs_diff']}",
            f"Golden tolerance: {report['golden_atol']:.3g}",
            f"Timings (s): {report['timings_s']}",
            "",
        ]
    )
