from __future__ import annotations

import numpy as np
import pytest
import torch

from models.evaluate import evaluate, popularity_stage, torch_encoder
from models.sasrec import SASRec
from models.train import (
    TrainConfig,
    _lr_factor,
    bf16_speedup,
    full_softmax_loss,
    sampled_softmax_loss,
    target_states,
    train_teacher,
    training_arrays,
)
from tests.models.conftest import MAX_LEN, Dataset, teacher_config


def test_training_arrays_shift_by_one_and_keep_the_tail() -> None:
    inputs, targets = training_arrays([np.array([1, 2, 3, 4, 5]), np.array([7])], max_len=3)
    assert inputs.tolist() == [[2, 3, 4]]  # users with one item give no pair
    assert targets.tolist() == [[3, 4, 5]]
    inputs, targets = training_arrays([np.array([1, 2])], max_len=3)
    assert inputs.tolist() == [[0, 0, 1]] and targets.tolist() == [[0, 0, 2]]


def test_teacher_beats_popularity_by_a_wide_margin(synthetic: Dataset, teacher: SASRec) -> None:
    test = synthetic.split.test
    model = evaluate(
        torch_encoder(teacher), teacher.item_matrix().detach().numpy(), test, max_len=MAX_LEN
    )
    pop = evaluate(*popularity_stage(synthetic.test_popularity()), test, max_len=MAX_LEN)
    assert model["ndcg@10"] > 3 * pop["ndcg@10"]
    assert model["hr@10"] > 2 * pop["hr@10"]


def test_training_is_deterministic_on_cpu(synthetic: Dataset) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, seed=3)
    a, ra = train_teacher(teacher_config(synthetic.n_items), synthetic.split, cfg)
    b, rb = train_teacher(teacher_config(synthetic.n_items), synthetic.split, cfg)
    assert ra.history == rb.history
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_sampled_softmax_loss_trains(synthetic: Dataset) -> None:
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, loss="sampled", n_negatives=32,
                      progress=False, patience=10)  # fmt: skip
    _model, result = train_teacher(teacher_config(synthetic.n_items), synthetic.split, cfg)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_ndcg > 0.1


def test_full_softmax_loss_ignores_padding_targets(teacher: SASRec) -> None:
    x = torch.tensor([[0, 0, 1, 2], [0, 3, 4, 5]])
    y = torch.tensor([[0, 0, 2, 3], [0, 4, 5, 6]])
    y_more_pad = y.clone()
    y_more_pad[1, 1] = 0
    loss = full_softmax_loss(teacher, x, y)
    assert torch.isfinite(loss)
    assert not torch.isclose(loss, full_softmax_loss(teacher, x, y_more_pad))
    assert torch.isfinite(sampled_softmax_loss(8)(teacher, x, y))


def test_cosine_schedule_falls_from_full_to_zero_and_constant_stays() -> None:
    cosine = _lr_factor("cosine", 100)
    assert cosine(0) == 1.0
    assert abs(cosine(50) - 0.5) < 1e-9
    assert cosine(100) == 0.0 and cosine(150) == 0.0  # never negative past the end
    assert all(cosine(i) >= cosine(i + 1) for i in range(100))
    assert {_lr_factor("constant", 100)(i) for i in (0, 50, 100)} == {1.0}
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        _lr_factor("step", 100)  # type: ignore[arg-type]


def test_cosine_training_ends_at_a_different_minimum_than_constant(synthetic: Dataset) -> None:
    states = {}
    for schedule in ("constant", "cosine"):
        config = TrainConfig(epochs=2, batch_size=64, lr=5e-3, patience=10, progress=False,
                             lr_schedule=schedule)  # type: ignore[arg-type]  # fmt: skip
        model, _ = train_teacher(teacher_config(synthetic.n_items), synthetic.split, config)
        states[schedule] = model.item_matrix().detach().clone()
    assert not torch.allclose(states["constant"], states["cosine"])


def test_bf16_speedup_is_a_positive_ratio() -> None:
    assert bf16_speedup(8, 64, rows=16, repeats=1) > 0


def test_target_states_in_length_groups_equal_one_padded_pass(teacher: SASRec) -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, teacher.config.n_items + 1, size=n) for n in (2, 3, 9, 4, 21, 5, 2)]
    inputs_np, targets_np = training_arrays(seqs, teacher.config.max_len)
    inputs, targets = torch.from_numpy(inputs_np), torch.from_numpy(targets_np)
    teacher.eval()
    with torch.no_grad():
        one_pass = target_states(teacher, inputs, targets, groups=1)
        grouped = target_states(teacher, inputs, targets, groups=3)
    assert one_pass.shape == (int((targets > 0).sum()), teacher.config.dim)
    torch.testing.assert_close(grouped, one_pass, atol=1e-5, rtol=1e-5)
