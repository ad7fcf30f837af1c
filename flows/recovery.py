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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from salvage.config import Settings
from salvage.connectors.outputs import OUTPUTS, DeadLetter, OutputStream
from salvage.connectors.parse import set_dead_letter_max_bytes
from salvage.flows.journal import EpochJournal, JournalError, JournalRef
from salvage.flows.messages import Route
from salvage.flows.model_sink import write_checkpoints
from salvage.flows.sources import EventLogSource, KafkaEventSource, clock_settings
from salvage.flows.stages import StageConfig
from salvage.flows.state import StageState, fresh, load_bytes, rebuild, snapshot_bytes
from salvage.flows.topology import SOURCE, TAPS, fan, graph, route_source, stage_config
from salvage.sinks import kpis, metrics

# ----------------------------------------------------------------------------- logic glue


@dataclass(frozen=True)
class StateStore:
    """Where the stages' snapshots go. ``journal``: a folder on the recovery volume (one epoch
    journal per stage shard, :mod:`salvage.flows.journal`); what Bytewax stores is a tiny
    :class:`JournalRef`. Without it, ``inline`` puts the whole state into Bytewax's own snapshot
    (``python -m bytewax.run`` with a recovery dir we were not told about); neither: snapshots
    are skipped (a run without recovery pays nothing for them)."""

    journal: Path | None = None
    inline: bool = False
    compact_ratio: float = 0.5
    min_segments: int = 8

    @property
    def active(self) -> bool:
        return self.journal is not None or self.inline


@dataclass(frozen=True)
class InlineState:
    """A whole stage state inside a Bytewax snapshot (no journal folder known)."""

    key: str
    blob: bytes


class _StageLogic(StatefulBatchLogic):
    """Bytewax wrapper: values are ``(key, item)``; the stage is built lazily from its key.

    A resume builds the stage from the *current* configuration (``factory``), then loads the
    snapshot's state into it (:class:`salvage.flows.state.StageState`). ``state`` is what
    :meth:`snapshot` returned: a :class:`JournalRef` (``store.journal``), an :class:`InlineState`
    (``store.inline``, the default), or (from tools and tests) the pickle of a stage object,
    migrated through the codec."""

    def __init__(
        self,
        factory: Callable[[str], Any],
        state: Any,
        cfg: StageConfig,
        store: StateStore | None = None,
        step: str = "",
    ) -> None:
        self._factory = factory
        self._cfg = cfg
        self._store = store if store is not None else StateStore(inline=True)
        self._step = step
        self._key = ""
        self._state: StageState | None = None
        self._journal: EpochJournal | None = None
        self._n = 0
        self.stage: Any = None
        if isinstance(state, JournalRef):
            if self._store.journal is None:
                raise JournalError(
                    f"snapshot {state.name}#{state.n} lives in a state journal, but this run has "
                    "no journal folder (SALVAGE_RECOVERY_DIR)"
                )
            self._key = state.name.rpartition("/")[2]
            self.stage = self._make(self._key)
            self._journal = self._open_journal(state.name)
            header, entries = self._journal.load(state.n)
            self._state = StageState(self.stage)
            self._state.load(header, entries, cfg)
            self._n = state.n
        elif isinstance(state, InlineState):
            self._key = state.key
            self.stage = self._make(state.key)
            self._state = load_bytes(self.stage, state.blob, cfg)
        elif state is not None:  # a pickled stage object (tools, tests): through the codec
            self.stage = rebuild(pickle.loads(state), cfg)
            self._key = self.stage.name
            self._state = StageState(self.stage)
        if self._state is not None and self._store.journal is not None:
            self._state.track()

    def _make(self, key: str) -> Any:
        """The stage of ``key``, built from this logic's config (a factory made for another
        config, e.g. a stage graph of the previous run, only tells the class and shard)."""
        stage = self._factory(key)
        if getattr(stage, "cfg", self._cfg) is not self._cfg:
            stage = fresh(stage, self._cfg)
        return stage

    def _open_journal(self, name: str) -> EpochJournal:
        assert self._store.journal is not None
        return EpochJournal(
            self._store.journal, name, self._store.compact_ratio, self._store.min_segments
        )

    def on_batch(self, values: list) -> tuple[list, bool]:
        if self.stage is None:
            self._key = values[0][0]
            self.stage = self._factory(self._key)
            if self._store.journal is not None:
                self._state = StageState(self.stage).track()
        return self.stage.on_batch([v for _, v in values]), StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        store = self._store
        if self.stage is None or not store.active:
            return None
        if store.journal is None:
            return InlineState(self._key, snapshot_bytes(self.stage))
        if self._state is None:
            self._state = StageState(self.stage).track()
        if self._journal is None:
            self._journal = self._open_journal(f"{self._step}/{self._key}")
        n = self._n + 1
        header, changed, deleted = self._state.delta()
        full = self._state.entries() if self._journal.compaction_due() else None
        ref = self._journal.write(n, header, changed, deleted, full)
        self._n = n
        return ref


def _stateful(step: str, up, factory: Callable[[str], Any], cfg: StageConfig, store: StateStore):
    return op.stateful_batch(step, up, lambda state: _StageLogic(factory, state, cfg, store, step))


# Routing between steps works on whole batches (``flat_map_batch``): one Python call per batch,
# not the two per item of ``op.filter`` / ``op.filter_map`` / ``op.flat_map`` (shim + generator).


class _WholeBatches(FixedPartitionedSource[list, Any]):
    """A source whose partitions hand Bytewax each ``next_batch`` as *one* item (the list of
    what the wrapped partition read: events, ticks, dead letters), so that no Bytewax step runs
    per event before the routing step splits the batch by shard (``op.input`` and a per-item
    ``op.branch`` cost about a microsecond per event)."""

    def __init__(self, source: FixedPartitionedSource) -> None:
        self.source = source

    def list_parts(self) -> list[str]:
        return self.source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _WholeBatch:
        return _WholeBatch(self.source.build_part(step_id, for_part, resume_state))


class _WholeBatch(StatefulSourcePartition[list, Any]):
    def __init__(self, part: StatefulSourcePartition) -> None:
        self.part = part

    def next_batch(self) -> list[list]:
        items = list(self.part.next_batch())
        return [items] if items else []

    def next_awake(self) -> Any:
        return self.part.next_awake()

    def snapshot(self) -> Any:
        return self.part.snapshot()

    def close(self) -> None:
        self.part.close()


_DEAD = ""  # the key of a source's dead letters after routing (no stage key is empty)


def _route_batches(route: Callable[[list], list[tuple[str, Any]]]) -> Callable[[list], list]:
    """The routing step over whole source batches (:class:`_WholeBatches`): each batch's events
    and ticks routed and keyed, its dead letters as ``(_DEAD, letter)``."""

    def f(batches: list[list]) -> list:
        out: list = []
        for items in batches:  # (route_source passes over the dead letters)
            out += [(_DEAD, item) for item in items if isinstance(item, DeadLetter)]
            out += [(k, (k, item)) for k, item in route(items)]
        return out

    return f


def _for_keys(keys: tuple[str, ...]) -> Callable[[list], list]:
    wanted = frozenset(keys)
    return lambda batch: [kv for kv in batch if kv[0] in wanted]


def _from_stage(route: Callable[[Any], list[tuple[str, Any]]]) -> Callable[[list], list]:
    """What a stateful step emits is ``(key, (route, payload))``: route each pair, keyed."""
    return lambda batch: [(k, (k, item)) for kv in batch for k, item in route(kv[1])]


def _only(route: str, *more: str) -> Callable[[list], list]:
    """The payloads of one route (or of several, in the batch's order) in a batch of a stateful
    step's ``(key, (route, payload))``."""
    if more:
        routes = frozenset((route, *more))
        return lambda batch: [kv[1][1] for kv in batch if kv[1][0] in routes]
    return lambda batch: [kv[1][1] for kv in batch if kv[1][0] == route]


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


class _ModelPartition(StatelessSinkPartition[dict]):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write_batch(self, items: list[dict]) -> None:
        write_checkpoints(self.folder, items)


class ModelFileSink(DynamicSink[dict]):
    """Model checkpoints (:mod:`salvage.flows.model_sink`): each worker writes those of the model
    shards it owns into ``folder``, one file per shard, the newest replacing the previous."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ModelPartition:
        return _ModelPartition(self.folder)


# ----------------------------------------------------------------------------- the flow


def _file_line(out: OutputStream) -> Callable[[Any], tuple[str, str]]:
    """File mode: (the stream's tag, one JSON line) for the ordered JSONL sink."""
    return lambda x: (out.tag, out.serialise(x))


def _message(out: OutputStream) -> Callable[[Any], tuple[str, tuple[str, bytes]]]:
    """Kafka mode: the sink's item for (message key, value) (see
    :func:`~salvage.sinks.kafka.kafka_item`)."""
    from salvage.sinks.kafka import kafka_item

    return lambda x: kafka_item(out.key(x), out.serialise(x).encode())


def _record_line(tag: str) -> Callable[[Any], tuple[str, str]]:
    return lambda x: (tag, json.dumps(x, sort_keys=True))


JOURNAL_DIR = "journal"
"""The stages' epoch journals, beside the Bytewax recovery partitions (``--recovery-dir``)."""
MODELS_DIR = "models"
"""The model shards' checkpoints (``salvage models export``), in ``--recovery-dir``."""

RUN_RECORDS = ("assignments", "outcomes", "orders")
"""Files (not topics) every run writes into its out dir, in file and Kafka mode: the
intention-to-treat assignments, the assigned orders' outcomes and every order's placement
(customer, time: repeat orders) (:mod:`salvage.uplift`)."""
_RUN_ITEMS = (
    ("assignments", "g", ("assignment",)),
    # a closed order's outcome, then the money paid after its close (salvage.uplift folds them)
    ("outcomes", "o", ("outcome", "outcome_amended")),
    ("orders", "c", ("order",)),
)


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
    processes: int = 1  # the cluster's processes (SALVAGE_MODEL_SHARDS=0: a model shard each)
    # the stages' state journal (salvage run --recovery-dir: DIR/journal); None and not
    # inline_state: snapshots are skipped (a run without recovery)
    state_dir: Path | None = None
    inline_state: bool = False
    model_dir: Path | None = None  # model checkpoints for `salvage models export` (DIR/models)

    @property
    def model_shards(self) -> int:
        """The model replicas in effect: ``SALVAGE_MODEL_SHARDS``, or one per process (0)."""
        return self.settings.models.shards or max(1, self.processes)

    @property
    def file_mode(self) -> bool:
        return bool(self.inputs)


def _source(spec: FlowSpec):
    s = spec.settings
    tol, late, future, jump = clock_settings(s)
    if spec.file_mode:
        return EventLogSource(
            spec.inputs, tol, late, s.dataflow.source_batch_size, future, jump, s.topics.partitions
        )
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
        batch_ms=s.dataflow.source_batch_ms,
    )


def _fresh_or_touch(path: Path, spec: FlowSpec) -> None:
    """An output file exists even when its stream stays empty. A run without recovery starts
    it empty: a sink partition opens (and truncates) its file only when a first line comes, so a
    rerun into the same out dir kept the last run's lines of every stream this run left empty
    (its dead letters, say). A recovered run keeps them: the partitions truncate to their
    snapshots."""
    if spec.state_dir is None and not spec.inline_state:
        path.write_bytes(b"")
    else:
        path.touch()


def _sinks(spec: FlowSpec) -> dict[str, Any]:
    s = spec.settings
    sinks: dict[str, Any] = {}
    if spec.file_mode:
        out = spec.out_dir or Path("out")
        local = spec.process_id == 0
        if local:
            out.mkdir(parents=True, exist_ok=True)
            for stream in OUTPUTS:
                _fresh_or_touch(out / stream.file_name, spec)
        for stream in OUTPUTS:
            sinks[stream.sink] = JsonlSink(out / stream.file_name, local)
    else:
        from salvage.sinks.kafka import KafkaOutputSink

        conf = s.kafka.as_librdkafka_dict()
        for stream in OUTPUTS:
            sinks[stream.sink] = KafkaOutputSink(conf, s.topics.output(stream), warm=True)
    if spec.file_mode or spec.out_dir is not None:
        # uplift inputs (salvage.uplift): files in the run's out dir, in file and Kafka mode
        out = spec.out_dir or Path("out")
        local = spec.process_id == 0
        for name in RUN_RECORDS:
            if local:
                out.mkdir(parents=True, exist_ok=True)
                _fresh_or_touch(out / f"{name}.jsonl", spec)
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
    """The recovery dataflow: Bytewax is a thin shell around :mod:`salvage.flows.topology`
    (which stage consumes which route) and the stage classes (what each does)."""
    s = spec.settings
    set_dead_letter_max_bytes(s.dataflow.dead_letter_max_bytes)
    source = _source(spec)
    sinks = _sinks(spec)
    cfg = stage_config(
        s, tuple(source.part_ids()), case_records="cases" in sinks, score_log="scores" in sinks
    )
    cfg = replace(
        cfg,
        model_exports=spec.model_dir is not None,
        model_shards=spec.model_shards,
        direct_triggers=not spec.file_mode,
    )
    store = StateStore(spec.state_dir, inline=spec.inline_state)
    metrics.OPEN_CASES.clear()  # this flow owns the per-shard gauge from now on
    metrics.LANE_ALERT_OPEN.clear()  # and the open-alert counts (a resume re-adds its own)
    flow = Dataflow("salvage-recovery")
    raw = op.input("input", flow, _WholeBatches(source))
    # the source's batches routed: events and ticks into the graph, dead letters to their sink
    routed = op.flat_map_batch("route_source", raw, _route_batches(route_source(cfg)))
    split = op.branch("source_items", routed, lambda kv: kv[0] != _DEAD)
    from_source = split.trues
    source_letters = op.map("source_dead_letters", split.falses, lambda kv: kv[1])

    steps: dict[str, Any] = {}  # stage name -> its emitted (route, payload) stream
    for st in graph(cfg):
        feeds = []
        for up in st.upstreams:
            if up == SOURCE:
                feeds.append(
                    op.flat_map_batch(f"source_to_{st.name}", from_source, _for_keys(st.keys))
                )
            else:
                assert st.route is not None
                feeds.append(
                    op.flat_map_batch(
                        f"{up}_to_{st.name}", steps[up], _from_stage(fan(st.route, st.keys))
                    )
                )
        up_stream = feeds[0] if len(feeds) == 1 else op.merge(f"into_{st.name}", *feeds)
        steps[st.name] = _stateful(st.name, up_stream, st.make, cfg, store)

    ordered = steps["output"]
    taps: dict[str, list] = {}
    for (stage, route), name in TAPS.items():
        if route is Route.TRIGGER and not cfg.direct_triggers:
            continue  # file mode: triggers go through the ordered output stage
        taps.setdefault(name, []).append(
            op.flat_map_batch(f"{stage}_{name}", steps[stage], _only(route))
        )
    # every output stream (salvage.connectors.outputs.OUTPUTS): its items from the ordered output
    # stage (dead letters: the sources' and the case stage's), serialised under its contract
    streams: dict[str, Any] = {}
    for out in OUTPUTS:
        if out.item == "dlq":
            items = op.merge("dead_letters", source_letters, *taps["dead_letters"])
        elif out.item == "trigger" and cfg.direct_triggers:
            # from the dispatch shards; the ordered stage's triggers too (none, unless a resume
            # from state written when triggers went through it still holds some)
            ordered_triggers = op.flat_map_batch(out.sink, ordered, _only(out.item))
            items = op.merge("all_triggers", ordered_triggers, *taps["triggers"])
        else:
            items = op.flat_map_batch(out.sink, ordered, _only(out.item))
        streams[out.item] = items
        ser = op.map(f"ser_{out.tag}", items, _file_line(out) if spec.file_mode else _message(out))
        op.output(out.step, ser, sinks[out.sink])
    if "assignments" in sinks:  # files only (also in Kafka mode): the uplift's inputs
        for sink, tag, kinds in _RUN_ITEMS:
            records = op.flat_map_batch(sink, ordered, _only(*kinds))
            ser = op.map(f"ser_{tag}", records, _record_line(tag))
            op.output(f"out_{sink}", ser, sinks[sink])

    # KPIs: a stateless tap on order/case facts (Prometheus counters commute; order is irrelevant)
    for i, facts in enumerate(taps["kpis"]):
        op.inspect(f"kpis_{i}", facts, lambda _step, fact: kpis.observe(fact))
    if "reviews" in sinks:  # human-review triggers also go to the reviewers' queue
        reviews = op.filter_map(
            "reviews",
            streams["trigger"],
            lambda t: t.model_dump(mode="json") if t.action.value == "human_review" else None,
        )
        op.output("out_reviews", reviews, sinks["reviews"])
    if spec.model_dir is not None:  # model checkpoints: what `salvage models export` reads
        states = op.merge("all_model_states", *taps["model_states"])
        op.output("out_models", states, ModelFileSink(spec.model_dir))
    for name in ("scores", "cases"):  # per-prediction log (benchmarks), case store
        if name in sinks:
            op.output(f"out_{name}", op.merge(f"all_{name}", *taps[name]), sinks[name])
    return flow


def spec_from_env() -> FlowSpec:
    settings = Settings()
    inputs = [Path(p) for p in os.environ.get("SALVAGE_INPUT", "").split(",") if p]
    out_dir = Path(os.environ.get("SALVAGE_OUT_DIR", "out"))
    # python -m bytewax.run ... -r DIR: the journal lives in SALVAGE_RECOVERY_DIR/journal when
    # told; otherwise whole states go inline into Bytewax's snapshots (recovery may be on)
    rec = os.environ.get("SALVAGE_RECOVERY_DIR", "").strip()
    return FlowSpec(
        state_dir=Path(rec) / JOURNAL_DIR if rec else None,
        model_dir=Path(rec) / MODELS_DIR if rec else None,
        inline_state=not rec,
        settings=settings,
        inputs=inputs,
        out_dir=out_dir,
        to_end=not settings.dataflow.follow,
        process_id=process_id_from_env() or 0,
        processes=_processes_from_env(),
    )


def _processes_from_env() -> int:
    """The cluster's process count from the variables ``bytewax.run`` reads (1 if unset or
    inconsistent: ``bytewax.run`` itself reports that)."""
    from salvage.runner import ClusterError, resolve_cluster

    try:
        return resolve_cluster().processes
    except (ClusterError, OSError):
        return 1


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
