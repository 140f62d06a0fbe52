"""Product quantization of the item table, learned after the fact and fine-tuned with the model.

`train_pq` splits the item vectors into M slices and runs k-means with 16 centroids in each
(4-bit codes, `bundle.pq`). `PQEmbedding` then stands in for the model's item embedding: the
codes stay fixed and the centroids are parameters, so distillation fine-tunes the codebooks
(and the encoder with them) through the same tied table that scores and embeds items, as
RecJPQ trains its sub-item embeddings (Petrov & Macdonald, WSDM 2024), here from a post-hoc
assignment instead of a truncated SVD.

    table = train_pq(item_array(model), m=16)
    pq_model = with_pq_items(model, table)      # fine-tune with models.train.fit
    table = pq_table_of(pq_model)               # what the bundle ships
    plain = decoded_copy(pq_model)              # plain SASRec, decoded table, for ONNX export
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bundle.pq import PQ_MAX_CENTROIDS, PQTable
from models.sasrec import SASRec

F32 = npt.NDArray[np.float32]


def train_pq(matrix: F32, *, m: int, iters: int = 25, seed: int = 0) -> PQTable:
    """4-bit PQ of `matrix` (rows, dim), row 0 the padding row: k-means (k-means++ seeding,
    Lloyd steps) on rows 1.. in each of the M slices; row 0 gets its nearest codes."""
    rows, dim = matrix.shape
    if dim % m or m % 2:
        raise ValueError(f"M = {m} must be even and divide the dimension {dim}")
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).reshape(rows, m, dim // m)
    codebooks = np.empty((m, PQ_MAX_CENTROIDS, dim // m), dtype=np.float32)
    codes = np.empty((rows, m), dtype=np.int64)
    for sub in range(m):
        centers = _kmeans(x[1:, sub], PQ_MAX_CENTROIDS, iters, rng)
        codebooks[sub] = centers.numpy()
        codes[:, sub] = torch.cdist(x[:, sub], centers).argmin(dim=1).numpy()
    return PQTable.from_codes(codes, codebooks)


def _kmeans(x: torch.Tensor, k: int, iters: int, rng: np.random.Generator) -> torch.Tensor:
    centers = x[[int(rng.integers(len(x)))]]
    while len(centers) < k:  # k-means++: far points are likelier seeds
        d2 = torch.cdist(x, centers).min(dim=1).values.double() ** 2
        p = (d2 / d2.sum()).numpy() if float(d2.sum()) > 0 else None
        centers = torch.cat([centers, x[[int(rng.choice(len(x), p=p))]]])
    for _ in range(iters):
        nearest = torch.cdist(x, centers).argmin(dim=1)
        sums = torch.zeros_like(centers).index_add_(0, nearest, x)
        counts = torch.bincount(nearest, minlength=k).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


class PQEmbedding(nn.Module):
    """An item embedding made of codes and trainable codebooks (see the module doc).

    Fixed codes by default. With `vectors` (the items' continuous vectors) the codes follow
    them instead: each training pass over the whole table reassigns every item to its nearest
    centroids, and gradients reach the vectors straight through that rounding (as in VQ-VAE
    and quantization-aware training), so an item can change codes while the codebooks move.
    The codes held are always those the last pass used, so evaluation reads what training saw.
    """

    codes: torch.Tensor  # (rows, M) int64 buffer
    subspace: torch.Tensor  # arange(M)

    def __init__(self, table: PQTable, vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("codes", torch.from_numpy(table.codes().astype(np.int64)))
        self.codebooks = nn.Parameter(torch.from_numpy(table.codebooks.copy()))
        self.register_buffer("subspace", torch.arange(table.m), persistent=False)
        self.vectors = None if vectors is None else nn.Parameter(vectors.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The decoded (rows, dim) table, differentiable in the codebooks."""
        if self.vectors is not None and self.training:
            self.reassign()
        rows: torch.Tensor = self(torch.arange(len(self.codes), device=self.codes.device))
        return rows

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        parts = self.codebooks[self.subspace, self.codes[idx]].flatten(-2)  # (..., dim)
        if self.vectors is None or not self.training:
            return parts
        v = self.vectors[idx]
        return parts + (v - v.detach())  # the value of the codes, the gradient of the vectors

    @torch.no_grad()
    def reassign(self, chunk: int = 8192) -> None:
        """Each item's nearest centroid in every subspace, from its current vector."""
        assert self.vectors is not None
        m, _, sub = self.codebooks.shape
        c = self.codebooks.detach()
        c_norm = (c**2).sum(-1)  # (M, K)
        for start in range(0, len(self.codes), chunk):
            v = self.vectors[start : start + chunk].detach().reshape(-1, m, sub)
            # argmin |v - c|^2 = argmin |c|^2 - 2 v.c
            dist = c_norm - 2 * torch.einsum("rmd,mkd->rmk", v, c)
            self.codes[start : start + chunk] = dist.argmin(-1)


def with_pq_items(model: SASRec, table: PQTable, *, reassign: bool = False) -> SASRec:
    """A copy of `model` whose tied item table is `table`: codebooks trainable, codes fixed,
    or (`reassign`) following the model's item vectors as they train."""
    if (table.rows, table.dim) != tuple(model.item_matrix().shape):
        raise ValueError(f"table {table.rows} x {table.dim} does not fit the model's items")
    out = copy.deepcopy(model)
    vectors = model.item_matrix().detach() if reassign else None
    out.item_emb = PQEmbedding(table, vectors).to(model.pos_emb.device)  # type: ignore[assignment]
    return out


def pq_table_of(model: SASRec) -> PQTable:
    emb = model.item_emb
    if not isinstance(emb, PQEmbedding):
        raise TypeError("the model's item embedding is not product-quantized")
    codes = emb.codes.cpu().numpy()
    return PQTable.from_codes(codes, emb.codebooks.detach().float().cpu().numpy())


def decoded_copy(model: SASRec) -> SASRec:
    """A plain SASRec (nn.Embedding items) holding the decoded table: what ONNX export and
    the fp32 evaluation take."""
    out = copy.deepcopy(model).cpu()
    table = out.item_matrix().detach().clone()
    plain = nn.Embedding(table.shape[0], table.shape[1], padding_idx=0)
    with torch.no_grad():
        plain.weight.copy_(table)
    out.item_emb = plain
    return out.eval()
