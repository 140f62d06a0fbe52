"""Train SASRec with full-softmax cross-entropy at every position ("SASRec+").

Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?"
(RecSys 2023, https://arxiv.org/abs/2309.07602): SASRec trained with cross-entropy over the
whole catalog instead of one sampled negative beats BERT4Rec. For catalogs too large for a
(B·T, N) logit matrix, `loss="sampled"` uses sampled softmax with shared uniform negatives.

The training loop (`fit`) is shared by teacher training, distillation (`models.distill`) and
post-pruning fine-tuning (`models.prune`): each passes its own loss function. Early stopping
keeps the weights with the best validation NDCG@10.

    from models.train import TrainConfig, train_teacher
    model, result = train_teacher(SASRecConfig(n_items=..., max_len=50), split, TrainConfig())
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from models.evaluate import evaluate, item_array, torch_encoder
from models.losses import softmax_loss
from models.sasrec import SASRec, SASRecConfig
from models.split import EvalSet, Split, pad_left


class LossFn(Protocol):
    """A training loss on one batch. `rows` (B,) are the batch's row numbers in
    `training_arrays(train, max_len)`, for losses that keep per-position data (the cached
    teacher of `models.distill`); inputs/targets may be cut to their last columns."""

    def __call__(
        self,
        model: SASRec,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


LrSchedule = Literal["constant", "cosine"]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    patience: int = 5  # epochs without validation NDCG@10 improvement before stopping
    loss: Literal["full", "sampled"] = "full"
    n_negatives: int = 256  # sampled softmax only
    max_grad_norm: float = 1.0
    # "cosine": the learning rate falls from `lr` to 0 along a half cosine over `epochs`
    # (per step); the last epochs then settle into a minimum instead of hovering around it.
    lr_schedule: LrSchedule = "constant"
    # Run the catalog-wide matrix products of the softmax losses in bfloat16 (faster where
    # the hardware has native bf16: AMX / AVX-512-BF16, GPUs); softmax and optimizer stay
    # float32. When to turn it on: docs/compression.md.
    bf16: bool = False
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


@dataclass
class FitResult:
    best_epoch: int
    best_ndcg: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def mm_dtype(config: TrainConfig) -> torch.dtype | None:
    return torch.bfloat16 if config.bf16 else None


def bf16_speedup(
    dim: int, n_items: int, *, device: str = "cpu", rows: int = 2048, repeats: int = 3
) -> float:
    """How many times faster the losses' catalog-wide product (rows × dim @ dim × n_items)
    runs in bfloat16 than in float32 here: > 1 on CPUs with native bf16 (AVX512-BF16, AMX)
    and on GPUs, far below 1 where bf16 is emulated."""
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, dim, generator=gen).to(dev)
    b = torch.randn(n_items, dim, generator=gen).to(dev)
    best: dict[torch.dtype, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y.T  # warm-up
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            x @ y.T
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        best[dtype] = min(times)
    return best[torch.float32] / best[torch.bfloat16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def training_arrays(
    train: Sequence[npt.NDArray[np.int64]], max_len: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Next-item pairs at every position: inputs/targets (n, max_len), 0 = padding / ignore."""
    usable = [s[-(max_len + 1) :] for s in train if len(s) >= 2]
    inputs = pad_left([s[:-1] for s in usable], max_len)
    targets = pad_left([s[1:] for s in usable], max_len)
    return inputs, targets


# A batch's rows go through the Transformer in this many groups of similar history length.
LENGTH_GROUPS = 8


def target_states(
    model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, groups: int = LENGTH_GROUPS
) -> torch.Tensor:
    """Hidden states at the positions that have a next item, (M, C), in the row-major order
    of `targets > 0`.

    The rows are sorted by history length and run through the model in `groups` groups,
    each trimmed to its own longest history. Positions count from the end of the sequence,
    so these are the states one padded pass computes, at a fraction of the cost when lengths
    vary: a random batch of Amazon Beauty histories (9 items on average) almost always holds
    one of 50, and one pass would run every row over 50 positions.
    """
    B = inputs.shape[0]
    if groups <= 1 or B <= 1:
        return model.hidden_states(inputs)[targets > 0]
    lengths = (inputs > 0).sum(1)
    flat = torch.arange(inputs.numel(), device=inputs.device).view(inputs.shape)
    states, where = [], []
    for rows in torch.tensor_split(torch.argsort(lengths, stable=True), min(groups, B)):
        keep = max(int(lengths[rows].max()), 1)
        has = targets[rows, -keep:] > 0
        states.append(model.hidden_states(inputs[rows, -keep:])[has])
        where.append(flat[rows, -keep:][has])
    return torch.cat(states)[torch.argsort(torch.cat(where))]


def full_softmax_loss(
    model: SASRec,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    mm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Cross-entropy over the whole catalog at every target position (chunked, see
    `models.losses`)."""
    h = target_states(model, inputs, targets)  # (M, C)
    return softmax_loss(h, model.item_matrix()[1:], targets[targets > 0] - 1, mm_dtype=mm_dtype)


def sampled_softmax_loss(n_negatives: int) -> LossFn:
    """Softmax over the positive and `n_negatives` uniform negatives shared by the batch."""

    def loss(
        model: SASRec,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = target_states(model, inputs, targets)  # (M, C)
        t = targets[targets > 0]  # (M,)
        w = model.item_matrix()
        neg = torch.randint(1, w.shape[0], (n_negatives,), device=inputs.device)  # (S,)
        pos_logit = (h * w[t]).sum(-1, keepdim=True)  # (M, 1)
        neg_logit = h @ w[neg].T  # (M, S)
        neg_logit = neg_logit.masked_fill(neg[None, :] == t[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # (M, 1 + S)
        return F.cross_entropy(logits, torch.zeros_like(t))

    return loss


def validation_ndcg(model: SASRec, valid: EvalSet) -> float:
    return evaluate(torch_encoder(model), item_array(model), valid, max_len=model.config.max_len)[
        "ndcg@10"
    ]


def fit(
    model: SASRec,
    *,
    train: Sequence[npt.NDArray[np.int64]],
    valid: EvalSet,
    config: TrainConfig,
    loss_fn: LossFn,
    desc: str = "train",
) -> FitResult:
    """AdamW over shuffled next-item batches; keeps the best-validation-NDCG@10 weights."""
    device = resolve_device(config.device)
    model.to(device)
    seed_everything(config.seed)
    inputs_np, targets_np = training_arrays(train, model.config.max_len)
    inputs = torch.from_numpy(inputs_np)
    targets = torch.from_numpy(targets_np)
    gen = torch.Generator().manual_seed(config.seed)
    opt = _optimizer(model, config)
    steps = config.epochs * -(-len(inputs) // config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=_lr_factor(config.lr_schedule, steps))
    best_state = copy.deepcopy(model.state_dict())
    best = FitResult(best_epoch=0, best_ndcg=validation_ndcg(model, valid), epochs_run=0)
    bad_epochs = 0
    bar = tqdm(range(1, config.epochs + 1), desc=desc, disable=not config.progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(inputs), generator=gen)
        loss = _train_epoch(
            model, inputs, targets, order, loss_fn=loss_fn, opt=opt, sched=sched, config=config,
            device=device,
        )  # fmt: skip
        ndcg = validation_ndcg(model, valid)
        best.history.append({"epoch": epoch, "loss": loss, "val_ndcg@10": ndcg})
        best.epochs_run = epoch
        bar.set_postfix(loss=f"{loss:.3f}", val_ndcg10=f"{ndcg:.4f}")
        if ndcg > best.best_ndcg:
            best.best_ndcg, best.best_epoch = ndcg, epoch
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return best


def _optimizer(model: SASRec, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on embeddings, biases and LayerNorms (common Transformer
    practice)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )


def _train_epoch(
    model: SASRec,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    *,
    loss_fn: LossFn,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    device: torch.device,
) -> float:
    """One pass over the training rows in `order`, a step per batch; the mean batch loss."""
    total = 0.0
    n_batches = 0
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        x, y = inputs[idx], targets[idx]
        keep = max(int((x > 0).sum(1).max()), 1)  # drop all-padding columns
        x, y = x[:, -keep:].to(device), y[:, -keep:].to(device)
        loss = loss_fn(model, x, y, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        opt.step()
        sched.step()
        total += float(loss.detach())
        n_batches += 1
    return total / max(n_batches, 1)


def _lr_factor(schedule: LrSchedule, steps: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate at optimizer step `step` of `steps`."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def train_teacher(
    model_config: SASRecConfig, split: Split, config: TrainConfig
) -> tuple[SASRec, FitResult]:
    """Build a fresh SASRec (seeded) and train it on `split.train`."""
    seed_everything(config.seed)
    model = SASRec(model_config)
    loss_fn = (
        functools.partial(full_softmax_loss, mm_dtype=mm_dtype(config))
        if config.loss == "full"
        else sampled_softmax_loss(config.n_negatives)
    )
    result = fit(
        model, train=split.train, valid=split.valid, config=config, loss_fn=loss_fn, desc="teacher"
    )
    return model, result
