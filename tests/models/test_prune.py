from __future__ import annotations

import copy

import pytest
import torch

from models.distill import DistillConfig, distillation_loss
from models.evaluate import evaluate, popularity_stage, torch_encoder
from models.prune import (
    BlockImportance,
    PruneConfig,
    prune_and_finetune,
    prune_model,
    taylor_importance,
)
from models.sasrec import SASRec
from models.train import TrainConfig
from tests.models.conftest import MAX_LEN, Dataset

RATIO = 0.5


@pytest.fixture(scope="module")
def importance(synthetic: Dataset, teacher: SASRec, student: SASRec) -> list[BlockImportance]:
    loss_fn = distillation_loss(teacher, DistillConfig())
    return taylor_importance(student, loss_fn, synthetic.split.train, n_batches=4, batch_size=64)


def test_importance_has_one_score_per_head_and_unit(
    student: SASRec, importance: list[BlockImportance]
) -> None:
    assert len(importance) == len(student.block_list())
    for block, imp in zip(student.block_list(), importance, strict=True):
        assert imp.heads.shape == (block.attn.n_heads,)
        assert imp.ffn.shape == (block.ffn.fc1.out_features,)
        assert (imp.heads >= 0).all() and (imp.ffn > 0).any()
    assert all(p.grad is None for p in student.parameters())  # gradients cleaned up


def test_pruning_physically_shrinks_linear_layers_by_the_ratio(
    student: SASRec, importance: list[BlockImportance]
) -> None:
    pruned, info = prune_model(student, importance=importance, config=PruneConfig(ratio=RATIO))
    for old, new in zip(student.block_list(), pruned.block_list(), strict=True):
        h_old, h_new = old.attn.n_heads, new.attn.n_heads
        assert h_new == h_old - round(RATIO * h_old)
        d = old.attn.head_dim
        assert new.attn.q.weight.shape == (h_new * d, student.config.dim)
        assert new.attn.k.weight.shape == new.attn.v.weight.shape == new.attn.q.weight.shape
        assert new.attn.o.weight.shape == (student.config.dim, h_new * d)
        f_old = old.ffn.fc1.out_features
        assert new.ffn.fc1.weight.shape == (f_old - round(RATIO * f_old), student.config.dim)
        assert new.ffn.fc2.weight.shape == (student.config.dim, new.ffn.fc1.out_features)
    removed = 1 - info.block_params_after / info.block_params_before
    assert removed == pytest.approx(RATIO, abs=0.03)  # biases of o/fc2 are not pruned
    assert info.params_after == pruned.num_params() < student.num_params()
    assert pruned.config.n_heads == [len(h) for h in info.kept_heads]
    assert student.block_list()[0].attn.n_heads == student.config.n_heads[0]  # original untouched


def test_removing_heads_equals_zeroing_them_in_the_original(
    student: SASRec, importance: list[BlockImportance]
) -> None:
    """The rebuilt smaller layers compute exactly what the original does without those
    heads/units: proof that the surviving weights were sliced consistently."""
    pruned, info = prune_model(student, importance=importance, config=PruneConfig(ratio=RATIO))
    masked = copy.deepcopy(student)
    with torch.no_grad():
        for block, heads, units in zip(
            masked.block_list(), info.kept_heads, info.kept_units, strict=True
        ):
            d = block.attn.head_dim
            for head in set(range(block.attn.n_heads)) - set(heads):
                block.attn.o.weight[:, head * d : (head + 1) * d] = 0
            for unit in set(range(block.ffn.fc1.out_features)) - set(units):
                block.ffn.fc2.weight[:, unit] = 0
    x = torch.randint(1, student.config.n_items + 1, (8, MAX_LEN))
    x[:4, :10] = 0
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), masked.eval()(x), atol=1e-5, rtol=1e-4)


def test_least_important_heads_are_removed(student: SASRec) -> None:
    imp = [
        BlockImportance(
            heads=torch.tensor([0.1, 5.0, 0.2, 3.0]),
            ffn=torch.arange(b.ffn.fc1.out_features, dtype=torch.float32),
        )
        for b in student.block_list()
    ]
    _, info = prune_model(student, importance=imp, config=PruneConfig(ratio=0.5))
    assert info.kept_heads[0] == [1, 3]
    _, info = prune_model(student, importance=imp, config=PruneConfig(ratio=0.99))
    assert info.kept_heads[0] == [1]  # at least one head survives


def test_prune_and_finetune_keeps_the_model_useful(
    synthetic: Dataset, teacher: SASRec, student: SASRec
) -> None:
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False)
    pruned, info, _ = prune_and_finetune(
        student, teacher, synthetic.split,
        prune_config=PruneConfig(ratio=RATIO, importance_batches=4),
        train_config=cfg, distill_config=DistillConfig(),
    )  # fmt: skip
    assert info.params_after < info.params_before
    test = synthetic.split.test
    m = evaluate(
        torch_encoder(pruned), pruned.item_matrix().detach().numpy(), test, max_len=MAX_LEN
    )
    pop = evaluate(*popularity_stage(synthetic.test_popularity()), test, max_len=MAX_LEN)
    assert m["ndcg@10"] > 2 * pop["ndcg@10"]
