"""The recovery dataflow: sources -> cases -> (customers | lanes) -> ordered output -> sinks.

Run it with ``salvage run`` or ``python -m bytewax.run salvage.flows.recovery:flow`` (settings from
the
environment: ``SALVAGE_INPUT`` + ``SALVAGE_OUT_DIR`` for file mode, else Kafka mode on
``SALVAGE_KAFKA_BOOTSTRAP``). Every keyed stage is a :mod:`salvage.flows.stages` object; this
module only
routes items between them (see DESIGN §1 and the "Event time" section of the README).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from salvage.config import Settings
from salvage.connectors.outputs import OUTPUTS, OutputStream
from salvage.connectors.parse import set_dead_letter_max_bytes
from salvage.flows.sources import EventLogSource, KafkaEventSource
from salvage.flows.stages import (
    INTENT_KEY,
    OUT_KEY,
    CaseStage,
    ContextStage,
    DispatchStage,
    IntentStage,
    LaneStage,
    ModelStage,
    OutputStage,
    StageConfig,
    case_key,
    routes_to_intents,
    shard_of,
)
from salvage.policy.config import load_policy
from salvage.scoring.models import ModelConfig
from salvage.sinks import kpis, metrics

# ----------------------------------------------------------------------------- logic glue


class _StageLogic(StatefulBatchLogic):
    """Bytewax wrapper: values are ``(key, item)``; the stage is built lazily from its key."""

    def __init__(
        self, factory: Callable[[str], Any], state: bytes | None, cfg: StageConfig
    ) -> None:
        self._factory = factory
        self.stage = pickle.loads(state) if state is not None else None
        if self.stage is not None:
            self.stage.rebind(cfg)  # this run's policy and settings, not the snapshot's

    def on_batch(self, values: list) -> tuple[list, bool]:
        if self.stage is None:
            self.stage = self._factory(values[0][0])
        return self.stage.on_batch([v for _, v in values]), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.stage, protocol=pickle.HIGHEST_PROTOCOL)


def _stateful(step: str, up, factory: Callable[[str], Any], cfg: StageConfig):
    return op.stateful_batch(step, up, lambda state: _StageLogic(factory, state, cfg))


def _shard_no(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


# ----------------------------------------------------------------------------- file sink


class _JsonlPartition(StatefulSinkPartition[str, int]):
    def __init__(self, path: Path, resume: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a+b")
        self._f.seek(resume or 0)
        self._f.truncate()  # exactly-once on resume: drop what was written after the snapshot

    def write_batch(self, values: list[str]) -> None:
        self._f.write("".join(v + "\n" for v in values).encode())

    def snapshot(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        self._f.flush()
        self._f.close()


class JsonlSink(FixedPartitionedSink[str, int]):
    """One JSON document per line into one file; resumes exactly (truncates to the snapshot).

    One partition, so exactly one worker of the cluster owns the file, opens (and on a fresh
    run truncates) it, and receives every line. ``local=False`` (every process of a cluster but
    process 0) does not list the partition, so the owner is always a worker of process 0: the
    files land on process 0's host, and no other process ever opens them."""

    def __init__(self, path: Path, local: bool = True) -> None:
        self.path = Path(path)
        self.local = local

    def list_parts(self) -> list[str]:
        return ["0"] if self.local else []

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        return _JsonlPartition(self.path, resume_state)


# ----------------------------------------------------------------------------- the flow


def _file_line(out: OutputStream) -> Callable[[Any], tuple[str, str]]:
    """File mode: (the stream's tag, one JSON line) for the ordered JSONL sink."""
    return lambda x: (out.tag, out.serialise(x))


def _message(out: OutputStream) -> Callable[[Any], tuple[str, bytes]]:
    """Kafka mode: (message key, value)."""
    return lambda x: (out.key(x), out.serialise(x).encode())


def _record_line(tag: str) -> Callable[[Any], tuple[str, str]]:
    return lambda x: (tag, json.dumps(x, sort_keys=True))


RUN_RECORDS = ("assignments", "outcomes")
"""Files (not topics) every run writes into its out dir, in file and Kafka mode: the
intention-to-treat assignments and the assigned orders' outcomes (:mod:`salvage.uplift`)."""


@dataclass
class FlowSpec:
    """Everything the flow needs; built by the CLI or from the environment."""

    settings: Settings
    inputs: list[Path] = field(default_factory=list)  # file mode when non-empty
    out_dir: Path | None = None
    to_end: bool = True
    kafka_partitions: dict[str, int] | None = None  # topic -> partitions (Kafka mode)
    case_store: bool = True
    from_beginning: bool = False  # Kafka mode with no snapshot: ignore the group's offsets
    extra_sinks: dict[str, Any] = field(default_factory=dict)  # for tests: name -> sink
    process_id: int = 0  # in a multi-process cluster: file outputs are written by process 0

    @property
    def file_mode(self) -> bool:
        return bool(self.inputs)


def _source(spec: FlowSpec):
    s = spec.settings
    tol = int(s.dataflow.reorder_tolerance_seconds * 1e6)
    late = int(s.dataflow.max_lateness_seconds * 1e6)
    future = int(s.dataflow.max_future_seconds * 1e6)
    jump = int(s.dataflow.max_clock_jump_seconds * 1e6)
    if spec.file_mode:
        return EventLogSource(spec.inputs, tol, late, s.dataflow.source_batch_size, future, jump)
    if spec.kafka_partitions is None:
        from salvage.connectors.broker import ensure_topics

        spec.kafka_partitions = ensure_topics(
            s.kafka.as_librdkafka_dict(), list(s.topics.inputs().values()), s.topics.partitions
        )
    return KafkaEventSource(
        s.kafka.as_librdkafka_dict(),
        s.topics.inputs(),
        spec.kafka_partitions,
        tol,
        late,
        spec.to_end,
        s.dataflow.idle_partition_seconds,
        s.dataflow.source_batch_size,
        fetch_wait_ms=s.kafka.fetch_wait_max_ms,
        max_future_us=future,
        max_jump_us=jump,
        group_id=s.kafka.group_id,
        from_beginning=spec.from_beginning,
    )


def _sinks(spec: FlowSpec) -> dict[str, Any]:
    s = spec.settings
    sinks: dict[str, Any] = {}
    if spec.file_mode:
        out = spec.out_dir or Path("out")
        local = spec.process_id == 0
        if local:
            out.mkdir(parents=True, exist_ok=True)
            for stream in OUTPUTS:
                (out / stream.file_name).touch()  # exists even when a stream stays empty
        for stream in OUTPUTS:
            sinks[stream.sink] = JsonlSink(out / stream.file_name, local)
    else:
        from salvage.sinks.kafka import KafkaOutputSink

        conf = s.kafka.as_librdkafka_dict()
        for stream in OUTPUTS:
            sinks[stream.sink] = KafkaOutputSink(conf, s.topics.output(stream))
    if spec.file_mode or spec.out_dir is not None:
        # uplift inputs (salvage.uplift): files in the run's out dir, in file and Kafka mode
        out = spec.out_dir or Path("out")
        local = spec.process_id == 0
        for name in RUN_RECORDS:
            if local:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}.jsonl").touch()
            sinks[name] = JsonlSink(out / f"{name}.jsonl", local)
    if spec.case_store and s.redis.url:
        from salvage.sinks.redis_store import RedisCaseSink

        pw = s.redis.password_value()
        # short timeouts: a frozen Redis costs one timeout per retry, then the backlog takes over
        timeout = s.redis.socket_timeout_seconds
        sinks["cases"] = RedisCaseSink(
            s.redis.url,
            password=pw,
            ttl_seconds=s.redis.case_ttl_seconds,
            socket_timeout=timeout,
            connect_timeout=timeout,
        )
        from salvage.sinks.review_queue import RedisReviewSink

        sinks["reviews"] = RedisReviewSink(s.redis.url, password=pw, socket_timeout=timeout)
    sinks.update(spec.extra_sinks)
    return sinks


def build_flow(spec: FlowSpec) -> Dataflow:
    s = spec.settings
    set_dead_letter_max_bytes(s.dataflow.dead_letter_max_bytes)
    source = _source(spec)
    sinks = _sinks(spec)
    cfg = StageConfig(
        case_records="cases" in sinks,
        case_shards=s.dataflow.shards,
        cust_shards=s.dataflow.shards,
        lane_shards=max(1, min(s.dataflow.shards, 4)),
        sources=tuple(source.part_ids()),
        return_window_us=int(s.dataflow.return_window_days * 86_400 * 1e6),
        settled_grace_us=int(s.dataflow.settled_grace_days * 86_400 * 1e6),
        lane=s.lanes.config(),
        promise_rechecks_us=tuple(int(h * 3_600_000_000) for h in s.dataflow.promise_recheck_hours),
        model_shards=s.models.shards,
        model=ModelConfig(
            min_labels=s.models.min_labels,
            promote_margin=s.models.promote_margin,
            verdict_wait_us=int(s.dataflow.settled_grace_days * 86_400 * 1e6),
        ),
        infer_intents=s.models.infer_intents,
        intent_stage=s.models.infer_intents,
        intent_threshold=s.models.intent_threshold,
        score_log="scores" in sinks,
        policy=load_policy(s.dataflow.policy),
        orphan_wait_us=int(s.dataflow.orphan_wait_seconds * 1e6),
    )
    case_keys, lane_keys = cfg.case_keys(), cfg.lane_keys()
    ctx_keys, disp_keys, model_keys = cfg.cust_keys("ctx"), cfg.cust_keys("disp"), cfg.model_keys()
    n_case = cfg.case_shards

    metrics.OPEN_CASES.clear()  # this flow owns the per-shard gauge from now on
    metrics.LANE_ALERT_OPEN.clear()  # and the open-alert counts (a resume re-adds its own)
    flow = Dataflow("salvage-recovery")
    raw = op.input("input", flow, source)

    infer = cfg.intent_stage
    first_keys = [*case_keys, INTENT_KEY] if infer else case_keys

    def route_source(items: list) -> list:
        """Group a source batch per case shard: one item per shard, then the ticks. Support
        contacts with text go to the intent stage first (when inference is on)."""
        groups: dict[str, list] = {}
        ticks = []
        for item in items:
            if item[0] == "e":
                ev = item[3]
                k = (
                    INTENT_KEY
                    if infer and routes_to_intents(ev)
                    else case_key(shard_of(ev.order_id, n_case))
                )
                groups.setdefault(k, []).append(item[1:])
            elif item[0] == "w":
                ticks.append(item)
        out = [(k, (k, ("b", batch))) for k, batch in groups.items()]
        out += [(k, (k, tick)) for tick in ticks for k in first_keys]
        return out

    source_dlq = op.filter_map("source_dlq", raw, lambda i: i[1] if i[0] == "x" else None)
    routed = op.flat_map_batch("route_cases", raw, route_source)

    def fan(route: str, keys: list[str]):
        def f(kv):
            r, payload = kv[1]
            if r == route:
                dest, item = payload
                return [(dest, (dest, item))]
            if r == "tick":
                return [(k, (k, payload)) for k in keys]
            return []

        return f

    if infer:  # one intent classifier per deployment, in event-time order (IntentStage)
        to_intents = op.filter("to_intents", routed, lambda kv: kv[0] == INTENT_KEY)
        direct = op.filter("to_cases", routed, lambda kv: kv[0] != INTENT_KEY)
        intents = _stateful("intents", to_intents, lambda k: IntentStage(cfg), cfg)
        from_intents = op.flat_map("route_intents", intents, fan("case", case_keys))
        routed = op.merge("case_input", direct, from_intents)
    cases = _stateful("cases", routed, lambda k: CaseStage(_shard_no(k), cfg), cfg)

    def stage(name: str, up, route: str, keys: list[str], make):
        """Route ``route`` items of ``up`` (ticks to every key) into a keyed stage."""
        routed = op.flat_map(f"route_{name}", up, fan(route, keys))
        return _stateful(name, routed, lambda k: make(_shard_no(k), cfg), cfg)

    context = stage("context", cases, "ctx", ctx_keys, ContextStage)
    models = stage("models", context, "model", model_keys, ModelStage)
    dispatch = stage("dispatch", models, "disp", disp_keys, DispatchStage)
    lanes = stage("lanes", cases, "lane", lane_keys, LaneStage)
    to_out = op.flat_map(  # cases: the return journey's status updates and alerts
        "route_output", op.merge("to_output", dispatch, lanes, cases), fan("out", [OUT_KEY])
    )
    ordered = _stateful("output", to_out, lambda k: OutputStage(cfg), cfg)

    def only(kind: str):
        return lambda kv: kv[1][1] if kv[1][0] == kind else None

    case_dlq = op.filter_map("case_dlq", cases, only("dlq"))
    # every output stream (salvage.connectors.outputs.OUTPUTS): its items from the ordered output
    # stage (dead letters: the sources' and the case stage's), serialised under its contract
    streams: dict[str, Any] = {}
    for out in OUTPUTS:
        if out.item == "dlq":
            items = op.merge("dead_letters", source_dlq, case_dlq)
        else:
            items = op.filter_map(out.sink, ordered, only(out.item))
        streams[out.item] = items
        ser = op.map(f"ser_{out.tag}", items, _file_line(out) if spec.file_mode else _message(out))
        op.output(out.step, ser, sinks[out.sink])
    if "assignments" in sinks:  # files only (also in Kafka mode): the uplift's inputs
        for sink, tag, item in (("assignments", "g", "assignment"), ("outcomes", "o", "outcome")):
            records = op.filter_map(sink, ordered, only(item))
            ser = op.map(f"ser_{tag}", records, _record_line(tag))
            op.output(f"out_{sink}", ser, sinks[sink])

    # KPIs: a stateless tap on order/case facts (Prometheus counters commute; order is irrelevant)
    def tap(_step, kv) -> None:
        if kv[1][0] == "kpi":
            kpis.observe(kv[1][1])

    op.inspect("kpis_orders", context, tap)
    op.inspect("kpis_cases", dispatch, tap)
    if "reviews" in sinks:  # human-review triggers also go to the reviewers' queue
        reviews = op.filter_map(
            "reviews",
            streams["trigger"],
            lambda t: t.model_dump(mode="json") if t.action.value == "human_review" else None,
        )
        op.output("out_reviews", reviews, sinks["reviews"])
    if "scores" in sinks:  # per-prediction log (benchmarks): an extra sink named "scores"
        op.output(
            "out_scores", op.filter_map("score_log", dispatch, only("score")), sinks["scores"]
        )
    if "cases" in sinks:
        records = op.filter_map("case_records", dispatch, only("case"))
        op.output("out_cases", records, sinks["cases"])
    return flow


def spec_from_env() -> FlowSpec:
    settings = Settings()
    inputs = [Path(p) for p in os.environ.get("SALVAGE_INPUT", "").split(",") if p]
    out_dir = Path(os.environ.get("SALVAGE_OUT_DIR", "out"))
    return FlowSpec(
        settings=settings,
        inputs=inputs,
        out_dir=out_dir,
        to_end=not settings.dataflow.follow,
        process_id=process_id_from_env() or 0,
    )


def process_id_from_env(env: dict[str, str] | None = None) -> int | None:
    """This process's index in a Bytewax cluster, from the variables ``bytewax.run`` reads
    (``BYTEWAX_PROCESS_ID``, else the StatefulSet ordinal of ``BYTEWAX_POD_NAME`` in
    ``BYTEWAX_STATEFULSET_NAME``); None if unset. Raises ValueError when it is not a number."""
    env = dict(os.environ) if env is None else env
    raw = env.get("BYTEWAX_PROCESS_ID", "").strip()
    pod, sts = env.get("BYTEWAX_POD_NAME", ""), env.get("BYTEWAX_STATEFULSET_NAME", "")
    if not raw and sts and pod.startswith(sts + "-"):
        raw = pod[len(sts) + 1 :]
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"process id {raw!r} is not a number") from None


def __getattr__(name: str):
    # `python -m bytewax.run salvage.flows.recovery:flow` builds the flow from the environment.
    if name == "flow":
        import signal

        from salvage.flows.sources import request_stop

        # SIGTERM drains: sources stop at the next batch, state is snapshotted, exit 0
        signal.signal(signal.SIGTERM, lambda *_: request_stop())
        spec = spec_from_env()
        try:
            metrics.serve(spec.settings.metrics.port, spec.settings.metrics.host)
        except OSError:  # another process of this host's cluster serves it already
            pass
        return build_flow(spec)
    raise AttributeError(name)
