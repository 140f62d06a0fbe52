import pytest
import torch
from torch.nn import functional as F

from models import losses
from models.losses import TopK, softmax_loss

M, N, C, C_T = 37, 211, 8, 12


def reference_softmax_loss(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_items: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
) -> torch.Tensor:
    """The same loss with plain autograd (materialises everything): the yardstick."""
    logits = hidden @ items.T
    if teacher_hidden is None or teacher_items is None:
        return F.cross_entropy(logits, targets)
    T = temperature
    t_logits = (teacher_hidden @ teacher_items.T).detach()
    kl = F.kl_div(
        F.log_softmax(logits / T, dim=-1),
        F.log_softmax(t_logits / T, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(logits, targets)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several chunks (and a ragged last one) even on these tiny shapes."""
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", N * 10)


def _tensors() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(M, C, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(N, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, N, (M,), generator=g)
    th = torch.randn(M, C_T, generator=g, dtype=torch.float64)
    tw = torch.randn(N, C_T, generator=g, dtype=torch.float64)
    return h, w, y, th, tw


@pytest.mark.parametrize(
    "teacher",
    [
        None,
        {"temperature": 2.0, "alpha": 0.7},
        {"temperature": 1.0, "alpha": 1.0},
        {"temperature": 4.0, "alpha": 0.2},
    ],
)
def test_chunked_loss_and_gradients_equal_plain_autograd(teacher: dict[str, float] | None) -> None:
    h, w, y, th, tw = _tensors()
    kw = {} if teacher is None else {"teacher_hidden": th, "teacher_items": tw, **teacher}
    ours = softmax_loss(h, w, y, **kw)  # type: ignore[arg-type]
    ref = reference_softmax_loss(h, w, y, **kw)  # type: ignore[arg-type]
    g_ours = torch.autograd.grad(ours * 3.0, (h, w))  # a scaled upstream gradient too
    g_ref = torch.autograd.grad(ref * 3.0, (h, w))
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_loss_through_a_view_of_the_item_matrix_reaches_the_full_parameter() -> None:
    h, w, y, _, _ = _tensors()
    full = torch.nn.Parameter(torch.cat([torch.zeros(1, C, dtype=w.dtype), w.detach()]))
    softmax_loss(h, full[1:], y).backward()
    assert full.grad is not None
    assert float(full.grad[0].abs().sum()) == 0.0  # the padding row gets no gradient
    assert float(full.grad[1:].abs().sum()) > 0.0


def test_no_target_positions_give_zero_loss_and_gradient() -> None:
    h = torch.zeros(0, C, requires_grad=True)
    w = torch.randn(N, C, requires_grad=True)
    loss = softmax_loss(h, w, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert w.grad is not None and float(w.grad.abs().sum()) == 0.0


def test_teacher_needs_both_states_and_items() -> None:
    h, w, y, th, _ = _tensors()
    with pytest.raises(ValueError, match="both"):
        softmax_loss(h, w, y, teacher_hidden=th)


def test_bfloat16_products_stay_close_to_float32() -> None:
    h64, w64, y, th64, tw64 = _tensors()
    h, w, th, tw = (t.detach().float() for t in (h64, w64, th64, tw64))
    h.requires_grad_(True)
    w.requires_grad_(True)
    kw = {"teacher_hidden": th, "teacher_items": tw, "temperature": 2.0, "alpha": 0.7}
    exact = softmax_loss(h, w, y, **kw)  # type: ignore[arg-type]
    g_exact = torch.autograd.grad(exact, (h, w))
    fast = softmax_loss(h, w, y, mm_dtype=torch.bfloat16, **kw)  # type: ignore[arg-type]
    g_fast = torch.autograd.grad(fast, (h, w))
    assert g_fast[0].dtype == torch.float32
    assert float(fast.detach()) == pytest.approx(float(exact.detach()), rel=0.02)
    for a, b in zip(g_fast, g_exact, strict=True):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert float(cos) > 0.99


def _teacher_top_k(th: torch.Tensor, tw: torch.Tensor, k: int, temperature: float) -> TopK:
    log_p = torch.log_softmax((th @ tw.T) / temperature, dim=1)
    top = torch.topk(log_p, k, dim=1)
    return TopK(top.indices.to(torch.int32), top.values)


def _top_k_dense(top: TopK, n: int) -> torch.Tensor:
    """The distribution a TopK stands for: exact on its K items, the rest spread evenly."""
    p_k = top.log_prob.exp()
    tail = (1 - p_k.sum(1, keepdim=True)).clamp(min=0) / max(n - p_k.shape[1], 1)
    dense = tail.expand(-1, n).clone()
    return dense.scatter(1, top.index.long(), p_k)


@pytest.mark.parametrize("k", [N, 17, 1])
def test_top_k_teacher_loss_and_gradients_equal_dense_kl(k: int) -> None:
    h, w, y, th, tw = _tensors()
    T, alpha = 2.0, 0.7
    top = _teacher_top_k(th, tw, k, T)
    ours = softmax_loss(h, w, y, teacher_top_k=top, temperature=T, alpha=alpha)
    p = _top_k_dense(top, N)
    log_q = torch.log_softmax((h @ w.T) / T, dim=1)
    kl = (torch.xlogy(p, p) - p * log_q).sum(1).mean()
    ref = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(h @ w.T, y)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    for a, b in zip(
        torch.autograd.grad(ours, (h, w)), torch.autograd.grad(ref, (h, w)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_top_k_of_the_whole_catalog_is_the_exact_teacher() -> None:
    h, w, y, th, tw = _tensors()
    kw = {"temperature": 2.0, "alpha": 0.7}
    exact = softmax_loss(h, w, y, teacher_hidden=th, teacher_items=tw, **kw)  # type: ignore[arg-type]
    cached = softmax_loss(h, w, y, teacher_top_k=_teacher_top_k(th, tw, N, 2.0), **kw)  # type: ignore[arg-type]
    assert float(cached.detach()) == pytest.approx(float(exact.detach()), rel=1e-10)


def test_top_k_rows_must_match_the_tokens() -> None:
    h, w, y, th, tw = _tensors()
    with pytest.raises(ValueError, match="rows"):
        softmax_loss(h, w, y, teacher_top_k=_teacher_top_k(th[:5], tw, 4, 1.0), alpha=0.5)
