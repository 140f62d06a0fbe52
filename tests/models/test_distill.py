from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.distill import (
    DistillConfig,
    distill_student,
    distillation_loss,
    kl_to_teacher,
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
