"""Running the dataflow in-process, publishing logs to topics, and summarising a run."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from salvage.config import Settings
from salvage.connectors.events import STREAM_OF
from salvage.flows.recovery import (
    JOURNAL_DIR,
    MODELS_DIR,
    FlowSpec,
    build_flow,
    process_id_from_env,
)


@contextlib.contextmanager
def kafka_available(settings: Settings, log: Callable[[str], None]) -> Iterator[Settings]:
    """Yield settings with a bootstrap: the configured cluster, or an embedded broker for the
    duration of the block (topics created), stopped on exit."""
    from salvage.connectors.broker import EmbeddedBroker, ensure_topics

    if settings.kafka.bootstrap:
        ensure_topics(
            settings.kafka.as_librdkafka_dict(),
            list(settings.topics.inputs().values()) + settings.topics.outputs(),
            settings.topics.partitions,
        )
        yield settings
        return
    with EmbeddedBroker(silent=True) as broker:
        log(f"embedded Kafka-compatible broker (Tansu) on {broker.bootstrap}")
        live = settings.updated(kafka_bootstrap=broker.bootstrap)
        ensure_topics(
            live.kafka.as_librdkafka_dict(),
            list(live.topics.inputs().values()) + live.topics.outputs(),
            live.topics.partitions,
        )
        yield live


DEFAULT_SNAPSHOT_SECONDS = 5.0
DEFAULT_BACKUP_SECONDS = 0.0
RUN_MANIFEST = "salvage-run.json"
# The layout of the stage state (flows/state.py codecs and the records they encode: flows/stages/,
# features/, scoring/models.py; the journal format, flows/journal.py). Bump it
# when a change would make older snapshots unreadable or wrong: a resume then stops with a clear
# message (start from a fresh --recovery-dir, or finish the run with the version that began it)
# instead of an AttributeError deep in a stage.
STATE_VERSION = 8  # 3: DispatchStage.assigned (uplift assignments); 4: modules under salvage.*;
# 5: explicit state (salvage.flows.state codecs in an epoch journal, DIR/journal), not pickles;
# 6: file sources keep one clock per Kafka-style partition (flows.sources._KafkaLayout);
# 7: the models' dense state (scoring/dense.py arrays in a msgpack doc, not pickled River models);
# 8: shard keys balanced over the workers (flows.stages.base.balanced_key): state is keyed by them
# (not bumped when case views began carrying their features as a tuple, session 23: this version
# reads older snapshots, whose in-flight views have dicts; a build from before that change cannot
# resume a snapshot written after it: finish such a run with the newer build)


class RecoveryMismatch(ValueError):
    """A recovery directory holds the state of a run with different arguments."""


@dataclass(frozen=True)
class Recovery:
    """Bytewax recovery for ``salvage run --recovery-dir``.

    ``snapshot_seconds`` is the Bytewax epoch: state, source offsets and the file sinks' offsets
    are snapshotted at the end of every epoch, and a restart resumes at the last one (work after
    it is redone: the file sinks truncate to their snapshot offset, Kafka output repeats with the
    same ids, Redis writes are version-guarded). ``backup_seconds`` is how long superseded
    snapshots are kept (set it to your off-machine backup interval; 0 when the directory itself
    is durable).
    """

    db_dir: Path
    snapshot_seconds: float = DEFAULT_SNAPSHOT_SECONDS
    backup_seconds: float = DEFAULT_BACKUP_SECONDS
    partitions: int = 1


def run_manifest(spec: FlowSpec, cluster: Cluster | None = None) -> dict[str, object]:
    """What must not change between a run and its resumption (a different shard count, input set,
    topic set or cluster shape would resume state into the wrong keys or partitions)."""
    s = spec.settings
    doc: dict[str, object] = {
        "state_version": STATE_VERSION,
        "shards": s.dataflow.shards,
        "model_shards": spec.model_shards,  # customers map to the replicas by their count
        "mode": "file" if spec.file_mode else "kafka",
    }
    if cluster is not None and cluster.multi_process:
        doc["processes"] = cluster.processes
        doc["process_id"] = cluster.process_id
    if spec.file_mode:
        doc["inputs"] = [str(Path(p).resolve()) for p in spec.inputs]
        doc["out_dir"] = str(Path(spec.out_dir or "out").resolve())
    else:
        doc["topics"] = s.topics.inputs()
    return doc


def prepare_recovery(rec: Recovery, spec: FlowSpec, cluster: Cluster | None = None) -> bool:
    """Create and initialise the recovery partitions when ``rec.db_dir`` holds none; otherwise
    check the directory belongs to a run with the same arguments. Returns True when resuming.

    In a multi-process ``cluster`` Bytewax uses the partitions every process finds in its own
    directory together, so each must sit in exactly one: process ``k`` of ``n`` keeps the
    partitions ``i`` with ``i mod n == k`` of a freshly initialised set (the split of
    docs/kubernetes.md's init container)."""
    db = Path(rec.db_dir)
    manifest = run_manifest(spec, cluster)
    parts = sorted(db.glob("part-*.sqlite3")) if db.is_dir() else []
    mpath = db / RUN_MANIFEST
    marker = db / INIT_MARKER
    if parts and marker.exists():  # killed while initialising: nothing ran yet, start again
        for part in parts:
            part.unlink()
        parts = []
    if parts:
        if mpath.is_file():
            before = json.loads(mpath.read_text())
            if before != manifest:
                diff = sorted(
                    k for k in set(before) | set(manifest) if before.get(k) != manifest.get(k)
                )
                if "state_version" in diff:
                    raise RecoveryMismatch(
                        f"{db} holds state written by another Salvage version (state format "
                        f"{before.get('state_version', 1)}, this one reads {STATE_VERSION}); "
                        "finish that run with its version, or start from a fresh --recovery-dir"
                    )
                raise RecoveryMismatch(
                    f"{db} holds the state of a run with different {', '.join(diff)}; "
                    "use the same arguments or a fresh --recovery-dir"
                )
        return True
    db.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if cluster is None or not cluster.multi_process:
        init_db_dir(db, max(1, rec.partitions))
    else:
        init_db_dir(db, max(rec.partitions, cluster.total_workers))
        for part in db.glob("part-*.sqlite3"):
            if int(part.stem.rsplit("-", 1)[1]) % cluster.processes != cluster.process_id:
                part.unlink()
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    marker.unlink()
    return False


# present while prepare_recovery initialises a directory (a SIGKILL then leaves it behind)
INIT_MARKER = ".initialising"


class ClusterError(ValueError):
    """Inconsistent cluster arguments (addresses, process id, workers)."""


@dataclass(frozen=True)
class Cluster:
    """Where this process sits in a Bytewax cluster: ``addresses`` of every process (``host:port``,
    the same list in the same order everywhere, this process included), this process's index in
    it, and worker threads per process. No addresses: a single process."""

    addresses: tuple[str, ...] = ()
    process_id: int = 0
    workers_per_process: int = 1

    @property
    def processes(self) -> int:
        return max(1, len(self.addresses))

    @property
    def total_workers(self) -> int:
        return self.processes * self.workers_per_process

    @property
    def multi_process(self) -> bool:
        return self.processes > 1


def resolve_cluster(
    addresses: str | list[str] | None = None,
    process_id: int | None = None,
    workers: int | None = None,
    env: dict[str, str] | None = None,
) -> Cluster:
    """The cluster from flags, falling back on the environment variables ``python -m bytewax.run``
    reads: ``BYTEWAX_ADDRESSES`` (``;`` or ``,`` separated), ``BYTEWAX_PROCESS_ID`` (else the
    ordinal of ``BYTEWAX_POD_NAME`` in ``BYTEWAX_STATEFULSET_NAME``, as the Bytewax Helm chart and
    waxctl set them), ``BYTEWAX_HOSTFILE_PATH`` (one address per line) and
    ``BYTEWAX_WORKERS_PER_PROCESS``. Raises :class:`ClusterError` when they do not fit together.

    Why not ``bytewax.run``'s parser: its ``_parse_args`` is private, reads ``sys.argv`` of a
    ``python -m bytewax.run IMPORT_STR`` command line and ends the process through argparse
    (``SystemExit``, usage text) on a bad value; its short flags clash with ``salvage run``'s
    (``-i`` is ``--input`` here); it reads ``BYTEWAX_HOSTFILE_PATH`` only when a process id is set,
    splits addresses on ``;`` only, and crashes on a non-numeric StatefulSet ordinal. So the same
    variables (same names and precedence) are resolved here, checked together, and the result goes
    to ``bytewax.run``'s own entry point, :func:`bytewax.run.cli_main` (:func:`run_flow`)."""
    env = dict(os.environ) if env is None else env
    if workers is None:
        raw_w = env.get("BYTEWAX_WORKERS_PER_PROCESS", "").strip()
        try:
            workers = int(raw_w) if raw_w else 1
        except ValueError as exc:
            raise ClusterError(f"BYTEWAX_WORKERS_PER_PROCESS={raw_w!r} is not a number") from exc
    if workers < 1:
        raise ClusterError(f"workers per process must be >= 1, not {workers}")
    if process_id is None:
        try:
            process_id = process_id_from_env(env)
        except ValueError as exc:
            raise ClusterError(str(exc)) from exc
    if addresses is None:
        addresses = env.get("BYTEWAX_ADDRESSES") or None
        hostfile = env.get("BYTEWAX_HOSTFILE_PATH")
        if addresses is None and hostfile:
            addresses = [a.strip() for a in Path(hostfile).read_text().splitlines() if a.strip()]
    if isinstance(addresses, str):
        addresses = [a.strip() for a in addresses.replace(";", ",").split(",") if a.strip()]
    addrs = tuple(addresses or ())
    for a in addrs:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ClusterError(f"address {a!r} is not host:port")
    if len(addrs) > 1:
        if process_id is None:
            raise ClusterError(f"{len(addrs)} addresses given: --process-id is required")
        if not 0 <= process_id < len(addrs):
            raise ClusterError(f"process id {process_id} is not in 0..{len(addrs) - 1}")
    elif process_id not in (None, 0):
        raise ClusterError(f"process id {process_id} needs --addresses of every process")
    if len(addrs) <= 1:
        addrs, process_id = (), 0
    return Cluster(addrs, int(process_id or 0), workers)


GC_THRESHOLDS = (100_000, 50, 100)
"""Cyclic-GC thresholds while a flow runs. The stages keep hundreds of thousands of long-lived
objects (cases, customers, model snapshots); with CPython's defaults (700, 10, 10) every
collection of the older generations walks all of them, which `benchmarks/throughput.py`'s profile
showed as ~20% of the run, growing with the open cases. The state has no reference cycles to
reclaim, so collecting rarely loses nothing."""


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """Raise the cyclic GC thresholds to :data:`GC_THRESHOLDS` for the block, then restore."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_flow(
    spec: FlowSpec, recovery: Recovery | None = None, cluster: Cluster | None = None
) -> float:
    """Run to completion (or to a drain, see :func:`salvage.flows.sources.request_stop`) in this
    process;
    return wall seconds. ``recovery``: snapshot to and resume from ``recovery.db_dir``, which
    :func:`prepare_recovery` has initialised or checked.

    ``cluster``: run as one process of a Bytewax cluster (default: one process, one worker).
    Every process builds the same flow; Bytewax gives each input partition (file, Kafka
    topic-partition) and each keyed shard to exactly one worker of the cluster, and the file
    sinks' single partition to a worker of process 0 (``spec.process_id``, see
    :class:`salvage.flows.recovery.JsonlSink`). Blocks until the whole cluster has finished."""
    cluster = cluster or Cluster()
    if recovery is not None and spec.state_dir is None:  # the stages' journal: DIR/journal
        db = Path(recovery.db_dir)
        spec = replace(spec, state_dir=db / JOURNAL_DIR, model_dir=db / MODELS_DIR)
    flow = build_flow(spec)
    kwargs: dict[str, object] = {"workers_per_process": cluster.workers_per_process}
    if cluster.multi_process:
        kwargs["process_id"] = cluster.process_id
        kwargs["addresses"] = list(cluster.addresses)
    if recovery is not None:
        kwargs["epoch_interval"] = timedelta(seconds=recovery.snapshot_seconds)
        kwargs["recovery_config"] = RecoveryConfig(
            Path(recovery.db_dir), timedelta(seconds=recovery.backup_seconds)
        )
    from salvage.scoring.models import engine

    # the model engine's kernels (numba: compiled or loaded from its cache, 0.4-4 s) now, not
    # when the first case reaches the model stage: that stalled the first events of a live run
    engine(spec.settings.models.engine)
    started = time.perf_counter()
    from salvage.flows.sources import FINAL_POSITIONS, commit_positions

    FINAL_POSITIONS.clear()
    with tuned_gc():
        cli_main(flow, **kwargs)  # what `python -m bytewax.run` calls with its arguments
    del flow
    gc.collect()  # free the run's Kafka clients now, not at some later collection
    if not spec.file_mode:
        # a clean stop (end of the topics or a drain): every output is acknowledged, so the
        # input positions can be committed; a restart without a snapshot goes on from them
        commit_positions(spec.settings.kafka.as_librdkafka_dict(), spec.settings.kafka.group_id)
    return time.perf_counter() - started


@dataclass
class ReplayStats:
    """What a replay published: messages per topic, records skipped by the time window, how many
    records had no readable event time, and the wall time it took."""

    counts: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    untimed: int = 0
    seconds: float = 0.0

    @property
    def published(self) -> int:
        return sum(self.counts.values())


def replay_log(
    settings: Settings,
    path: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    speed: float | None = None,
    rate: float | None = None,
    t_from: int | None = None,
    t_to: int | None = None,
) -> ReplayStats:
    """Publish an event log (JSONL, gzip'd JSONL or Parquet) to the input topics.

    * Order: the log's own (arrival) order, which for a recorded or simulated log is event-time
      order up to its late records; nothing is re-sorted, so a replay reproduces the lateness the
      pipeline saw. Each record goes to the topic of its ``event_type``'s stream, keyed by its
      ``order_id`` (Kafka's murmur2 partitioner: same key, same partition, every time).
    * Records that are not a JSON object with a known ``event_type`` go to the orders topic
      (unkeyed unless they carry a string ``order_id``), so the pipeline dead-letters them as it
      would in production.
    * ``t_from`` / ``t_to`` (µs, inclusive / exclusive) keep records whose ``occurred_at`` falls
      in the window; records without a readable ``occurred_at`` are always published.
    * ``speed`` / ``rate``: see :class:`salvage.connectors.replay.Pacer`; by default as fast as
    possible.
    * Re-publishing the same log is harmless: every event keeps its ``event_id`` (the pipeline
      drops duplicates) and lands on the same partition.

    The producer is idempotent with ``acks=all``; the call returns after every message is
    acknowledged and raises :class:`salvage.sinks.kafka.KafkaDeliveryError` if any was not.
    """
    from salvage.connectors.replay import Pacer, Progress, event_time_us, iter_records
    from salvage.sinks.kafka import TopicProducer

    topics = settings.topics.inputs()
    stats = ReplayStats()
    pacer = Pacer(speed, rate) if speed or rate else None
    windowed = t_from is not None or t_to is not None
    prog = Progress()
    started = time.perf_counter()
    with TopicProducer(settings.kafka.as_librdkafka_dict()) as producer:
        for i, value in enumerate(iter_records(path, prog)):
            stream, key = "orders", None
            with contextlib.suppress(ValueError, AttributeError, TypeError, RecursionError):
                doc = json.loads(value)
                stream = STREAM_OF.get(doc.get("event_type"), "orders")
                key = doc.get("order_id") if isinstance(doc.get("order_id"), str) else None
            t = event_time_us(value) if (windowed or pacer is not None) else None
            if windowed:
                if t is None:
                    stats.untimed += 1
                elif (t_from is not None and t < t_from) or (t_to is not None and t >= t_to):
                    stats.skipped += 1
                    continue
            if pacer is not None:
                pacer.wait(t)
            topic = topics[str(stream)]
            producer.produce(topic, key.encode() if key else None, value)
            stats.counts[topic] += 1
            if progress is not None and i % 5000 == 0:
                progress(prog.done, prog.total)
        producer.flush()
    stats.seconds = time.perf_counter() - started
    if progress is not None:
        progress(prog.total, prog.total)
    return stats


def publish_log(
    settings: Settings,
    path: Path,
    progress: Callable[[int, int], None] | None = None,
    **options: float | int | None,
) -> Counter[str]:
    """:func:`replay_log`, returning messages per topic."""
    return replay_log(settings, path, progress, **options).counts  # type: ignore[arg-type]


def record_topics(
    settings: Settings,
    out: Path,
    *,
    follow_seconds: float | None = None,
    timeout_s: float = 120.0,
) -> tuple[int, int]:
    """Capture the input topics into a JSONL event log (``salvage record``).

    Assigns every partition of the four input topics from the beginning (no consumer group, no
    committed offsets: recording never disturbs anyone) and reads until each partition is at its
    end; with ``follow_seconds``, keeps reading until no message arrived for that long.

    The log is written in event-time order: records are sorted by ``(occurred_at, topic,
    partition, offset)``; a record without a readable ``occurred_at`` takes the time of the record
    before it in its partition, so it stays where it arrived. A message whose value contains a
    newline byte cannot be a JSONL line and is skipped (counted). Returns ``(written, skipped)``.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from salvage.connectors.broker import topic_partitions
    from salvage.connectors.replay import event_time_us

    conf = settings.kafka.as_librdkafka_dict(
        {
            "group.id": "salvage-record",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    client = settings.kafka.as_librdkafka_dict()
    assignment = [
        TopicPartition(topic, p, 0)
        for topic in settings.topics.inputs().values()
        for p in range(topic_partitions(client, topic))
    ]
    consumer = Consumer(conf)
    consumer.assign(assignment)
    pending = {(tp.topic, tp.partition) for tp in assignment}
    last_t: dict[tuple[str, int], int] = {}
    rows: list[tuple[int, str, int, int, bytes]] = []
    skipped = 0
    deadline = time.monotonic() + timeout_s
    last_msg = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if not pending and (
                follow_seconds is None or time.monotonic() - last_msg >= follow_seconds
            ):
                break
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                where = (str(msg.topic()), int(msg.partition() or 0))
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(where)
                        continue
                    raise RuntimeError(f"error consuming {where}: {err}")
                last_msg = time.monotonic()
                value = msg.value() or b""
                if b"\n" in value or b"\r" in value or not value.strip():
                    skipped += 1
                    continue
                t = event_time_us(value)
                if t is None:
                    t = last_t.get(where, -(2**62))
                last_t[where] = t
                rows.append((t, where[0], where[1], int(msg.offset() or 0), value))
        else:
            raise TimeoutError(f"recording: not at the end after {timeout_s:.0f}s")
    finally:
        consumer.close()
    rows.sort(key=lambda r: r[:4])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        f.writelines(r[4] + b"\n" for r in rows)
    return len(rows), skipped


def consume_topic(
    settings: Settings, topic: str, out: Path, group: str, timeout_s: float = 60.0
) -> int:
    """Drain a topic into a JSONL file with a real consumer group (as downstream teams would).

    Stops when every partition assigned to the group has reached its end.
    """
    from confluent_kafka import Consumer, KafkaError

    conf = settings.kafka.as_librdkafka_dict(
        {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "enable.partition.eof": True,
        }
    )
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    at_end: set[int] = set()
    n = 0
    deadline = time.monotonic() + timeout_s
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("wb") as f:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(int(msg.partition() or 0))
                        assigned = {tp.partition for tp in consumer.assignment()}
                        if assigned and assigned <= at_end:
                            break
                    continue
                at_end.discard(msg.partition())
                f.write((msg.value() or b"") + b"\n")
                n += 1
            else:
                raise TimeoutError(f"{topic}: not at the end after {timeout_s:.0f}s ({n} read)")
    finally:
        consumer.close()
    return n


@dataclass
class RunSummary:
    events_by_stream: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    triggers: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    alerts: list[dict] = field(default_factory=list)
    lanes: list[tuple[str, int, int]] = field(default_factory=list)  # lane, shipped, delayed
    suppressed: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


# the counters summarise() reads from the registry (counts: always finite)
_SUMMARISED = frozenset(
    {
        "salvage_events_total",
        "salvage_suppressed_total",
        "salvage_cases_closed_total",
        "salvage_lane_shipments_total",
        "salvage_lane_delayed_shipments_total",
    }
)


def summarise(out_dir: Path) -> RunSummary:
    """Read the outputs of a run and this process's metrics registry."""
    from prometheus_client import REGISTRY

    s = RunSummary()
    lanes: dict[str, list[int]] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            name, labels = sample.name, sample.labels
            if name not in _SUMMARISED:  # (gauges may be NaN: a one-class window's AUC)
                continue
            n = int(sample.value)
            if name == "salvage_events_total":
                s.events_by_stream[labels["stream"]] += n
            elif name == "salvage_suppressed_total":
                s.suppressed[labels["guardrail"]] += n
            elif name == "salvage_cases_closed_total":
                s.outcomes[labels["outcome"]] += n
            elif name == "salvage_lane_shipments_total":
                lanes.setdefault(labels["lane"], [0, 0])[0] += n
            elif name == "salvage_lane_delayed_shipments_total":
                lanes.setdefault(labels["lane"], [0, 0])[1] += n
    s.lanes = sorted(
        ((lane, v[0], v[1]) for lane, v in lanes.items() if v[0]),
        key=lambda x: (-x[2] / x[1], x[0]),
    )
    dl = out_dir / "dead_letters.jsonl"
    if dl.exists():
        for line in dl.read_text().splitlines():
            s.dead_letters[json.loads(line)["kind"]] += 1
    iv = out_dir / "interventions.jsonl"
    if iv.exists():
        for line in iv.read_text().splitlines():
            t = json.loads(line)
            s.triggers[t["action"]] += 1
            s.reasons.setdefault(t["action"], Counter()).update(t["reason_codes"])
    la = out_dir / "lane_alerts.jsonl"
    if la.exists():
        s.alerts = [json.loads(line) for line in la.read_text().splitlines()]
    return s


def summarise_metrics() -> RunSummary:
    """Kafka mode: the same summary from this process's counters (outputs are on topics).

    Counts are this run's (a resumed run counts from its snapshot on); lane alerts are the
    transitions counted by the lane stage, not read back from the topic."""
    import tempfile

    with tempfile.TemporaryDirectory() as empty:  # no output files: the metrics part only
        s = summarise(Path(empty))
    for x in _samples("salvage_dead_letters_total"):
        if int(x.value):
            s.dead_letters[x.labels["kind"]] += int(x.value)
    for x in _samples("salvage_triggers_total"):
        if int(x.value):
            s.triggers[x.labels["action"]] += int(x.value)
    for x in _samples("salvage_trigger_reasons_total"):
        if int(x.value):
            s.reasons.setdefault(x.labels["action"], Counter())[x.labels["reason"]] += int(x.value)
    for action in s.triggers:
        s.reasons.setdefault(action, Counter())
    return s


def render_summary(s: RunSummary, out_dir: Path | None, console) -> None:
    from rich.table import Table

    t = Table(title="Events accepted by stream")
    t.add_column("stream")
    t.add_column("events", justify="right")
    for stream, n in sorted(s.events_by_stream.items()):
        t.add_row(stream, f"{n:,}")
    console.print(t)
    t = Table(title="Dead letters by kind")
    t.add_column("kind")
    t.add_column("count", justify="right")
    for kind, n in s.dead_letters.most_common():
        t.add_row(kind, str(n))
    if not s.dead_letters:
        t.add_row("(none)", "0")
    console.print(t)
    t = Table(title="Triggers by action")
    t.add_column("action")
    t.add_column("triggers", justify="right")
    t.add_column("top reason codes")
    for action, n in s.triggers.most_common():
        reasons = ", ".join(f"{r} ({c})" for r, c in s.reasons[action].most_common(3))
        t.add_row(action, f"{n:,}", reasons)
    console.print(t)
    if s.suppressed:
        console.print(
            "Suppressed by guardrail: "
            + ", ".join(f"{g}={n}" for g, n in s.suppressed.most_common())
        )
    if s.outcomes:
        console.print(
            "Cases closed by outcome: " + ", ".join(f"{o}={n}" for o, n in s.outcomes.most_common())
        )
    t = Table(title="Most-delayed courier lanes")
    for col in ("lane", "shipments", "delayed", "delay rate", "alerts"):
        t.add_column(col, justify="left" if col == "lane" else "right")
    opened = Counter(a["lane"] for a in s.alerts if a["state"] == "open")
    for lane, shipped, delayed in s.lanes[:8]:
        t.add_row(
            lane, f"{shipped:,}", f"{delayed:,}", f"{delayed / shipped:.1%}", str(opened[lane])
        )
    console.print(t)
    if s.alerts:
        console.print(f"Lane alerts: {len(s.alerts)} transitions (first 8 in event time)")
        for a in sorted(s.alerts, key=lambda a: (a["window_end"], a["lane"]))[:8]:
            console.print(
                f"  {a['window_end']}  {a['lane']:<24} {a['state']:<6} {a['severity']:<8} "
                f"rate {a['delay_rate']:.0%} vs baseline {a['baseline_rate']:.0%} "
                f"({a['volume']} shipments)"
                + (" new normal" if a.get("reason") == "new_normal" else "")
            )
    render_models(console)
    render_uplift(console, out_dir)
    if out_dir is not None:
        console.print(f"Outputs: {out_dir.resolve()}")


def _samples(name: str) -> list:
    from prometheus_client import REGISTRY

    return [x for m in REGISTRY.collect() for x in m.samples if x.name == name]


def render_models(console) -> None:
    """Rolling model metrics vs the rule baseline, from this process's registry."""
    from rich.table import Table

    rows: dict[tuple[str, str], dict[str, float]] = {}
    for metric in ("auc", "logloss", "brier"):
        for x in _samples(f"salvage_model_{metric}"):
            rows.setdefault((x.labels["model"], x.labels["scorer"]), {})[metric] = x.value
    if not rows:
        return
    active = {x.labels["model"]: x.value for x in _samples("salvage_model_active")}
    labels = {x.labels["model"]: x.value for x in _samples("salvage_model_labels")}
    t = Table(title="Models: progressive validation on delayed labels (rolling, same cases)")
    for col in ("model", "scorer", "ROC AUC", "log loss", "Brier", "labels", "drives"):
        t.add_column(col, justify="left" if col in ("model", "scorer", "drives") else "right")
    for (model, scorer), v in sorted(rows.items()):
        drives = (active.get(model, 0) > 0) == (scorer == "model")
        t.add_row(
            model,
            scorer,
            # NaN: the rolling window holds one class (no AUC), shown as "no value", never 0
            "no value" if math.isnan(v.get("auc", math.nan)) else f"{v['auc']:.3f}",
            f"{v.get('logloss', float('nan')):.3f}",
            f"{v.get('brier', float('nan')):.3f}",
            f"{labels.get(model, 0):,.0f}",
            "yes" if drives else "shadow" if scorer == "model" else "",
        )
    console.print(t)


def render_uplift(console, out_dir: Path | None = None) -> None:
    """The intention-to-treat uplift of the run in ``out_dir`` (:mod:`salvage.uplift`)."""
    from salvage import uplift

    if out_dir is None or not uplift.has_inputs(out_dir):
        return
    result = uplift.uplift(out_dir)
    if result["actions"]:
        uplift.render(console, result)
