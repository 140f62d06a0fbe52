"""Knowledge distillation of a smaller SASRec student from the teacher's logits.

Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): the student matches the
teacher's softened distribution over the catalog at every position,

    loss = alpha · T² · KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) · CE

where CE is the usual full-softmax next-item loss on the hard labels and the T² factor keeps
the soft-target gradients on the same scale as the hard ones when T changes.

With `DistillConfig(top_k=K)` the teacher runs once, before training (`teacher_top_k`): for
every training position it keeps its K most likely items with their exact probabilities at T,
and the loss spreads the remaining mass evenly over the other items. A step then costs about
what a plain cross-entropy step costs (on Amazon Beauty the exact loss recomputes a 256-wide
teacher's logits over 54,542 items at every step of every epoch). `top_k=0` is the exact loss.

With `DistillConfig(init="teacher_pca")` the student does not start from random embeddings:
its item and position embeddings are the teacher's, projected onto their top principal
directions (`pca_embeddings`), so the student begins with the teacher's item geometry and
distillation has only the blocks to teach from scratch.

    student, result = distill_student(teacher, student_config, split, TrainConfig(),
                                      DistillConfig(temperature=2.0, alpha=0.7))
    kl_to_teacher(teacher, student, split.test.inputs(max_len=50))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from models.losses import TopK, softmax_loss
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
    training_arrays,
)

StudentInit = Literal["random", "teacher_pca"]  # the student's starting embeddings


@dataclass
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha goes to hard-label CE
    top_k: int = 0  # > 0: distill from the teacher's cached top-K per position (see module doc)
    init: StudentInit = "random"


@dataclass
class TeacherTopK:
    """The teacher's top-K next-item distribution at every position of
    `training_arrays(train, max_len)`: `position[r, t]` is the row of `top_k` for row r,
    column t (-1 where there is no target), `target[i]` the hard label that row was made for."""

    top_k: TopK  # (P, K)
    position: torch.Tensor  # (R, L) int64
    target: torch.Tensor  # (P,) int64, 0-based item

    def lookup(self, rows: torch.Tensor, targets: torch.Tensor) -> TopK:
        """The summaries of the target positions of a batch: `rows` (B,) into the training
        arrays, `targets` (B, L') their last L' columns, as `models.train.fit` passes them."""
        pos = self.position[rows.to(self.position.device)][:, -targets.shape[1] :]
        picked = pos[(targets > 0).to(pos.device)]
        if bool((picked < 0).any()) or not torch.equal(
            self.target[picked].to(targets.device), targets[targets > 0] - 1
        ):
            raise ValueError("batch does not match the training arrays the teacher was cached on")
        return self.top_k[picked]


def teacher_top_k(
    teacher: SASRec,
    train: list[npt.NDArray[np.int64]],
    *,
    k: int,
    temperature: float,
    batch_size: int = 256,
) -> TeacherTopK:
    """Run the frozen `teacher` once over every training position and keep its top-`k` items
    and their log-probabilities under softmax(logits / temperature) over the whole catalog."""
    teacher.eval()
    device = next(teacher.parameters()).device
    inputs, targets = training_arrays(train, teacher.config.max_len)
    has = targets > 0
    position = np.full(targets.shape, -1, dtype=np.int64)
    position[has] = np.arange(int(has.sum()))
    items = teacher.item_matrix()[1:].detach()
    k = min(k, items.shape[0])
    index, log_prob = [], []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start : start + batch_size]).to(device)
            y = torch.from_numpy(targets[start : start + batch_size]).to(device)
            logits = (target_states(teacher, x, y) @ items.T) / temperature  # (m, n)
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            top = torch.topk(logits, k, dim=1, sorted=False)
            index.append(top.indices.to(torch.int32).cpu())
            log_prob.append((top.values - lse).cpu())
    return TeacherTopK(
        top_k=TopK(torch.cat(index).to(device), torch.cat(log_prob).to(device)),
        position=torch.from_numpy(position),
        target=torch.from_numpy(targets[has] - 1).to(device),
    )


def distillation_loss(
    teacher: SASRec,
    config: DistillConfig,
    *,
    mm_dtype: torch.dtype | None = None,
    cached: TeacherTopK | None = None,
) -> LossFn:
    """A loss for `models.train.fit` that distills from the frozen `teacher`, or from its
    cached top-K summary when `cached` is given."""
    T, alpha = config.temperature, config.alpha
    teacher.eval()

    def loss(
        model: SASRec,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cached is not None:
            if rows is None:
                raise ValueError("a cached teacher needs the batch's row numbers")
            return softmax_loss(
                target_states(model, inputs, targets),
                model.item_matrix()[1:],
                targets[targets > 0] - 1,
                teacher_top_k=cached.lookup(rows, targets),
                temperature=T,
                alpha=alpha,
                mm_dtype=mm_dtype,
            )
        with torch.no_grad():
            t_hidden = target_states(teacher, inputs, targets)  # (M, C_t)
        return softmax_loss(
            target_states(model, inputs, targets),  # (M, C)
            model.item_matrix()[1:],
            targets[targets > 0] - 1,
            teacher_hidden=t_hidden,
            teacher_items=teacher.item_matrix()[1:].detach(),
            temperature=T,
            alpha=alpha,
            mm_dtype=mm_dtype,
        )

    return loss


def pca_embeddings(teacher: SASRec, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's item embeddings (N, C_t) and position embeddings (L, C_t) projected onto
    the `dim` principal directions of its (uncentred) item matrix: (N, dim), (L, dim).

    Scores keep their meaning: item·item products are the teacher's, up to the discarded
    directions. The input scale of the student (sqrt(dim), not sqrt(C_t)) is compensated so
    the first block sees item and position terms in the teacher's proportion.
    """
    items = teacher.item_matrix().detach().float().cpu()  # (N, C_t), row 0 = padding (zeros)
    if dim > items.shape[1]:
        raise ValueError(f"student dim {dim} exceeds the teacher's {items.shape[1]}")
    _, _, vh = torch.linalg.svd(items[1:], full_matrices=False)  # (C_t, C_t)
    basis = vh[:dim].T  # (C_t, dim)
    pos = teacher.pos_emb.detach().float().cpu() @ basis  # (L, dim)
    ratio = teacher.config.embedding_scale / math.sqrt(dim)
    return items @ basis, pos / ratio


def init_from_teacher(student: SASRec, teacher: SASRec) -> None:
    """Start `student` from `pca_embeddings(teacher, student's dim)` (in place)."""
    if student.config.max_len != teacher.config.max_len or (
        student.config.n_items != teacher.config.n_items
    ):
        raise ValueError("student and teacher differ in catalog size or max_len")
    items, pos = pca_embeddings(teacher, student.config.dim)
    with torch.no_grad():
        student.item_emb.weight.copy_(items)
        student.pos_emb.copy_(pos)


def distill_student(
    teacher: SASRec,
    student_config: SASRecConfig,
    split: Split,
    train_config: TrainConfig,
    distill_config: DistillConfig,
    *,
    cached: TeacherTopK | None = None,
) -> tuple[SASRec, FitResult]:
    """Train a fresh student (seeded) against `teacher` on `split.train` (or against
    `cached`, its top-K summary on the same training data)."""
    seed_everything(train_config.seed + 1)
    student = SASRec(student_config)
    if distill_config.init == "teacher_pca":
        init_from_teacher(student, teacher)
    teacher.to(torch.device(train_config.device))
    loss_fn = distillation_loss(
        teacher, distill_config, mm_dtype=mm_dtype(train_config), cached=cached
    )
    result = fit(
        student,
        train=split.train,
        valid=split.valid,
        config=train_config,
        loss_fn=loss_fn,
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
