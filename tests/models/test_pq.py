from __future__ import annotations

import numpy as np
import torch

from models.pq import PQEmbedding, train_pq


def _table_and_vectors(rows: int = 400, dim: int = 8) -> tuple[np.ndarray, PQEmbedding]:
    x = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    x[0] = 0  # the padding row
    return x, PQEmbedding(train_pq(x, m=4), torch.from_numpy(x))


def test_fixed_codes_never_move() -> None:
    x, _ = _table_and_vectors()
    table = train_pq(x, m=4)
    emb = PQEmbedding(table).train()
    emb.codebooks.data.mul_(-1)  # the codebooks train; the codes stay
    _ = emb.weight
    np.testing.assert_array_equal(emb.codes.numpy(), table.codes())


def test_reassigned_codes_follow_the_vectors_while_training() -> None:
    _, emb = _table_and_vectors()
    assert emb.vectors is not None
    target = emb.codebooks.detach()[:, 3].flatten()  # centroid 3 of every subspace
    with torch.no_grad():
        emb.vectors[7] = target
    emb.eval()
    _ = emb.weight  # evaluation reads the codes training left
    assert not (emb.codes[7] == 3).all()
    emb.train()
    decoded = emb.weight
    assert (emb.codes[7] == 3).all()
    torch.testing.assert_close(decoded[7], target)


def test_gradients_reach_the_codebooks_and_the_vectors_straight_through() -> None:
    _, emb = _table_and_vectors()
    emb.train()
    (emb.weight * torch.arange(8.0)).sum().backward()
    assert emb.vectors is not None and emb.vectors.grad is not None
    # every row's vector gets the gradient of its decoded row: here the weights 0..7
    torch.testing.assert_close(emb.vectors.grad[5], torch.arange(8.0))
    assert emb.codebooks.grad is not None and emb.codebooks.grad.abs().sum() > 0
