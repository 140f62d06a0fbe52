"""Progress lines on stderr, one prefix per benchmark:

log = logger("bench-serve")
log("wrote benchmarks/results/serve.json")   # [bench-serve] wrote ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def logger(tag: str) -> Callable[[str], None]:
    """A function printing `[tag] message` to stderr, flushed so it shows under make."""

    def log(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    return log
