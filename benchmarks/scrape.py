"""Scrape cost: what one /metrics render holds the worker's GIL for, prometheus_client's
``generate_latest`` against Salvage's cached renderer (``sinks/exposition.py``), on the registry
a run leaves.

    .venv/bin/python benchmarks/scrape.py --events 200000 [--repeat 5]

Runs the plain loop (the flow's stages, no Bytewax; as ``throughput.py``) over a simulator log of
``--events`` events, so that the process's registry holds the series such a run makes (the KPI
slices by campaign, SKU family, courier lane, outcome ...). Then renders that registry
``--repeat`` times with each, alternating, under ``salvage run``'s GC thresholds, and reports the
median per render, the cached renderer's first render (it builds each series' line once) and the
ratio. Both outputs must be equal byte for byte, less the process and GC collectors' lines (their
values move between renders).

A scrape holds the GIL for this long while the flow waits (Prometheus scrapes every 15 s,
``deploy/prometheus.yml``). Last line, for scripts::

    lines=L generate_latest_ms=A render_ms=B ratio=R identical=yes
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_WORK, machine, say, sim_log, table

NL = 10  # b"\n"


def _steady(text: bytes) -> list[bytes]:
    """The lines whose values do not move between two renders: all but the process_ and
    python_gc_ families'."""
    kept = []
    for line in text.splitlines():
        name = line.split(b" ", 3)[2] if line.startswith(b"#") else line
        if not name.startswith((b"process_", b"python_gc_")):
            kept.append(line)
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events in the simulator log")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache for generated logs")
    ap.add_argument("--repeat", type=int, default=5, help="renders with each, alternating")
    ap.add_argument("--shards", type=int, default=8, help="logical shards per stage")
    args = ap.parse_args()

    from prometheus_client import REGISTRY
    from throughput import run_plain

    from salvage.config import Settings
    from salvage.runner import tuned_gc
    from salvage.scoring.models import engine
    from salvage.sinks.exposition import Exposition

    log = sim_log(args.events, args.work)
    engine(Settings().models.engine).warm()
    say(f"plain loop over {log.name}, to fill the registry ...")
    run_plain(log, args.shards)
    with tuned_gc():  # the worker's cyclic-GC thresholds, under which its scrapes run
        measure(args, log, exposition=Exposition(REGISTRY))


def measure(args: argparse.Namespace, log: Path, exposition: Any) -> None:
    from prometheus_client import REGISTRY, generate_latest

    t0 = time.perf_counter()
    first = exposition.render()
    cold_ms = (time.perf_counter() - t0) * 1e3
    reference = generate_latest(REGISTRY)
    identical = _steady(first) == _steady(reference)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        reference = generate_latest(REGISTRY)
        theirs.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        out = exposition.render()
        ours.append((time.perf_counter() - t0) * 1e3)
        identical = identical and _steady(out) == _steady(reference)
    a, b = statistics.median(theirs), statistics.median(ours)
    lines = reference.count(NL)
    print(f"\n/metrics render, registry after {args.events:,} events, {machine()}")
    print(
        table(
            ["renderer", "lines", "MB", "median ms", "runs ms"],
            [
                [
                    "prometheus_client generate_latest",
                    f"{lines:,}",
                    f"{len(reference) / 1e6:.1f}",
                    f"{a:,.1f}",
                    ", ".join(f"{x:,.0f}" for x in theirs),
                ],
                [
                    "sinks/exposition.py (cached lines)",
                    f"{out.count(NL):,}",
                    f"{len(out) / 1e6:.1f}",
                    f"{b:,.1f}",
                    ", ".join(f"{x:,.0f}" for x in ours) + f" (first: {cold_ms:,.0f})",
                ],
            ],
        )
    )
    print(
        f"\nlines={lines} generate_latest_ms={a:.1f} render_ms={b:.1f} ratio={b / a:.3f} "
        f"identical={'yes' if identical else 'no'}"
    )


if __name__ == "__main__":
    main()
