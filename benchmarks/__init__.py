"""Benchmarks: long-running measurements on real data (`make bench-compress`,
`make bench-serve`), not tests."""
