from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.readers import DataFormatError, detect_format, read_interactions

AMAZON_BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-beauty.txt"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def external(data, user_index: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [data.vocab[i] for i in data.sequences[user_index]]


def test_txt_keeps_file_order_and_indexes_items_by_first_appearance(tmp_path: Path) -> None:
    p = write(tmp_path, "a.txt", "u1 b\nu1 a\nu2 c\nu1 c\nu2 b\nu2 d\n")
    data = read_interactions(p)
    assert data.format == "txt"
    assert data.vocab == ["", "b", "a", "c", "d"]
    assert external(data, 0) == ["b", "a", "c"]
    assert external(data, 1) == ["c", "b", "d"]
    assert data.sequences[0].dtype == np.int64
    assert (data.n_users, data.n_items, data.n_interactions) == (2, 4, 6)


def test_users_below_min_interactions_are_dropped_and_counted(tmp_path: Path) -> None:
    p = write(tmp_path, "a.txt", "u1 a\nu1 b\nu1 c\nu2 x\nu2 y\nu3 z\n")
    data = read_interactions(p, min_interactions=3)
    assert data.user_ids == ["u1"]
    assert data.n_dropped_users == 2
    assert data.n_dropped_interactions == 3
    assert data.vocab == ["", "a", "b", "c"]  # items only dropped users had are not in vocab
    assert read_interactions(p, min_interactions=1).n_users == 3


def test_txt_malformed_line_reports_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "a.txt", "u1 a\nu1 b\n\nu1 c extra\n")
    with pytest.raises(DataFormatError, match=r"a\.txt:4: expected 2 fields") as e:
        read_interactions(p)
    assert e.value.line == 4


def test_csv_is_sorted_by_timestamp_per_user_with_stable_ties(tmp_path: Path) -> None:
    text = "user_id,item_id,rating,timestamp\nu1,a,5,30\nu1,b,5,10\nu1,c,5,20\nu1,d,5,20\n"
    data = read_interactions(write(tmp_path, "x.csv", text))
    assert data.format == "csv"
    assert external(data, 0) == ["b", "c", "d", "a"]


def test_csv_accepts_iso_timestamps(tmp_path: Path) -> None:
    text = "user,item,time\nu,a,2024-01-03\nu,b,2024-01-01\nu,c,2024-01-02T10:00:00\n"
    assert external(read_interactions(write(tmp_path, "x.csv", text)), 0) == ["b", "c", "a"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("user,item,timestamp\nu,a,1\nu,b\n", 3, "expected 3 fields"),
        ("user,item,timestamp\nu,a,1\nu,b,yesterday\n", 3, "timestamp 'yesterday'"),
        ("user,item,timestamp\nu,a,1\n,b,2\n", 3, "empty user or item"),
        ("user,product,when\nu,a,1\n", 1, "no item column"),
    ],
)
def test_csv_malformed_input_names_the_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    with pytest.raises(DataFormatError, match=message) as e:
        read_interactions(write(tmp_path, "x.csv", text), min_interactions=1)
    assert e.value.line == line
    assert f"x.csv:{line}:" in str(e.value)


def test_movielens_ratings_dat(tmp_path: Path) -> None:
    text = "1::10::5::300\n1::20::3::100\n1::30::4::200\n2::10::4::5\n"
    data = read_interactions(write(tmp_path, "ratings.dat", text))
    assert data.format == "movielens"
    assert external(data, 0) == ["20", "30", "10"]
    assert data.n_dropped_users == 1


def test_movielens_malformed_line(tmp_path: Path) -> None:
    p = write(tmp_path, "ratings.dat", "1::10::5::300\n1::20::3\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat:2:") as e:
        read_interactions(p)
    assert e.value.line == 2


def test_format_detection_and_override(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "a.data", "1::2::3::4\n")) == "movielens"
    assert detect_format(write(tmp_path, "b.log", "u,i,timestamp\n")) == "csv"
    assert detect_format(write(tmp_path, "c.txt", "u i\n")) == "txt"
    # A .txt holding csv is read as csv when told so.
    p = write(tmp_path, "d.txt", "user,item,timestamp\nu,a,3\nu,b,2\nu,c,1\n")
    assert external(read_interactions(p, fmt="csv"), 0) == ["c", "b", "a"]
    with pytest.raises(DataFormatError, match="expected 2 fields"):
        read_interactions(p, fmt="txt")


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="file not found"):
        read_interactions(tmp_path / "nope.txt")
    with pytest.raises(DataFormatError, match="no interactions"):
        read_interactions(write(tmp_path, "empty.txt", "\n"))


@pytest.mark.skipif(not AMAZON_BEAUTY.is_file(), reason="shared Amazon Beauty data not present")
def test_reads_amazon_beauty_text_format() -> None:
    data = read_interactions(AMAZON_BEAUTY)
    assert data.n_users > 10_000 and data.n_items > 10_000
    with AMAZON_BEAUTY.open(encoding="utf-8") as f:
        n_lines = sum(1 for line in f if line.strip())
    assert data.n_interactions + data.n_dropped_interactions == n_lines
    assert min(len(s) for s in data.sequences) >= 3
