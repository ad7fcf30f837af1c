"""Running the dataflow in-process, publishing logs to topics, and summarising a run."""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bytewax.testing import cluster_main

from connectors.events import STREAM_OF
from flows.recovery import FlowSpec, build_flow
from salvage.config import Settings


@contextlib.contextmanager
def kafka_available(settings: Settings, log: Callable[[str], None]) -> Iterator[Settings]:
    """Yield settings with a bootstrap: the configured cluster, or an embedded broker for the
    duration of the block (topics created), stopped on exit."""
    from connectors.broker import EmbeddedBroker, ensure_topics

    if settings.kafka_bootstrap:
        ensure_topics(
            settings.kafka_client_config(),
            list(settings.input_topics().values()) + settings.output_topics(),
            settings.topic_partitions,
        )
        yield settings
        return
    with EmbeddedBroker(silent=True) as broker:
        log(f"embedded Kafka-compatible broker (Tansu) on {broker.bootstrap}")
        live = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        ensure_topics(
            live.kafka_client_config(),
            list(live.input_topics().values()) + live.output_topics(),
            live.topic_partitions,
        )
        yield live


def run_flow(spec: FlowSpec, workers: int = 1) -> float:
    """Run to completion in this process; return wall seconds."""
    flow = build_flow(spec)
    started = time.perf_counter()
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    del flow
    gc.collect()  # free the run's Kafka clients now, not at some later collection
    return time.perf_counter() - started


def publish_log(
    settings: Settings,
    path: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Counter[str]:
    """Publish an event log to the input topics (keyed by order id), in file order.

    Lines that do not parse as an event still go to a topic: the orders topic by default, or the
    topic their ``event_type`` names, so the pipeline's dead-letter handling sees them as it would
    in production. Returns messages per topic.
    """
    from sinks.kafka import TopicProducer

    topics = settings.input_topics()
    counts: Counter[str] = Counter()
    total = path.stat().st_size
    done = 0
    with TopicProducer(settings.kafka_client_config()) as producer, path.open("rb") as f:
        for i, line in enumerate(f):
            done += len(line)
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            stream, key = "orders", None
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                doc = json.loads(value)
                stream = STREAM_OF.get(doc.get("event_type"), "orders")
                key = doc.get("order_id") if isinstance(doc.get("order_id"), str) else None
            topic = topics[str(stream)]
            producer.produce(topic, key.encode() if key else None, value)
            counts[topic] += 1
            if progress is not None and i % 5000 == 0:
                progress(done, total)
        producer.flush()
    if progress is not None:
        progress(total, total)
    return counts


def consume_topic(
    settings: Settings, topic: str, out: Path, group: str, timeout_s: float = 60.0
) -> int:
    """Drain a topic into a JSONL file with a real consumer group (as downstream teams would).

    Stops when every partition assigned to the group has reached its end.
    """
    from confluent_kafka import Consumer, KafkaError

    conf = {
        **settings.kafka_client_config(),
        "group.id": group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "enable.partition.eof": True,
    }
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
                        at_end.add(msg.partition())
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


def summarise(out_dir: Path) -> RunSummary:
    """Read the outputs of a run and this process's metrics registry."""
    from prometheus_client import REGISTRY

    s = RunSummary()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            if sample.name == "salvage_events_total":
                s.events_by_stream[sample.labels["stream"]] += int(sample.value)
            elif sample.name == "salvage_suppressed_total":
                s.suppressed[sample.labels["guardrail"]] += int(sample.value)
            elif sample.name == "salvage_cases_closed_total":
                s.outcomes[sample.labels["outcome"]] += int(sample.value)
    lanes: dict[str, list[int]] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "salvage_lane_shipments_total":
                lanes.setdefault(sample.labels["lane"], [0, 0])[0] += int(sample.value)
            elif sample.name == "salvage_lane_delayed_shipments_total":
                lanes.setdefault(sample.labels["lane"], [0, 0])[1] += int(sample.value)
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


def render_summary(s: RunSummary, out_dir: Path, console) -> None:
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
            )
    console.print(f"Outputs: {out_dir.resolve()}")
