"""Snapshots: what one recovery snapshot costs after 1% of the open cases changed.

    .venv/bin/python benchmarks/snapshots.py [--open 200000] [--touched 0.01]

1. ``--open`` ``order_placed`` events (the memory benchmark's load: distinct orders, half as many
   customers, promised in three years so no timer fires; the last one half an hour later, so
   its watermark releases all the others) go through every stage of the flow
   (``benchmarks/throughput.py``'s plain loop; ``--cases-only``: the case stage alone), leaving
   that many open cases;
2. every stage shard is snapshotted in full: the old way (the shard pickled whole, what
   ``_StageLogic.snapshot`` stored before the journal) and the new one (a base in its epoch
   journal, ``salvage.flows.state`` + ``salvage.flows.journal``), bytes and milliseconds;
3. ``--touched`` of the open cases get one more event (``order_shipped``, an hour later), which
   touches their case, customer, model snapshots and dispatch memory, then one more order two
   hours later still, whose watermark releases the shipments through every stage;
4. the next snapshot of every shard is taken: the old way (the whole shard again) and the new one
   (a journal segment: the touched entries and the headers).

The last line is ``touched_1pct_bytes_ratio=X``: bytes the journal wrote for the case stage's
snapshot after the change / bytes of a full snapshot of the same state (a base written after the
change), over every case shard, measured in this run. Target (issue 14): X <= 0.05.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import machine, say, table


def _marker_line(n_open: int, after: timedelta) -> bytes:
    """One more order, placed ``after`` the load: its watermark releases the load's tail (the
    orders still in the reorder buffers), so the first snapshot holds every loaded case."""
    from memory import LOAD_SPAN, T0, _iso, order_lines

    line = next(iter(order_lines(n_open + 1, n_open, 1)))[0]
    doc = json.loads(line)
    doc["occurred_at"] = _iso(T0 + LOAD_SPAN + after)
    return json.dumps(doc).encode() + b"\n"


def _shipped_lines(n_open: int, every: int, start_after: timedelta) -> list[bytes]:
    from memory import LOAD_SPAN, T0, _iso

    t = T0 + LOAD_SPAN + start_after
    lines = []
    for i in range(0, n_open, every):
        doc = {
            "courier": "northpost",
            "event_id": f"M{i:09d}-02",
            "event_type": "order_shipped",
            "occurred_at": _iso(t),
            "order_id": f"M{i:09d}",
            "schema_version": 1,
        }
        lines.append(json.dumps(doc).encode() + b"\n")
    return lines


def _pickled(stages: dict[str, Any]) -> tuple[int, float]:
    size, secs = 0, 0.0
    for stage in stages.values():
        t0 = time.perf_counter()
        size += len(pickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL))
        secs += time.perf_counter() - t0
    return size, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--open", type=int, default=200_000, help="open cases")
    ap.add_argument("--touched", type=float, default=0.01, help="share of open cases changed")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument(
        "--cases-only", action="store_true", help="drive the case stage only (a faster load)"
    )
    args = ap.parse_args()

    from memory import order_lines
    from throughput import PlainPipeline

    from salvage.flows.journal import EpochJournal
    from salvage.flows.state import StageState

    say(f"snapshots: {args.open:,} open cases, {args.touched:.1%} touched ({machine()})")
    work = Path(tempfile.mkdtemp(prefix="salvage-snapshots-"))
    log = work / "source.jsonl"
    log.touch()  # the single source partition's id
    pipe = PlainPipeline(log, shards=args.shards)
    if args.cases_only:  # the case stage (and the intent stage it waits for) only
        loop = pipe.loop
        keep = {"intents", "cases"}
        loop.specs = tuple(st for st in loop.specs if st.name in keep)
        loop.stages = pipe.stages = {n: st for n, st in loop.stages.items() if n in keep}
        loop.consumers = {
            n: [(c, f) for c, f in loop.consumers[n] if c in keep] for n in loop.stages
        }
        loop.on_output = lambda kind, payload: None
    states = {
        name: {key: StageState(stage).track() for key, stage in stages.items()}
        for name, stages in pipe.stages.items()
    }
    fed = 0
    t0 = time.perf_counter()
    for lines in order_lines(args.open - 1):
        pipe.feed(lines, fed, final=False)
        fed += len(lines)
    say(f"  loaded {fed:,} orders in {time.perf_counter() - t0:.1f} s")
    n_open = args.open - 1  # and the marker order
    pipe.feed([_marker_line(n_open, timedelta(minutes=30))], fed, final=False)
    fed += 1
    open_cases = sum(len(s.cases) for s in pipe.stages["cases"].values())
    say(f"  {open_cases:,} open cases (the marker order waits in the reorder buffer)")
    gc.collect()

    journals = {
        name: {key: EpochJournal(work / "journal", f"{name}/{key}") for key in stages}
        for name, stages in pipe.stages.items()
    }

    def journal_snapshot(name: str, n: int) -> tuple[int, float]:
        size, secs = 0, 0.0
        for key, state in states[name].items():
            journal = journals[name][key]
            t = time.perf_counter()
            header, changed, deleted = state.delta()
            full = state.entries() if journal.compaction_due() else None
            journal.write(n, header, changed, deleted, full)
            secs += time.perf_counter() - t
            size += journal.last_write_bytes
        return size, secs

    def full_size(name: str) -> int:
        """A base of the current state (what a full snapshot of it writes), not timed."""
        size = 0
        for key, state in states[name].items():
            header, entries = state.full()
            probe = EpochJournal(work / "probe", f"{name}/{key}")
            probe.write(1, header, {}, (), entries)
            size += probe.last_write_bytes
        return size

    rows: list[list[object]] = []
    first: dict[str, tuple[int, float, int, float]] = {}
    for name in pipe.stages:
        old = _pickled(pipe.stages[name])
        new = journal_snapshot(name, 1)
        first[name] = (*old, *new)

    every = max(1, round(1 / args.touched))
    shipped = _shipped_lines(args.open - 1, every, timedelta(hours=1))
    # and a later event, whose watermark releases them (through every stage)
    later = _marker_line(args.open, timedelta(hours=3))
    pipe.feed(shipped, fed, final=False)
    pipe.feed([later], fed + len(shipped), final=False)
    fed += len(shipped) + 1
    open_cases = sum(len(s.cases) for s in pipe.stages["cases"].values())
    shipped_cases = sum(
        1 for s in pipe.stages["cases"].values() for c in s.cases.values() if c.shipped_at
    )
    say(f"  {shipped_cases:,} of {open_cases:,} open cases touched (order_shipped applied)")

    ratios: dict[str, float] = {}
    for name in pipe.stages:
        old = _pickled(pipe.stages[name])
        new = journal_snapshot(name, 2)
        full = full_size(name)
        ratios[name] = new[0] / full if full else float("nan")
        f = first[name]
        rows.append(
            [
                name,
                f"{f[0]:,}",
                f"{f[1] * 1e3:,.0f}",
                f"{f[2]:,}",
                f"{f[3] * 1e3:,.0f}",
                f"{old[0]:,}",
                f"{old[1] * 1e3:,.0f}",
                f"{new[0]:,}",
                f"{new[1] * 1e3:,.1f}",
                f"{ratios[name]:.4f}",
            ]
        )
    headers = [
        "stage",
        "full: pickle B",
        "ms",
        "journal base B",
        "ms",
        f"after {args.touched:.0%}: pickle B",
        "ms",
        "journal segment B",
        "ms",
        "segment / full",
    ]
    print(table(headers, rows))
    total_seg = sum(float(r[7].replace(",", "")) for r in rows)
    total_old = sum(float(r[5].replace(",", "")) for r in rows)
    print(
        f"every stage: the snapshot after the change writes {total_seg:,.0f} B with the journal, "
        f"{total_old:,.0f} B pickled whole ({total_seg / total_old:.4f} of it)"
    )
    print(f"touched_1pct_bytes_ratio={ratios['cases']:.4f}")


if __name__ == "__main__":
    main()
