"""Shared fixtures for tests/models: tiny synthetic data and models trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.distill import DistillConfig, distill_student
from models.readers import InteractionData, read_interactions
from models.sasrec import SASRec, SASRecConfig
from models.split import Split, leave_one_out
from models.synthetic import SyntheticConfig, write_synthetic
from models.train import TrainConfig, train_teacher

MAX_LEN = 20
# run_compress settings small enough for a test: seconds on 2 cores.
TINY_COMPRESS = {
    "max_len": 20,
    "teacher_dim": 32, "teacher_heads": 2, "teacher_head_dim": 16, "teacher_ffn": 64,
    "teacher_epochs": 4,
    "student_dim": 16, "student_heads": 4, "student_head_dim": 4, "student_ffn": 32,
    "student_epochs": 4,
    "finetune_epochs": 1, "batch_size": 64, "lr": 5e-3, "importance_batches": 2,
    "n_golden": 3, "latency_budget_s": 0.02, "progress": False,
}  # fmt: skip

TINY_SYNTH = SyntheticConfig(n_users=500, n_items=120, n_topics=6, min_len=5, max_len=20, seed=7)


@dataclass
class Dataset:
    path: Path
    data: InteractionData
    split: Split

    @property
    def n_items(self) -> int:
        return self.data.n_items

    def test_popularity(self) -> npt.NDArray[np.int64]:
        pop = np.zeros(self.n_items + 1, dtype=np.int64)
        for h in self.split.test.histories:
            np.add.at(pop, h, 1)
        return pop


def teacher_config(n_items: int) -> SASRecConfig:
    return SASRecConfig(
        n_items=n_items, max_len=MAX_LEN, dim=32, n_blocks=2, head_dim=8,
        n_heads=[4, 4], ffn_hidden=[64, 64], dropout=0.1,
    )  # fmt: skip


def student_config(n_items: int) -> SASRecConfig:
    return SASRecConfig(
        n_items=n_items, max_len=MAX_LEN, dim=16, n_blocks=2, head_dim=4,
        n_heads=[4, 4], ffn_hidden=[32, 32], dropout=0.1,
    )  # fmt: skip


def quick_train(epochs: int = 6) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=5e-3, patience=10, progress=False)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    path = tmp_path_factory.mktemp("data") / "synthetic.txt"
    write_synthetic(path, TINY_SYNTH)
    data = read_interactions(path)
    return Dataset(path=path, data=data, split=leave_one_out(data.sequences))


@pytest.fixture(scope="session")
def teacher(synthetic: Dataset) -> SASRec:
    model, _ = train_teacher(teacher_config(synthetic.n_items), synthetic.split, quick_train())
    return model


@pytest.fixture(scope="session")
def student(synthetic: Dataset, teacher: SASRec) -> SASRec:
    model, _ = distill_student(
        teacher,
        student_config(synthetic.n_items),
        synthetic.split,
        quick_train(),
        DistillConfig(temperature=2.0, alpha=0.9),
    )
    return model
