"""Command line: `python -m models {compress,synth,demo,foldin}` (also `recsys-compress`).

    python -m models synth --out var/synthetic.txt --users 3000 --items 600
    python -m models compress --data var/synthetic.txt --out bundles/ --prune-ratio 0.5
    python -m models demo --out bundles/
    python -m models foldin --bundle bundles/v1 --interactions recent.csv --out items.json

Every `CompressConfig` field is a `compress` flag (`--teacher-dim 64`, `--no-progress`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bundle
from models.compress import ACCEPTANCE_RATIO, CompressConfig, CompressResult, run_compress
from models.foldin import METHODS, FoldInConfig, fold_in, write_items_json
from models.readers import FORMATS, DataFormatError, read_interactions
from models.synthetic import SyntheticConfig, write_synthetic

# The demo must build in about 2 minutes on 2 CPU cores.
DEMO_OVERRIDES: dict[str, Any] = {"teacher_epochs": 8, "student_epochs": 8, "finetune_epochs": 3}


def _add_config_flags(parser: argparse.ArgumentParser, skip: set[str]) -> None:
    hints = typing.get_type_hints(CompressConfig)
    for f in dataclasses.fields(CompressConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        default = f.default
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif origin is typing.Literal:
            choices = typing.get_args(hint)
            parser.add_argument(flag, choices=choices, default=default)
        elif origin is tuple:
            parser.add_argument(
                flag, type=int, nargs="+", default=list(typing.cast(tuple[int, ...], default))
            )
        else:
            parser.add_argument(flag, type=hint, default=default)


def _config_from(args: argparse.Namespace, **overrides: Any) -> CompressConfig:
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(CompressConfig)
        if hasattr(args, f.name)
    }
    if "ks" in values:
        values["ks"] = tuple(values["ks"])
    values.update(overrides)
    return CompressConfig(**values)


def _print_result(result: CompressResult) -> None:
    r = result.report
    print()
    print(result.table)
    print()
    print(f"sizes: fp32 stages = fp32 ONNX file; {r['served_stage']} = bundle archive (.tar.gz)")
    print("latency: onnxruntime, 1 thread; µs per call at batch 1, µs per row at batch 32")
    print(f"bundle:  {result.bundle_dir}")
    print(f"archive: {result.archive} ({r['archive_bytes']:,} bytes)")
    print(f"report:  {result.report_path}")


def _print_acceptance(result: CompressResult) -> bool:
    acc = result.report["acceptance"]
    verdict = "PASS" if acc["passed"] else "FAIL"
    print(
        f"acceptance: {result.report['served_stage']} NDCG@10 is "
        f"{acc['ndcg@10_vs_popularity']:.2f}x popularity "
        f"(need >= {ACCEPTANCE_RATIO:g}x): {verdict}"
    )
    return bool(acc["passed"])


def _add_foldin_parser(sub: Any) -> None:
    f = sub.add_parser(
        "foldin", help="vectors for items a bundle never saw, for POST /admin/catalog/items"
    )
    f.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    f.add_argument("--interactions", required=True, type=Path, help="txt, csv or ratings.dat")
    f.add_argument("--format", choices=FORMATS, default="auto")
    f.add_argument("--out", required=True, type=Path, help="JSON file to write")
    f.add_argument("--min-occurrences", type=int, default=FoldInConfig.min_occurrences)
    f.add_argument("--method", choices=METHODS, default=FoldInConfig.method)
    f.add_argument("--l2", type=float, default=FoldInConfig.l2, help="softmax")
    f.add_argument("--negatives", type=int, default=FoldInConfig.negatives, help="softmax")
    f.add_argument("--ridge", type=float, default=FoldInConfig.ridge, help="lsq")
    f.add_argument("--target-rank", type=int, default=FoldInConfig.target_rank, help="lsq")


def _foldin(args: argparse.Namespace) -> int:
    try:
        config = FoldInConfig(
            method=args.method, l2=args.l2, negatives=args.negatives, ridge=args.ridge,
            target_rank=args.target_rank, min_occurrences=args.min_occurrences,
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        b = bundle.read_bundle(args.bundle)
        # Every user counts: one known item before a new one is already evidence.
        data = read_interactions(args.interactions, fmt=args.format, min_interactions=1)
    except (bundle.BundleError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sequences = [[data.vocab[i] for i in s] for s in data.sequences]
    result = fold_in(b, sequences, config)
    write_items_json(args.out, b.version, result)
    print(
        f"{len(result.item_ids)} new items folded into {b.version}, "
        f"{len(result.skipped)} with fewer than {config.min_occurrences} usable occurrences "
        f"skipped; wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="train, distill, prune, quantize, write a bundle")
    p.add_argument("--data", required=True, help="interactions file (txt, csv, ratings.dat)")
    p.add_argument("--out", default="bundles", help="directory for bundles and reports")
    _add_config_flags(p, skip={"data", "out"})

    s = sub.add_parser("synth", help="write synthetic interactions in the text format")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--users", type=int, default=SyntheticConfig.n_users)
    s.add_argument("--items", type=int, default=SyntheticConfig.n_items)
    s.add_argument("--seed", type=int, default=SyntheticConfig.seed)

    d = sub.add_parser("demo", help="synthetic data -> demo bundle, with the acceptance check")
    d.add_argument("--out", default="bundles", help="directory for the data, bundle and reports")
    d.add_argument("--version", default="", help="bundle version (default: v<timestamp>)")
    d.add_argument("--users", type=int, default=SyntheticConfig.n_users)
    d.add_argument("--items", type=int, default=SyntheticConfig.n_items)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    _add_foldin_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "foldin":
        return _foldin(args)
    if args.command == "synth":
        n = write_synthetic(
            args.out, SyntheticConfig(n_users=args.users, n_items=args.items, seed=args.seed)
        )
        print(f"wrote {n} interactions to {args.out}")
        return 0
    if args.command == "compress":
        try:
            result = run_compress(_config_from(args))
        except (DataFormatError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        _print_result(result)
        _print_acceptance(result)
        return 0
    return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    """Synthetic data, then a demo-sized run: 0 when the bundle passes the acceptance check."""
    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "synthetic.txt"
    write_synthetic(data, SyntheticConfig(n_users=args.users, n_items=args.items, seed=args.seed))
    config = CompressConfig(
        data=str(data),
        out=str(out),
        version=args.version,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
        **DEMO_OVERRIDES,
    )
    result = run_compress(config)
    _print_result(result)
    passed = _print_acceptance(result)
    print(f"demo built in {time.perf_counter() - t0:.1f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
