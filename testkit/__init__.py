"""Helpers shared by tests/ and benchmarks/ (so benchmarks never import tests).

- `testkit.bundles`: small real bundles built without torch, and helpers that corrupt them.
- `testkit.hostile`: the hostile corpus, one bad bundle or archive per gate of the service.
- `testkit.redis_server`: a private redis-server process on a free port.
- `testkit.tools`: `require_tool`, a program a test runs: skipped if missing, failed in CI.

Import the submodule you need; this package imports nothing itself, so a benchmark that
only needs Redis does not load onnx.
"""
