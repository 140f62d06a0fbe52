"""What the benchmarks record about the machine they ran on."""

from __future__ import annotations

from pathlib import Path

from benchmarks.provenance import cpu_caches, cpu_mhz, host_info, python_probe_ms


def _cache(root: Path, index: int, level: int, kind: str, size: str) -> None:
    d = root / f"index{index}"
    d.mkdir(parents=True)
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_caches_are_read_from_sysfs_by_level_and_kind(tmp_path: Path) -> None:
    _cache(tmp_path, 0, 1, "Data", "32K")
    _cache(tmp_path, 1, 1, "Instruction", "64K")
    _cache(tmp_path, 2, 2, "Unified", "512K")
    _cache(tmp_path, 3, 3, "Unified", "8192K")
    (tmp_path / "index4").mkdir()  # unreadable entries are skipped
    assert cpu_caches(tmp_path) == {"L1d": "32K", "L1i": "64K", "L2": "512K", "L3": "8192K"}
    assert cpu_caches(tmp_path / "missing") == {}


def test_clock_is_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 1996.250\n")
    assert cpu_mhz(info) == 1996.2
    info.write_text("processor\t: 0\n")
    assert cpu_mhz(info) is None
    assert cpu_mhz(tmp_path / "missing") is None


def test_the_python_probe_times_a_fixed_loop_and_scales_with_it() -> None:
    small, large = python_probe_ms(n=100_000), python_probe_ms(n=2_000_000)
    assert small is not None and large is not None
    assert 0 < small < large
    assert python_probe_ms(["/nonexistent/launcher"], n=10) is None


def test_host_info_has_the_start_probe_and_leaves_the_end_to_the_run() -> None:
    host = host_info()
    assert host["python_probe_ms"]["start"] > 0 and host["python_probe_ms"]["end"] is None
    assert "sum(range(3,000,000))" in host["python_probe"]
    assert isinstance(host["caches"], dict)
