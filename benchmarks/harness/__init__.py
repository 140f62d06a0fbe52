"""What the benchmarks share, one module per concept:

- `log`: `logger(tag)`, progress lines on stderr.
- `pinning`: taskset core lists, pinned commands and a pinned calling thread.
- `servers`: a uvicorn server process started, waited for, measured and stopped.
- `load`: locust load levels and wrk runs against a server.
- `trace`: the answers a traced locust run recorded, and their summary.
- `fleet`: replicas sharing one Redis under background load (`benchmarks.swap`,
  `benchmarks.catalog_live`).
- `targets`: the `Target` record, judged on measured values only.
- `report`: markdown tables, the targets table, results written to disk.

Where a result came from (command, commit, CPU, host probe) is `benchmarks.provenance`,
beside the harness: every benchmark records it, harnessed or not.
"""
