"""Read interaction logs into per-user item-index sequences.

Three formats, auto-detected from the file name and first line (or forced with `fmt=`):

- ``txt``: the SASRec/BERT4Rec text format, ``user item`` per line, already chronological
  per user (e.g. ../shared/data/amazon-beauty.txt).
- ``csv``: a header row naming user, item and timestamp columns (``user``/``user_id``/
  ``userId``, ``item``/``item_id``/``itemId``/``movieId``, ``timestamp``/``time``/``ts``);
  each user's rows are sorted by timestamp (stable, so ties keep file order).
- ``movielens``: ``ratings.dat`` lines ``user::item::rating::timestamp``, sorted like csv.

    from models.readers import read_interactions
    data = read_interactions(Path("interactions.txt"), min_interactions=3)
    data.vocab[1], data.sequences[0]      # "i12", array([1, 2, 5])

Malformed input raises `DataFormatError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

Format = Literal["auto", "txt", "csv", "movielens"]
FORMATS: tuple[str, ...] = ("auto", "txt", "csv", "movielens")

USER_COLUMNS = ("user", "user_id", "userid", "uid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movieid", "movie_id", "product_id", "sku")
TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date")


class DataFormatError(ValueError):
    """Malformed interaction data; the message names the file and line."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass
class InteractionData:
    """Interactions as index sequences; `vocab[i]` is the external ID of item index i."""

    vocab: list[str]  # index 0 = padding "", then items in order of first appearance
    user_ids: list[str]
    sequences: list[npt.NDArray[np.int64]]  # one chronological array of item indices per user
    n_interactions: int
    n_dropped_users: int
    n_dropped_interactions: int
    source: str = ""
    format: str = ""

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        return len(self.vocab) - 1

    def popularity(self) -> npt.NDArray[np.int64]:
        """Interaction counts per item index, (n_items + 1,), padding row 0."""
        counts = np.zeros(len(self.vocab), dtype=np.int64)
        for s in self.sequences:
            np.add.at(counts, s, 1)
        return counts

    def counts(self) -> dict[str, int | str]:
        return {
            "source": self.source,
            "format": self.format,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "dropped_users": self.n_dropped_users,
            "dropped_interactions": self.n_dropped_interactions,
        }


# (user, item, sort key, line number)
Row = tuple[str, str, float, int]


def detect_format(path: Path) -> str:
    """Guess the format from the extension, then from the first non-empty line."""
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    first = ""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                first = line
                break
    if "::" in first:
        return "movielens"
    if name.endswith(".dat"):
        return "movielens"
    if "," in first:
        return "csv"
    return "txt"


def _read_txt(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataFormatError(
                    path, n, f"expected 2 fields 'user item', got {len(parts)}: {line.strip()!r}"
                )
            yield parts[0], parts[1], float(n), n


def _parse_time(value: str, path: Path, line: int) -> float:
    try:
        t = float(value)
    except ValueError:
        try:
            t = datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise DataFormatError(
                path, line, f"timestamp {value!r} is neither a number nor an ISO date"
            ) from None
    if not math.isfinite(t):
        raise DataFormatError(path, line, f"timestamp {value!r} is not finite")
    return t


def _find_column(header: list[str], names: tuple[str, ...], what: str, path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise DataFormatError(
        path, 1, f"header {header} has no {what} column (one of {', '.join(names)})"
    )


def _read_csv(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        cu = _find_column(header, USER_COLUMNS, "user", path)
        ci = _find_column(header, ITEM_COLUMNS, "item", path)
        ct = _find_column(header, TIME_COLUMNS, "timestamp", path)
        width = len(header)
        for fields in reader:
            n = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != width:
                raise DataFormatError(
                    path, n, f"expected {width} fields as in the header, got {len(fields)}"
                )
            user, item = fields[cu].strip(), fields[ci].strip()
            if not user or not item:
                raise DataFormatError(path, n, "empty user or item")
            yield user, item, _parse_time(fields[ct].strip(), path, n), n


def _read_movielens(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != 4 or not parts[0] or not parts[1]:
                raise DataFormatError(
                    path, n, f"expected 'user::item::rating::timestamp', got {line!r}"
                )
            yield parts[0], parts[1], _parse_time(parts[3], path, n), n


def read_interactions(
    path: Path, *, fmt: Format | str = "auto", min_interactions: int = 3
) -> InteractionData:
    """Read `path` and return per-user sequences; users with < min_interactions are dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kind = detect_format(path) if fmt == "auto" else fmt
    readers = {"txt": _read_txt, "csv": _read_csv, "movielens": _read_movielens}
    try:
        rows = list(readers[kind](path))
    except UnicodeDecodeError as e:
        raise DataFormatError(path, None, f"not UTF-8 text: {e}") from e
    if not rows:
        raise DataFormatError(path, None, "no interactions found")

    per_user: dict[str, list[Row]] = {}
    for row in rows:
        per_user.setdefault(row[0], []).append(row)
    if kind != "txt":
        for user_rows in per_user.values():
            user_rows.sort(key=lambda r: r[2])  # stable: ties keep file order

    kept = {u: r for u, r in per_user.items() if len(r) >= min_interactions}
    dropped_users = len(per_user) - len(kept)
    dropped_rows = sum(len(r) for u, r in per_user.items() if u not in kept)

    # Item indices in order of first appearance in the file, among kept users only.
    vocab = [""]
    index: dict[str, int] = {}
    for user, item, _, _ in rows:
        if user in kept and item not in index:
            index[item] = len(vocab)
            vocab.append(item)
    user_ids = list(kept)
    sequences = [np.array([index[r[1]] for r in kept[u]], dtype=np.int64) for u in user_ids]
    return InteractionData(
        vocab=vocab,
        user_ids=user_ids,
        sequences=sequences,
        n_interactions=sum(len(s) for s in sequences),
        n_dropped_users=dropped_users,
        n_dropped_interactions=dropped_rows,
        source=str(path),
        format=kind,
    )
