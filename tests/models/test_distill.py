from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.distill import (
    DistillConfig,
    distill_student,
    distillation_loss,
    init_from_teacher,
    kl_to_teacher,
    pca_embeddings,
    teacher_top_k,
)
from models.sasrec import SASRec
from models.train import seed_everything, training_arrays
from tests.models.conftest import MAX_LEN, Dataset, quick_train, student_config


def test_distillation_lowers_kl_to_teacher(
    synthetic: Dataset, teacher: SASRec, student: SASRec
) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    seed_everything(1)
    untrained = SASRec(student_config(synthetic.n_items))
    ce_only, _ = distill_student(
        teacher, student_config(synthetic.n_items), synthetic.split, quick_train(),
        DistillConfig(alpha=0.0),
    )  # fmt: skip
    kl_distilled = kl_to_teacher(teacher, student, inputs)
    kl_untrained = kl_to_teacher(teacher, untrained, inputs)
    kl_ce_only = kl_to_teacher(teacher, ce_only, inputs)
    assert kl_distilled < 0.5 * kl_untrained
    assert kl_distilled < kl_ce_only


def test_kl_to_itself_is_zero(teacher: SASRec, synthetic: Dataset) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)[:50]
    assert abs(kl_to_teacher(teacher, teacher, inputs)) < 1e-5


def test_loss_mixes_soft_and_hard_terms(teacher: SASRec, student: SASRec) -> None:
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    y = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    soft = distillation_loss(teacher, DistillConfig(temperature=2.0, alpha=1.0))(student, x, y)
    hard = distillation_loss(teacher, DistillConfig(temperature=2.0, alpha=0.0))(student, x, y)
    mixed = distillation_loss(teacher, DistillConfig(temperature=2.0, alpha=0.25))(student, x, y)
    torch.testing.assert_close(mixed, 0.25 * soft + 0.75 * hard)
    # The soft term vanishes when the student is the teacher.
    self_soft = distillation_loss(teacher, DistillConfig(alpha=1.0))(teacher, x, y)
    assert float(self_soft.detach()) < 1e-5


def test_cached_top_k_teacher_lowers_kl_to_teacher(synthetic: Dataset, teacher: SASRec) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    cached = teacher_top_k(teacher, synthetic.split.train, k=16, temperature=2.0)
    distilled, _ = distill_student(
        teacher, student_config(synthetic.n_items), synthetic.split, quick_train(),
        DistillConfig(top_k=16), cached=cached,
    )  # fmt: skip
    ce_only, _ = distill_student(
        teacher, student_config(synthetic.n_items), synthetic.split, quick_train(),
        DistillConfig(alpha=0.0),
    )  # fmt: skip
    assert kl_to_teacher(teacher, distilled, inputs) < kl_to_teacher(teacher, ce_only, inputs)


def test_cached_teacher_with_the_whole_catalog_gives_the_exact_loss(
    synthetic: Dataset, teacher: SASRec, student: SASRec
) -> None:
    config = DistillConfig(temperature=2.0, alpha=0.7)
    cached = teacher_top_k(teacher, synthetic.split.train, k=synthetic.n_items, temperature=2.0)
    inputs, targets = training_arrays(synthetic.split.train, MAX_LEN)
    rows = torch.tensor([3, 0, 7, 1])
    x, y = torch.from_numpy(inputs[rows.numpy()]), torch.from_numpy(targets[rows.numpy()])
    keep = int((x > 0).sum(1).max())
    assert keep < MAX_LEN
    x, y = x[:, -keep:], y[:, -keep:]  # fit drops all-padding columns the same way
    student = copy.deepcopy(student).eval()  # no dropout: both calls see the same network
    exact = distillation_loss(teacher, config)(student, x, y)
    from_cache = distillation_loss(teacher, config, cached=cached)(student, x, y, rows)
    torch.testing.assert_close(from_cache, exact, rtol=1e-5, atol=1e-6)


def test_cached_teacher_refuses_rows_it_was_not_built_on(
    synthetic: Dataset, teacher: SASRec, student: SASRec
) -> None:
    cached = teacher_top_k(teacher, synthetic.split.train, k=8, temperature=2.0)
    inputs, targets = training_arrays(synthetic.split.train, MAX_LEN)
    x, y = torch.from_numpy(inputs[:4]), torch.from_numpy(targets[:4])
    wrong_rows = torch.tensor([4, 5, 6, 7])
    assert not np.array_equal(targets[:4], targets[4:8])
    loss = distillation_loss(teacher, DistillConfig(), cached=cached)
    with pytest.raises(ValueError, match="training arrays"):
        loss(student, x, y, wrong_rows)
    with pytest.raises(ValueError, match="row numbers"):
        loss(student, x, y)


def test_pca_embeddings_keep_the_teachers_item_geometry(teacher: SASRec) -> None:
    items = teacher.item_matrix().detach()
    full, _ = pca_embeddings(teacher, teacher.config.dim)  # a rotation: products unchanged
    torch.testing.assert_close(full @ full.T, items @ items.T, atol=1e-4, rtol=1e-4)
    half, pos = pca_embeddings(teacher, teacher.config.dim // 2)
    assert half.shape == (items.shape[0], teacher.config.dim // 2)
    assert pos.shape == (teacher.config.max_len, teacher.config.dim // 2)
    # The kept directions carry most of the item-item scores.
    want, got = (items @ items.T)[1:, 1:], (half @ half.T)[1:, 1:]
    corr = np.corrcoef(want.flatten().numpy(), got.flatten().numpy())[0, 1]
    assert corr > 0.8
    with pytest.raises(ValueError, match="exceeds"):
        pca_embeddings(teacher, teacher.config.dim + 1)


def test_student_started_from_teacher_pca_learns_faster(
    synthetic: Dataset, teacher: SASRec
) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    seed_everything(1)
    started = SASRec(student_config(synthetic.n_items))
    init_from_teacher(started, teacher)
    torch.testing.assert_close(started.item_matrix()[0], torch.zeros(started.config.dim))
    kl = {}
    for init in ("random", "teacher_pca"):
        model, _ = distill_student(
            teacher, student_config(synthetic.n_items), synthetic.split, quick_train(epochs=1),
            DistillConfig(init=init),  # type: ignore[arg-type]
        )  # fmt: skip
        kl[init] = kl_to_teacher(teacher, model, inputs)
    assert kl["teacher_pca"] < 0.8 * kl["random"]
