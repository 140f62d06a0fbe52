"""Offline half: make compressed sequential-recommender bundles (imports torch).

    python -m models demo --out bundles/                  # synthetic data -> demo bundle
    python -m models compress --data FILE --out bundles/  # your data -> bundle + report

Modules: readers, synthetic, split, sasrec, train, distill, prune, export, quantize,
evaluate, compress (the pipeline), cli. The bundle format itself lives in `bundle`.
"""
