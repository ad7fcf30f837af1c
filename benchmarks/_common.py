"""Shared helpers for the benchmark scripts: the machine, simulator logs (cached), progress lines,
null sinks and tables. Not a benchmark itself."""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402

DEFAULT_WORK = Path(os.environ.get("SALVAGE_BENCH_DIR", "/tmp/salvage-bench"))
EVENTS_PER_ORDER = 9.0  # steady-state simulator: ~9.5 events per order; a little headroom
# A simulation's last ~15% of events are its drain-down: after the last order is placed, only the
# open orders' scans and returns (returns are 57% of the events there, 0-4% before). A ``steady``
# log is cut from a simulation of 1 / STEADY_SHARE as many orders, so that it ends before that.
STEADY_SHARE = 0.75


def machine() -> str:
    """``2 cores, AMD EPYC, Python 3.11.x, Linux`` (what the figures were measured on)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sim_log(
    events: int,
    work: Path,
    scenario: str = "steady-state",
    seed: int = 7,
    steady: bool = False,
) -> Path:
    """A simulator log of exactly ``events`` lines (the first ones of a long enough simulation),
    generated once and cached under ``work``. The simulation is sized to ``events``, so the log's
    last ~15% is its drain-down; ``steady``: enough orders that the log ends before it (see
    :data:`STEADY_SHARE`; the returns then are a smaller share than in either: the simulation's
    first days have few)."""
    from salvage.connectors.simulator import write_log

    work.mkdir(parents=True, exist_ok=True)
    tail = "-steady" if steady else ""
    path = work / f"{scenario}-{events}-{seed}{tail}.jsonl"
    if path.is_file():
        return path
    orders = int(events / EVENTS_PER_ORDER / (STEADY_SHARE if steady else 1.0)) + 100
    full = work / f"{scenario}-orders{orders}-{seed}.full.jsonl"
    if not full.is_file():
        started = time.perf_counter()
        tmp = full.with_suffix(".tmp")

        def progress(n: int) -> None:
            say(f"  generating {scenario}: {n:,}/{orders:,} orders ({n / orders:.0%})")

        write_log(scenario, orders, seed, tmp, progress=progress)
        tmp.rename(full)
        say(f"  generated {full.name} in {time.perf_counter() - started:.0f}s")
    n = 0
    with full.open("rb") as src, path.with_suffix(".tmp").open("wb") as dst:
        for line in src:
            if n >= events:
                break
            dst.write(line)
            n += 1
    if n < events:
        raise RuntimeError(f"{full} has only {n:,} events (< {events:,})")
    path.with_suffix(".tmp").rename(path)
    return path


@contextmanager
def file_progress(path: Path, label: str, every: float = 5.0) -> Iterator[None]:
    """Print how far this process has read ``path`` (from /proc/self/fdinfo) every few seconds:
    a progress line for runs whose reading happens inside Bytewax."""
    size = max(1, path.stat().st_size)
    target = str(path.resolve())
    stop = threading.Event()
    started = time.perf_counter()

    def position() -> int | None:
        best = None
        try:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") != target:
                        continue
                    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                        if line.startswith("pos:"):
                            pos = int(line.split()[1])
                            best = pos if best is None else max(best, pos)
                except OSError:
                    continue
        except OSError:
            return None
        return best

    def loop() -> None:
        while not stop.wait(every):
            pos = position()
            if pos is not None:
                say(
                    f"  {label}: {pos / size:5.1%} of the log read, "
                    f"{time.perf_counter() - started:.0f}s"
                )

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class _NullPartition(StatelessSinkPartition):
    def __init__(self, counter: list[int], last_write: list[float]) -> None:
        self._counter = counter
        self._last_write = last_write

    def write_batch(self, items: list) -> None:
        self._counter[0] += len(items)
        self._last_write[0] = time.perf_counter()


class NullSink(DynamicSink):
    """Counts what reaches it and drops it; ``last_write``: perf_counter of its last batch."""

    def __init__(self) -> None:
        self.count = [0]
        self.last_write = [0.0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NullPartition:
        return _NullPartition(self.count, self.last_write)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    lines = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result
