"""The compression benchmark's recipes (`benchmarks.compress --recipe`) and its config from
the command line:

    config = build_config(data="...", work=Path("benchmarks/work/x"), recipe="beauty",
                          overrides=parse_sets(["prune_ratio=0.3"]))

A recipe is a set of `CompressConfig` overrides; `--set key=value` overrides any field.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.log import logger
from models.cli import DEMO_OVERRIDES
from models.compress import CompressConfig
from models.sasrec import SASRecConfig
from models.train import bf16_speedup

# --- recipes ---------------------------------------------------------------------------------
# A recipe is a set of CompressConfig overrides on top of CompressConfig's defaults. Every
# choice below was made on validation NDCG@10 (the early-stopping sample of 10,000 users).
RECIPES: dict[str, dict[str, Any]] = {
    # Amazon Beauty: 256-wide teacher, 64-wide student (the published SASRec+ width).
    "beauty": {
        "max_len": 50,
        "teacher_dim": 256,
        "teacher_blocks": 2,
        "teacher_heads": 2,
        "teacher_head_dim": 128,
        "teacher_ffn": 256,
        "teacher_epochs": 5,  # validation NDCG@10 still rose, little, at the fifth
        "student_dim": 64,
        "student_blocks": 2,
        "student_heads": 2,
        "student_head_dim": 32,
        "student_ffn": 128,
        # The distilled student peaks at its seventh epoch at constant lr; ce_baseline gets the
        # same epochs (docs/decisions/2026-12-06-beauty-recipe-does-not-prune.md).
        "student_epochs": 7,
        "student_init": "teacher_pca",  # converges in fewer epochs than a random start
        "student_lr_schedule": "constant",
        "finetune_lr_schedule": "cosine",
        "dropout": 0.25,
        "batch_size": 256,
        "lr": 1e-3,
        "patience": 2,
        # bf16 catalog products only where this CPU runs them faster (timed at the start,
        # `bf16_speedup`): CPUs without native bf16 run them far slower (docs/compression.md).
        "bf16": "auto",
        "bf16_teacher": False,  # bf16 cost the teacher validation NDCG@10
        "temperature": 2.0,
        "alpha": 0.7,
        # The teacher runs once over the training positions and keeps its 256 best items per
        # position (models.distill), so a distillation epoch does not run it again.
        "distill_top_k": 256,
        # Pruning and item tables: validation trials from one seed-0 student
        # (docs/decisions/2026-12-06-beauty-pruning-and-item-tables.md).
        "prune_ratio": 0.75,
        "prune_heads": False,
        "prune_hidden_ratio": 0.0,
        "finetune_epochs": 2,
        "pq_finetune_epochs": 3,
        "pq_reassign": True,
    },
    # The demo's tiny settings (`python -m models demo`): seconds on small data.
    "demo": dict(DEMO_OVERRIDES),
}
DEFAULT_RECIPE = "beauty"
# pq4 item tables shipped beside the recipe's bundle, from the first seed's model (M
# subspaces of 4-bit codes: M / 2 bytes per item); an int4-rows bundle is shipped beside it
# in every recipe.
PQ_VARIANTS: dict[str, tuple[int, ...]] = {"beauty": (8, 16, 32), "demo": ()}
BEAUTY_ITEMS = 54_542  # items of the Amazon Beauty file (`make bench-compress`'s catalog)


def recipe_shapes(name: str = DEFAULT_RECIPE) -> dict[str, dict[str, Any]]:
    """The SASRec shapes a recipe trains and ships, as `SASRecConfig` fields: "teacher",
    "student", and "pruned" (the student after the recipe's structured pruning, counted the
    way `models.prune` keeps heads and FFN units: round(ratio x n) removed, one at least)."""
    config = CompressConfig(**{**RECIPES[name], "progress": False})

    def fields(c: SASRecConfig) -> dict[str, Any]:
        keep = ("dim", "n_blocks", "head_dim", "n_heads", "ffn_hidden")
        return {k: v for k, v in dataclasses.asdict(c).items() if k in keep}

    def kept(n: int, pruned: bool) -> int:
        return max(1, n - round(config.prune_ratio * n)) if pruned else n

    student = fields(config.student_config(BEAUTY_ITEMS))
    pruned = {
        **student,
        "dim": student["dim"] - round(config.prune_hidden_ratio * student["dim"]),
        "n_heads": [kept(h, config.prune_heads) for h in student["n_heads"]],
        "ffn_hidden": [kept(f, config.prune_ffn) for f in student["ffn_hidden"]],
    }
    return {
        "teacher": fields(config.teacher_config(BEAUTY_ITEMS)),
        "student": student,
        "pruned": pruned,
    }


BF16_AUTO = "auto"  # a recipe's "bf16": measure, then use bf16 where it is this much faster
BF16_MIN_SPEEDUP = 1.5


log = logger("bench")


# --- config ----------------------------------------------------------------------------------
_HINTS = typing.get_type_hints(CompressConfig)
_FIELDS = {f.name for f in dataclasses.fields(CompressConfig)}
_NOT_SETTABLE = {"data", "out"}  # --data and --work


def parse_value(name: str, raw: str) -> Any:
    """Convert a `--set name=raw` string to the type of CompressConfig field `name`."""
    if name not in _FIELDS:
        raise ValueError(f"unknown CompressConfig field {name!r}")
    if name in _NOT_SETTABLE:
        raise ValueError(f"{name!r} is set by its own flag, not --set")
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    if hint is bool:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{name} takes true or false, not {raw!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ValueError(f"{name} takes one of {', '.join(map(str, choices))}, not {raw!r}")
        return raw
    if origin is tuple:
        return tuple(int(x) for x in raw.replace(",", " ").split())
    if hint in (int, float, str):
        return hint(raw)
    raise ValueError(f"cannot set {name} ({hint}) from the command line")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, not {item!r}")
        name = key.strip().replace("-", "_")
        out[name] = parse_value(name, raw.strip())
    return out


def build_config(
    *,
    data: str,
    work: Path,
    recipe: str,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> CompressConfig:
    values: dict[str, Any] = dict(RECIPES[recipe])
    if device is not None:
        values["device"] = device
    values.update(overrides or {})
    values.setdefault("version", f"bench-{recipe}")
    if values.get("bf16") == BF16_AUTO:
        speedup = bf16_speedup(
            int(values.get("teacher_dim", CompressConfig.teacher_dim)),
            BEAUTY_ITEMS,
            device=str(values.get("device", "cpu")),
        )
        values["bf16"] = speedup >= BF16_MIN_SPEEDUP
        log(
            f"bf16 products {speedup:.2f}x as fast as fp32 here: bf16 {'on' if values['bf16'] else 'off'}"
        )
    return CompressConfig(data=data, out=str(work), **values)


def parse_variants(raw: str | None, recipe: str) -> tuple[int, ...]:
    """`--pq-variants`: "8,16,32" -> (8, 16, 32); None -> the recipe's; "" -> none."""
    if raw is None:
        return PQ_VARIANTS.get(recipe, ())
    try:
        values = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError as e:
        raise ValueError(f"--pq-variants takes comma-separated integers, got {raw!r}") from e
    if any(m < 2 or m % 2 for m in values):
        raise ValueError(f"--pq-variants: subspace counts must be even and >= 2, got {raw!r}")
    return values
