"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

https://arxiv.org/abs/1808.09781 — a causal Transformer over the user's item history whose
last hidden state is the user vector; items are scored with the *tied* item embedding
(score_i = user_vec · item_emb_i), so serving needs only the encoder plus the item matrix.

Shapes use B = batch, T = sequence length (<= max_len), C = model dim, H = heads,
D = head dim, F = feed-forward hidden size, N = n_items + 1 (row 0 = padding).

Pruning-friendly layout: every block owns explicit Q/K/V/O Linear layers whose width is
`n_heads[b] * head_dim`, and an FFN whose hidden size is `ffn_hidden[b]`, so `models.prune`
can rebuild them physically smaller block by block. The hidden dimension C can be pruned
too; such a model keeps the item-embedding factor it was trained with (`emb_scale`).

Positions are counted from the END of the sequence (pos = max_len - T + arange(T)), so an
input trimmed on the left to the batch's longest history yields the same user vector as the
full max_len padding (the service trims padding; `tests/models/test_sasrec.py` checks it).

    from models.sasrec import SASRec, SASRecConfig
    model = SASRec(SASRecConfig(n_items=1000, max_len=50, dim=64))
    user_vec = model(item_seq)          # int64 (B, T) left-padded -> float32 (B, C)
    same = model.last_state(item_seq)   # the same vector, the way the exported encoder computes it

`forward` is the model as trained (every position through every block); `last_state` skips
what the user vector does not depend on: in the final block only the last position is a
query and goes through the FFN (the other positions still give keys and values).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

# A large negative instead of -inf: exp() of it is 0 and it stays finite through INT8 kernels.
MASK_VALUE = -1e9


@dataclass
class SASRecConfig:
    n_items: int  # catalog size without padding; embedding has n_items + 1 rows
    max_len: int = 50
    dim: int = 64
    n_blocks: int = 2
    head_dim: int = 32
    # Per-block head counts / FFN sizes; empty means "uniform", filled in __post_init__.
    n_heads: list[int] = field(default_factory=list)
    ffn_hidden: list[int] = field(default_factory=list)
    dropout: float = 0.2
    default_heads: int = 2
    ffn_mult: int = 2
    # Factor on the item embeddings in the input; None means sqrt(dim). A model whose hidden
    # dimension was pruned keeps the sqrt(original dim) it was trained with.
    emb_scale: float | None = None

    def __post_init__(self) -> None:
        if not self.n_heads:
            self.n_heads = [self.default_heads] * self.n_blocks
        if not self.ffn_hidden:
            self.ffn_hidden = [self.ffn_mult * self.dim] * self.n_blocks
        if len(self.n_heads) != self.n_blocks or len(self.ffn_hidden) != self.n_blocks:
            raise ValueError("n_heads and ffn_hidden need one entry per block")
        if min(self.n_heads) < 1 or min(self.ffn_hidden) < 1:
            raise ValueError("every block needs at least one head and one FFN unit")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def embedding_scale(self) -> float:
        """The factor applied to the item embeddings: `emb_scale`, or sqrt(dim) when unset."""
        return math.sqrt(self.dim) if self.emb_scale is None else float(self.emb_scale)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        inner = n_heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.o = nn.Linear(inner, dim)
        # No dropout on the (B, H, T, T) attention weights: on CPU sampling that mask costs
        # about a quarter of a training step, and dropout on the residual branches suffices.

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: (B, T, C) keys and values; query: (B, Q, C), default x; mask: (B, 1, Q, T) bool,
        # True = may attend.
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        xq = x if query is None else query
        Q = xq.shape[1]
        q = self.q(xq).view(B, Q, H, D).transpose(1, 2)  # (B, H, Q, D)
        k = self.k(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = self.v(x).view(B, T, H, D).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, Q, T)
        att = att.masked_fill(~mask, MASK_VALUE)
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, Q, H * D)  # (B, Q, H*D)
        out: torch.Tensor = self.o(y)  # (B, Q, C)
        return out


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.fc2(F.gelu(self.fc1(x))))  # (B, T, C)
        return out


class Block(nn.Module):
    """Pre-LayerNorm Transformer block."""

    def __init__(self, dim: int, n_heads: int, head_dim: int, ffn_hidden: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, head_dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        out: torch.Tensor = x + self.ffn(self.ln2(x))  # (B, T, C)
        return out

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`forward(x, mask)[:, -1:]` computed for the last position only: every position
        still provides keys and values, but only the last one is a query and goes through
        the FFN. (B, T, C) -> (B, 1, C)."""
        h = self.ln1(x)
        last = x[:, -1:] + self.drop(self.attn(h, mask[:, :, -1:], query=h[:, -1:]))
        out: torch.Tensor = last + self.ffn(self.ln2(last))  # (B, 1, C)
        return out


class SASRec(nn.Module):
    causal: torch.Tensor  # buffers, declared for type checkers
    eye: torch.Tensor

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.item_emb = nn.Embedding(c.n_items + 1, c.dim, padding_idx=0)
        self.pos_emb = nn.Parameter(torch.zeros(c.max_len, c.dim))
        self.emb_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, h, c.head_dim, f, c.dropout)
            for h, f in zip(c.n_heads, c.ffn_hidden, strict=True)
        )
        self.ln_f = nn.LayerNorm(c.dim)
        # (T, T) lower-triangular; sliced to the input length at run time.
        # (L, L) masks, sliced to the input length at run time (buffers, so ONNX needs no EyeLike).
        self.register_buffer(
            "causal", torch.ones(c.max_len, c.max_len, dtype=torch.bool).tril(), persistent=False
        )
        self.register_buffer("eye", torch.eye(c.max_len, dtype=torch.bool), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden_states(self, item_seq: torch.Tensor) -> torch.Tensor:
        """All positions' hidden states (training uses every position): (B, T) -> (B, T, C)."""
        x, mask, keep = self._block_inputs(item_seq)
        for block in self.block_list():
            x = block(x, mask) * keep
        out: torch.Tensor = self.ln_f(x)  # (B, T, C)
        return out

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """The model as trained: every position through every block, the last one returned.
        int64 (B, T) left-padded -> user vector float32 (B, C)."""
        return self.hidden_states(item_seq)[:, -1, :]

    def last_state(self, item_seq: torch.Tensor) -> torch.Tensor:
        """What `forward` returns, computed the way it is served (the exported encoder): the
        final block runs only the last position's query and FFN, which is all the user vector
        depends on. (B, T) -> (B, C)."""
        x, mask, keep = self._block_inputs(item_seq)
        *first, final = self.block_list()
        for block in first:
            x = block(x, mask) * keep
        x = final.forward_last(x, mask) * keep[:, -1:]  # (B, 1, C)
        out: torch.Tensor = self.ln_f(x[:, 0, :])  # (B, C)
        return out

    def _block_inputs(
        self, item_seq: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded input (B, T, C), attention mask (B, 1, T, T) and real-item mask (B, T, 1)."""
        T = item_seq.shape[1]
        keep = item_seq > 0  # (B, T) real items
        # Positions relative to the end: the last item always gets pos_emb[max_len - 1].
        pos = self.pos_emb[self.config.max_len - T :]  # (T, C)
        x = self.item_emb(item_seq) * self.config.embedding_scale + pos  # (B, T, C)
        x = self.emb_drop(x) * keep.unsqueeze(-1)
        causal = self.causal[:T, :T]  # (T, T)
        # Query i may see key j <= i when j is a real item; padding queries see only themselves
        # so no softmax row is all-masked (no NaN); their outputs are zeroed below anyway.
        eye = self.eye[:T, :T]  # (T, T)
        mask = (causal & keep.unsqueeze(1)) | eye  # (B, T, T)
        return x, mask.unsqueeze(1), keep.unsqueeze(-1)

    def block_list(self) -> list[Block]:
        """The blocks, typed (nn.ModuleList iterates as plain Modules)."""
        return [cast(Block, b) for b in self.blocks]

    def item_matrix(self) -> torch.Tensor:
        """Tied output embedding, (N, C); row 0 is padding."""
        weight: torch.Tensor = self.item_emb.weight
        return weight

    def num_params(self) -> int:
        return count_params(self)

    def block_params(self) -> int:
        """Parameters of the attention + FFN Linear layers (what structured pruning shrinks)."""
        return sum(
            count_params(m)
            for b in self.block_list()
            for m in (b.attn.q, b.attn.k, b.attn.v, b.attn.o, b.ffn.fc1, b.ffn.fc2)
        )


def count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def build_model(config: SASRecConfig | dict[str, Any]) -> SASRec:
    """Rebuild a model from its (possibly JSON-loaded) config."""
    if isinstance(config, dict):
        config = SASRecConfig(**config)
    return SASRec(config)


def encoder_params(model: SASRec) -> int:
    """Parameters needed to encode a user, without the item table (counted apart as N x C)."""
    return model.num_params() - count_params(model.item_emb)


def encoder_flops(config: SASRecConfig, seq_len: int) -> int:
    """FLOPs of one `last_state` request of `seq_len` positions, padding included.

    Convention: 2 FLOPs per multiply-accumulate of the matrix products only (Q/K/V/O
    projections, Q·K^T, attention-weighted V, both FFN layers), as
    `torch.utils.flop_counter.FlopCounterMode` counts them. Not counted: the item-table
    gather, biases and elementwise ops (scaling, masking, softmax, LayerNorm, GELU, residuals).
    """
    if not 1 <= seq_len <= config.max_len:
        raise ValueError(f"seq_len must be in 1..{config.max_len}, got {seq_len}")
    T, C = seq_len, config.dim
    macs = 0
    for b, (heads, hidden) in enumerate(zip(config.n_heads, config.ffn_hidden, strict=True)):
        inner = heads * config.head_dim
        q = 1 if b == config.n_blocks - 1 else T  # the final block queries the last position only
        macs += 2 * T * C * inner  # K and V for every position
        macs += 2 * q * C * inner  # Q and O projections
        macs += 2 * q * T * inner  # scores (Q, T) per head and the weighted sum of V
        macs += 2 * q * C * hidden  # FFN fc1 and fc2
    return 2 * macs
