"""Live-catalog benchmark: items made unavailable and new items added under load on a
two-replica fleet, Redis flushed under load, and a replica started after the flush.

    make bench-catalog [DATA=../shared/data/amazon-beauty.txt] [CATALOG_ARGS='--items 1000']
    python -m benchmarks.catalog_live --data ../shared/data/amazon-beauty.txt [--bundle DIR]

The fleet is the swap benchmark's (`benchmarks.harness.fleet`): one private redis-server (no
persistence: a FLUSHALL is the state vanishing), replica r1 bootstrapped with the served
bundle, r2 started empty (it follows the fleet), both pinned to core 0; locust pinned to
core 1 sends every request round-robin to the two replicas and records every answer, here
with the answer's item IDs (`LOCUST_TRACE_ITEMS=1`). The served bundle is the one `make
bench-compress` shipped, else a speed-only one (`benchmarks.serve_bundles.resolve_inputs`, as
`benchmarks.swap` picks it), under the version name `live-a`. Phases, in order:

1. capacity: a saturating locust run; the later runs offer `--load` (70%) of what it
   achieved. Then a traced warm-up at that load: the `--items` items its answers name most
   often are the ones made unavailable (so a leak would show in the load's answers), and
   their copies seed the new items;
2. unavailable: under load, `POST /admin/catalog/unavailable` (through r1) with those items;
   from its answer, every replica is polled directly (not through the load) with requests
   whose answers named them before (a rerank over the items themselves with k = their
   count, and the full-catalog bodies covering most of them) until no answer names any:
   the propagation time per replica. Every answer of the load started after the whole fleet
   was clean, and before they were marked available again (through r2), that names one of
   them is a leak;
3. new items: under load, `POST /admin/catalog/items/live-a` (through r2) with `--items`
   new IDs whose vectors are the chosen items' decoded vectors scaled by 1.05 plus small
   noise (so each outranks its original wherever the original scores above zero); the time
   until every replica answers at least one new ID to the full-catalog probe bodies;
4. flush: under load, FLUSHALL; the time until Redis holds the active version, the bundle
   archive and the catalog again (the replicas write back what they hold), and failed
   requests over the run. Then a third replica, started with no bootstrap bundle: seconds
   from its process start until /readyz answers 200 and it serves the fleet's version.

Writes benchmarks/results/catalog.json and catalog.md. `foldin` in the JSON copies the main
numbers of benchmarks/results/catalog-foldin.json when `python -m benchmarks.foldin` wrote
it (a separate command; nothing of it is measured here).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import redis

from benchmarks.catalog_flush import FlushPhase, LateReplica, flush_phase, late_replica
from benchmarks.catalog_phases import (
    NEW_ID_PREFIX,
    NEW_NOISE,
    NEW_SCALE,
    OP_AT_S,
    VERSION,
    NewItems,
    Unavailable,
    float_table,
    items_body,
    new_items_phase,
    new_items_summary,
    new_vectors,
    start_fleet,
    unavailable_phase,
    unavailable_summary,
)
from benchmarks.catalog_probes import Probes, choose_probes
from benchmarks.catalog_report import (
    FOLDIN_FILE,
    evaluate_targets,
    foldin_summary,
    headline,
    render_markdown,
)
from benchmarks.catalog_trace import item_counts, naming, read_item_trace
from benchmarks.harness.fleet import (
    Fleet,
    FleetInputs,
    FleetPhases,
    LoadRun,
    add_fleet_arguments,
    during_load,
    idle,
    prepare_inputs,
)
from benchmarks.harness.log import logger
from benchmarks.harness.pinning import pinned
from benchmarks.harness.report import write_results
from benchmarks.harness.trace import RunSummary, failed, summarize
from benchmarks.provenance import HostInfo, host_info, python_probe_ms, run_provenance

RESULTS = "catalog"

log = logger("bench-catalog")


class Capacity(TypedDict):
    offered_rps: float
    achieved_rps: float | None
    p99_ms: float | None
    locust_limited: bool
    locust_cpu: float
    failed: int


class Warmup(RunSummary):
    """The traced warm-up, and the probes chosen from it."""

    answers: int
    answers_naming_chosen: int
    chosen_named_by_warmup: int
    probe_full_bodies: int
    probe_full_bodies_name: int  # chosen items the full-catalog probes name
    probe_rerank_bodies: int


class Flush(FlushPhase):
    requests: int
    p99_ms: float | None
    max_ms: float | None
    statuses: dict[str, int]
    flush_failed_requests: int


class Measured(TypedDict):
    """What the phases measured, in the order catalog.json lists it."""

    capacity: Capacity
    load_rps: float
    warmup: Warmup
    unavailable: Unavailable
    new_items: NewItems
    flush: Flush
    late_replica: LateReplica


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.catalog_live", description=__doc__.split("\n")[0]
    )
    add_fleet_arguments(p, bundle_help="bundle dir to serve (default: as bench-swap)")
    a = p.add_argument
    a("--warmup", type=float, default=10.0, help="seconds of the traced warm-up")
    a("--items", type=int, default=1000, help="items made unavailable, and items added")
    a("--probe-bodies", type=int, default=4, help="full-catalog probe bodies per round")
    a("--unavailable-run", type=float, default=40.0, help="seconds of the unavailable run")
    a("--new-items-run", type=float, default=20.0, help="seconds of the new-items run")
    a("--flush-run", type=float, default=30.0, help="seconds of the flush run")
    a("--timeout", type=float, default=10.0, help="seconds to wait for a change to propagate")
    return p


class Phases(FleetPhases):
    """The phases in order, on one fleet, each load run at `rps` (`--load` of the probed
    capacity) with every answer's items traced."""

    def __init__(
        self,
        args: argparse.Namespace,
        work: Path,
        inputs: FleetInputs,
        fleet: Fleet,
        rds: redis.Redis,
    ) -> None:
        super().__init__(args, work, inputs, fleet)
        self.rds = rds  # the fleet's Redis, flushed by the flush phase
        self.table, self.table_vocab = float_table(inputs.bundles[VERSION])
        self.new_ids: list[str] = []

    def traced(self, name: str, seconds: float) -> LoadRun:
        """A load run at `rps` whose trace names every answer's items."""
        return self.load(name, self.rps, seconds, trace_items=True)

    def capacity(self) -> Capacity:
        """A saturating run (its trace without item IDs); the later runs offer `--load` of
        what it achieved."""
        level = self.probe_capacity().level
        log(f"capacity {level['rps']} rps; load {self.rps} rps")
        return {
            "offered_rps": self.args.probe_rps,
            "achieved_rps": level["rps"],
            "p99_ms": level["p99_ms"],
            "locust_limited": level["locust_limited"],
            "locust_cpu": level["locust_cpu"],
            "failed": level["failed_requests"],
        }

    def warmup(self) -> tuple[Probes, Warmup]:
        """A traced run at the load; the items its answers name most are the chosen ones."""
        run = self.traced("warmup", self.args.warmup)
        during_load(run, idle)
        warm = read_item_trace(run.trace_path)
        probes = choose_probes(
            self.fleet,
            self.inputs.workload.full,
            warm,
            n_items=self.args.items,
            n_bodies=self.args.probe_bodies,
            catalog=[v for v in self.table_vocab if v],
        )
        chosen = set(probes.items)
        warmup: Warmup = {
            **summarize(warm),
            "answers": sum(1 for a in warm if a.status == 200),
            "answers_naming_chosen": len(naming(warm, chosen)),
            "chosen_named_by_warmup": sum(1 for i in probes.items if i in item_counts(warm)),
            "probe_full_bodies": len(probes.full),
            "probe_full_bodies_name": probes.full_named,
            "probe_rerank_bodies": len(probes.rerank),
        }
        log(
            f"warm-up: {warmup['answers_naming_chosen']} of {warmup['answers']} answers name "
            f"the {len(chosen)} chosen items; {len(probes.full)} full probes name "
            f"{probes.full_named} of them"
        )
        return probes, warmup

    def unavailable(self, probes: Probes) -> Unavailable:
        a = self.args
        run = self.traced("unavailable", a.unavailable_run)
        info = during_load(
            run,
            lambda t0: unavailable_phase(
                self.fleet, probes, t0, duration_s=a.unavailable_run, timeout_s=a.timeout
            ),
        )
        u = unavailable_summary(read_item_trace(run.trace_path), info, set(probes.items))
        log(
            f"unavailable: propagation {u['unavailable_propagation_s_max']} s, leaks "
            f"{u['unavailable_leaks']}, failed {u['failed_requests']}"
        )
        return u

    def new_items(self, probes: Probes) -> NewItems:
        """Copies of the chosen items, which the probes' answers named, added under load."""
        row_of = {v: r for r, v in enumerate(self.table_vocab) if v}
        self.new_ids = [f"{NEW_ID_PREFIX}{j + 1}" for j in range(len(probes.items))]
        new_ids = set(self.new_ids)
        if not new_ids.isdisjoint(row_of):
            raise RuntimeError(f"new IDs {NEW_ID_PREFIX}* collide with the catalog")
        vectors = new_vectors(self.table, [row_of[i] for i in probes.items])
        body = items_body(self.new_ids, vectors)
        run = self.traced("new-items", self.args.new_items_run)
        info = during_load(
            run,
            lambda t0: new_items_phase(
                self.fleet, body, new_ids, probes, t0, timeout_s=self.args.timeout
            ),
        )
        n = new_items_summary(read_item_trace(run.trace_path), info, new_ids)
        log(
            f"new items: {n['call']['status']}, propagation "
            f"{n['new_items_propagation_s_max']} s, failed {n['failed_requests']}"
        )
        return n

    def flush(self) -> Flush:
        run = self.traced("flush", self.args.flush_run)
        timeout_s = self.args.flush_run - OP_AT_S
        info = during_load(
            run, lambda t0: flush_phase(self.fleet, self.rds, t0, timeout_s=timeout_s)
        )
        answers = read_item_trace(run.trace_path)
        whole = summarize(answers)
        flush: Flush = {
            **info,
            "requests": whole["requests"],
            "p99_ms": whole["p99_ms"],
            "max_ms": whole["max_ms"],
            "statuses": whole["statuses"],
            "flush_failed_requests": failed(answers),
        }
        log(f"flush: heal {flush['flush_heal_s']} s, failed {flush['flush_failed_requests']}")
        return flush

    def run(self) -> Measured:
        """Every phase; the results' measured part, in the order the JSON lists it."""
        capacity = self.capacity()
        probes, warmup = self.warmup()
        unavailable = self.unavailable(probes)
        new_items = self.new_items(probes)
        flush = self.flush()
        cpu = self.args.server_cpu
        late = late_replica(
            self.fleet, self.work, probes, set(self.new_ids), cpu=cpu, timeout_s=120.0
        )
        log(f"late replica: ready {late.get('late_replica_ready_s')} s")
        return {
            "capacity": capacity,
            "load_rps": self.rps,
            "warmup": warmup,
            "unavailable": unavailable,
            "new_items": new_items,
            "flush": flush,
            "late_replica": late,
        }


def build_results(
    args: argparse.Namespace,
    argv: Sequence[str],
    inputs: FleetInputs,
    measured: Measured,
    *,
    host: HostInfo,
    wall_seconds: float,
) -> dict[str, Any]:
    """catalog.json: the headline figures first, then provenance, settings and the phases."""
    m = measured
    results: dict[str, Any] = {
        **run_provenance("benchmarks.catalog_live", argv),
        "host": host,
        "wall_seconds": wall_seconds,
        "bundle": {
            "source": inputs.source,
            "dir": str(inputs.shipped),
            "items": len(inputs.vocab),
            "version": VERSION,
        },
        "pinning": {"replicas": args.server_cpu, "locust": args.load_cpu},
        "capacity": m["capacity"],
        "load_fraction": args.load,
        "load_rps": m["load_rps"],
        "durations_s": {
            "capacity": args.probe,
            "warmup": args.warmup,
            "unavailable": args.unavailable_run,
            "new_items": args.new_items_run,
            "flush": args.flush_run,
            "operation_at": OP_AT_S,
            "propagation_timeout": args.timeout,
        },
        "warmup": m["warmup"],
        "new_item_vectors": f"chosen item's decoded vector x {NEW_SCALE} + Gaussian noise of "
        f"{NEW_NOISE} x its norm; IDs {NEW_ID_PREFIX}1..{m['new_items']['items']}",
        **{k: m[k] for k in ("unavailable", "new_items", "flush", "late_replica")},
        "foldin": foldin_summary(args.out / FOLDIN_FILE),
    }
    results["targets"] = evaluate_targets(results)
    return {**headline(results), **results}


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    work: Path = args.work / "catalog-live"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    host = host_info(pinned([], args.server_cpu))
    inputs = prepare_inputs(args, work, (VERSION,))
    log(f"bundle {inputs.shipped} ({len(inputs.vocab)} items); starting Redis and two replicas")
    fleet = start_fleet(work, inputs.archives[VERSION], cpu=args.server_cpu)
    rds = redis.Redis.from_url(fleet.redis.url)
    try:
        measured = Phases(args, work, inputs, fleet, rds).run()
    finally:
        rds.close()
        fleet.stop()
    host["python_probe_ms"]["end"] = python_probe_ms(pinned([], args.server_cpu))
    wall = round(time.perf_counter() - t_start, 1)
    results = build_results(args, argv, inputs, measured, host=host, wall_seconds=wall)
    markdown = render_markdown(results)
    write_results(args.out, RESULTS, results, markdown)
    print(markdown)
    verdict = "PASS" if results["targets"]["all_passed"] else "FAIL"
    log(f"wrote {args.out / (RESULTS + '.json')}; targets {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
