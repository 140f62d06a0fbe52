"""Fold-in of new items into a bundle: on the factories' real ONNX bundles, no training."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bundle
from models.cli import main
from models.evaluate import onnx_encoder
from models.foldin import (
    FoldInConfig,
    catalog_matrix,
    find_occurrences,
    fit_vectors,
    fold_in,
    gather_evidence,
    items_payload,
    sample_known_positions,
)
from models.split import pad_left
from service.schemas import ItemVectorsIn
from tests.factories import make_bundle_dir


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> bundle.Bundle:
    path = make_bundle_dir(tmp_path_factory.mktemp("foldin") / "v1", shared_items=True)
    return bundle.read_bundle(path)


def two_kinds(b: bundle.Bundle) -> tuple[list[str], list[str]]:
    """Two groups of 8 items whose shoppers the encoder tells apart: the two ends of the
    first principal direction of the one-item users' vectors."""
    encode = onnx_encoder(str(b.model_path))
    single = encode(np.arange(1, len(b.vocab), dtype=np.int64)[:, None])  # (N, dim)
    centred = single - single.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(centred @ direction) + 1
    return [b.vocab[i] for i in order[-8:]], [b.vocab[i] for i in order[:8]]


def shoppers(kind: list[str], n: int, *, seed: int) -> list[list[str]]:
    """`n` histories of 2 to 5 items drawn from `kind`."""
    rng = np.random.default_rng(seed)
    return [list(rng.choice(kind, size=int(rng.integers(2, 6)), replace=False)) for _ in range(n)]


def rank_for(b: bundle.Bundle, vector: np.ndarray, history: Sequence[str]) -> int:
    """0-based rank a new item with `vector` would get among the unseen catalog items."""
    index = {item: row for row, item in enumerate(b.vocab)}
    rows = np.array([index[i] for i in history], dtype=np.int64)
    user = onnx_encoder(str(b.model_path))(pad_left([rows], b.manifest.max_len))[0]
    scores = catalog_matrix(b) @ user
    scores[0] = -np.inf
    scores[rows] = -np.inf
    return int((scores > user @ vector).sum())


def random_shoppers(items: list[str], n: int, *, seed: int) -> list[list[str]]:
    """`n` histories of 1 to 3 items drawn from `items`."""
    rng = np.random.default_rng(seed)
    return [list(rng.choice(items, size=int(rng.integers(1, 4)), replace=False)) for _ in range(n)]


@pytest.mark.parametrize("encoding", ["int8", "pq4"])
@pytest.mark.parametrize(
    "config",
    [FoldInConfig(method="lsq", ridge=1.0, target_rank=5), FoldInConfig(method="softmax", l2=0.1)],
    ids=["lsq", "softmax"],
)
def test_new_item_ranks_high_for_shoppers_like_its_buyers_and_low_for_others(
    tmp_path: Path, encoding: str, config: FoldInConfig
) -> None:
    b = bundle.read_bundle(make_bundle_dir(tmp_path / "b", item_encoding=encoding))
    kind_a, kind_b = two_kinds(b)
    bought = [[*h, "new-a"] for h in shoppers(kind_a, 20, seed=0)]
    result = fold_in(b, bought, config)
    assert result.item_ids == ["new-a"]
    assert result.vectors.shape == (1, b.manifest.dim)
    vector = result.vectors[0]
    like = [rank_for(b, vector, h) for h in shoppers(kind_a, 30, seed=1)]
    unlike = [rank_for(b, vector, h) for h in shoppers(kind_b, 30, seed=2)]
    # 60 items, histories of up to 5: about 55 others to rank against.
    assert np.median(like) < 10
    assert min(unlike) > 30


def test_softmax_keeps_a_new_item_out_of_the_top_10_of_users_unlike_its_buyers(
    tmp_path: Path,
) -> None:
    # User vectors share a large component, as a trained encoder's do. The new item's buyers
    # have each one item of kind A among other items; everyone else buys known items.
    b = bundle.read_bundle(make_bundle_dir(tmp_path / "b", user_offset=3.0))
    kind_a, _ = two_kinds(b)
    rest = [i for i in b.vocab[1:] if i not in kind_a]
    rng = np.random.default_rng(0)
    bought = [[*h, str(rng.choice(kind_a)), "new-a"] for h in random_shoppers(rest, 20, seed=1)]
    others = [[*h, str(rng.choice(b.vocab[1:]))] for h in shoppers(b.vocab[1:], 300, seed=2)]
    like, unlike = shoppers(kind_a, 30, seed=3), random_shoppers(rest, 100, seed=4)

    def ranks(config: FoldInConfig, histories: list[list[str]]) -> np.ndarray:
        vector = fold_in(b, bought + others, config).vectors[0]
        return np.array([rank_for(b, vector, h) for h in histories])

    # Least squares only pulls u.v up for the buyers, along the shared component too: with the
    # setting that serves them best (ridge 1, target rank 1 on Beauty), the item enters the
    # top 10 of most users who have no item of kind A.
    lsq = FoldInConfig(method="lsq", ridge=1.0, target_rank=1)
    assert np.median(ranks(lsq, like)) < 5
    assert (ranks(lsq, unlike) < 10).mean() > 0.8
    # The softmax also pushes it below every other position's true item.
    softmax = FoldInConfig(method="softmax", l2=0.5)
    assert np.median(ranks(softmax, like)) < 5
    assert (ranks(softmax, unlike) < 10).mean() < 0.25
    assert np.median(ranks(softmax, unlike)) > 15  # of about 57


def test_softmax_rows_minimize_the_cross_entropy_over_catalog_and_new_items(
    int8_bundle: bundle.Bundle,
) -> None:
    kind_a, kind_b = two_kinds(int8_bundle)
    sequences = [
        *([*h, "new-a", *h[:1], "new-b"] for h in shoppers(kind_a, 6, seed=5)),
        *([*h, str(h[0]), "new-b"] for h in shoppers(kind_b, 6, seed=6)),
        *shoppers(int8_bundle.vocab[1:], 20, seed=7),
    ]
    # Every position with a known next item is a negative (weight 1), none is sampled out.
    evidence = gather_evidence(int8_bundle, sequences, max_rank=1, negatives=10_000)
    assert evidence.negative_weight == 1.0
    config = FoldInConfig(l2=0.05, iterations=200)
    catalog = torch.from_numpy(catalog_matrix(int8_bundle)[1:])  # without the padding row
    users = torch.from_numpy(np.concatenate([evidence.users, evidence.negatives]))
    owner = len(catalog) + torch.from_numpy(evidence.occurrences.owner)
    lam = config.l2 * users.pow(2).sum(dim=1).mean()

    def gradient(rows: torch.Tensor) -> float:
        """|d/d rows| of the objective written out: the full softmax over the catalog's rows
        and the new rows at every position, and the L2 term."""
        rows = rows.clone().requires_grad_()
        logits = users @ torch.cat([catalog, rows]).T  # (positions, catalog + new)
        picked = logits[torch.arange(len(owner)), owner]  # the occurrences come first
        loss = torch.logsumexp(logits, dim=1).sum() - picked.sum() + lam * rows.pow(2).sum()
        return float(torch.autograd.grad(loss, rows)[0].norm())

    fitted = torch.from_numpy(fit_vectors(evidence, config).vectors)
    assert gradient(fitted) < 1e-3 * gradient(torch.zeros_like(fitted))


def test_known_positions_are_a_seeded_sample_with_the_known_items_before_each() -> None:
    index = {"a": 1, "b": 2, "c": 3}
    sequences = [["a", "n1", "b", "c"], ["n2", "c", "a"], ["b"]]
    histories, total = sample_known_positions(sequences, index, max_len=1, n=10, seed=0)
    # b after a, c after a b, a after c (new items dropped, the last max_len kept)
    assert total == 3
    assert [h.tolist() for h in histories] == [[1], [2], [3]]
    two, total = sample_known_positions(sequences, index, max_len=5, n=2, seed=1)
    assert total == 3 and len(two) == 2
    again, _ = sample_known_positions(sequences, index, max_len=5, n=2, seed=1)
    assert [h.tolist() for h in two] == [h.tolist() for h in again]


def test_ridge_shrinks_the_fit_by_one_users_weight(int8_bundle: bundle.Bundle) -> None:
    # One occurrence: v = u t / (|u|^2 (1 + ridge)), so u.v = t / (1 + ridge) exactly.
    evidence = gather_evidence(int8_bundle, [["i3", "i7", "new"]], max_rank=10)
    user, target = evidence.users[0], evidence.targets(10)[0]
    for ridge in (0.01, 1.0, 9.0):
        config = FoldInConfig(method="lsq", ridge=ridge, target_rank=10)
        v = fit_vectors(evidence, config).vectors[0]
        assert float(user @ v) == pytest.approx(target / (1 + ridge), rel=1e-4)


@pytest.mark.parametrize(
    "config",
    [lambda x: FoldInConfig(method="lsq", ridge=x), lambda x: FoldInConfig(method="softmax", l2=x)],
    ids=["ridge", "l2"],
)
def test_more_regularization_gives_smaller_vectors(
    int8_bundle: bundle.Bundle, config: Callable[[float], FoldInConfig]
) -> None:
    kind_a, _ = two_kinds(int8_bundle)
    bought = [[*h, "new-a"] for h in shoppers(kind_a, 12, seed=3)]
    evidence = gather_evidence(int8_bundle, bought, max_rank=10, negatives=100)
    norms = [
        float(np.linalg.norm(fit_vectors(evidence, config(x)).vectors[0]))
        for x in (0.01, 0.1, 1.0, 10.0, 100.0)
    ]
    assert norms == sorted(norms, reverse=True)
    assert norms[-1] < norms[0] / 10


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"ridge": 0.0}, "ridge"), ({"l2": 0.0}, "l2"), ({"method": "als"}, "method"),
     ({"negatives": -1}, "negatives"), ({"iterations": 0}, "iterations")],
)  # fmt: skip
def test_bad_settings_are_refused(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FoldInConfig(**settings)


def test_items_below_min_occurrences_get_no_vector(int8_bundle: bundle.Bundle) -> None:
    sequences = [["i1", "common"]] * 5 + [["i2", "rare"]] * 2 + [["unseen-before", "i4"]]
    result = fold_in(int8_bundle, sequences, FoldInConfig(min_occurrences=3))
    assert result.item_ids == ["common"]
    assert result.occurrences.tolist() == [5]
    # "unseen-before" has no known item before it: no usable occurrence at all.
    assert result.skipped == ["rare", "unseen-before"]
    everything = fold_in(int8_bundle, sequences, FoldInConfig(min_occurrences=1))
    assert everything.item_ids == ["common", "rare"]


def test_occurrences_keep_the_last_max_len_known_items_before_each() -> None:
    index = {"a": 1, "b": 2, "c": 3}
    occ = find_occurrences([["a", "b", "n1", "c", "n2", "n1"]], index, max_len=2)
    assert occ.new_items == ["n1", "n2"]
    assert occ.owner.tolist() == [0, 1, 0]
    # new items are dropped from histories, as the service drops unknown IDs
    assert [h.tolist() for h in occ.histories] == [[1, 2], [2, 3], [2, 3]]


def test_known_items_are_never_folded_in(int8_bundle: bundle.Bundle) -> None:
    result = fold_in(int8_bundle, [["i1", "i2", "i3"], ["i4", "brand-new", "i5"]])
    assert result.item_ids == ["brand-new"]


def test_payload_is_the_admin_route_body_with_the_version(int8_bundle: bundle.Bundle) -> None:
    result = fold_in(int8_bundle, [["i1", "n1"], ["i2", "n2"]])
    payload = json.loads(json.dumps(items_payload(int8_bundle.version, result)))
    assert payload.keys() == {"version", "items"}
    assert payload["version"] == "v1"
    assert [item["item_id"] for item in payload["items"]] == ["n1", "n2"]
    for item, vector in zip(payload["items"], result.vectors, strict=True):
        assert item.keys() == {"item_id", "vector"}
        assert np.array_equal(np.array(item["vector"], dtype=np.float32), vector)
    # what the admin route accepts: {"items": [...]}, the version being in its path
    body = ItemVectorsIn.model_validate({"items": payload["items"]})
    assert [item.item_id for item in body.items] == ["n1", "n2"]


def test_cli_writes_the_items_file(
    tmp_path: Path, int8_bundle: bundle.Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    interactions = tmp_path / "recent.txt"
    # u1 and u2 buy n1 after known items; u3 buys n2 as its first item (no evidence).
    interactions.write_text("u1 i1\nu1 n1\nu2 i2\nu2 i3\nu2 n1\nu3 n2\nu3 i4\n")
    out = tmp_path / "out" / "items.json"
    argv = ["foldin", "--bundle", str(int8_bundle.path), "--interactions", str(interactions)]
    assert main([*argv, "--out", str(out), "--min-occurrences", "2"]) == 0
    assert "1 new items folded into v1" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["version"] == "v1"
    assert [item["item_id"] for item in payload["items"]] == ["n1"]
    assert len(payload["items"][0]["vector"]) == int8_bundle.manifest.dim
    # softmax is the default; least squares gives another vector in the same file format
    lsq_out = tmp_path / "lsq.json"
    assert main([*argv, "--out", str(lsq_out), "--method", "lsq", "--ridge", "3"]) == 0
    lsq = json.loads(lsq_out.read_text())
    assert lsq.keys() == payload.keys() and lsq["items"][0].keys() == {"item_id", "vector"}
    assert lsq["items"][0]["vector"] != payload["items"][0]["vector"]
    softmax_out = tmp_path / "softmax.json"
    assert main([*argv, "--out", str(softmax_out), "--method", "softmax"]) == 0
    assert json.loads(softmax_out.read_text()) == payload


def test_cli_reports_a_bad_bundle_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    interactions = tmp_path / "recent.txt"
    interactions.write_text("u1 i1\nu1 n1\n")
    argv = ["foldin", "--bundle", str(tmp_path / "missing"), "--interactions", str(interactions)]
    assert main([*argv, "--out", str(tmp_path / "items.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "items.json").exists()
