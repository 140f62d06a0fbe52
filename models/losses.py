"""Full-catalog softmax losses, computed in token chunks with hand-written gradients.

Training SASRec+ on a real catalog (Amazon Beauty: 54,542 items) is dominated by the
(tokens × items) logit matrix, not by the Transformer. Plain autograd materialises that
matrix, its log-softmax, and the gradient of the log-softmax (each tokens × items floats),
and spends most of a CPU step on those memory passes. Here the forward pass walks over chunks
of tokens, computes each chunk's logits, loss and logit gradient in place, and immediately
folds that gradient into the gradients of the hidden states and of the item matrix
(two matrix products), so at most one chunk of logits lives at a time and nothing is
recomputed in backward.

One function covers both uses:

- hard labels: cross-entropy over all items (the "SASRec+" loss, Klenitskiy & Vasilev,
  RecSys 2023, https://arxiv.org/abs/2309.07602);
- knowledge distillation (Hinton et al. 2015): alpha · T² · KL(softmax(t/T) || softmax(s/T))
  + (1 - alpha) · CE, where the teacher's logits t come from its own hidden states and item
  matrix, chunk by chunk, never stored whole;
- the same distillation against a teacher summarised by its top-K items (`TopK`, computed
  once per run by `models.distill.teacher_top_k`): the teacher's exact probabilities at T
  for its K best items, and the remaining mass spread evenly over the other items. Each
  step then skips the teacher's catalog-wide product and two of the softmax passes.

d loss / d logits is (softmax(s) - onehot(y)) for CE and T · (softmax(s/T) - softmax(t/T))
for the T²-scaled KL term; both are averaged over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Logit entries per chunk (tokens × items): 8M floats = 32 MB of scratch, about one L3
# cache; larger chunks spill it and make a step slower, not faster.
CHUNK_ELEMENTS = 1 << 23


@dataclass
class TopK:
    """A teacher's next-item distribution at temperature T, summarised per token.

    index (M, K) holds its K most likely items (0..n-1), log_prob (M, K) their exact log
    probabilities under softmax(teacher logits / T) over the whole catalog. The other n - K
    items share the remaining probability mass equally.
    """

    index: torch.Tensor
    log_prob: torch.Tensor

    def __getitem__(self, rows: slice | torch.Tensor) -> TopK:
        return TopK(self.index[rows], self.log_prob[rows])


def _top_k_kl_and_grad(
    log_q: torch.Tensor, teacher: TopK, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ KL(teacher || student) over the chunk's rows, and weight · (q - p_teacher).

    log_q (m, n) is the student's log-softmax at T; it is consumed (becomes the gradient)."""
    n = log_q.shape[1]
    idx = teacher.index.long()
    log_pk = teacher.log_prob.to(log_q.dtype)
    pk = log_pk.exp()  # (m, K)
    n_tail = n - idx.shape[1]
    tail_mass = (1.0 - pk.sum(1)).clamp_(min=0.0)  # (m,)
    u = tail_mass / n_tail if n_tail > 0 else torch.zeros_like(tail_mass)  # (m,) per tail item
    log_q_k = log_q.gather(1, idx)  # (m, K)
    kl = (pk * (log_pk - log_q_k)).sum()
    if n_tail > 0:
        sum_tail_log_q = log_q.sum(1) - log_q_k.sum(1)
        kl = kl + (torch.xlogy(tail_mass, u) - u * sum_tail_log_q).sum()
    grad = log_q.exp_().sub_(u[:, None])
    grad.scatter_add_(1, idx, u[:, None] - pk)
    return kl, grad.mul_(weight)


class _SoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # (M, C) student states at target positions
        items: torch.Tensor,  # (n, C) student item matrix, real items only
        targets: torch.Tensor,  # (M,) in 0..n-1
        teacher_logits_fn: Any,  # callable(start, stop) -> (m, n) teacher logits, or None
        teacher_top_k: TopK | None,
        temperature: float,
        alpha: float,
        mm_dtype: torch.dtype,
    ) -> torch.Tensor:
        M, n = hidden.shape[0], items.shape[0]
        # Matrix products in mm_dtype (bfloat16 uses AMX/AVX-512-BF16 where the CPU has it);
        # softmax, loss and accumulation stay in the parameters' dtype.
        items_mm = items.to(mm_dtype)
        chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
        grad_hidden = torch.empty_like(hidden)
        grad_items = torch.zeros_like(items)
        total = hidden.new_zeros(())
        distilling = teacher_logits_fn is not None or teacher_top_k is not None
        w_hard = 1.0 - alpha if distilling else 1.0
        rows = torch.arange(min(chunk, M), device=hidden.device)
        for start in range(0, M, chunk):
            stop = min(start + chunk, M)
            h = hidden[start:stop]  # (m, C)
            y = targets[start:stop]  # (m,)
            r = rows[: stop - start]
            h_mm = h.to(mm_dtype)
            logits = (h_mm @ items_mm.T).to(hidden.dtype)  # (m, n)
            grad: torch.Tensor | None = None  # (m, n) d loss / d logits
            if w_hard > 0:
                log_p = torch.log_softmax(logits, dim=1)
                total -= w_hard * log_p[r, y].sum()
                grad = log_p.exp_()
                grad[r, y] -= 1.0
                if w_hard != 1.0:
                    grad.mul_(w_hard)
            if teacher_logits_fn is not None and alpha > 0:
                T = temperature
                log_q = torch.log_softmax(logits / T, dim=1)  # student at T
                log_pt = torch.log_softmax(teacher_logits_fn(start, stop) / T, dim=1)
                pt = log_pt.exp()
                total += alpha * T * T * (pt * (log_pt - log_q)).sum()
                soft = log_q.exp_().sub_(pt).mul_(alpha * T)
                grad = soft if grad is None else grad.add_(soft)
                del log_q, log_pt, pt, soft
            if teacher_top_k is not None and alpha > 0:
                T = temperature
                log_q = torch.log_softmax(logits.div_(T), dim=1)  # student at T (logits spent)
                kl, soft = _top_k_kl_and_grad(log_q, teacher_top_k[start:stop], alpha * T)
                total += alpha * T * T * kl
                grad = soft if grad is None else grad.add_(soft)
                del log_q, soft
            assert grad is not None
            del logits
            grad_mm = grad.to(mm_dtype)
            grad_hidden[start:stop] = grad_mm @ items_mm  # (m, C)
            grad_items += grad_mm.T @ h_mm  # (n, C)
            del grad, grad_mm
        ctx.save_for_backward(grad_hidden, grad_items)
        return total / M

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_items = ctx.saved_tensors
        M = grad_hidden.shape[0]
        scale = grad_out / M
        return grad_hidden * scale, grad_items * scale, None, None, None, None, None, None


def softmax_loss(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_items: torch.Tensor | None = None,
    teacher_top_k: TopK | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    mm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean full-softmax loss over tokens.

    hidden (M, C) and items (n, C) give the student's logits hidden @ items.T; targets (M,)
    index into 0..n-1. With teacher_hidden (M, C_t) and teacher_items (n, C_t), the loss is
    alpha · T² · KL(teacher || student at temperature T) + (1 - alpha) · CE. With
    teacher_top_k (rows aligned with hidden) instead, the teacher is that summary.
    `mm_dtype=torch.bfloat16` runs the three large matrix products in bfloat16 (about 3x
    faster on CPUs with AMX or AVX-512-BF16); the default keeps the parameters' dtype.
    """
    dtype = mm_dtype or hidden.dtype
    if (teacher_hidden is None) != (teacher_items is None):
        raise ValueError("give both teacher_hidden and teacher_items, or neither")
    if teacher_top_k is not None and teacher_hidden is not None:
        raise ValueError("give the teacher as hidden states and items, or as top-K, not both")
    if teacher_top_k is not None and teacher_top_k.index.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"teacher_top_k has {teacher_top_k.index.shape[0]} rows, hidden has {hidden.shape[0]}"
        )
    teacher_fn = None
    if teacher_hidden is not None and teacher_items is not None:
        th, tw = teacher_hidden.detach().to(dtype), teacher_items.detach().to(dtype)

        def teacher_fn(start: int, stop: int) -> torch.Tensor:
            return (th[start:stop] @ tw.T).to(hidden.dtype)

    if hidden.shape[0] == 0:
        return (hidden.sum() + items.sum()) * 0.0  # keeps both in the graph
    loss: torch.Tensor = _SoftmaxLoss.apply(  # type: ignore[no-untyped-call]
        hidden, items, targets, teacher_fn, teacher_top_k, float(temperature), float(alpha), dtype
    )
    return loss
