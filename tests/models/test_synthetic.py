from __future__ import annotations

import itertools
from pathlib import Path

from models.readers import read_interactions
from models.synthetic import SyntheticConfig, generate, write_synthetic

SMALL = SyntheticConfig(n_users=200, n_items=120, n_topics=6, seed=3)


def test_same_seed_same_data_other_seed_other_data() -> None:
    assert generate(SMALL) == generate(SMALL)
    other = SyntheticConfig(n_users=200, n_items=120, n_topics=6, seed=4)
    assert generate(SMALL) != generate(other)


def test_ids_lengths_and_no_repeats_mostly() -> None:
    users = generate(SMALL)
    assert len(users) == SMALL.n_users
    items = {i for _, seq in users for i in seq}
    assert items <= {f"i{k}" for k in range(1, SMALL.n_items + 1)}
    assert all(SMALL.min_len <= len(seq) <= SMALL.max_len for _, seq in users)
    repeats = sum(len(seq) - len(set(seq)) for _, seq in users)
    assert repeats < 0.02 * sum(len(seq) for _, seq in users)


def test_sequences_follow_nearby_items() -> None:
    """Most transitions go 1-3 items forward: the structure a sequential model can learn."""
    users = generate(SMALL)
    near = total = 0
    for _, seq in users:
        ids = [int(i[1:]) for i in seq]
        for a, b in itertools.pairwise(ids):
            total += 1
            near += 0 < (b - a) % SMALL.n_items <= 3 or b < a  # forward, or wrapped in topic
    assert near / total > 0.7


def test_written_text_format_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.txt"
    n = write_synthetic(path, SMALL)
    data = read_interactions(path)
    assert data.format == "txt"
    assert data.n_interactions == n
    assert data.n_users == SMALL.n_users
    assert data.n_dropped_users == 0
