"""The compression pipeline: data -> teacher -> distilled student -> pruned -> INT8 bundle.

    python -m models compress --data interactions.txt --out bundles/
    python -m models demo --out bundles/          # synthetic data, demo-sized settings

or from Python (the demo builder and the end-to-end test do this):

    from models.compress import CompressConfig, run_compress
    result = run_compress(CompressConfig(data="var/synthetic.txt", out="bundles"))
    result.bundle_dir, result.archive, result.report["stages"]

Every stage is evaluated on the leave-one-out test split with `models.evaluate.evaluate`
(full ranking, seen items removed); the last stage is the exact INT8 `model.onnx` run by
onnxruntime against the bundle's decoded item matrix, so the bundle's metrics are those of
the served artifact. Writes, under `out`:

    <version>/              the bundle directory (see `bundle`)
    <version>.tar.gz        the same, packed for upload
    <version>-report.json   every stage's params, sizes, metrics, latency, and the recipe
    <version>-report.md     the same table in markdown
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

import bundle
from bundle.manifest import ItemEncoding
from bundle.pq import PQ_MAX_CENTROIDS, PQTable
from bundle.shared_items import check_linked_bundle, link_item_table, share_item_table
from models.distill import (
    DistillConfig,
    StudentInit,
    TeacherTopK,
    distill_student,
    distillation_loss,
    kl_to_teacher,
    teacher_top_k,
)
from models.evaluate import (
    Encoder,
    evaluate_ranks,
    item_array,
    measure_latency,
    onnx_encoder,
    popularity_stage,
    torch_encoder,
    torch_threads,
)
from models.export import check_parity, export_onnx
from models.pq import decoded_copy, pq_table_of, train_pq, with_pq_items
from models.prune import PruneConfig, prune_and_finetune
from models.quantize import Activations, QuantizeConfig, quantize_onnx
from models.readers import InteractionData, read_interactions
from models.report import StageResult, format_table, markdown_report
from models.sasrec import SASRec, SASRecConfig, build_model
from models.split import EvalSet, Split, leave_one_out, pad_left
from models.train import FitResult, LrSchedule, TrainConfig, fit, mm_dtype, train_teacher

ACCEPTANCE_RATIO = 2.0  # served NDCG@10 must be at least this multiple of popularity's


@dataclass
class CompressConfig:
    """Every knob of the pipeline; each field is also a `python -m models compress` flag."""

    data: str = ""
    format: Literal["auto", "txt", "csv", "movielens"] = "auto"
    out: str = "bundles"
    version: str = ""  # default: v<UTC timestamp>
    min_interactions: int = 3
    max_len: int = 50
    # teacher
    teacher_dim: int = 64
    teacher_blocks: int = 2
    teacher_heads: int = 2
    teacher_head_dim: int = 32
    teacher_ffn: int = 128
    teacher_epochs: int = 20
    # student
    student_dim: int = 32
    student_blocks: int = 2
    student_heads: int = 4
    student_head_dim: int = 8
    student_ffn: int = 64
    student_epochs: int = 20
    dropout: float = 0.2
    # optimisation (shared by every training phase)
    lr: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 0.01
    patience: int = 3
    # Learning-rate schedules of the student's training and of the pruned student's
    # fine-tuning (the teacher's is constant): see models.train.TrainConfig.lr_schedule.
    student_lr_schedule: LrSchedule = "constant"
    finetune_lr_schedule: LrSchedule = "constant"
    loss: Literal["full", "sampled"] = "full"
    bf16: bool = False  # catalog-wide products of the training losses in bfloat16
    # ... in the teacher's training too. False keeps the teacher in fp32, whose accuracy
    # bf16 costs (docs/compression.md, "How training stays affordable on a 2-core CPU").
    bf16_teacher: bool = True
    n_negatives: int = 256
    max_valid_users: int = 10_000  # early stopping looks at a seeded sample of this many users
    # distillation
    temperature: float = 2.0
    alpha: float = 0.7
    distill_top_k: int = 0  # > 0: cache the teacher's top-K per position once (much faster)
    student_init: StudentInit = "random"  # see models.distill
    # pruning
    prune_ratio: float = 0.5
    prune_heads: bool = True
    prune_ffn: bool = True
    prune_hidden_ratio: float = 0.0  # fraction of the hidden channels (and item columns) removed
    importance_batches: int = 8
    finetune_epochs: int = 5
    # quantization and bundle
    quantize_per_channel: bool = True
    quantize_reduce_range: bool = True
    quantize_embeddings: bool = True  # the encoder's item embedding reads items.npy (shared)
    quantize_activations: Activations = "static"  # see models.quantize
    calibration_users: int = 1024  # training histories the static scales are fitted on
    # int4: 4-bit rows with error-corrected per-row scales (`bundle.items.quantize_int4`)
    item_encoding: ItemEncoding = "int8"
    # pq4: M subspaces of 4-bit codes (M / 2 bytes per item), then this many epochs of
    # distillation with the codes fixed and the codebooks (and the encoder) trained
    pq_subspaces: int = 16
    pq_finetune_epochs: int = 2
    # True: during that fine-tune the codes follow the item vectors (reassigned every step,
    # straight-through gradients, models.pq.PQEmbedding); False: codes fixed after k-means
    pq_reassign: bool = False
    n_golden: int = 4
    # evaluation
    ks: tuple[int, ...] = (10, 20)
    sampled_metrics: Literal["none", "uniform", "popularity"] = "none"
    latency_budget_s: float = 0.3
    # run
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def teacher_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(
            n_items=n_items,
            max_len=self.max_len,
            dim=self.teacher_dim,
            n_blocks=self.teacher_blocks,
            head_dim=self.teacher_head_dim,
            n_heads=[self.teacher_heads] * self.teacher_blocks,
            ffn_hidden=[self.teacher_ffn] * self.teacher_blocks,
            dropout=self.dropout,
        )

    def student_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(
            n_items=n_items,
            max_len=self.max_len,
            dim=self.student_dim,
            n_blocks=self.student_blocks,
            head_dim=self.student_head_dim,
            n_heads=[self.student_heads] * self.student_blocks,
            ffn_hidden=[self.student_ffn] * self.student_blocks,
            dropout=self.dropout,
        )

    def distill_config(self) -> DistillConfig:
        return DistillConfig(
            temperature=self.temperature,
            alpha=self.alpha,
            top_k=self.distill_top_k,
            init=self.student_init,
        )

    def train_config(
        self, epochs: int, lr_schedule: LrSchedule = "constant", *, bf16: bool = True
    ) -> TrainConfig:
        """The shared optimisation knobs for one phase; `bf16=False` forces fp32 for it."""
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            patience=self.patience,
            lr_schedule=lr_schedule,
            loss=self.loss,
            n_negatives=self.n_negatives,
            bf16=self.bf16 and bf16,
            device=self.device,
            seed=self.seed,
            progress=self.progress,
        )


QUANTIZE_METHODS = {
    "float": "int8 weights behind DequantizeLinear (models.quantize.quantize_weights)",
    "static": "onnxruntime.quantization.quantize_static",
    "dynamic": "onnxruntime.quantization.quantize_dynamic",
}


@dataclass
class CompressResult:
    bundle_dir: Path
    archive: Path
    report: dict[str, Any]
    report_path: Path
    table: str
    # Per test user (in `split.test` order), the 0-based rank of the target for each stage.
    ranks: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    # The stages' models (eval mode, CPU) and fp32 ONNX files, for callers that measure more.
    models: dict[str, SASRec] = field(default_factory=dict)
    fp32_onnx: dict[str, bytes] = field(default_factory=dict)


@dataclass
class PreparedData:
    """The data every phase of a run shares: read once, split once."""

    data: InteractionData
    split: Split
    train_split: Split  # `split` with the validation users sampled for early stopping
    pop_eval: npt.NDArray[np.int64]  # popularity before the test targets
    read_seconds: float


@dataclass
class TrainedTeacher:
    model: SASRec
    fit: FitResult
    seconds: float  # training wall time, whenever and wherever it ran


def default_version() -> str:
    return "v" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _log(config: CompressConfig, msg: str) -> None:
    if config.progress:
        print(f"[compress] {msg}", file=sys.stderr, flush=True)


def golden_tolerance(encode: Encoder, inputs: npt.NDArray[np.int64]) -> tuple[float, float]:
    """(atol, measured spread) for the golden check of a quantized encoder.

    Dynamic INT8 quantizes activations with one scale per tensor, so a row's output depends
    slightly on what else is in the batch and on how much padding the service trims (static
    INT8 should measure a spread of 0). The spread is the largest deviation from the batched
    outputs over those legitimate ways of running the same file (one row at a time, trimmed
    to its own length). The tolerance is
    twice that, and at least 1% of the largest output magnitude, which also covers kernel
    differences between CPUs (weights use reduce_range, so integer sums cannot saturate).
    """
    ref = encode(inputs)
    spread = 0.0
    for row in range(len(inputs)):
        x = inputs[row : row + 1]
        n = max(int((x > 0).sum()), 1)
        for variant in (x, x[:, x.shape[1] - n :]):
            spread = max(spread, float(np.abs(encode(variant)[0] - ref[row]).max()))
    longest = max(int((inputs > 0).sum(1).max()), 1)
    trimmed = inputs[:, inputs.shape[1] - longest :]
    spread = max(spread, float(np.abs(encode(trimmed) - ref).max()))
    scale = float(np.abs(ref).max())
    return max(2.0 * spread, 1e-2 * scale, 1e-4), spread


def checkpoint_dir(out: Path, version: str) -> Path:
    """Where run_compress keeps each stage's PyTorch weights (for benchmarks, not serving)."""
    return out / f"{version}-checkpoints"


def save_checkpoint(model: SASRec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)


def load_checkpoint(path: Path) -> SASRec:
    """A stage saved by run_compress, in eval mode on the CPU."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def prepare_data(c: CompressConfig) -> PreparedData:
    """Read and split the interactions; validation users are sampled with `c.seed`."""
    if not c.data:
        raise ValueError("CompressConfig.data must name the interactions file")
    t0 = time.perf_counter()
    data = read_interactions(Path(c.data), fmt=c.format, min_interactions=c.min_interactions)
    split = leave_one_out(data.sequences)
    # Early stopping needs a stable signal, not every user: validate on a seeded sample.
    train_split = Split(
        train=split.train,
        valid=_sample(split.valid, c.max_valid_users, seed=c.seed),
        test=split.test,
    )
    # Popularity of everything before the test targets: the baseline sees no test item.
    pop_eval = np.zeros(data.n_items + 1, dtype=np.int64)
    for h in split.test.histories:
        np.add.at(pop_eval, h, 1)
    _log(
        c,
        f"{data.n_users} users, {data.n_items} items, {data.n_interactions} interactions "
        f"({data.n_dropped_users} users with < {c.min_interactions} dropped)",
    )
    if c.loss == "full" and data.n_items > 20_000:
        _log(c, f"{data.n_items} items: consider --loss sampled (full softmax is slow on CPU)")
    return PreparedData(data, split, train_split, pop_eval, time.perf_counter() - t0)


def fit_teacher(c: CompressConfig, prep: PreparedData) -> TrainedTeacher:
    _log(c, "training teacher")
    t0 = time.perf_counter()
    teacher, fit = train_teacher(
        c.teacher_config(prep.data.n_items),
        prep.train_split,
        c.train_config(c.teacher_epochs, bf16=c.bf16_teacher),
    )
    return TrainedTeacher(teacher, fit, time.perf_counter() - t0)


def fit_ce_baseline(c: CompressConfig, prep: PreparedData) -> tuple[SASRec, FitResult]:
    """The student's exact shape trained on the hard labels alone (full-catalog cross-entropy,
    random initialization, no teacher) with the student's epoch budget, schedule and seed:
    what distillation buys is measured against this."""
    _log(c, "training the cross-entropy baseline (student shape, no teacher)")
    return train_teacher(
        c.student_config(prep.data.n_items),
        prep.train_split,
        c.train_config(c.student_epochs, c.student_lr_schedule),
    )


def cache_teacher(c: CompressConfig, teacher: SASRec, prep: PreparedData) -> TeacherTopK | None:
    """The teacher's top-K per training position (`c.distill_top_k` > 0), else None."""
    if c.distill_top_k <= 0:
        return None
    teacher.to(torch.device(c.device))
    return teacher_top_k(
        teacher, prep.train_split.train, k=c.distill_top_k, temperature=c.temperature
    )


def calibration_inputs(split: Split, c: CompressConfig) -> npt.NDArray[np.int64]:
    """A seeded sample of training histories (never validation or test), padded to max_len:
    what static INT8 fits its activation ranges on."""
    rng = np.random.default_rng(c.seed)
    n = min(c.calibration_users, len(split.train))
    rows = np.sort(rng.choice(len(split.train), size=n, replace=False))
    return pad_left([split.train[r] for r in rows], c.max_len)


def prunes(c: CompressConfig) -> bool:
    """Whether the recipe prunes anything (a ratio of 0 skips the pruned stage)."""
    return ((c.prune_heads or c.prune_ffn) and c.prune_ratio > 0) or c.prune_hidden_ratio > 0


def teacher_settings(c: CompressConfig, n_items: int) -> dict[str, Any]:
    """Everything that decides the teacher a run trains (besides the data file itself)."""
    train = asdict(c.train_config(c.teacher_epochs, bf16=c.bf16_teacher))
    train.pop("progress")
    return {
        "teacher_config": c.teacher_config(n_items).to_dict(),
        "train_config": train,
        "max_valid_users": c.max_valid_users,
        "min_interactions": c.min_interactions,
    }


def save_teacher(
    path: Path, c: CompressConfig, trained: TrainedTeacher, *, data_sha256: str
) -> None:
    """The teacher with what it was trained from, so a later run can reuse it (`load_teacher`)."""
    meta = {
        **teacher_settings(c, trained.model.config.n_items),
        "data_sha256": data_sha256,
        "fit": asdict(trained.fit),
        "train_seconds": round(trained.seconds, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": trained.model.config.to_dict(),
            "state_dict": trained.model.state_dict(),
            "meta": meta,
        },
        path,
    )


def load_teacher(
    path: Path, c: CompressConfig, *, n_items: int, data_sha256: str
) -> TrainedTeacher:
    """A teacher saved by `save_teacher`; ValueError unless it was trained on this data with
    exactly the settings `c` would train it with."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    meta = saved.get("meta") or {}
    meta_train = {k: v for k, v in (meta.get("train_config") or {}).items() if k != "progress"}
    expected = {**teacher_settings(c, n_items), "data_sha256": data_sha256}
    found = {k: meta.get(k) for k in expected} | {"train_config": meta_train}
    wrong = sorted(k for k in expected if found[k] != expected[k])
    if wrong:
        raise ValueError(f"{path}: teacher trained with other {', '.join(wrong)} than this run")
    model = build_model(saved["config"])
    model.load_state_dict(saved["state_dict"])
    return TrainedTeacher(model.eval(), FitResult(**meta["fit"]), float(meta["train_seconds"]))


def run_compress(
    config: CompressConfig,
    *,
    prep: PreparedData | None = None,
    trained_teacher: TrainedTeacher | None = None,
    cached: TeacherTopK | None = None,
) -> CompressResult:
    """Run the whole pipeline and write the bundle, archive and reports under `config.out`.

    `prep`, `trained_teacher` and `cached` (its top-K summary) may come from an earlier call with the
    same data and teacher settings: the benchmark trains one teacher for several student seeds.
    """
    c = config if 10 in config.ks else dataclasses.replace(config, ks=(10, *config.ks))
    version = c.version or default_version()
    out = Path(c.out)
    if (out / version).exists():
        raise FileExistsError(f"{out / version} already exists; choose another --version")
    t_start = time.perf_counter()
    prep = prep or prepare_data(c)
    run = _Run(c, prep, out, version, test_inputs=prep.split.test.inputs(max_len=c.max_len))
    run.timings["read"] = round(prep.read_seconds, 2)
    popularity_metrics = run.measure(*popularity_stage(prep.pop_eval), "popularity")

    trained = trained_teacher or fit_teacher(c, prep)
    run.timings["teacher"] = round(trained.seconds, 2)
    students = _train_students(run, trained, cached)
    table = _served_table(run, students)
    # A pq4 table adds its own fp32 stage; otherwise the served stage is already listed.
    evaluated = _evaluate_stages(run, students.models() | {table.fp32_name: table.fp32_model})
    shipped = _ship(run, students, table, evaluated, popularity_metrics)
    run.timings["total"] = round(time.perf_counter() - t_start, 2)
    return _report(run, evaluated, shipped, popularity_metrics)


@dataclass
class _Run:
    """What the stages of one `run_compress` call share: its settings, data and output
    place, and what it records as it goes (phase timings, per-user test ranks)."""

    c: CompressConfig
    prep: PreparedData
    out: Path
    version: str
    test_inputs: npt.NDArray[np.int64]  # the test histories, padded to max_len
    timings: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)

    @property
    def bundle_dir(self) -> Path:
        return self.out / self.version

    def phase(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 2)

    def measure(
        self, encode: Encoder, items: npt.NDArray[np.float32], stage: str
    ) -> dict[str, float]:
        """`encode`'s test metrics over `items`; its per-user ranks are kept under `stage`."""
        c = self.c
        sampled = None if c.sampled_metrics == "none" else c.sampled_metrics
        metrics, self.ranks[stage] = evaluate_ranks(
            encode, items, self.prep.split.test, max_len=c.max_len, ks=tuple(c.ks),
            sampled=sampled, popularity=self.prep.pop_eval, seed=c.seed,
        )  # fmt: skip
        return metrics


@dataclass
class _Students:
    """The teacher, the students trained from it, and how each was trained."""

    teacher: SASRec
    teacher_fit: FitResult
    student: SASRec
    student_fit: FitResult
    pruned: SASRec  # the student itself when the recipe prunes nothing
    pruning: dict[str, Any]  # the report's account: {"ran": False, "ratio": ...} when skipped
    cached: TeacherTopK | None  # the teacher's top-K per position, when distillation uses it

    def models(self) -> dict[str, SASRec]:
        """The fp32 stages, in pipeline order."""
        models = {"teacher": self.teacher, "student": self.student}
        if self.pruning["ran"]:
            models["pruned"] = self.pruned
        return models


@dataclass
class _ServedTable:
    """The item table the bundle serves and the fp32 stage its encoder is quantized from."""

    items: npt.NDArray[np.float32] | PQTable
    info: dict[str, Any]  # the report's account (`row_table_info`, `product_quantize`)
    fp32_name: str
    fp32_model: SASRec


@dataclass
class _Evaluated:
    """The fp32 stages, exported to ONNX and measured."""

    models: dict[str, SASRec]
    onnx: dict[str, bytes]
    parity: dict[str, float]  # max abs diff of each ONNX file against PyTorch
    stages: list[StageResult]


@dataclass
class _Shipped:
    """The served bundle and what the report says about it."""

    stage: StageResult
    archive: Path
    shipped_onnx_bytes: int
    golden_atol: float
    architecture: dict[str, Any]
    recipe: dict[str, Any]


def _train_students(run: _Run, trained: TrainedTeacher, cached: TeacherTopK | None) -> _Students:
    """Distil the student from the teacher, then prune and fine-tune it (if the recipe does)."""
    c, teacher = run.c, trained.model
    t0 = time.perf_counter()
    _log(c, "distilling student")
    if cached is None and c.distill_top_k > 0:
        t1 = time.perf_counter()
        cached = cache_teacher(c, teacher, run.prep)
        run.phase("teacher_top_k", t1)
    student, student_fit = distill_student(
        teacher, c.student_config(run.prep.data.n_items), run.prep.train_split,
        c.train_config(c.student_epochs, c.student_lr_schedule), c.distill_config(),
        cached=cached,
    )  # fmt: skip
    run.phase("student", t0)
    pruned, pruning = _prune(run, student, teacher, cached)
    return _Students(teacher, trained.fit, student, student_fit, pruned, pruning, cached)


def _prune(
    run: _Run, student: SASRec, teacher: SASRec, cached: TeacherTopK | None
) -> tuple[SASRec, dict[str, Any]]:
    """The pruned, fine-tuned student and the report's account of it; the student itself
    when the recipe prunes nothing."""
    c = run.c
    if not prunes(c):
        return student, {"ran": False, "ratio": c.prune_ratio}
    t0 = time.perf_counter()
    _log(
        c,
        f"pruning {c.prune_ratio:.0%} of heads/FFN units, {c.prune_hidden_ratio:.0%} of "
        "hidden channels, and fine-tuning",
    )
    pruned, prune_info, finetune_fit = prune_and_finetune(
        student,
        teacher,
        run.prep.train_split,
        prune_config=PruneConfig(
            ratio=c.prune_ratio,
            importance_batches=c.importance_batches,
            prune_heads=c.prune_heads,
            prune_ffn=c.prune_ffn,
            hidden_ratio=c.prune_hidden_ratio,
        ),
        train_config=c.train_config(c.finetune_epochs, c.finetune_lr_schedule),
        distill_config=c.distill_config(),
        cached=cached,
    )
    run.phase("prune_finetune", t0)
    return pruned, {
        "ran": True,
        **asdict(prune_info),
        "ratio": c.prune_ratio,
        "importance": "first-order Taylor |sum w*dL/dw| per head / FFN unit / hidden channel",
        "finetune_best_epoch": finetune_fit.best_epoch,
        "finetune_val_ndcg@10": finetune_fit.best_ndcg,
    }


def _served_table(run: _Run, students: _Students) -> _ServedTable:
    """The last stage's item rows, or (pq4) their product quantization, fine-tuned."""
    c, base = run.c, students.pruned
    base_name = "pruned" if students.pruning["ran"] else "student"
    if c.item_encoding != "pq4":
        info = row_table_info(c.item_encoding, base.config.dim)
        return _ServedTable(item_array(base), info, base_name, base)
    t0 = time.perf_counter()
    table, pq_model, info = product_quantize(
        c, base, students.teacher, run.prep.train_split, students.cached
    )
    run.phase("pq", t0)
    return _ServedTable(table, info, f"{base_name}+pq4m{c.pq_subspaces}", pq_model)


def _evaluate_stages(run: _Run, models: dict[str, SASRec]) -> _Evaluated:
    """Export each fp32 stage to ONNX, check it against PyTorch, checkpoint it, and measure
    its metrics and latency."""
    c = run.c
    t0 = time.perf_counter()
    _log(c, "exporting, quantizing and evaluating every stage")
    evaluated = _Evaluated(models, onnx={}, parity={}, stages=[])
    for name, model in models.items():
        model.cpu().eval()
        onnx_bytes = export_onnx(model)
        evaluated.parity[name] = check_parity(onnx_bytes, model, run.test_inputs[:512])
        evaluated.onnx[name] = onnx_bytes
        save_checkpoint(model, checkpoint_dir(run.out, run.version) / f"{name}.pt")
        latency = _fp32_latency(c, model, onnx_bytes, run.test_inputs[:32])
        evaluated.stages.append(
            StageResult(
                stage=name,
                params=model.num_params(),
                size_bytes=len(onnx_bytes),
                size_kind="fp32 ONNX",
                # Through the exported fp32 ONNX file (parity-checked against PyTorch above),
                # so fp32 -> +int8 compares ONNX with ONNX: quantization alone.
                metrics=run.measure(onnx_encoder(onnx_bytes), item_array(model), name),
                latency=latency,
            )
        )
    run.phase("export_evaluate", t0)
    return evaluated


def _fp32_latency(
    c: CompressConfig, model: SASRec, onnx_bytes: bytes, inputs: npt.NDArray[np.int64]
) -> dict[str, float]:
    """One fp32 stage's latency through onnxruntime and (keys `torch_*`) PyTorch, 1 thread."""
    latency = measure_latency(
        onnx_encoder(onnx_bytes, threads=1), inputs, budget_s=c.latency_budget_s
    )
    with torch_threads(1):
        torch_lat = measure_latency(torch_encoder(model), inputs, budget_s=c.latency_budget_s)
    latency.update({f"torch_{k}": v for k, v in torch_lat.items()})
    return latency


def _ship(
    run: _Run,
    students: _Students,
    table: _ServedTable,
    evaluated: _Evaluated,
    popularity_metrics: dict[str, float],
) -> _Shipped:
    """Quantize the served stage, evaluate the served artifact (the INT8 encoder over the
    item table as the bundle stores it), then write, verify and pack the bundle."""
    c = run.c
    t0 = time.perf_counter()
    int8_onnx, shipped_onnx = _served_encoder(
        c, evaluated.onnx[table.fp32_name], table.items, run.prep.split
    )
    run.phase("quantize", t0)

    t0 = time.perf_counter()
    served_name = f"{table.fp32_name}+int8"
    served = onnx_encoder(int8_onnx)
    served_metrics = run.measure(served, _stored_items(c, table.items), served_name)
    golden_inputs = pad_left(run.prep.split.valid.histories[: c.n_golden], c.max_len)
    golden_atol, golden_spread = golden_tolerance(served, golden_inputs)
    arch = _architecture(students)
    recipe = _recipe(run, students, evaluated, table.info, golden_spread)
    bundle_metrics = {f"test_{k}": v for k, v in served_metrics.items()}
    bundle_metrics.update({f"popularity_test_{k}": v for k, v in popularity_metrics.items()})
    archive = _write_and_pack(
        c, run.bundle_dir, run.prep.data, int8_onnx, shipped_onnx, table.items,
        golden_inputs=golden_inputs, golden_outputs=served(golden_inputs),
        golden_atol=golden_atol, architecture=arch, recipe=recipe, metrics=bundle_metrics,
    )  # fmt: skip
    served_latency = measure_latency(
        onnx_encoder(int8_onnx, threads=1), run.test_inputs[:32], budget_s=c.latency_budget_s
    )
    # The served stage's size is the archive ops upload (`POST /admin/models`): the artifact
    # that ships. The report gives the unpacked directory's beside it.
    stage = StageResult(
        stage=served_name,
        params=students.pruned.num_params(),
        size_bytes=archive.stat().st_size,
        size_kind="bundle archive",
        metrics=served_metrics,
        latency=served_latency,
    )
    run.phase("evaluate_bundle", t0)
    return _Shipped(stage, archive, len(shipped_onnx), golden_atol, arch, recipe)


def _stored_items(
    c: CompressConfig, items: npt.NDArray[np.float32] | PQTable
) -> npt.NDArray[np.float32]:
    """The item matrix exactly as the bundle stores it, decoded: what the service scores."""
    if isinstance(items, PQTable):
        return items.decode()
    stored, scales = bundle.encode_items(items, c.item_encoding)
    return bundle.decode_items(stored, scales)


def _architecture(students: _Students) -> dict[str, Any]:
    return {
        "type": "SASRec",
        "config": students.pruned.config.to_dict(),
        "params": students.pruned.num_params(),
        "teacher": students.teacher.config.to_dict(),
        "student": students.student.config.to_dict(),
    }


def _recipe(
    run: _Run,
    students: _Students,
    evaluated: _Evaluated,
    item_table: dict[str, Any],
    golden_spread: float,
) -> dict[str, Any]:
    """How the served bundle was made: the manifest's `recipe` and the report's."""
    c = run.c
    kl = {
        name: kl_to_teacher(students.teacher, m, run.test_inputs[:1024])
        for name, m in evaluated.models.items()
        if name != "teacher"
    }
    pruning = students.pruning
    if pruning["ran"]:
        pruning = {**pruning, "kl_to_teacher": kl["pruned"]}
    teacher_fit, student_fit = students.teacher_fit, students.student_fit
    return {
        "config": _jsonable(asdict(c)),
        "teacher": {"best_epoch": teacher_fit.best_epoch, "val_ndcg@10": teacher_fit.best_ndcg},
        "distillation": {
            "temperature": c.temperature,
            "alpha": c.alpha,
            "top_k": c.distill_top_k,
            "student_init": c.student_init,
            "best_epoch": student_fit.best_epoch,
            "val_ndcg@10": student_fit.best_ndcg,
            "kl_to_teacher": kl["student"],
        },
        "pruning": pruning,
        "quantization": _quantization_recipe(c),
        "item_table": item_table,
        "onnx_parity_max_abs_diff": evaluated.parity,
        "golden_spread": golden_spread,
    }


def _quantization_recipe(c: CompressConfig) -> dict[str, Any]:
    return {
        "method": QUANTIZE_METHODS[c.quantize_activations],
        "activations": c.quantize_activations,
        "calibration_users": c.calibration_users if c.quantize_activations == "static" else 0,
        "weight_type": "QInt8",
        "per_channel": c.quantize_per_channel,
        "reduce_range": c.quantize_reduce_range,
        "embeddings": c.quantize_embeddings,
        "item_encoding": c.item_encoding,
        "item_embedding": "shared with items.npy" if c.quantize_embeddings else "fp32",
    }


def _report(
    run: _Run,
    evaluated: _Evaluated,
    shipped: _Shipped,
    popularity_metrics: dict[str, float],
) -> CompressResult:
    """Write the report (JSON and markdown) beside the bundle; the run's result."""
    served_metrics = shipped.stage.metrics
    stages = [*evaluated.stages, shipped.stage]
    ratio = served_metrics["ndcg@10"] / max(popularity_metrics["ndcg@10"], 1e-12)
    bundle_dir, archive = run.bundle_dir, shipped.archive
    report: dict[str, Any] = {
        "version": run.version,
        "bundle_dir": str(bundle_dir),
        "archive": str(archive),
        "archive_bytes": archive.stat().st_size,
        "bundle_dir_bytes": sum(p.stat().st_size for p in bundle_dir.iterdir() if p.is_file()),
        "int8_onnx_bytes": shipped.shipped_onnx_bytes,
        "dataset": run.prep.data.counts(),
        "evaluation": "leave-one-out test split, full ranking, seen items removed",
        "popularity": popularity_metrics,
        "stages": [asdict(s) for s in stages],
        "served_stage": shipped.stage.stage,
        "acceptance": {
            "ndcg@10_vs_popularity": ratio,
            "required": ACCEPTANCE_RATIO,
            "passed": ratio >= ACCEPTANCE_RATIO,
        },
        "golden_atol": shipped.golden_atol,
        "recipe": shipped.recipe,
        "architecture": shipped.architecture,
        "timings_s": run.timings,
        "torch": torch.__version__,
    }
    report_path = run.out / f"{run.version}-report.json"
    report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    (run.out / f"{run.version}-report.md").write_text(
        markdown_report(report, stages, popularity_metrics)
    )
    return CompressResult(
        bundle_dir=bundle_dir,
        archive=archive,
        report=report,
        report_path=report_path,
        table=format_table(stages, popularity_metrics),
        ranks=run.ranks,
        models=evaluated.models,
        fp32_onnx=evaluated.onnx,
    )


def _served_encoder(
    c: CompressConfig, fp32_onnx: bytes, items: npt.NDArray[np.float32] | PQTable, split: Split
) -> tuple[bytes, bytes]:
    """(self-contained INT8 encoder, the one the bundle ships). Tied embedding: the encoder
    looks items up in the bundle's own item table, which the shipped model.onnx reads from
    items.npy (and item_scales.npy / codebooks.npy), stored once. Off: the fp32 table stays
    inside."""
    int8_onnx = quantize_onnx(
        fp32_onnx,
        QuantizeConfig(
            per_channel=c.quantize_per_channel,
            reduce_range=c.quantize_reduce_range,
            embeddings=c.quantize_embeddings,
            activations=c.quantize_activations,
        ),
        calibration=calibration_inputs(split, c),
    )
    if not c.quantize_embeddings:
        return int8_onnx, int8_onnx
    served = share_item_table(int8_onnx, items, c.item_encoding)
    return served, link_item_table(served)


def _write_and_pack(
    c: CompressConfig,
    bundle_dir: Path,
    data: InteractionData,
    served_onnx: bytes,
    shipped_onnx: bytes,
    items: npt.NDArray[np.float32] | PQTable,
    *,
    golden_inputs: npt.NDArray[np.int64],
    golden_outputs: npt.NDArray[np.float32],
    golden_atol: float,
    architecture: dict[str, Any],
    recipe: dict[str, Any],
    metrics: dict[str, float],
) -> Path:
    """Write the bundle, prove the shipped file reproduces the served encoder, pack it."""
    bundle.write_bundle(
        bundle_dir,
        model_version=bundle_dir.name,
        onnx_model=shipped_onnx,
        item_matrix=items,
        vocab=data.vocab,
        popularity=data.popularity(),
        max_len=c.max_len,
        golden_inputs=golden_inputs,
        golden_outputs=golden_outputs,
        item_encoding=c.item_encoding,
        golden_atol=golden_atol,
        architecture=architecture,
        recipe=recipe,
        metrics=metrics,
        dataset=dict(data.counts()),
    )
    if c.quantize_embeddings:
        check_linked_bundle(bundle_dir, served_onnx)
    # The shipped file, as the service opens it (by path, external data resolved in the bundle).
    bundle.verify_golden(
        bundle.read_bundle(bundle_dir), onnx_encoder(str(bundle_dir / bundle.MODEL_FILE))
    )
    archive = bundle_dir.parent / f"{bundle_dir.name}.tar.gz"
    bundle.pack_bundle(bundle_dir, archive)
    return archive


def product_quantize(
    c: CompressConfig,
    model: SASRec,
    teacher: SASRec,
    split: Split,
    cached: TeacherTopK | None,
) -> tuple[PQTable, SASRec, dict[str, Any]]:
    """4-bit PQ of `model`'s item table, fine-tuned by distillation with the codes fixed:
    (the table, a plain model holding its decoded vectors, what was done)."""
    if not c.quantize_embeddings:
        raise ValueError(
            "pq4 ships the encoder's item lookup from the codes: keep quantize_embeddings"
        )
    _log(c, f"product-quantizing the item table: {c.pq_subspaces} subspaces x 4 bits")
    table = train_pq(item_array(model), m=c.pq_subspaces, seed=c.seed)
    pq_model = with_pq_items(model, table, reassign=c.pq_reassign)
    then = "reassigned every fine-tuning step" if c.pq_reassign else "fixed"
    info: dict[str, Any] = {
        "encoding": "pq4",
        "subspaces": c.pq_subspaces,
        "centroids": PQ_MAX_CENTROIDS,
        "bytes_per_item": c.pq_subspaces // 2,
        "assignment": f"k-means per subspace on the trained item vectors, codes then {then}",
        "finetune_epochs": c.pq_finetune_epochs,
    }
    if c.pq_finetune_epochs > 0:
        loss_fn = distillation_loss(
            teacher,
            c.distill_config(),
            mm_dtype=mm_dtype(c.train_config(c.pq_finetune_epochs)),
            cached=cached,
        )
        result = fit(
            pq_model,
            train=split.train,
            valid=split.valid,
            config=c.train_config(c.pq_finetune_epochs, c.finetune_lr_schedule),
            loss_fn=loss_fn,
            desc="pq fine-tune",
        )
        info.update(finetune_best_epoch=result.best_epoch, finetune_val_ndcg10=result.best_ndcg)
        table = pq_table_of(pq_model)
    return table, decoded_copy(pq_model), info


_VALUE_BITS = {"int8": 8, "int4": 4, "fp16": 16, "fp32": 32}


def row_table_info(encoding: ItemEncoding, dim: int) -> dict[str, Any]:
    """The report's account of an item table stored as rows of `dim` values (int8, int4,
    fp16, fp32; a pq4 table's is `product_quantize`'s)."""
    scale_bytes = 4 if encoding in ("int8", "int4") else 0  # one float32 per row
    info: dict[str, Any] = {
        "encoding": encoding,
        "bytes_per_item": dim * _VALUE_BITS[encoding] // 8 + scale_bytes,
    }
    if encoding == "int4":
        info["quantizer"] = (
            "signed 4-bit values, one float32 scale per row: per-row clip search, then "
            "least-squares scale refits (bundle.items.quantize_int4)"
        )
    return info


@dataclass
class Variant:
    """One more served bundle from a finished run: its fp32 model with the item table encoded
    another way (int4 rows; pq4 codes, fine-tuned), quantized and shipped like the run's."""

    # the fp32 model it comes from: the run's own ("pruned") for int4 rows; for pq4 a model
    # of its own, e.g. "student+pq4m8", the fp32 encoder over the decoded table
    fp32_name: str
    served_name: str  # the bundle: "pruned+int4", "student+pq4m8+int8"
    fp32_model: SASRec  # eval mode, CPU, the (decoded) table inside
    fp32_onnx: bytes
    bundle_dir: Path
    archive: Path
    item_table: dict[str, Any]


def make_variant(
    c: CompressConfig,
    result: CompressResult,
    prep: PreparedData,
    teacher: SASRec,
    cached: TeacherTopK | None,
    *,
    encoding: ItemEncoding,
    subspaces: int = 0,
) -> Variant:
    """A bundle next to `result`'s with its item table as `encoding` (pq4: `subspaces`
    codes), from the same fp32 model (the pruned one when the run pruned), so encodings
    compare on one model."""
    base_name = "pruned" if "pruned" in result.models else "student"
    base = result.models[base_name]
    vc = dataclasses.replace(c, item_encoding=encoding, pq_subspaces=subspaces or c.pq_subspaces)
    items: npt.NDArray[np.float32] | PQTable
    if encoding == "pq4":
        items, fp32_model, info = product_quantize(vc, base, teacher, prep.train_split, cached)
        fp32_onnx = export_onnx(fp32_model)
        suffix = f"pq4m{vc.pq_subspaces}"
        fp32_name, served_name = f"{base_name}+{suffix}", f"{base_name}+{suffix}+int8"
    else:
        items, fp32_model, fp32_onnx = item_array(base), base, result.fp32_onnx[base_name]
        info = row_table_info(encoding, base.config.dim)
        suffix = encoding
        fp32_name, served_name = base_name, f"{base_name}+{encoding}"
    served, shipped = _served_encoder(vc, fp32_onnx, items, prep.split)
    golden = pad_left(prep.split.valid.histories[: c.n_golden], c.max_len)
    encode = onnx_encoder(served)
    atol, _ = golden_tolerance(encode, golden)
    bundle_dir = result.bundle_dir.parent / f"{result.bundle_dir.name}-{suffix}"
    recipe = {"variant_of": result.report["version"], "item_table": info,
              "config": _jsonable(asdict(vc))}  # fmt: skip
    archive = _write_and_pack(
        vc, bundle_dir, prep.data, served, shipped, items, golden_inputs=golden,
        golden_outputs=encode(golden), golden_atol=atol,
        architecture=result.report["architecture"], recipe=recipe, metrics={},
    )  # fmt: skip
    return Variant(
        fp32_name=fp32_name,
        served_name=served_name,
        fp32_model=fp32_model,
        fp32_onnx=fp32_onnx,
        bundle_dir=bundle_dir,
        archive=archive,
        item_table=info,
    )


def _sample(eval_set: EvalSet, n: int, *, seed: int) -> EvalSet:
    if n <= 0 or len(eval_set) <= n:
        return eval_set
    idx = np.sort(np.random.default_rng(seed).choice(len(eval_set), size=n, replace=False))
    return EvalSet([eval_set.histories[i] for i in idx], eval_set.targets[idx])


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
