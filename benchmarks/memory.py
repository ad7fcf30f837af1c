"""Memory: RSS and recovery-snapshot size against open cases, and throughput as they grow.

    .venv/bin/python benchmarks/memory.py --sizes 100000 500000 1000000

For each size N (each in a fresh child process, so RSS figures do not mix):

1. N `order_placed` events (simulator-shaped, distinct orders, half as many customers, all within
   one hour of event time, promised in three years so no timer of theirs fires) are fed through
   every stage of the flow (cases, context, models, dispatch, lanes, output: `flows/stages/`
   driven directly, as in `benchmarks/throughput.py`'s plain loop), leaving N open cases;
2. RSS growth (after `gc.collect()`) divided by N: **bytes per open case** in memory;
3. a whole-shard snapshot: every stage pickled (`pickle.HIGHEST_PROTOCOL`, what
   `_StageLogic.snapshot` stored before the epoch journal): bytes per open case and the seconds
   one full snapshot takes (`benchmarks/snapshots.py` measures the journal, which writes a full
   state only at compactions and otherwise what changed);
4. throughput with N cases open: the `order_placed` load rate over its last 10%, and a probe (a
   steady-state simulator log of --probe-orders orders, placed after the load in event time, with
   its full event mix) in events/s, compared with the same probe on an empty pipeline (N = 0).

Then one small traced run (--trace-size, tracemalloc) attributes the bytes per open case to the
source lines that allocated them (where the bytes go). Target (issue 7): <= 2 KB per open case
and flat throughput as open cases grow.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import pickle
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import machine, rss_mb, say, table

TARGET_BYTES = 2048
T0 = datetime(2026, 3, 2, tzinfo=UTC)
LOAD_SPAN = timedelta(hours=1)
BATCH = 2000


@functools.cache
def _template() -> dict[str, Any]:
    from salvage.connectors.simulator import write_log

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.jsonl"
        write_log("steady-state", 20, 1, path)
        for line in path.read_bytes().splitlines():
            doc = json.loads(line)
            if doc["event_type"] == "order_placed":
                return doc
    raise RuntimeError("no order_placed in the simulator's output")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def order_lines(n: int, start: int = 0, count: int | None = None):
    """Batches of ``order_placed`` lines for orders ``start .. start+count`` of ``n``."""
    doc = dict(_template())
    promise_after = timedelta(days=3 * 365)  # no promise timer fires during the probe
    customers = max(1, n // 2)
    step = LOAD_SPAN / max(1, n)
    end = n if count is None else start + count
    batch: list[bytes] = []
    for i in range(start, end):
        t = T0 + step * i
        doc["order_id"] = f"M{i:09d}"
        doc["event_id"] = f"M{i:09d}-01"
        doc["customer_id"] = f"MC{i % customers:09d}"
        doc["occurred_at"] = _iso(t)
        doc["promised_delivery_at"] = _iso(t + promise_after)
        batch.append(json.dumps(doc).encode() + b"\n")
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def probe_log(orders: int, work: Path) -> Path:
    """A steady-state log placed after the load (event time), cached."""
    from salvage.connectors.simulator import write_log

    path = work / f"probe-{orders}.jsonl"
    if not path.is_file():
        write_log("steady-state", orders, 3, path, start=T0 + LOAD_SPAN + timedelta(minutes=5))
    return path


def measure(n: int, probe: Path, trace: bool) -> dict[str, Any]:
    """One size, in this process."""
    from throughput import PlainPipeline

    _template()  # (the simulator's one-off caches are not case memory)
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    probe_events = sum(1 for _ in probe.open("rb"))
    pipe = PlainPipeline(probe, shards=8)  # the probe file is the single source partition
    gc.collect()
    rss0 = rss_mb()
    before = tracemalloc.take_snapshot() if trace else None
    fed = 0
    started = time.perf_counter()
    tail_from = int(n * 0.9)
    tail_t0, tail_n = None, 0
    report = time.perf_counter()
    for lines in order_lines(n):
        if tail_t0 is None and fed >= tail_from:
            tail_t0 = time.perf_counter()
        pipe.feed(lines, fed, final=False)
        fed += len(lines)
        if tail_t0 is not None:
            tail_n += len(lines)
        if time.perf_counter() - report > 10:
            report = time.perf_counter()
            say(f"  {n:,} open cases: {fed / n:5.1%} loaded, RSS {rss_mb():,.0f} MB")
    load_s = time.perf_counter() - started
    tail_eps = tail_n / (time.perf_counter() - tail_t0) if tail_t0 and tail_n else float("nan")
    gc.collect()
    rss1 = rss_mb()
    result: dict[str, Any] = {
        "open_cases": n,
        "rss_mb": rss1,
        "rss_growth_mb": rss1 - rss0,
        "load_eps": n / load_s if n else float("nan"),
        "load_tail_eps": tail_eps,
    }
    if trace:
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "lineno")
        result["trace"] = [
            (
                str(s.traceback[0]).replace(str(Path(__file__).resolve().parents[1]) + "/", ""),
                s.size_diff / max(1, n),
            )
            for s in stats[:15]
        ]
        result["traced_bytes"] = sum(s.size_diff for s in stats) / max(1, n)
        tracemalloc.stop()
        return result
    open_now = sum(len(s.cases) for s in pipe.stages["cases"].values())
    result["open_counted"] = open_now
    snap: dict[str, list[float]] = {}
    for name, stages in pipe.stages.items():
        size, secs = 0, 0.0
        for stage in stages.values():
            t0 = time.perf_counter()
            blob = pickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL)
            secs += time.perf_counter() - t0
            size += len(blob)
            del blob
        snap[name] = [size, secs]
    result["snapshot"] = snap
    # the probe: full event mix, with the N cases still open
    started = time.perf_counter()
    line_no = 0
    with probe.open("rb") as f:
        while True:
            lines = f.readlines(BATCH * 220)
            pipe.feed(lines, line_no, final=not lines)
            line_no += len(lines)
            if not lines:
                break
    result["probe_eps"] = probe_events / (time.perf_counter() - started)
    result["probe_events"] = probe_events
    return result


def run_child(n: int, probe: Path, trace: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(n), "--probe", str(probe)]
    if trace:
        cmd.append("--trace")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, check=True)
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 1_000_000])
    ap.add_argument("--probe-orders", type=int, default=3000, help="probe log size (orders)")
    ap.add_argument("--trace-size", type=int, default=20_000, help="0: skip the traced run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/salvage-bench"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.probe, args.trace)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    probe = probe_log(args.probe_orders, args.work)
    say(f"baseline: the probe ({probe.name}) on an empty pipeline ...")
    base = run_child(0, probe)
    results = []
    for n in args.sizes:
        say(f"{n:,} open cases ...")
        results.append(run_child(n, probe))
    rows = []
    for r in results:
        n = r["open_cases"]
        snap_bytes = sum(v[0] for v in r["snapshot"].values())
        snap_secs = sum(v[1] for v in r["snapshot"].values())
        per_case = r["rss_growth_mb"] * 2**20 / n
        rows.append(
            [
                f"{n:,}",
                f"{r['rss_mb']:,.0f}",
                f"{per_case:,.0f}",
                f"{per_case / TARGET_BYTES:.2f}",
                f"{snap_bytes / n:,.0f}",
                f"{snap_bytes / 2**20:,.0f}",
                f"{snap_secs:.1f}",
                f"{r['load_tail_eps']:,.0f}",
                f"{r['probe_eps']:,.0f}",
                f"{r['probe_eps'] / base['probe_eps']:.2f}",
            ]
        )
    print(f"\nmemory against open cases, {machine()}")
    print(
        f"probe: {base['probe_events']:,} events of steady-state; on an empty pipeline "
        f"{base['probe_eps']:,.0f} events/s (RSS {base['rss_mb']:,.0f} MB)"
    )
    print(
        table(
            [
                "open cases",
                "RSS MB",
                "RSS B/case",
                "/ 2 KB target",
                "snapshot B/case",
                "snapshot MB",
                "snapshot s",
                "load ev/s (last 10%)",
                "probe ev/s",
                "probe / empty",
            ],
            rows,
        )
    )
    print("\nsnapshot bytes per open case, by stage")
    stages = list(results[0]["snapshot"]) if results else []
    print(
        table(
            ["open cases", *stages],
            [
                [f"{r['open_cases']:,}"]
                + [f"{r['snapshot'][s][0] / r['open_cases']:,.0f}" for s in stages]
                for r in results
            ],
        )
    )
    worst = max(
        (r["rss_growth_mb"] * 2**20 / r["open_cases"] for r in results), default=float("nan")
    )
    flat = min((r["probe_eps"] / base["probe_eps"] for r in results), default=float("nan"))
    print("\ntargets (issue 7)")
    print(
        f"  <= {TARGET_BYTES:,} B per open case (RSS): worst {worst:,.0f} B -> "
        + ("met" if worst <= TARGET_BYTES else f"NOT met, x{worst / TARGET_BYTES:.1f} over")
    )
    print(
        f"  flat throughput: slowest probe at {flat:.0%} of the empty pipeline's "
        "(snapshot seconds above are extra, per epoch, with --recovery-dir)"
    )
    if args.trace_size:
        say(f"tracemalloc run, {args.trace_size:,} open cases ...")
        tr = run_child(args.trace_size, probe, trace=True)
        print(
            f"\nwhere the bytes go: tracemalloc, {args.trace_size:,} open cases, "
            f"{tr['traced_bytes']:,.0f} B per open case allocated and still live; top lines"
        )
        print(table(["allocated at", "B/case"], [[w, f"{b:,.0f}"] for w, b in tr["trace"]]))


if __name__ == "__main__":
    main()
