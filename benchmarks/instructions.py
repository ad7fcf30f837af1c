"""Instructions per event: the domain logic's CPU work, counted, against a baseline commit.

    .venv/bin/python benchmarks/instructions.py --against HEAD~1

Why: on this 2-core machine, shared with other jobs, wall-clock figures swing by 10% from run to
run (bare Bytewax alone ran at 137k-269k events/s on the same day), more than one exact
Python-level change saves. The instructions a run executes hardly move between runs, so a 2%
change shows in one pair. They are not time: cache misses, branch mispredictions and memory
stalls are not counted, so this complements ``throughput.py`` (which says what the time is) and
does not replace it.

How: each tree (this checkout, and a git worktree of ``--against`` that the script makes and
removes) runs ``throughput.py``'s plain loop (the flow's stages, batching, routing and ticks in one
Python loop, without Bytewax: :mod:`salvage.flows.plain`) on the first A and then the first B
events of the same simulator log, under valgrind's callgrind, on this interpreter. Counting
starts when the process has imported everything (``callgrind_control -i on``: valgrind runs the
imports uncounted, ~4x faster). ``(Ir(B) - Ir(A)) / (B - A)`` is the instructions per event net
of start-up: building the stages, loading the model kernels and whatever a first batch costs are
in both runs and cancel. Both trees read the same log; each run takes ~0.5-1.5 min (two at a
time, one per core).

``--flow full`` counts the full Bytewax flow instead (``throughput.py``'s ``run_full``: one worker,
sinks that only hash), on copies of the log's first A and B lines, with counting on from just
before the flow is built: Bytewax's own per-item work is in it, which the plain loop leaves out
(what a change to the dataflow's steps saves shows only here).

Needs valgrind (Debian: ``apt-get install valgrind``). The last line (for scripts)::

    instr_per_event=N baseline_instr_per_event=M ratio=R
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import DEFAULT_WORK, ROOT, machine, say, sim_log, table

# Run inside valgrind, with the tree to measure first on sys.path: build the plain loop of that
# tree's throughput.py, start counting, feed it the log's first N events, stop counting.
CHILD = r"""
import os, subprocess, sys
tree, log, n, counted = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "count"
flow = sys.argv[5]
sys.path[:0] = [os.path.join(tree, "benchmarks"), tree]
import salvage
if not os.path.realpath(salvage.__file__).startswith(os.path.realpath(tree) + os.sep):
    sys.exit(f"salvage imported from {salvage.__file__}, not from {tree}")
import throughput
from pathlib import Path
pid = str(os.getpid())
if counted:
    subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
shards = int(os.environ.get("SHARDS", "8"))
if flow == "full":  # the log's first n lines, copied by the parent
    import tempfile
    with tempfile.TemporaryDirectory() as work:
        _, outs, _ = throughput.run_full(Path(f"{log}.first{n}"), shards, Path(work))
    lines, triggers = n, outs["triggers"]
else:
    _, pipe, lines = throughput.run_plain(Path(log), shards, limit=n)
    triggers = pipe.triggers
if counted:
    subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
print(f"lines={lines} triggers={triggers}", file=sys.stderr)
"""

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
_LINES = re.compile(r"lines=(\d+) triggers=(\d+)")


def _child(tree: Path, log: Path, events: int, shards: int, counted: bool, flow: str = "plain"):
    # valgrind's emulated CPU is not the host's, and numba's cache is keyed by the CPU: with the
    # host's, every run under valgrind would compile the kernels again (billions of instructions,
    # not the same in every run). Generic-CPU kernels hit the cache inside and outside valgrind.
    env = {
        **os.environ,
        "SHARDS": str(shards),
        "PYTHONPATH": str(tree),
        "NUMBA_CPU_NAME": "generic",
    }
    cmd = [sys.executable, "-c", CHILD, str(tree), str(log), str(events)]
    cmd += ["count" if counted else "warm", flow]
    if counted:
        grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        cmd = [*grind, "--callgrind-out-file=/dev/null", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())


def warm(tree: Path, log: Path, shards: int) -> None:
    """One short run without valgrind, so that the model kernels are compiled into the tree's
    numba cache (a fresh worktree has none) before anything is counted."""
    proc = _child(tree, log, 2_000, shards, counted=False, flow="plain")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise SystemExit(f"warm-up run failed for {tree}:\n{tail}")


def count(
    tree: Path, log: Path, events: int, shards: int, flow: str = "plain"
) -> tuple[int, int, int]:
    """(instructions, lines read, triggers) of the plain loop (or the full flow) of ``tree`` on
    ``events`` events."""
    proc = _child(tree, log, events, shards, counted=True, flow=flow)
    collected = _COLLECTED.search(proc.stderr)
    lines = _LINES.search(proc.stderr)
    if proc.returncode != 0 or collected is None or lines is None:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise SystemExit(f"valgrind run failed for {tree} ({events} events):\n{tail}")
    return int(collected.group(1)), int(lines.group(1)), int(lines.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Instructions per event of the plain loop: this tree vs a baseline commit "
        "(valgrind callgrind, net of start-up).",
    )
    ap.add_argument(
        "--against", default="HEAD", help="baseline commit (default HEAD: uncommitted changes)"
    )
    ap.add_argument(
        "--events",
        type=int,
        nargs=2,
        default=(10_000, 40_000),
        metavar=("A", "B"),
        help="the two run lengths; their difference is what is counted (default 10000 40000)",
    )
    ap.add_argument("--log-events", type=int, default=200_000, help="simulator log length")
    ap.add_argument("--shards", type=int, default=8, help="logical shards per stage")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where logs are cached")
    ap.add_argument(
        "--flow",
        choices=("plain", "full"),
        default="plain",
        help="what is counted: the plain loop (default) or the full Bytewax flow",
    )
    args = ap.parse_args()
    a, b = args.events
    if not 0 < a < b <= args.log_events:
        ap.error("need 0 < A < B <= --log-events")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} not found: install valgrind (Debian: apt-get install valgrind)"
            )
    base_rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.against],
        capture_output=True,
        text=True,
    )
    if base_rev.returncode != 0:
        raise SystemExit(f"--against {args.against}: {base_rev.stderr.strip()}")
    rev = base_rev.stdout.strip()
    log = sim_log(args.log_events, args.work)
    if args.flow == "full":  # the full flow reads whole files: the first A and B lines
        with log.open("rb") as src:
            head = [line for _, line in zip(range(b), src, strict=False)]
        for n in (a, b):
            Path(f"{log}.first{n}").write_bytes(b"".join(head[:n]))
    wt = Path(tempfile.mkdtemp(prefix="salvage-instr-")) / rev
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), rev],
        check=True,
        capture_output=True,
    )
    try:
        trees = {"this tree": ROOT, f"baseline {rev}": wt}
        say("warming each tree's model kernels (numba cache) ...")
        for tree in trees.values():
            warm(tree, log, args.shards)
        jobs = [(name, tree, n) for name, tree in trees.items() for n in (a, b)]
        say(f"counting {len(jobs)} runs under valgrind, two at a time ...")
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {
                (name, n): pool.submit(count, tree, log, n, args.shards, args.flow)
                for name, tree, n in jobs
            }
            results = {}
            for key, fut in futures.items():
                results[key] = fut.result()
                say(f"  {key[0]}, {key[1]:,} events: {results[key][0]:,} instructions")
        say(f"  done in {time.perf_counter() - started:.0f}s")
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)],
            capture_output=True,
        )
        shutil.rmtree(wt.parent, ignore_errors=True)
    per_event = {}
    rows = []
    for name in trees:
        (ir_a, n_a, t_a), (ir_b, n_b, t_b) = results[(name, a)], results[(name, b)]
        per_event[name] = (ir_b - ir_a) / (n_b - n_a)
        rows.append(
            [
                name,
                f"{ir_a:,}",
                f"{ir_b:,}",
                f"{t_a:,} / {t_b:,}",
                f"{per_event[name]:,.0f}",
            ]
        )
    this, base = per_event["this tree"], per_event[f"baseline {rev}"]
    for row, name in zip(rows, trees, strict=True):
        row.append(f"{per_event[name] / base:.4f}")
    print(
        f"\ninstructions per event, {'full flow' if args.flow == 'full' else 'plain loop'}, "
        f"events {a + 1:,}-{b:,} of {log.name}, "
        f"{args.shards} shards, {machine()}"
    )
    print(
        table(
            [
                "tree",
                f"Ir, {a:,} events",
                f"Ir, {b:,} events",
                "triggers",
                "instructions / event",
                "vs baseline",
            ],
            rows,
        )
    )
    print(
        f"\ninstr_per_event={this:.0f} baseline_instr_per_event={base:.0f} ratio={this / base:.4f}"
    )


if __name__ == "__main__":
    main()
