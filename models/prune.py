"""Structured pruning that physically shrinks SASRec: attention heads, FFN units and
(optionally) hidden channels.

Importance is the first-order Taylor estimate of the loss change when a whole group of
weights is removed (Molchanov et al., "Importance Estimation for Neural Network Pruning",
CVPR 2019, https://arxiv.org/abs/1906.10771):

    I(group) = | Σ_{w in group} w · ∂L/∂w |      with ∂L/∂w summed over a few batches

A head's group is its rows of Q, K, V (weights and biases) and its columns of O; an FFN
unit's group is its row of fc1 (and bias) and its column of fc2. In every block the lowest
`round(ratio · count)` heads and FFN units are removed (at least one of each survives) and
smaller `nn.Linear` layers are built from the surviving slices, so parameter count, ONNX
file size and FLOPs really drop. A short fine-tune with distillation from the teacher then
recovers accuracy.

With `hidden_ratio > 0` the hidden dimension C (the residual stream) shrinks as well. A
channel's group is everything that reads or writes it: its column of the item and position
embeddings, its entry of every LayerNorm (weight and bias, ln_f included), its input column
of Q/K/V/fc1 in every block and its output row of O/fc2 (weight and bias). The lowest
`round(hidden_ratio · C)` channels are removed everywhere at once, so the bundle's item matrix
(n_items × C, the bulk of the bundle) shrinks by the same fraction. LayerNorm then normalises
over the surviving channels only, which changes its statistics; the fine-tune absorbs that.
The pruned model keeps the input scale sqrt(C) it was trained with (`SASRecConfig.emb_scale`).

    importance = taylor_importance(student, loss_fn, split.train)
    pruned, info = prune_model(student, importance=importance,
                               config=PruneConfig(ratio=0.5, hidden_ratio=0.25))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.distill import DistillConfig, TeacherTopK, distillation_loss
from models.sasrec import SASRec, SASRecConfig
from models.split import Split
from models.train import FitResult, LossFn, TrainConfig, fit, mm_dtype, training_arrays


@dataclass
class PruneConfig:
    ratio: float = 0.5  # fraction of heads and of FFN units removed in every block
    importance_batches: int = 8
    prune_heads: bool = True
    prune_ffn: bool = True
    hidden_ratio: float = 0.0  # fraction of the hidden channels C removed (0: C is kept)


@dataclass
class BlockImportance:
    heads: torch.Tensor  # (H,)
    ffn: torch.Tensor  # (F,)


@dataclass
class Importance:
    blocks: list[BlockImportance]
    hidden: torch.Tensor  # (C,) one score per hidden channel


@dataclass
class PruneInfo:
    params_before: int
    params_after: int
    block_params_before: int
    block_params_after: int
    dim_before: int
    dim_after: int
    kept_heads: list[list[int]] = field(default_factory=list)
    kept_ffn: list[int] = field(default_factory=list)  # kept unit count per block
    kept_units: list[list[int]] = field(default_factory=list)  # kept FFN unit indices
    kept_channels: list[int] = field(default_factory=list)  # kept hidden channel indices


def taylor_importance(
    model: SASRec,
    loss_fn: LossFn,
    train: list[npt.NDArray[np.int64]],
    *,
    n_batches: int = 8,
    batch_size: int = 128,
    seed: int = 0,
) -> Importance:
    """|Σ w·∂L/∂w| per head, FFN unit and hidden channel, gradients accumulated over
    `n_batches`."""
    device = next(model.parameters()).device
    inputs, targets = training_arrays(train, model.config.max_len)
    order = np.random.default_rng(seed).permutation(len(inputs))[: n_batches * batch_size]
    model.eval()  # no dropout: the estimate should describe the deterministic network
    model.zero_grad(set_to_none=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = torch.from_numpy(inputs[idx]).to(device)
        y = torch.from_numpy(targets[idx]).to(device)
        loss_fn(model, x, y, torch.from_numpy(idx)).backward()  # type: ignore[no-untyped-call]
    out: list[BlockImportance] = []
    with torch.no_grad():
        hidden = torch.zeros(model.config.dim, device=device)
        for p, axis in channel_slices(model):
            wg = p * _grad(p)
            hidden += wg if wg.dim() == 1 else wg.sum(1 - axis)
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
    return Importance(blocks=out, hidden=hidden.abs().cpu())


def channel_slices(model: SASRec) -> list[tuple[torch.Tensor, int]]:
    """Every parameter that reads or writes the hidden channels, with its channel axis:
    a channel's slice is `p.select(axis, c)` (the whole 1-D parameter's entry c)."""
    ps: list[tuple[torch.Tensor, int]] = [(model.item_emb.weight, 1), (model.pos_emb, 1)]
    for b in model.block_list():
        ps += [(ln.weight, 0) for ln in (b.ln1, b.ln2)] + [(ln.bias, 0) for ln in (b.ln1, b.ln2)]
        ps += [(lin.weight, 1) for lin in (b.attn.q, b.attn.k, b.attn.v, b.ffn.fc1)]
        ps += [(lin.weight, 0) for lin in (b.attn.o, b.ffn.fc2)]
        ps += [(lin.bias, 0) for lin in (b.attn.o, b.ffn.fc2)]
    ps += [(model.ln_f.weight, 0), (model.ln_f.bias, 0)]
    return ps


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


def _sliced_norm(ln: nn.LayerNorm, channels: torch.Tensor) -> nn.LayerNorm:
    new = nn.LayerNorm(len(channels), eps=ln.eps).to(ln.weight.device)
    with torch.no_grad():
        new.weight.copy_(ln.weight.detach()[channels])
        new.bias.copy_(ln.bias.detach()[channels])
    return new


def prune_model(
    model: SASRec,
    *,
    importance: Importance | list[BlockImportance],
    config: PruneConfig,
) -> tuple[SASRec, PruneInfo]:
    """Return a new, physically smaller SASRec; `model` is left untouched.

    `importance` may be per-block scores only when `config.hidden_ratio` is 0."""
    c = model.config
    if isinstance(importance, Importance):
        blocks, hidden = importance.blocks, importance.hidden
    else:
        blocks, hidden = importance, None
    if config.hidden_ratio > 0:
        if hidden is None:
            raise ValueError("hidden_ratio > 0 needs hidden-channel scores (taylor_importance)")
        channels = _keep(hidden, config.hidden_ratio)
    else:
        channels = torch.arange(c.dim)
    kept_heads: list[torch.Tensor] = []
    kept_units: list[torch.Tensor] = []
    for block, imp in zip(model.block_list(), blocks, strict=True):
        H, F_ = block.attn.n_heads, block.ffn.fc1.out_features
        kept_heads.append(_keep(imp.heads, config.ratio) if config.prune_heads else torch.arange(H))
        kept_units.append(_keep(imp.ffn, config.ratio) if config.prune_ffn else torch.arange(F_))
    pruned = _rebuild(model, channels, kept_heads, kept_units)
    info = PruneInfo(
        params_before=model.num_params(),
        params_after=pruned.num_params(),
        block_params_before=model.block_params(),
        block_params_after=pruned.block_params(),
        dim_before=c.dim,
        dim_after=len(channels),
        kept_heads=[h.tolist() for h in kept_heads],
        kept_ffn=[len(u) for u in kept_units],
        kept_units=[u.tolist() for u in kept_units],
        kept_channels=channels.tolist(),
    )
    return pruned, info


def _rebuild(
    model: SASRec,
    channels: torch.Tensor,
    kept_heads: list[torch.Tensor],
    kept_units: list[torch.Tensor],
) -> SASRec:
    """A new SASRec made of `model`'s selected hidden channels, heads and FFN units."""
    c = model.config
    new_config = SASRecConfig(
        **{
            **c.to_dict(),
            "n_heads": [len(h) for h in kept_heads],
            "ffn_hidden": [len(u) for u in kept_units],
            "dim": len(channels),
            # The input scale the network was trained with, whatever its new width.
            "emb_scale": c.emb_scale if len(channels) == c.dim else c.embedding_scale,
        }
    )
    device = next(model.parameters()).device
    new_model = SASRec(new_config).to(device)
    channels = channels.to(device)
    with torch.no_grad():
        new_model.item_emb.weight.copy_(model.item_emb.weight.detach()[:, channels])
        new_model.pos_emb.copy_(model.pos_emb.detach()[:, channels])
    new_model.ln_f = _sliced_norm(model.ln_f, channels)
    for old, new, heads, units in zip(
        model.block_list(), new_model.block_list(), kept_heads, kept_units, strict=True
    ):
        D = old.attn.head_dim
        rows = (heads[:, None] * D + torch.arange(D)[None, :]).reshape(-1)  # (H'·D,)
        rows = rows.to(device)
        units = units.to(device)
        new.ln1 = _sliced_norm(old.ln1, channels)
        new.ln2 = _sliced_norm(old.ln2, channels)
        new.attn.q = _sliced(old.attn.q, rows=rows, cols=channels)
        new.attn.k = _sliced(old.attn.k, rows=rows, cols=channels)
        new.attn.v = _sliced(old.attn.v, rows=rows, cols=channels)
        new.attn.o = _sliced(old.attn.o, rows=channels, cols=rows)
        new.ffn.fc1 = _sliced(old.ffn.fc1, rows=units, cols=channels)
        new.ffn.fc2 = _sliced(old.ffn.fc2, rows=channels, cols=units)
    return new_model


def prune_and_finetune(
    model: SASRec,
    teacher: SASRec,
    split: Split,
    *,
    prune_config: PruneConfig,
    train_config: TrainConfig,
    distill_config: DistillConfig,
    cached: TeacherTopK | None = None,
) -> tuple[SASRec, PruneInfo, FitResult]:
    """Taylor-rank, physically prune, then fine-tune with distillation from `teacher` (or
    from `cached`, its top-K summary on `split.train`)."""
    loss_fn = distillation_loss(
        teacher, distill_config, mm_dtype=mm_dtype(train_config), cached=cached
    )
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
