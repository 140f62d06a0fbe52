from __future__ import annotations

import torch

from models.distill import DistillConfig, distill_student, distillation_loss, kl_to_teacher
from models.sasrec import SASRec
from models.train import seed_everything
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
