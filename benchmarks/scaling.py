"""Scaling: the same log through `salvage run` as 1 process x 1 worker, 1 process x 2 workers
(threads) and a cluster of 2 processes x 1 worker (--addresses / --process-id, loopback).

    .venv/bin/python benchmarks/scaling.py --events 200000

File mode, no case store, 8 shards, the log split by order id over --files input files (one input
partition each, so two processes can each read one). Reports the flow's own time (what `salvage
run` prints as "done in", without interpreter start-up) and the wall time of the command, events/s
and the speed-up over 1 x 1, and each process's CPU seconds (user + system: how evenly a cluster
shares the work); and checks that every configuration wrote byte-identical outputs to a 1 x 1 run
with the same model shard count (results are deterministic per count: with the default, one model
shard per process, the 2-process run is compared with a 1 x 1 run with 2 model shards, run for it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

from _common import DEFAULT_WORK, ROOT, machine, say, sim_log, table

OUTPUTS = ("interventions", "lane_alerts", "dead_letters", "model_events", "dispositions")


def split(log: Path, files: int, work: Path) -> list[Path]:
    paths = [work / f"{log.stem}-part{i}of{files}.jsonl" for i in range(files)]
    if all(p.is_file() for p in paths):
        return paths
    outs = [p.open("wb") for p in paths]
    try:
        with log.open("rb") as f:
            for line in f:
                i = line.find(b'"order_id":"')
                order = line[i + 12 : line.find(b'"', i + 12)] if i >= 0 else b""
                outs[zlib.crc32(order) % files].write(line)
    finally:
        for o in outs:
            o.close()
    return paths


def run(
    inputs: list[Path], out: Path, processes: int, workers: int, work: Path, model_shards: int = 0
) -> dict:
    from salvage.connectors.broker import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SALVAGE_", "BYTEWAX_"))}
    env.update({"PYTHONPATH": str(ROOT), "SALVAGE_METRICS_PORT": "0", "SALVAGE_REDIS_URL": ""})
    env["SALVAGE_MODEL_SHARDS"] = str(model_shards)
    base = [sys.executable, "-c", "from salvage.cli import main; main()", "run"]
    base += [a for p in inputs for a in ("--input", str(p))]
    base += ["--out-dir", str(out), "--no-summary", "--shards", "8", "-w", str(workers)]
    cluster = []
    if processes > 1:
        cluster = ["--addresses", ",".join(f"127.0.0.1:{free_port()}" for _ in range(processes))]
    logs = [work / f"scaling-{processes}x{workers}-p{i}.log" for i in range(processes)]
    started = time.perf_counter()
    procs = []
    for i in range(processes):
        ident = ["--process-id", str(i)] if cluster else []
        with logs[i].open("wb") as f:
            procs.append(
                subprocess.Popen(
                    base + cluster + ident,
                    cwd=ROOT,
                    env=env,
                    stdout=f,
                    stderr=f,
                    stdin=subprocess.DEVNULL,
                )
            )
    cpu = []  # user + system seconds of each process (how evenly a cluster shares the work)
    for p, log in zip(procs, logs, strict=True):
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"{p.args} failed:\n{log.read_text()[-3000:]}")
        cpu.append(usage.ru_utime + usage.ru_stime)
    wall = time.perf_counter() - started
    flow_s = max(
        float(m.group(1))
        for log in logs
        for m in re.finditer(r"done in ([0-9.]+)s", log.read_text())
    )
    digest = hashlib.sha256()
    for name in OUTPUTS:
        digest.update((out / f"{name}.jsonl").read_bytes())
    return {"wall": wall, "flow": flow_s, "sha": digest.hexdigest(), "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=2, help="input files (partitions)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument(
        "--model-shards",
        type=int,
        default=0,
        help="SALVAGE_MODEL_SHARDS for every configuration (outputs are compared per count); "
        "default 0, the product's: one model shard per process",
    )
    args = ap.parse_args()
    log = sim_log(args.events, args.work)
    inputs = split(log, args.files, args.work)
    configs = [(1, 1), (1, 2), (2, 1)]
    results = {}
    for processes, workers in configs:
        say(f"{processes} process(es) x {workers} worker(s) on {args.events:,} events ...")
        out = args.work / f"scaling-out-{processes}x{workers}"
        results[(processes, workers)] = run(
            inputs, out, processes, workers, args.work, args.model_shards
        )
        say(f"  flow {results[(processes, workers)]['flow']:.1f}s")

    def shards_of(processes: int) -> int:  # what --model-shards 0 means: one per process
        return args.model_shards or processes

    # Results are deterministic per model shard count, not across counts (once the models are
    # promoted they learn from different updates): each configuration's outputs must equal a
    # 1 x 1 run's with its own count, run here when it is not the 1 x 1 above.
    refs = {shards_of(1): results[(1, 1)]}
    for count in sorted({shards_of(p) for p, _ in configs} - set(refs)):
        say(f"1 process x 1 worker, {count} model shards (the outputs to compare with) ...")
        out = args.work / f"scaling-out-1x1-m{count}"
        refs[count] = run(inputs, out, 1, 1, args.work, count)
    ref = results[(1, 1)]
    rows = []
    for (processes, workers), r in results.items():
        count = shards_of(processes)
        rows.append(
            [
                f"{processes} x {workers}",
                str(count),
                f"{r['flow']:.1f}",
                f"{args.events / r['flow']:,.0f}",
                f"{ref['flow'] / r['flow']:.2f}",
                f"{r['wall']:.1f}",
                f"{ref['wall'] / r['wall']:.2f}",
                "yes" if r["sha"] == refs[count]["sha"] else "NO",
                " / ".join(f"{c:.1f}" for c in r["cpu"]),
            ]
        )
    print(f"\nscaling, {args.events:,} events in {args.files} files, {machine()}")
    print(
        table(
            [
                "processes x workers",
                "model shards",
                "flow s",
                "events/s",
                "speed-up (flow)",
                "wall s",
                "speed-up (wall)",
                "same outputs as 1 x 1 (same model shards)",
                "CPU s per process",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
