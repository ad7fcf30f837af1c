"""Throughput: the full Salvage flow vs bare Bytewax vs the same domain logic without Bytewax.

    .venv/bin/python benchmarks/throughput.py --events 1000000

On one simulator log (`steady-state`, the first --events lines; generated once and cached in
--work, default /tmp/salvage-bench), one worker each, one after the other:

* **full**: the real dataflow (`salvage.flows.recovery.build_flow`, file mode): parse + validate
  (pydantic), partition clocks, dedupe, every keyed stage (cases, context, models, dispatch,
  lanes, output), rule + River scoring, policy; sinks replaced by null sinks that only hash the
  triggers (no file, Redis or Kafka I/O). `run_main`, one worker.
* **bare**: a Bytewax flow over the same file doing only `json.loads` + `key_on(order_id)` +
  a per-key `stateful_map` count into a null sink: what Bytewax itself costs per event here.
* **plain**: the same stage classes (`flows/stages/`, wired by `flows/topology.py`) driven
  directly in one Python loop (`flows/plain.py`) with the same batching, routing and ticks (no
  Bytewax): the domain logic's own cost. Its triggers
  are checked to be identical to the full flow's (same SHA-256). With --case-records, dispatch
  also builds the case-store records and each batch's latest per order is serialised as the
  Redis sink does (no I/O); off by default, as the full run has no case store.

**Net of start-up.** events/s are measured on the whole run less its start: process start,
imports, building the flow and Bytewax's start-up, and the first source batch (what a JIT compiles
on, and the first touch of every cache) are left out. Each run's source records when each of its
batches starts being read (the full flow's file source and the bare flow's, timed by a wrapper of
``next_batch``; the plain loop's feed loop) and each sink when it last wrote; the clock runs from
the start of the second batch to the last output written (its end-of-input flush included), and
the events counted are the log's minus the first batch's lines (2,000 in every run). The whole-run
seconds are shown next to it.

Prints events/s for each and the ratios full/bare and full/plain, a per-stage time split of the
plain loop, and a cProfile of the plain loop (or the flow, --profile flow) on the first
--profile-events events, top --top functions by internal and by cumulative time. Targets
(issue 15): full >= 40% of bare (about 50,000 events/s per worker here); the gap is printed when
not met. When both the full flow and bare Bytewax ran, the last line is (for scripts)::

    full_eps=N bare_eps=M ratio=R identical=yes

``identical``: the full flow's triggers have the SHA-256 of the plain loop's (the pure-Python
reference path, :mod:`salvage.flows.plain`); the plain loop runs for it even with --skip plain.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import json
import pstats
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
from _common import DEFAULT_WORK, NullSink, file_progress, machine, say, sim_log, table
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from salvage.config import Settings
from salvage.scoring.models import engine

TARGET_EPS = 50_000
TARGET_SHARE_OF_BARE = 0.40


# ----------------------------------------------------------------------------- sinks


class _HashPartition(StatelessSinkPartition):
    def __init__(self, sink: HashSink) -> None:
        self._sink = sink

    def write_batch(self, items: list) -> None:
        for _kind, text in items:
            self._sink.digest.update(text.encode())
            self._sink.count += 1
        self._sink.last_write = time.perf_counter()


class HashSink(DynamicSink):
    """Drops file-mode output items ``(kind, json)``, keeping a SHA-256 of them and a count."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.last_write = 0.0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HashPartition:
        return _HashPartition(self)


# ----------------------------------------------------------------------------- the three runs


class RunClock:
    """A run's timeline: when each source batch started being read and how many log lines it
    read, and when the last output was written. :meth:`net` is the run less its start-up."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []  # (perf_counter at start, lines read)
        self.last_output = 0.0

    def batch(self, started: float, lines: int) -> None:
        self.batches.append((started, lines))

    def net(self, n_events: int, whole_s: float) -> tuple[float, int]:
        """(seconds, events) from the second batch's start to the last output; the whole run
        when the log fits in one batch or nothing was written."""
        if len(self.batches) < 2 or self.last_output <= self.batches[1][0]:
            return whole_s, n_events
        return self.last_output - self.batches[1][0], n_events - self.batches[0][1]


@contextlib.contextmanager
def timed_file_source(clock: RunClock):
    """Time the flow's file source (:class:`salvage.flows.sources._FilePartition`): each
    ``next_batch`` call's start and the lines it read go to ``clock``."""
    from salvage.flows.sources import _FilePartition

    original = _FilePartition.next_batch

    def next_batch(self):  # type: ignore[no-untyped-def]
        started, line = time.perf_counter(), self._line
        try:
            return original(self)
        finally:
            clock.batch(started, self._line - line)

    _FilePartition.next_batch = next_batch  # type: ignore[method-assign]
    try:
        yield
    finally:
        _FilePartition.next_batch = original  # type: ignore[method-assign]


@contextlib.contextmanager
def gc_setting(tuned: bool):
    """``salvage run``'s cyclic-GC thresholds (:func:`salvage.runner.tuned_gc`), or CPython's."""
    from salvage.runner import tuned_gc

    with tuned_gc() if tuned else contextlib.nullcontext():
        yield


def run_full(
    log: Path, shards: int, work: Path, gc_tuned: bool = True
) -> tuple[float, dict[str, Any], RunClock]:
    from salvage.config import Settings
    from salvage.flows.recovery import FlowSpec, _sinks, build_flow

    settings = Settings(redis_url="", shards=shards, metrics_port=0)
    spec = FlowSpec(settings, inputs=[log], out_dir=work / "full-out", case_store=False)
    sinks = {name: HashSink() for name in _sinks(spec)}  # every output: hashed, not written
    spec.extra_sinks = dict(sinks)
    flow = build_flow(spec)
    clock = RunClock()
    started = time.perf_counter()
    with file_progress(log, "full flow"), gc_setting(gc_tuned), timed_file_source(clock):
        run_main(flow)
    secs = time.perf_counter() - started
    clock.last_output = max(s.last_write for s in sinks.values())
    return (
        secs,
        {
            "triggers": sinks["triggers"].count,
            "trigger_sha": sinks["triggers"].digest.hexdigest(),
            "dead_letters": sinks["dlq"].count,
        },
        clock,
    )


class _Lines(StatefulSourcePartition):
    def __init__(self, path: Path, batch: int, clock: RunClock) -> None:
        self._f = path.open("rb")
        self._batch = batch
        self._clock = clock

    def next_batch(self) -> list[bytes]:
        started = time.perf_counter()
        lines = [line for _, line in zip(range(self._batch), self._f, strict=False)]
        self._clock.batch(started, len(lines))
        if not lines:
            raise StopIteration()
        return lines

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._f.close()


class RawLines(FixedPartitionedSource):
    """The log's lines, ``batch`` per ``next_batch`` (the full flow's file source batch)."""

    def __init__(self, path: Path, clock: RunClock, batch: int = 2000) -> None:
        self.path, self.batch, self.clock = path, batch, clock

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Lines:
        return _Lines(self.path, self.batch, self.clock)


def run_bare(log: Path) -> tuple[float, dict[str, Any], RunClock]:
    sink = NullSink()
    clock = RunClock()
    flow = Dataflow("bare")
    raw = op.input("in", flow, RawLines(log, clock))
    parsed = op.map("parse", raw, json.loads)
    keyed = op.key_on("key", parsed, lambda d: d.get("order_id") or "")

    def count(state: int | None, _value: Any) -> tuple[int, int]:
        n = (state or 0) + 1
        return n, n

    op.output("out", op.stateful_map("count", keyed, count), sink)
    started = time.perf_counter()
    with file_progress(log, "bare Bytewax"):
        run_main(flow)
    secs = time.perf_counter() - started
    clock.last_output = sink.last_write[0]
    return secs, {"outputs": sink.count[0]}, clock


class PlainPipeline:
    """The flow's stages in one Python loop (:class:`salvage.flows.plain.PlainLoop`: the same
    stage graph, routing and :func:`~salvage.flows.topology.stage_config` as the Bytewax flow;
    case records off unless ``case_records``: then each batch's are written as the Redis sink
    does, less the I/O), fed by the file source's layout (parse, one clock per Kafka partition,
    clock bound: :func:`~salvage.flows.sources.file_layout`)."""

    def __init__(self, log: Path, shards: int, case_records: bool = False) -> None:
        from salvage.config import Settings
        from salvage.flows.plain import PlainLoop
        from salvage.flows.sources import file_layout, file_part_id
        from salvage.flows.topology import stage_config

        s = Settings(redis_url="", shards=shards, metrics_port=0)
        part = file_part_id(0, log)
        self.cfg = cfg = stage_config(s, (part,), case_records=case_records)
        self.log = log
        self.layout = file_layout(part, s)  # the file source's own parse + clocks
        self.loop = PlainLoop(cfg, self._serialise, self._tap)
        self.stages = self.loop.stages
        self.seconds = self.loop.seconds
        self.digest = hashlib.sha256()
        self.triggers = 0
        self.dead_letters = 0
        self.case_records: list = []  # this batch's case-store records (--case-records)
        self.case_docs = 0
        self.clock = RunClock()

    def _tap(self, route: Any, payload: Any) -> None:
        from salvage.flows.messages import Route
        from salvage.sinks import kpis

        if route is Route.KPI:
            kpis.observe(payload)
        elif route is Route.DEAD_LETTER:
            self._serialise("dlq", payload)
        elif route is Route.CASE_RECORD:
            self.case_records.append(payload)

    def _flush_cases(self) -> None:
        """What the Redis case sink does with a batch before its round trip
        (``CaseStore.write_many``): the latest record per order, as JSON; no I/O."""
        from salvage.sinks.redis_store import case_json, latest_per_order

        t0 = time.perf_counter()
        docs = [case_json(d) for _, d in latest_per_order(self.case_records).values()]
        self.case_docs += len(docs)
        self.case_records = []
        self.seconds["case-store documents (sink)"] += time.perf_counter() - t0

    def _serialise(self, kind: str, payload: Any) -> None:
        if kind == "trigger":
            self.digest.update(payload.model_dump_json().encode())
            self.triggers += 1
        elif hasattr(payload, "model_dump_json"):
            payload.model_dump_json()
            self.dead_letters += kind == "dlq"
        else:
            json.dumps(payload, sort_keys=True)

    def feed(self, lines: list[bytes], line_no: int, final: bool) -> None:
        from salvage.features.eventtime import END

        t0 = time.perf_counter()
        items: list = []
        source = str(self.log)
        handle = self.layout.handle_line  # as the file source reads its lines
        for i, line in enumerate(lines):
            value = line.rstrip(b"\r\n")
            if value and not value.isspace():  # as the file source: no copy
                handle(source, line_no + i + 1, value, items)
        if final:
            self.layout.release_held(items)
        self.layout.tick(items, END if final else None)
        self.seconds["parse + validate + clock"] += time.perf_counter() - t0
        self.loop.feed(items)
        if self.case_records:
            self._flush_cases()


def run_plain(
    log: Path,
    shards: int,
    limit: int | None = None,
    batch: int = 2000,
    gc_tuned: bool = True,
    case_records: bool = False,
):
    with gc_setting(gc_tuned):
        return _run_plain(log, shards, limit, batch, case_records)


def _run_plain(log: Path, shards: int, limit: int | None, batch: int, case_records: bool):
    pipe = PlainPipeline(log, shards, case_records)
    started = time.perf_counter()
    last_report = started
    size = log.stat().st_size
    line_no = 0
    with log.open("rb") as f:
        while True:
            batch_started = time.perf_counter()
            lines = []
            for _ in range(batch):
                if limit is not None and line_no + len(lines) >= limit:
                    break
                line = f.readline()
                if not line:
                    break
                lines.append(line)
            pipe.clock.batch(batch_started, len(lines))
            final = len(lines) < batch
            pipe.feed(lines, line_no, final)
            line_no += len(lines)
            now = time.perf_counter()
            if now - last_report > 5:
                last_report = now
                say(f"  plain loop: {f.tell() / size:5.1%} of the log read, {now - started:.0f}s")
            if final:
                break
    pipe.clock.last_output = time.perf_counter()
    return pipe.clock.last_output - started, pipe, line_no


# ----------------------------------------------------------------------------- report


def profile_text(prof: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    for key in ("tottime", "cumulative"):
        out.write(f"\n--- top {top} by {key} ---\n")
        stats = pstats.Stats(prof, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    ap.add_argument("--log", type=Path, help="use this event log instead of a simulated one")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache for generated logs")
    ap.add_argument("--shards", type=int, default=8, help="logical shards per stage")
    ap.add_argument(
        "--profile",
        choices=("plain", "flow", "none"),
        default="plain",
        help="what to cProfile (on --profile-events events)",
    )
    ap.add_argument("--profile-events", type=int, default=100_000)
    ap.add_argument("--top", type=int, default=25, help="functions shown per profile table")
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=("full", "bare", "plain"), help="runs to skip"
    )
    ap.add_argument(
        "--case-records",
        action="store_true",
        help="plain loop: with the case-store records (dispatch builds them; each batch's latest "
        "per order serialised as the Redis sink does, no I/O)",
    )
    ap.add_argument(
        "--default-gc",
        action="store_true",
        help="CPython's default GC thresholds instead of salvage run's (salvage.runner.tuned_gc)",
    )
    args = ap.parse_args()
    tuned = not args.default_gc

    log = args.log or sim_log(args.events, args.work)
    n_events = sum(1 for _ in log.open("rb"))
    say(f"log: {log} ({n_events:,} events, {log.stat().st_size / 1e6:.0f} MB)")
    results: dict[str, tuple[float, dict[str, Any], RunClock]] = {}
    if "bare" not in args.skip:
        say("bare Bytewax: parse + key + stateful count ...")
        results["bare"] = run_bare(log)
    # the model engine's one-time start (numba: load the compiled kernels), outside the timings
    t0 = time.perf_counter()
    engine(Settings().models.engine).warm()
    say(f"model engine {Settings().models.engine}: ready in {time.perf_counter() - t0:.2f}s")
    reference_only = "plain" in args.skip and "full" not in args.skip
    if "plain" not in args.skip or reference_only:
        say(
            "plain Python loop: the same stages without Bytewax"
            + (" (for the reference triggers only) ..." if reference_only else " ...")
        )
        secs, pipe, _ = run_plain(log, args.shards, gc_tuned=tuned, case_records=args.case_records)
        results["plain"] = (
            secs,
            {
                "triggers": pipe.triggers,
                "trigger_sha": pipe.digest.hexdigest(),
                "dead_letters": pipe.dead_letters,
                "case_docs": pipe.case_docs,
                "split": dict(pipe.seconds),
            },
            pipe.clock,
        )
    if "full" not in args.skip:
        say("full flow (Bytewax, one worker) ...")
        results["full"] = run_full(log, args.shards, args.work, tuned)

    net = {k: v[2].net(n_events, v[0]) for k, v in results.items()}
    eps = {k: events / secs for k, (secs, events) in net.items()}
    rows = []
    labels = {
        "full": "full flow (Bytewax, 1 worker)",
        "bare": "bare Bytewax: parse + key + count",
        "plain": "plain Python: same stages, no Bytewax",
    }
    for k in ("full", "bare", "plain"):
        if k in results and not (k == "plain" and reference_only):
            rel = f"{eps['full'] / eps[k]:.3f}" if "full" in eps else "-"
            rows.append(
                [labels[k], f"{results[k][0]:.1f}", f"{net[k][0]:.1f}", f"{eps[k]:,.0f}", rel]
            )
    print(
        f"\nthroughput, {n_events:,} events, {machine()}, GC thresholds "
        + ("of salvage run" if tuned else "CPython defaults")
    )
    print(
        table(
            ["run", "whole run s", "net s (after start-up)", "events/s (net)", "full / this"],
            rows,
        )
    )

    if "plain" in results and not reference_only:
        split = results["plain"][1]["split"]
        total = sum(split.values())
        print(
            "\nplain loop: where the time goes (whole run)"
            + (
                f" (case records on: {results['plain'][1]['case_docs']:,} documents)"
                if args.case_records
                else ""
            )
        )
        print(
            table(
                ["part", "seconds", "share", "µs/event"],
                [
                    [k, f"{v:.1f}", f"{v / total:.1%}", f"{v / n_events * 1e6:.1f}"]
                    for k, v in sorted(split.items(), key=lambda kv: -kv[1])
                ],
            )
        )
    identical = False
    if "full" in results and "plain" in results:
        identical = results["full"][1]["trigger_sha"] == results["plain"][1]["trigger_sha"]
        print(
            f"\ntriggers: full {results['full'][1]['triggers']:,}, plain "
            f"{results['plain'][1]['triggers']:,}; identical bytes: {'yes' if identical else 'NO'}"
        )
    if "full" in eps:
        print("\ntargets (issue 15)")
        full = eps["full"]
        print(
            f"  full >= {TARGET_EPS:,} events/s per worker: {full:,.0f} -> "
            + ("met" if full >= TARGET_EPS else f"NOT met, gap x{TARGET_EPS / full:.1f}")
        )
        if "bare" in eps:
            share = full / eps["bare"]
            print(
                f"  full >= {TARGET_SHARE_OF_BARE:.0%} of bare Bytewax: {share:.1%} -> "
                + (
                    "met"
                    if share >= TARGET_SHARE_OF_BARE
                    else f"NOT met, gap x{TARGET_SHARE_OF_BARE / share:.1f}"
                )
            )
        if "plain" in eps and not reference_only:
            print(
                f"  Bytewax's share of the full flow's time: "
                f"{1 - net['plain'][0] / net['full'][0]:.0%} "
                "(the rest is the domain logic itself)"
            )

    if args.profile != "none":
        limit = min(args.profile_events, n_events)
        say(f"profiling the {args.profile} run on the first {limit:,} events ...")
        prof = cProfile.Profile()
        if args.profile == "plain":
            prof.enable()
            run_plain(log, args.shards, limit, gc_tuned=tuned, case_records=args.case_records)
            prof.disable()
        else:
            head = args.work / f"head-{limit}.jsonl"
            with log.open("rb") as src, head.open("wb") as dst:
                for i, line in enumerate(src):
                    if i >= limit:
                        break
                    dst.write(line)
            prof.enable()
            run_full(head, args.shards, args.work, tuned)
            prof.disable()
        print(f"\ncProfile of the {args.profile} run, first {limit:,} events")
        print(profile_text(prof, args.top))
    if "full" in eps and "bare" in eps:
        print(
            f"full_eps={eps['full']:.0f} bare_eps={eps['bare']:.0f} "
            f"ratio={eps['full'] / eps['bare']:.3f} identical={'yes' if identical else 'no'}"
        )


if __name__ == "__main__":
    main()
