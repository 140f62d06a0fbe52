"""Knowledge distillation of a smaller SASRec student from the teacher's logits.

Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): the student matches the
teacher's softened distribution over the catalog at every position,

    loss = alpha · T² · KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) · CE

where CE is the usual full-softmax next-item loss on the hard labels and the T² factor keeps
the soft-target gradients on the same scale as the hard ones when T changes.

    student, result = distill_student(teacher, student_config, split, TrainConfig(),
                                      DistillConfig(temperature=2.0, alpha=0.7))
    kl_to_teacher(teacher, student, split.test.inputs(max_len=50))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from models.losses import softmax_loss
from models.sasrec import SASRec, SASRecConfig
from models.split import Split
from models.train import (
    FitResult,
    LossFn,
    TrainConfig,
    fit,
    mm_dtype,
    seed_everything,
    target_states,
)


@dataclass
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha goes to hard-label CE


def distillation_loss(
    teacher: SASRec, config: DistillConfig, *, mm_dtype: torch.dtype | None = None
) -> LossFn:
    """A loss for `models.train.fit` that distills from the frozen `teacher`."""
    T, alpha = config.temperature, config.alpha
    teacher.eval()

    def loss(student: SASRec, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_hidden = target_states(teacher, inputs, targets)  # (M, C_t)
        return softmax_loss(
            target_states(student, inputs, targets),  # (M, C)
            student.item_matrix()[1:],
            targets[targets > 0] - 1,
            teacher_hidden=t_hidden,
            teacher_items=teacher.item_matrix()[1:].detach(),
            temperature=T,
            alpha=alpha,
            mm_dtype=mm_dtype,
        )

    return loss


def distill_student(
    teacher: SASRec,
    student_config: SASRecConfig,
    split: Split,
    train_config: TrainConfig,
    distill_config: DistillConfig,
) -> tuple[SASRec, FitResult]:
    """Train a fresh student (seeded) against `teacher` on `split.train`."""
    seed_everything(train_config.seed + 1)
    student = SASRec(student_config)
    teacher.to(torch.device(train_config.device))
    result = fit(
        student,
        train=split.train,
        valid=split.valid,
        config=train_config,
        loss_fn=distillation_loss(teacher, distill_config, mm_dtype=mm_dtype(train_config)),
        desc="student",
    )
    return student, result


def kl_to_teacher(
    teacher: SASRec,
    student: SASRec,
    inputs: npt.NDArray[np.int64],
    *,
    temperature: float = 1.0,
    batch_size: int = 512,
) -> float:
    """Mean KL(teacher || student) of the next-item distribution at the last position
    (the one that is served), over the rows of `inputs` (U, L)."""
    teacher.eval()
    student.eval()
    dev_t = next(teacher.parameters()).device
    dev_s = next(student.parameters()).device
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))
            t = (teacher(x.to(dev_t)) @ teacher.item_matrix()[1:].T).cpu() / temperature
            s = (student(x.to(dev_s)) @ student.item_matrix()[1:].T).cpu() / temperature
            kl = F.kl_div(
                F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum"
            )
            total += float(kl)
    return total / len(inputs)
