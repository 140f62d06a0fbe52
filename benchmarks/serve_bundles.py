"""The bundles the serving benchmark serves, found or made (`benchmarks/serve.py`).

- `resolve_inputs`: the data and the bundle a serving or fleet benchmark uses, with the
  fallbacks it took (recorded in its results).
- `newest_bundle`: the shipped bundle `make bench-compress` left under benchmarks/work/.
- `build_sasrec_bundle`: a bundle from a SASRec model, fp32 (the `student_fp32` variant) or
  INT8 exactly as `models.compress` ships it (item table shared with items.npy).
- `model_for`: a SASRec of a manifest's architecture, with a checkpoint's weights when there
  is one, else random weights, which is all a speed measurement needs (and is recorded).
- `synthetic_catalog`: when the data file is absent, synthetic interactions over a catalog of
  Beauty's size (54,542 items, `models.synthetic`) and a speed-only INT8 bundle for them.

Everything here imports torch: the offline side of the project, never the service.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch

import bundle
from benchmarks.compress_recipes import BEAUTY_ITEMS, recipe_shapes
from benchmarks.harness.log import logger
from bundle.io import MANIFEST_FILE
from bundle.shared_items import check_linked_bundle, link_item_table, share_item_table
from models.compress import golden_tolerance
from models.evaluate import onnx_encoder
from models.export import export_onnx
from models.quantize import QuantizeConfig, quantize_onnx
from models.readers import read_interactions
from models.sasrec import SASRec, SASRecConfig, build_model
from models.synthetic import SyntheticConfig, write_synthetic

BEAUTY_USERS = 40_226
RANDOM_INIT = "random-init (speed only)"
# The Beauty recipe's teacher, student and pruned student: the shapes used when a manifest
# does not record them, and the speed-only bundle's (the pruned one, as the recipe ships it).
_SHAPES = recipe_shapes("beauty")
BEAUTY_TEACHER, BEAUTY_STUDENT, BEAUTY_PRUNED = (
    _SHAPES["teacher"],
    _SHAPES["student"],
    _SHAPES["pruned"],
)

if TYPE_CHECKING:
    from benchmarks.serve_variants import VariantInfo

log = logger("bench-serve")


def newest_bundle(work: Path) -> Path | None:
    """The most recently written bundle directory directly under `work`, if any."""
    if not work.is_dir():
        return None
    found = [p for p in work.iterdir() if (p / MANIFEST_FILE).is_file()]
    return max(found, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime, default=None)


def read_manifest_dict(bundle_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle_dir / MANIFEST_FILE).read_text("utf-8"))
    return data


def architecture_for(
    manifest: dict[str, Any], which: Literal["teacher", "student", "pruned"]
) -> tuple[dict[str, Any], str]:
    """A SASRecConfig dict for the manifest's catalog, and where its shape came from.

    `models.compress` records `architecture.teacher`, `.student` and `.config` (the pruned,
    served model); a bundle made elsewhere falls back to the Beauty recipe's shapes."""
    arch = manifest.get("architecture") or {}
    key = {"teacher": "teacher", "student": "student", "pruned": "config"}[which]
    base = {"n_items": int(manifest["n_items"]), "max_len": int(manifest["max_len"])}
    if isinstance(arch.get(key), dict) and "dim" in arch[key]:
        return {**arch[key], **base}, f"manifest.architecture.{key}"
    shapes = {"teacher": BEAUTY_TEACHER, "student": BEAUTY_STUDENT, "pruned": BEAUTY_PRUNED}
    return {**shapes[which], **base}, f"the Beauty recipe's {which} (not in the manifest)"


def model_for(
    config: dict[str, Any], checkpoint: Path | None, *, seed: int = 0
) -> tuple[SASRec, str]:
    """The model and what its weights are: the checkpoint's, or random."""
    torch.manual_seed(seed)
    model = build_model(SASRecConfig(**config)).eval()
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))  # models.compress.save_checkpoint
        return model, f"trained ({checkpoint})"
    return model, RANDOM_INIT


def params_of(config: dict[str, Any]) -> int:
    """Parameter count of a SASRec of `config`, without allocating it (meta device)."""
    with torch.device("meta"):
        return build_model(SASRecConfig(**config)).num_params()


def _golden_inputs(
    n_items: int, max_len: int, *, n: int = 4, seed: int = 0
) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    seqs = np.zeros((n, max_len), dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(1, max_len + 1))
        seqs[row, max_len - length :] = rng.integers(1, n_items + 1, size=length)
    return seqs


def build_sasrec_bundle(
    out_dir: Path,
    model: SASRec,
    *,
    version: str,
    vocab: list[str],
    popularity: npt.NDArray[np.integer],
    encoding: Literal["fp32", "int8"],
    recipe: dict[str, Any],
) -> Path:
    """Write `model` as a bundle: plain fp32 ONNX with fp32 items, or INT8 as compress ships it."""
    model = model.cpu().eval()
    items = model.item_matrix().detach().float().numpy()
    max_len = model.config.max_len
    golden_in = _golden_inputs(model.config.n_items, max_len)
    onnx_model = export_onnx(model)
    shipped = served = onnx_model
    atol = 1e-3
    if encoding == "int8":
        # No training data here: the static activation ranges are fitted on random histories.
        calibration = _golden_inputs(model.config.n_items, max_len, n=256, seed=1)
        int8 = quantize_onnx(onnx_model, QuantizeConfig(), calibration=calibration)
        served = share_item_table(int8, items, "int8")
        shipped = link_item_table(served)
    encode = onnx_encoder(served)
    if encoding == "int8":
        atol, _ = golden_tolerance(encode, golden_in)
    bundle.write_bundle(
        out_dir,
        model_version=version,
        onnx_model=shipped,
        item_matrix=items,
        vocab=vocab,
        popularity=popularity,
        max_len=max_len,
        golden_inputs=golden_in,
        golden_outputs=encode(golden_in),
        item_encoding=encoding,
        golden_atol=atol,
        architecture={"type": "SASRec", "config": model.config.to_dict()},
        recipe=recipe,
    )
    if encoding == "int8":
        check_linked_bundle(out_dir, served)
    return out_dir


def fp32_student_bundle(
    shipped: Path, out_dir: Path, *, which: Literal["student", "pruned"], checkpoint: Path | None
) -> tuple[Path, VariantInfo]:
    """The `student_fp32` variant's bundle: the shipped catalog, a student in fp32."""
    b = bundle.read_bundle(shipped)
    manifest = b.manifest.model_dump(mode="json")
    config, arch_source = architecture_for(manifest, which)
    model, weights = model_for(config, checkpoint)
    info: VariantInfo = {
        "architecture": config,
        "architecture_source": arch_source,
        "weights": weights,
        "params": model.num_params(),
        "item_encoding": "fp32",
        "onnx": "models.export.export_onnx (fp32, item embedding inside model.onnx)",
    }
    build_sasrec_bundle(
        out_dir,
        model,
        version=f"{b.version}-student-fp32",
        vocab=b.vocab,
        popularity=b.popularity,
        encoding="fp32",
        recipe={"made_by": "benchmarks/serve.py", **info},
    )
    return out_dir, info


def _has_shape(bundle_dir: Path, shape: dict[str, Any]) -> bool:
    if not (bundle_dir / MANIFEST_FILE).is_file():
        return False
    config = read_manifest_dict(bundle_dir).get("architecture", {}).get("config", {})
    return all(config.get(k) == v for k, v in shape.items())


def speed_only_bundle(
    data: Path, out_dir: Path, *, catalog: list[str] | None = None, max_len: int = 50
) -> Path:
    """An INT8 bundle for the items of `data` (or for `catalog`, popularity from `data`)
    whose model is a random-init SASRec of the pruned Beauty student's shape, quantized and
    packed exactly as `models.compress` ships it: right size and speed, meaningless answers.
    Reused when `out_dir` already holds one of that shape, else rebuilt."""
    if _has_shape(out_dir, BEAUTY_PRUNED):
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    read = read_interactions(data, min_interactions=1)
    counts = dict(zip(read.vocab, read.popularity().tolist(), strict=True))
    vocab = ["", *catalog] if catalog is not None else list(read.vocab)
    popularity = np.array([counts.get(v, 0) if v else 0 for v in vocab], dtype=np.int64)
    config = {**BEAUTY_PRUNED, "n_items": len(vocab) - 1, "max_len": max_len}
    model, weights = model_for(config, None)
    recipe = {"made_by": "benchmarks/serve.py (speed-only bundle)", "weights": weights}
    build_sasrec_bundle(
        out_dir,
        model,
        version=out_dir.name,
        vocab=vocab,
        popularity=popularity,
        encoding="int8",
        recipe={**recipe, "data": str(data)},
    )
    return out_dir


def synthetic_catalog(
    work: Path, *, n_items: int = BEAUTY_ITEMS, n_users: int = BEAUTY_USERS
) -> tuple[Path, Path]:
    """When the data file is absent: synthetic interactions (`models.synthetic`, items
    "i1".."iN", Beauty's user count) and a speed-only bundle over all `n_items` items."""
    data = work / f"synthetic-{n_items}.txt"
    if not data.is_file():
        # Beauty-like histories: at least 5 items per user.
        topics = min(64, n_items // 4)
        config = SyntheticConfig(n_users, n_items, n_topics=topics, min_len=5, max_len=13, seed=0)
        write_synthetic(data, config)
    catalog = [f"i{i}" for i in range(1, n_items + 1)]
    return data, speed_only_bundle(data, work / f"synthetic-{n_items}-speed-only", catalog=catalog)


def resolve_inputs(
    data: Path, bundle_arg: Path | None, work: Path
) -> tuple[Path | None, Path, dict[str, Any]]:
    """(data file or None, shipped bundle, provenance): the fallbacks, recorded."""
    info: dict[str, Any] = {"data_given": str(data), "data_found": data.is_file()}
    if not data.is_file():
        log(f"{data} not found: synthetic catalog of 54,542 items (models.synthetic)")
        synth_data, synth_bundle = synthetic_catalog(work / "synthetic")
        info["histories_from"] = f"{synth_data} (synthetic, models.synthetic)"
        if bundle_arg is None:
            info["bundle_source"] = "speed-only bundle (random-init pruned student, INT8)"
            return synth_data, synth_bundle, info
        info["bundle_source"] = "--bundle"
        return synth_data, bundle_arg, info
    info["histories_from"] = str(data)
    if bundle_arg is not None:
        info["bundle_source"] = "--bundle"
        return data, bundle_arg, info
    found = newest_bundle(work / data.stem)
    if found is not None:
        info["bundle_source"] = f"newest bundle under {work / data.stem} (make bench-compress)"
        return data, found, info
    log(f"no bundle under {work / data.stem}: building a speed-only one (random weights)")
    info["bundle_source"] = (
        f"speed-only bundle: no `make bench-compress` bundle under {work / data.stem}; "
        "random-init pruned student of the Beauty recipe's shape, INT8, the data's catalog"
    )
    return data, speed_only_bundle(data, work / "speed-only" / data.stem), info
