"""Benchmarks: long-running measurements on real data (`make bench-compress`), not tests."""
