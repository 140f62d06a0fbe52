"""Structured pruning that physically shrinks SASRec: attention heads and FFN units.

Importance is the first-order Taylor estimate of the loss change when a whole group of
weights is removed (Molchanov et al., "Importance Estimation for Neural Network Pruning",
CVPR 2019, https://arxiv.org/abs/1906.10771):

    I(group) = | Σ_{w in group} w · ∂L/∂w |      with ∂L/∂w summed over a few batches

A head's group is its rows of Q, K, V (weights and biases) and its columns of O; an FFN
unit's group is its row of fc1 (and bias) and its column of fc2. In every block the lowest
`round(ratio · count)` heads and FFN units are removed (at least one of each survives) and
smaller `nn.Linear` layers are built from the surviving slices, so parameter count, ONNX
file size and FLOPs really drop. A short fine-tune with distillation from the teacher then
recovers accuracy. The hidden dimension C is left intact: it is shared by the embeddings,
every residual connection and the bundle's item matrix.

    pruned, info = prune_model(student, importance=taylor_importance(student, loss_fn, ...),
                               ratio=0.5)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.distill import DistillConfig, distillation_loss
from models.sasrec import SASRec, SASRecConfig
from models.split import Split
from models.train import FitResult, LossFn, TrainConfig, fit, mm_dtype, training_arrays


@dataclass
class PruneConfig:
    ratio: float = 0.5  # fraction of heads and of FFN units removed in every block
    importance_batches: int = 8
    prune_heads: bool = True
    prune_ffn: bool = True


@dataclass
class BlockImportance:
    heads: torch.Tensor  # (H,)
    ffn: torch.Tensor  # (F,)


@dataclass
class PruneInfo:
    params_before: int
    params_after: int
    block_params_before: int
    block_params_after: int
    kept_heads: list[list[int]] = field(default_factory=list)
    kept_ffn: list[int] = field(default_factory=list)  # kept unit count per block
    kept_units: list[list[int]] = field(default_factory=list)  # kept FFN unit indices


def taylor_importance(
    model: SASRec,
    loss_fn: LossFn,
    train: list[npt.NDArray[np.int64]],
    *,
    n_batches: int = 8,
    batch_size: int = 128,
    seed: int = 0,
) -> list[BlockImportance]:
    """|Σ w·∂L/∂w| per head and per FFN unit, gradients accumulated over `n_batches`."""
    device = next(model.parameters()).device
    inputs, targets = training_arrays(train, model.config.max_len)
    order = np.random.default_rng(seed).permutation(len(inputs))[: n_batches * batch_size]
    model.eval()  # no dropout: the estimate should describe the deterministic network
    model.zero_grad(set_to_none=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = torch.from_numpy(inputs[idx]).to(device)
        y = torch.from_numpy(targets[idx]).to(device)
        loss_fn(model, x, y).backward()  # type: ignore[no-untyped-call]
    out: list[BlockImportance] = []
    with torch.no_grad():
        for block in model.block_list():
            a, f = block.attn, block.ffn
            H, D = a.n_heads, a.head_dim
            score = torch.zeros(H, device=device)
            for lin in (a.q, a.k, a.v):
                wg = (lin.weight * _grad(lin.weight)).sum(1) + lin.bias * _grad(lin.bias)  # (H*D,)
                score += wg.view(H, D).sum(1)
            score += (a.o.weight * _grad(a.o.weight)).sum(0).view(H, D).sum(1)
            unit = (
                (f.fc1.weight * _grad(f.fc1.weight)).sum(1)
                + f.fc1.bias * _grad(f.fc1.bias)
                + (f.fc2.weight * _grad(f.fc2.weight)).sum(0)
            )  # (F,)
            out.append(BlockImportance(heads=score.abs().cpu(), ffn=unit.abs().cpu()))
    model.zero_grad(set_to_none=True)
    return out


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (ascending) of the entries that survive removing round(ratio·n) lowest."""
    n = len(scores)
    n_keep = max(1, n - round(ratio * n))
    return torch.sort(torch.topk(scores, n_keep).indices).values


def _sliced(
    lin: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """A new, smaller Linear holding `lin`'s selected output rows / input columns."""
    w = lin.weight.detach()
    b = lin.bias.detach()
    if rows is not None:
        w, b = w[rows], b[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0]).to(w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new


def prune_model(
    model: SASRec, *, importance: list[BlockImportance], config: PruneConfig
) -> tuple[SASRec, PruneInfo]:
    """Return a new, physically smaller SASRec; `model` is left untouched."""
    c = model.config
    kept_heads: list[torch.Tensor] = []
    kept_units: list[torch.Tensor] = []
    for block, imp in zip(model.block_list(), importance, strict=True):
        H, F_ = block.attn.n_heads, block.ffn.fc1.out_features
        kept_heads.append(_keep(imp.heads, config.ratio) if config.prune_heads else torch.arange(H))
        kept_units.append(_keep(imp.ffn, config.ratio) if config.prune_ffn else torch.arange(F_))
    new_config = SASRecConfig(
        **{
            **c.to_dict(),
            "n_heads": [len(h) for h in kept_heads],
            "ffn_hidden": [len(u) for u in kept_units],
        }
    )
    pruned = SASRec(new_config).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    pruned.load_state_dict(state, strict=False)
    for old, new, heads, units in zip(
        model.block_list(), pruned.block_list(), kept_heads, kept_units, strict=True
    ):
        D = old.attn.head_dim
        rows = (heads[:, None] * D + torch.arange(D)[None, :]).reshape(-1)  # (H'·D,)
        rows = rows.to(old.attn.q.weight.device)
        units = units.to(rows.device)
        new.ln1.load_state_dict(old.ln1.state_dict())
        new.ln2.load_state_dict(old.ln2.state_dict())
        new.attn.q = _sliced(old.attn.q, rows=rows)
        new.attn.k = _sliced(old.attn.k, rows=rows)
        new.attn.v = _sliced(old.attn.v, rows=rows)
        new.attn.o = _sliced(old.attn.o, cols=rows)
        new.ffn.fc1 = _sliced(old.ffn.fc1, rows=units)
        new.ffn.fc2 = _sliced(old.ffn.fc2, cols=units)
    info = PruneInfo(
        params_before=model.num_params(),
        params_after=pruned.num_params(),
        block_params_before=model.block_params(),
        block_params_after=pruned.block_params(),
        kept_heads=[h.tolist() for h in kept_heads],
        kept_ffn=[len(u) for u in kept_units],
        kept_units=[u.tolist() for u in kept_units],
    )
    return pruned, info


def prune_and_finetune(
    model: SASRec,
    teacher: SASRec,
    split: Split,
    *,
    prune_config: PruneConfig,
    train_config: TrainConfig,
    distill_config: DistillConfig,
) -> tuple[SASRec, PruneInfo, FitResult]:
    """Taylor-rank, physically prune, then fine-tune with distillation from `teacher`."""
    loss_fn = distillation_loss(teacher, distill_config, mm_dtype=mm_dtype(train_config))
    work = copy.deepcopy(model)
    importance = taylor_importance(
        work,
        loss_fn,
        split.train,
        n_batches=prune_config.importance_batches,
        batch_size=train_config.batch_size,
        seed=train_config.seed,
    )
    pruned, info = prune_model(work, importance=importance, config=prune_config)
    result = fit(
        pruned,
        train=split.train,
        valid=split.valid,
        config=train_config,
        loss_fn=loss_fn,
        desc="prune fine-tune",
    )
    return pruned, info, result
