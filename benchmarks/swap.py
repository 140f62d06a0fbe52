"""Swap benchmark (issue 5): a two-replica fleet swapping models under load, memory over many
swaps, Redis stopped under load, the API fuzzer and the malicious-bundle corpus.

    make bench-swap [DATA=../shared/data/amazon-beauty.txt] [SWAP_ARGS='--cycles 100']
    python -m benchmarks.swap --data ../shared/data/amazon-beauty.txt [--bundle DIR]

One Redis (a private redis-server, saving to disk so a restart keeps its data) and two
service replicas sharing it, both pinned to core 0; locust pinned to core 1 sends every
request round-robin to the two replicas (`LOCUST_HOSTS`) and records each answer's status,
latency and model version (`LOCUST_TRACE`). The served model is the bundle `make
bench-compress` shipped (else a speed-only one, as `benchmarks.serve` picks it), installed
under three version names, `swap-a`, `swap-b` and `swap-c`. Phases, in order:

1. capacity: a saturating locust run; the load of the later phases is `--load` (70%) of the
   throughput it achieved;
2. steady: `--steady` seconds at that load, no swaps: the steady p99;
3. swaps: `--duration` seconds at that load with `--swaps` activations alternating swap-b /
   swap-a, sent alternately to each replica; each waits until the other replica serves it too.
   "During swaps" = requests started between an activation call and 0.5 s after the whole
   fleet served the new version. The first swap activates swap-b, the last upload: r1 holds
   it loaded from the upload's validation and r2 from r1's announcement (`prepare`), which
   the fleet start waits for. Every later swap's version is each replica's standby (the
   previously active model, kept loaded). A swap is "warm" when every replica held its
   version loaded, "cold" otherwise; the report gives both;
4. memory: `--cycles` cycles of two activations rotating swap-b, swap-c, swap-a (no load),
   so every activation loads from disk on both replicas (cold): resident size of both
   replicas after every cycle, and the slowest of these cold activations fleet-wide;
5. Redis outage: `--outage-run` seconds at the load, Redis stopped for `--outage` seconds in
   the middle, /readyz polled on both replicas;
6. hostile input: the malicious-bundle corpus (`benchmarks.hostile`, the replicas run with
   the accuracy and latency gates on), then the schemathesis fuzzer (`benchmarks.fuzz`).

Writes benchmarks/results/swap.json, swap.md and swap.png (latency over the swap phase with
the swaps marked; resident size over the swap cycles).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from benchmarks.harness.fleet import (
    Fleet,
    FleetInputs,
    FleetPhases,
    add_fleet_arguments,
    during_load,
    idle,
    prepare_inputs,
)
from benchmarks.harness.log import logger
from benchmarks.harness.report import write_results
from benchmarks.harness.trace import Answer, RunSummary, failed, summarize
from benchmarks.provenance import run_provenance
from benchmarks.swap_phases import (
    GATE_ENV,
    MEMORY_VERSIONS,
    VERSIONS,
    Outage,
    memory_phase,
    outage_phase,
    start_fleet,
    swap_phase,
)
from benchmarks.swap_report import (
    MemorySummary,
    SwapSummary,
    evaluate_targets,
    memory_summary,
    render_markdown,
    render_plot,
    swap_summary,
)

if TYPE_CHECKING:  # the fuzzer and the corpus load schemathesis and onnx: only when they run
    from benchmarks.fuzz import FuzzResult
    from benchmarks.hostile import CorpusResult

log = logger("bench-swap")


class Capacity(TypedDict):
    offered_rps: float
    achieved_rps: float | None
    p99_ms: float | None
    locust_limited: bool
    failed: int


class RedisOutage(RunSummary, Outage):
    """The outage run's answers and what the replicas said meanwhile."""


class Measured(TypedDict):
    """What the phases measured, in the order swap.json lists it."""

    capacity: Capacity
    load_fraction: float
    load_rps: float
    steady: RunSummary
    swap_under_load: SwapSummary
    memory: MemorySummary
    redis_outage: RedisOutage
    fuzz: FuzzResult
    malicious_bundles: CorpusResult


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.swap", description=__doc__.split("\n")[0]
    )
    add_fleet_arguments(p, bundle_help="bundle dir to serve (default: as bench-serve)")
    a = p.add_argument
    a("--steady", type=float, default=30.0, help="seconds of the steady run")
    a("--duration", type=float, default=60.0, help="seconds of the swap run")
    a("--swaps", type=int, default=20)
    a("--cycles", type=int, default=100, help="swap cycles of the memory phase")
    a("--outage-run", type=float, default=40.0, help="seconds of the Redis outage run")
    a("--outage", type=float, default=10.0, help="seconds Redis stays down")
    a("--fuzz-examples", type=int, default=25, help="fuzzer examples per operation and mode")
    a("--no-plot", action="store_true")
    return p


class Phases(FleetPhases):
    """The phases in order, on one fleet, each load run at `rps` (70% of the probed capacity)."""

    def __init__(
        self, args: argparse.Namespace, work: Path, inputs: FleetInputs, fleet: Fleet
    ) -> None:
        super().__init__(args, work, inputs, fleet)
        self.swap_answers: list[Answer] = []

    def capacity(self) -> Capacity:
        """A saturating run; the later runs offer `--load` of what it achieved."""
        probe = self.probe_capacity()
        level = probe.level
        log(f"capacity {level['rps']} rps; load {self.rps} rps")
        return {
            "offered_rps": self.args.probe_rps,
            "achieved_rps": level["rps"],
            "p99_ms": level["p99_ms"],
            "locust_limited": level["locust_limited"],
            "failed": failed(probe.answers()),
        }

    def steady(self) -> RunSummary:
        run = self.load("steady", self.rps, self.args.steady)
        during_load(run, idle)
        steady = summarize(run.answers(), skip_s=2.0)
        log(f"steady: p99 {steady['p99_ms']} ms, failed {steady['failed']}")
        return steady

    def swaps(self, steady: RunSummary) -> SwapSummary:
        a = self.args
        run = self.load("swaps", self.rps, a.duration)
        swaps = during_load(run, lambda t0: swap_phase(self.fleet, a.swaps, a.duration, t0))
        self.swap_answers = run.answers()
        result = swap_summary(self.swap_answers, swaps, steady)
        log(
            f"swaps: failed {result['failed']}, p99 during swaps "
            f"{result['p99_during_swaps_ms']} ms (steady {steady['p99_ms']})"
        )
        return result

    def outage(self) -> RedisOutage:
        a = self.args
        at_s = (a.outage_run - a.outage) / 2
        run = self.load("outage", self.rps, a.outage_run)
        info = during_load(run, lambda t0: outage_phase(self.fleet, t0, at_s, a.outage))
        outage: RedisOutage = {**summarize(run.answers()), **info}
        log(f"Redis outage: failed {outage['failed']} of {outage['requests']}")
        return outage

    def hostile(self) -> tuple[CorpusResult, FuzzResult]:
        """The malicious-bundle corpus (both gates are on), then the fuzzer."""
        from benchmarks.fuzz import run_fuzz
        from benchmarks.hostile import run_malicious_corpus

        fleet = self.fleet
        corpus = run_malicious_corpus(fleet.urls[0], fleet.token, gates=("accuracy", "latency"))
        log(f"malicious bundles: {corpus['rejected']}/{corpus['tried']} rejected")
        fuzz = run_fuzz(fleet.urls[0], self.args.fuzz_examples, token=fleet.token)
        log(f"fuzz: {fuzz['cases']} cases, {fuzz['server_errors']} 5xx")
        return corpus, fuzz

    def run(self) -> Measured:
        """Every phase; the results' measured part, in the order the JSON lists it."""
        capacity = self.capacity()
        steady = self.steady()
        swaps = self.swaps(steady)
        memory = memory_summary(memory_phase(self.fleet, self.args.cycles))
        outage = self.outage()
        corpus, fuzz = self.hostile()
        return {
            "capacity": capacity,
            "load_fraction": self.args.load,
            "load_rps": self.rps,
            "steady": steady,
            "swap_under_load": swaps,
            "memory": memory,
            "redis_outage": outage,
            "fuzz": fuzz,
            "malicious_bundles": corpus,
        }


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    work: Path = args.work / "swap"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inputs = prepare_inputs(args, work, MEMORY_VERSIONS)
    log(f"bundle {inputs.shipped} ({len(inputs.vocab)} items); starting Redis and two replicas")
    phases = Phases(args, work, inputs, start_fleet(work, inputs.archives, cpu=args.server_cpu))
    try:
        measured = phases.run()
    finally:
        phases.fleet.stop()
    results: dict[str, Any] = {
        **run_provenance("benchmarks.swap", argv),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "bundle": {
            "source": inputs.source,
            "dir": str(inputs.shipped),
            "items": len(inputs.vocab),
            "versions": list(VERSIONS),
            "memory_phase_versions": list(MEMORY_VERSIONS),
        },
        "pinning": {"replicas": args.server_cpu, "locust": args.load_cpu},
        "gates": GATE_ENV,
        **measured,
    }
    results["targets"] = evaluate_targets(results)
    markdown = render_markdown(results)
    write_results(args.out, "swap", results, markdown)
    if not args.no_plot:
        render_plot(results, phases.swap_answers, args.out / "swap.png")
    print(markdown)
    verdict = "PASS" if results["targets"]["all_passed"] else "FAIL"
    log(f"wrote {args.out / 'swap.json'}; targets {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
