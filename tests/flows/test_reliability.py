"""Issue 12: live operation you can trust. Quiet streams release what is due, a replay after a
quiet spell loses nothing, duplicates are settled by payload (not silently), against the real
embedded broker where the behaviour is Kafka's."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from bytewax.testing import cluster_main
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from salvage.config import Settings
from salvage.connectors.broker import ensure_topics
from salvage.connectors.events import STREAM_OF, Stream
from salvage.features.eventtime import BEGIN, IDLE, Reorderer, to_us
from salvage.flows.messages import Event, Tick
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.flows.sources import (
    CLOCK_SETTLE_S,
    KafkaEventSource,
    _EndOffsets,
    clear_stop,
    kafka_part_id,
    request_stop,
)
from salvage.runner import publish_log, run_flow
from tests.flowkit import jsonl, run_file_flow, sim_log
from tests.helpers import event, kafka_settings, line, order_placed, read_to_end, topic_reader


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return sim_log(tmp_path_factory.mktemp("logs"), orders=400, seed=9)


@pytest.fixture(scope="module")
def file_mode(log, tmp_path_factory) -> dict[str, bytes]:
    return run_file_flow([log], tmp_path_factory.mktemp("file"))  # default tolerance


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# ------------------------------------------------------------------ watermark when all are idle


def test_when_every_upstream_is_idle_the_watermark_reaches_the_highest_clock():
    r = Reorderer(["a", "b"])
    r.push(100, "x", "early")
    r.push(500, "y", "late")
    r.tick("a", 90)
    r.tick("b", 400)
    assert [p for _, _, p in r.release()] == []  # low = 90
    r.tick("a", IDLE, 160)  # a caught up at clock 160: b alone holds the watermark
    assert [p for _, _, p in r.release()] == ["early"]
    r.tick("b", IDLE, 500)  # every input caught up: everything up to the highest clock is due
    assert [p for _, _, p in r.release()] == ["late"]
    assert r.low == 501
    # a partition that wakes up behind it cannot move the watermark back
    r.tick("a", 200)
    assert r.release() == [] and r.low == 501
    assert r.confirmed_low() == 200  # what every input really passed (idle exemptions aside)


def test_idle_upstreams_that_never_saw_an_event_do_not_move_the_watermark():
    r = Reorderer(["a", "b"])
    r.tick("a", IDLE, BEGIN)
    r.tick("b", IDLE, BEGIN)
    assert r.release() == [] and r.low == BEGIN


# ------------------------------------------------------------------ duplicates (file mode)


def _line(doc: dict) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def test_a_conflicting_copy_of_an_event_is_inconsistent_and_the_first_is_kept(
    log, file_mode, tmp_path
):
    """Issue 12: a later fake copy of a scan's event id with another payload (``scan=lost``)
    replaced the genuine one, silently. Now: an ``inconsistent`` dead letter, first one kept."""
    lines = log.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"carrier_scan"' in x and i > len(lines) // 3)
    doc = json.loads(lines[i])
    assert doc.get("scan") != "lost"
    fake = {**doc, "scan": "lost"}
    path = tmp_path / "fake.jsonl"
    path.write_bytes(b"".join([*lines[: i + 1], _line(fake), *lines[i + 1 :]]))
    out = run_file_flow([path], tmp_path / "out")
    letters = jsonl(out["dead_letters"])
    assert [(d["kind"], d["event_id"]) for d in letters] == [("inconsistent", doc["event_id"])]
    assert out["interventions"] == file_mode["interventions"]


def test_a_second_order_placed_with_the_same_id_is_counted_or_inconsistent(
    log, file_mode, tmp_path
):
    lines = log.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"order_placed"' in x and i > 10)
    doc = json.loads(lines[i])
    # a second later: the first one applied in event-time order is kept (among equal times the
    # content digest in the tiebreak decides, whichever copy that makes first)
    later = datetime.fromisoformat(doc["occurred_at"]) + timedelta(seconds=1)
    changed = {**doc, "campaign": "fake", "occurred_at": later.isoformat()}
    path = tmp_path / "again.jsonl"
    path.write_bytes(b"".join([*lines[: i + 1], lines[i], _line(changed), *lines[i + 1 :]]))
    before = _metric("salvage_duplicate_events_total")
    out = run_file_flow([path], tmp_path / "out")
    assert _metric("salvage_duplicate_events_total") - before == 1  # the identical copy
    letters = jsonl(out["dead_letters"])
    assert [(d["kind"], d["event_id"]) for d in letters] == [("inconsistent", doc["event_id"])]
    assert out["interventions"] == file_mode["interventions"]


def test_a_republished_log_is_deduplicated_before_lateness(log, tmp_path):
    """Issue 12: publishing a log again gave 11,055 ``too_late`` dead letters; the duplicates
    are recognised first. Two weeks of a log, then the same two weeks again: every repeated
    event is a counted duplicate and no trigger changes."""
    lines = log.read_bytes().splitlines(keepends=True)
    first = json.loads(lines[0])["occurred_at"][:10]
    head = [x for x in lines if json.loads(x)["occurred_at"][:10] < _plus_days(first, 14)]
    once = tmp_path / "once.jsonl"
    once.write_bytes(b"".join(head))
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(b"".join(head + head))
    base = run_file_flow([once], tmp_path / "once")
    before = _metric("salvage_duplicate_events_total")
    out = run_file_flow([twice], tmp_path / "twice", max_lateness_seconds=86_400)
    assert out["dead_letters"] == b""
    assert _metric("salvage_duplicate_events_total") - before == len(head)
    assert out["interventions"] == base["interventions"]


def _plus_days(day: str, n: int) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) + timedelta(days=n)).isoformat()


def test_events_before_their_order_placed_wait_for_it_instead_of_dying(log, tmp_path):
    """What a replay after a quiet spell does (other topics' events before their order's): an
    order_placed that arrives after its order's other events is late, applied at the watermark,
    and the events that came first wait for it (no ``unknown_order``)."""
    lines = log.read_bytes().splitlines(keepends=True)
    docs = [json.loads(x) for x in lines]
    i = next(i for i, d in enumerate(docs) if d["event_type"] == "order_placed" and i > 100)
    order = docs[i]["order_id"]
    later = [j for j, d in enumerate(docs) if d["order_id"] == order and j > i]
    assert len(later) >= 2
    # the order_placed line moves to just after its next two events (hours later: late)
    k = later[1]
    moved = [*lines[:i], *lines[i + 1 : k + 1], lines[i], *lines[k + 1 :]]
    path = tmp_path / "orphans.jsonl"
    path.write_bytes(b"".join(moved))
    before = _metric("salvage_orphan_events_parked_total")
    out = run_file_flow([path], tmp_path / "out")
    assert not [d for d in jsonl(out["dead_letters"]) if d["kind"] == "unknown_order"]
    assert _metric("salvage_orphan_events_parked_total") - before >= 1
    # an event whose order never comes is still a dead letter (at the end of the wait)
    stray = {**docs[later[0]], "order_id": "O-never", "event_id": "stray-1"}
    path.write_bytes(b"".join([*lines[:200], _line(stray), *lines[200:]]))
    out = run_file_flow([path], tmp_path / "stray")
    letters = jsonl(out["dead_letters"])
    assert [(d["kind"], d["event_id"]) for d in letters] == [("unknown_order", "stray-1")]


# ------------------------------------------------------------------ Kafka --follow


_settings = kafka_settings
_reader = topic_reader


def _drain(consumer: Consumer, into: list[dict], quiet_s: float = 0.5) -> None:
    while True:
        msgs = consumer.consume(1000, quiet_s)
        if not msgs:
            return
        into += [json.loads(m.value()) for m in msgs if m.error() is None]


def _follow(settings: Settings, until, bound_s: float = 90.0) -> None:
    """Run ``salvage run --follow`` (in this process) until ``until()`` holds; at most bound_s."""
    clear_stop()
    spec = FlowSpec(settings, to_end=False, case_store=False)
    flow = build_flow(spec)
    runner = threading.Thread(target=cluster_main, args=(flow, [], 0), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + bound_s
        while not until() and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.2)
    finally:
        request_stop()
        runner.join(timeout=60)
        clear_stop()
    assert not runner.is_alive()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(port: int) -> dict[str, float] | None:
    """A running flow's /metrics: each sample name's total over its labels; None while it is
    not up."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _applied(port: int) -> int:
    """Input records the running flow has accounted for (applied, duplicate or dead letter),
    from its /metrics endpoint; 0 while it is not up yet."""
    totals = _scrape(port) or {}
    names = ("salvage_events", "salvage_duplicate_events", "salvage_dead_letters")
    return int(sum(totals.get(f"{name}_total", 0.0) for name in names))


def _follow_env(settings: Settings, port: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``salvage run --follow`` subprocess on ``settings``' topics (3
    partitions each), with its /metrics on ``port`` when given."""
    env = {
        "SALVAGE_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "SALVAGE_TOPIC_PARTITIONS": "3",
        **{f"SALVAGE_TOPIC_{s.upper()}": t for s, t in settings.topics.inputs().items()},
        "SALVAGE_TOPIC_INTERVENTIONS": settings.topics.interventions,
        "SALVAGE_TOPIC_LANE_ALERTS": settings.topics.lane_alerts,
        "SALVAGE_TOPIC_DEAD_LETTERS": settings.topics.dead_letters,
        **extra,
    }
    if port is not None:
        env.update({"SALVAGE_METRICS_PORT": str(port), "SALVAGE_METRICS_HOST": "127.0.0.1"})
    return env


def _live_source(
    conf: dict, topics: dict[str, str], idle_s: float, max_jump_us: int = 0
) -> KafkaEventSource:
    """A following Kafka source over one-partition ``topics`` (stream -> topic), the default
    tolerance (60 s) and lateness bound (7 days); no clock bound unless ``max_jump_us``."""
    return KafkaEventSource(
        conf,
        topics,
        dict.fromkeys(topics.values(), 1),
        tolerance_us=60_000_000,
        max_lateness_us=7 * 86_400_000_000,
        max_jump_us=max_jump_us,
        to_end=False,
        idle_s=idle_s,
    )


def _split_point(lines: list[bytes], near: float) -> int:
    """An index k near ``near * len(lines)`` such that every event from k on is later than every
    event before it (the tail published later is not behind what came before)."""
    times = [json.loads(x)["occurred_at"] for x in lines]
    for k in range(int(near * len(lines)), len(lines)):
        if max(times[:k]) < min(times[k:]):
            return k
    raise AssertionError("no split point")


@pytest.mark.integration
def test_follow_on_preloaded_topics_emits_file_modes_triggers_once_quiet(
    kafka_broker, log, file_mode, unique_name, salvage_cli, tmp_path
):
    """Issue 12, done when: ``salvage run --follow`` on preloaded topics emits exactly file mode's
    trigger ids within 5 s after input goes quiet. It stalled at 375 of 486 triggers once every
    partition was quiet. A real ``salvage run --follow`` process reads the preloaded topics (all
    of the log but its tail); once it has applied them, the tail is published, and from the
    moment the last input is acknowledged by the broker every trigger id of file mode is on the
    interventions topic (read by an independent consumer) within 5 s, and no other. SIGTERM then
    stops the run cleanly (exit 0)."""
    settings = _settings(kafka_broker.bootstrap, unique_name("f"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    lines = log.read_bytes().splitlines(keepends=True)
    k = _split_point(lines, 0.9)
    (tmp_path / "head.jsonl").write_bytes(b"".join(lines[:k]))
    (tmp_path / "tail.jsonl").write_bytes(b"".join(lines[k:]))
    publish_log(settings, tmp_path / "head.jsonl")  # preloaded before the run starts
    expected = {t["trigger_id"] for t in jsonl(file_mode["interventions"])}

    port = _free_port()
    env = _follow_env(settings, port)
    proc = salvage_cli(
        "run", "--follow", "--shards", "4", "--redis-url", "", "--no-summary", env=env
    )
    arrived: dict[str, float] = {}  # trigger id -> when the independent reader got it
    reader = _reader(settings, settings.topics.interventions)

    def read(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for m in reader.consume(1000, 0.05):
                if m.error() is None:
                    arrived.setdefault(json.loads(m.value())["trigger_id"], time.monotonic())

    try:
        deadline = time.monotonic() + 60
        while _applied(port) < k:  # the preloaded part read and applied
            assert time.monotonic() < deadline, f"applied {_applied(port)} of {k}"
            assert proc.poll() is None, proc.err_path.read_text()
            read(0.2)
        before = set(arrived)
        publish_log(settings, tmp_path / "tail.jsonl")
        quiet = time.monotonic()  # the last input is acknowledged: input is quiet from here
        while not expected <= set(arrived) and time.monotonic() < quiet + 30:
            assert proc.poll() is None, proc.err_path.read_text()
            read(0.1)
        read(1.0)  # quiet on: nothing more comes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.err_path.read_text()
    finally:
        reader.close()
    assert set(arrived) == expected
    assert before < expected  # some triggers needed the tail: the measurement means something
    took = max(arrived.values()) - quiet
    print(f"every trigger out {took:.2f}s after the last input")
    assert took <= 5.0


@pytest.mark.integration
def test_a_two_process_cluster_following_kafka_emits_file_modes_triggers(
    kafka_broker, log, file_mode, unique_name, salvage_cli, tmp_path
):
    """Scale-out in Kafka mode (the cluster tests run file mode): two ``salvage run --follow``
    processes (``--addresses``, ``--process-id``) on preloaded topics, shard keys balanced over
    their workers and one model shard (file mode's count, so the results compare), publish
    exactly file mode's trigger ids, each once. Both processes read input and both publish
    triggers: each dispatch shard publishes its own (``StageConfig.direct_triggers``).

    This test found a bug: a sparse partition's tail events held by the clock bound (a jump of
    more than 6 h from its own last event) were confirmed against the highest clock of the
    partitions *this process* read; in a cluster that can stay behind them for good, and a
    support contact was never applied (one trigger missing, another one fired instead). A
    partition caught up and quiet now applies what it holds, as the end of a file does."""
    settings = _settings(kafka_broker.bootstrap, unique_name("cl"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    publish_log(settings, log)
    expected = {t["trigger_id"] for t in jsonl(file_mode["interventions"])}
    addresses = f"127.0.0.1:{_free_port()},127.0.0.1:{_free_port()}"
    ports = [_free_port(), _free_port()]
    procs = [
        salvage_cli(
            *("run", "--follow", "--shards", "4", "--redis-url", "", "--no-summary"),
            *("--addresses", addresses, "--process-id", str(i)),
            env=_follow_env(settings, ports[i], SALVAGE_MODEL_SHARDS="1"),
        )
        for i in range(2)
    ]
    got: list[str] = []
    reader = _reader(settings, settings.topics.interventions)
    try:
        deadline = time.monotonic() + 120
        last_new = time.monotonic()
        while len(set(got)) < len(expected) and time.monotonic() < deadline:
            for proc in procs:
                assert proc.poll() is None, proc.err_path.read_text()
            fresh = [json.loads(m.value())["trigger_id"] for m in reader.consume(1000, 0.2)]
            got += fresh
            if fresh:
                last_new = time.monotonic()
            elif got and time.monotonic() - last_new > 15:  # quiet: nothing more is coming
                break
        quiet = time.monotonic() + 2.0  # nothing more comes
        while time.monotonic() < quiet:
            got += [json.loads(m.value())["trigger_id"] for m in reader.consume(1000, 0.2)]
        totals = [_scrape(port) or {} for port in ports]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=30) == 0, proc.err_path.read_text()
    finally:
        reader.close()
    assert len(got) == len(set(got))  # each once
    assert set(got) == expected
    for t in totals:  # both processes read input and published triggers
        assert t.get("salvage_events_total", 0) > 0 and t.get("salvage_triggers_total", 0) > 0
    assert sum(t["salvage_triggers_total"] for t in totals) == len(expected)


@pytest.mark.integration
def test_follow_with_streams_published_behind_the_orders_equals_file_mode(
    kafka_broker, log, file_mode, unique_name, salvage_cli, tmp_path
):
    """Checked clocks move a caught-up partition to what its process had read: they assume one
    producer publishing in event-time order. Here three systems publish with their own delays:
    the carrier, support and returns streams go out a day of event time behind the orders
    stream, paced at 500 events/s while ``salvage run --follow`` reads (the log's 44 days take
    7.5 s: the day is ~170 ms of wall time, more than a check's settle margin and round trip, so
    those partitions are caught up and checked while the orders run ahead), with a reorder
    tolerance of 2 days (what a deployment with such sources must set). Each event is within the
    tolerance of everything read before it: none may be late, and the triggers are file mode's,
    read by an independent consumer. (With a 12 h tolerance the same run has late events.)"""
    settings = _settings(kafka_broker.bootstrap, unique_name("skew"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    skew = timedelta(days=1)
    inputs = settings.topics.inputs()
    records = []
    for raw in log.read_bytes().splitlines():
        doc = json.loads(raw)
        stream = STREAM_OF[doc["event_type"]]
        at = datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00"))
        records.append((at if stream is Stream.ORDERS else at + skew, stream, doc, raw))
    records.sort(key=lambda r: r[0])  # publication order: the other streams a day behind
    assert [r[3] for r in records] != log.read_bytes().splitlines()
    expected = {t["trigger_id"] for t in jsonl(file_mode["interventions"])}

    port = _free_port()
    env = _follow_env(settings, port, SALVAGE_REORDER_TOLERANCE_SECONDS=str(2 * 86_400))
    proc = salvage_cli(
        "run", "--follow", "--shards", "4", "--redis-url", "", "--no-summary", env=env
    )
    arrived: set[str] = set()
    reader = _reader(settings, settings.topics.interventions)

    def read(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for m in reader.consume(1000, 0.05):
                if m.error() is None:
                    arrived.add(json.loads(m.value())["trigger_id"])

    producer = Producer(settings.kafka.as_librdkafka_dict())
    try:
        deadline = time.monotonic() + 60
        while _scrape(port) is None:
            assert time.monotonic() < deadline and proc.poll() is None, proc.err_path.read_text()
            time.sleep(0.2)
        start = time.monotonic()
        for i, (_, stream, doc, raw) in enumerate(records):  # 500 events/s
            while time.monotonic() < start + i / 500:
                producer.poll(0)
                time.sleep(0.001)
            producer.produce(inputs[stream.value], raw, key=doc["order_id"].encode())
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 60
        while not expected <= arrived and time.monotonic() < deadline:
            assert proc.poll() is None, proc.err_path.read_text()
            read(0.1)
        read(1.0)  # quiet on: nothing more comes
        totals = _scrape(port) or {}
        late = totals.get("salvage_late_events_total", 0.0)
        late_after_idle = totals.get("salvage_late_after_idle_total", 0.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.err_path.read_text()
    finally:
        reader.close()
        producer = None
    assert (late, late_after_idle) == (0, 0)
    assert arrived == expected


@pytest.mark.integration
@pytest.mark.integration
def test_follow_raises_file_modes_lane_alerts_on_an_incident(
    kafka_broker, unique_name, salvage_cli, tmp_path
):
    """The lane detector in Kafka mode, not only in file mode: ``salvage run --follow`` on the
    silent-carrier scenario (a carrier stops scanning; the incident's alerts open and close) in
    topics raises exactly file mode's lane alerts (ids: lane, state, window end) and triggers,
    read by an independent consumer; SIGTERM then stops it cleanly."""
    log = sim_log(tmp_path, "silent-carrier-incident", orders=600, seed=2)
    file_out = run_file_flow([log], tmp_path / "file")
    alerts = {a["alert_id"] for a in jsonl(file_out["lane_alerts"])}
    triggers = {t["trigger_id"] for t in jsonl(file_out["interventions"])}
    assert len(alerts) >= 2  # the incident opens an alert and closes it

    settings = _settings(kafka_broker.bootstrap, unique_name("lanes"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    publish_log(settings, log)
    env = _follow_env(settings)
    proc = salvage_cli(
        "run", "--follow", "--shards", "4", "--redis-url", "", "--no-summary", env=env
    )
    got_alerts: set[str] = set()
    got_triggers: set[str] = set()
    alert_reader = _reader(settings, settings.topics.lane_alerts)
    trigger_reader = _reader(settings, settings.topics.interventions)

    def read(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for reader, into, key in (
                (alert_reader, got_alerts, "alert_id"),
                (trigger_reader, got_triggers, "trigger_id"),
            ):
                for m in reader.consume(1000, 0.05):
                    if m.error() is None:
                        into.add(json.loads(m.value())[key])

    try:
        deadline = time.monotonic() + 90
        while not (alerts <= got_alerts and triggers <= got_triggers):
            assert time.monotonic() < deadline, (sorted(alerts - got_alerts), len(got_triggers))
            assert proc.poll() is None, proc.err_path.read_text()
            read(0.2)
        read(1.5)  # quiet on: nothing more comes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.err_path.read_text()
    finally:
        alert_reader.close()
        trigger_reader.close()
    assert got_alerts == alerts
    assert got_triggers == triggers


def test_a_replay_burst_after_a_quiet_spell_loses_no_event(
    kafka_broker, log, file_mode, unique_name
):
    """Issue 12: an idle ``--follow`` pipeline, then the log published at full speed: 0 to 119
    ``unknown_order`` dead letters across runs (support, returns and scans applied before their
    ``order_placed``). Now events that come before their order wait for it: no dead letter and
    no trigger lost."""
    settings = _settings(kafka_broker.bootstrap, unique_name("r"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    expected = {t["trigger_id"] for t in jsonl(file_mode["interventions"])}
    got: list[dict] = []
    reader = _reader(settings, settings.topics.interventions)
    published = threading.Event()

    def burst_after_idle() -> None:
        time.sleep(3.0)  # every partition caught up and idle
        publish_log(settings, log)
        published.set()

    threading.Thread(target=burst_after_idle, daemon=True).start()
    try:
        _follow(
            settings,
            lambda: _drain(reader, got, 0.1) or (published.is_set() and len(got) >= len(expected)),
        )
        _drain(reader, got)
    finally:
        reader.close()
    letters = read_to_end(settings, settings.topics.dead_letters)
    lost = [(d["event_id"], d["message"]) for d in letters if d["kind"] == "unknown_order"]
    assert lost == [], lost[:5]
    assert expected <= {t["trigger_id"] for t in got}


def _trigger_ids(settings: Settings) -> list[str]:
    """Every trigger id on the interventions topic, read to the end (the embedded broker's high
    watermarks do not count messages one by one, so they are not used to count)."""
    reader = topic_reader(settings, settings.topics.interventions)
    ids: list[str] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < 2.0:
            msg = reader.poll(0.2)
            if msg is not None and not msg.error():
                ids.append(json.loads(msg.value())["trigger_id"])
                last = time.monotonic()
    finally:
        reader.close()
    return ids


def test_a_restart_without_recovery_goes_on_from_the_groups_offsets(
    kafka_broker, tmp_path, unique_name
):
    """Issue 12 item 7: without --recovery-dir a restart reads on from the offsets the last clean
    stop committed to the consumer group; it used to read every topic from the start and
    republish every trigger (486 -> 972). --from-beginning still re-reads everything."""
    group = unique_name("group")
    settings = kafka_settings(kafka_broker.bootstrap, unique_name("rs"), kafka_group_id=group)
    ensure_topics(settings.kafka.as_librdkafka_dict(), list(settings.topics.inputs().values()), 3)
    published = sum(publish_log(settings, sim_log(tmp_path, orders=300, seed=8)).values())
    run_flow(FlowSpec(settings, to_end=True, case_store=False))
    first = _trigger_ids(settings)
    assert first and len(set(first)) == len(first)
    # the clean stop committed every input partition's end
    probe = Consumer({**settings.kafka.as_librdkafka_dict(), "group.id": group})
    inputs = [tp for t in settings.topics.inputs().values() for tp in _partitions(probe, t)]
    committed = probe.committed(inputs, timeout=10)
    probe.close()
    assert sum(tp.offset for tp in committed) == published  # new topics: they start at 0
    run_flow(FlowSpec(settings, to_end=True, case_store=False))  # restart: nothing new to read
    assert sorted(_trigger_ids(settings)) == sorted(first)  # partitions interleave freely
    run_flow(FlowSpec(settings, to_end=True, case_store=False, from_beginning=True))
    again = _trigger_ids(settings)  # --from-beginning re-read it all: the same ids once more
    assert sorted(again) == sorted(first + first)


def _partitions(consumer: Consumer, topic: str) -> list:
    from confluent_kafka import TopicPartition

    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return [TopicPartition(topic, p) for p in sorted(parts)]


# ------------------------------------------------------------------ waking up by offsets


def _scan(n: int, at: str) -> bytes:
    return line(
        event(
            f"S{n:05d}",
            "carrier_scan",
            f"O{n:05d}",
            at,
            courier="dhl",
            region="central",
            scan="label_created",
            estimated_delivery_at="2026-03-05T21:00:00Z",
        )
    )


def _at(second: int) -> str:
    return f"2026-03-02T{10 + second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"


@pytest.mark.integration
def test_end_offsets_are_asked_in_the_background_and_answered_fresh(kafka_conf, unique_name):
    """The wake-up checks' thread (_EndOffsets): an answer is the broker's (low, high) offsets
    of a query sent after the time asked for; an older answer is not given (ask again); an
    unknown partition's query comes back as no answer (None: the partition counts as behind)."""
    topic = unique_name("end-offsets")
    ensure_topics(kafka_conf, [topic], 2)
    producer = Producer(kafka_conf)
    for _ in range(3):
        producer.produce(topic, b"x", partition=1)
    assert producer.flush(10) == 0
    probe = _EndOffsets({**kafka_conf, "group.id": "salvage-unused"})
    probe.join()

    def answer(part: str, tp: TopicPartition, since: float):
        deadline = time.monotonic() + 10
        while (got := probe.answer(part, since)) is None:
            assert time.monotonic() < deadline, "no answer"
            probe.ask(part, tp)
            time.sleep(0.01)
        return got

    try:
        before = time.monotonic()
        sent, offsets = answer("a", TopicPartition(topic, 0), before)
        assert sent >= before and offsets == (0, 0)
        _, offsets1 = answer("b", TopicPartition(topic, 1), before)
        assert offsets1 is not None and offsets1[0] == 0 and offsets1[1] >= 1  # data waits
        assert probe.answer("b", time.monotonic() + 1) is None  # not fresh enough
        _, missing = answer("c", TopicPartition(unique_name("no-such-topic"), 0), before)
        assert missing is None
    finally:
        probe.leave()
    assert probe._thread is None  # the last user left: the thread ended


def test_a_waking_partition_holds_until_every_idle_one_checked_its_offsets(kafka_conf, unique_name):
    """Issue 12 item 2: the hold after a wake-up is settled by offsets, not by a timer. An idle
    partition whose own fetch has not delivered yet (paused here: its librdkafka cache still says
    caught up) finds its unread data by a fresh end-offset query when another partition wakes,
    and holds the watermark at once, before reading anything; the waking partition holds until
    then, however long that takes. Fed to a reorderer in the order they came out, no event of
    either partition is behind the watermark: none is late after the quiet spell."""
    orders, scans = unique_name("orders-wake"), unique_name("deliveries-wake")
    ensure_topics(kafka_conf, [orders, scans], 1)
    idle_s = 0.3
    source = _live_source(kafka_conf, {"orders": orders, "deliveries": scans}, idle_s)
    a_id, b_id = kafka_part_id(orders, 0), kafka_part_id(scans, 0)
    a, b = source.build_part("in", a_id, None), source.build_part("in", b_id, None)
    came: list[tuple[str, object]] = []  # every item, in the order the partitions emitted them
    producer = Producer(kafka_conf)

    def publish(first: int, last: int, to_b: bool = True) -> None:
        for n in range(first, last):
            producer.produce(orders, line(order_placed(f"O{n:05d}", _at(n))), partition=0)
            if to_b:
                producer.produce(scans, _scan(n, _at(n)), partition=0)
        assert producer.flush(10) == 0

    def pump(part, pid: str, times: int = 1) -> list:
        got: list = []
        for _ in range(times):
            got += part.next_batch()
            time.sleep(0.01)
        came.extend((pid, item) for item in got)
        return got

    def pump_until(part, pid: str, pred, timeout: float = 20.0) -> list:
        got: list = []
        deadline = time.monotonic() + timeout
        while not pred(got):
            assert time.monotonic() < deadline, "timed out"
            got += pump(part, pid)
        return got

    def events(pid: str) -> int:
        return sum(1 for p, item in came if p == pid and isinstance(item, Event))

    def ticks(items: list) -> list[int]:
        return [item.watermark for item in items if isinstance(item, Tick)]

    def until(pred, *parts, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "timed out"
            for part, pid in parts:
                pump(part, pid)

    def both_idle() -> bool:
        last = {p: item.watermark for p, item in came if isinstance(item, Tick)}
        return last.get(a_id) == IDLE and last.get(b_id) == IDLE

    clear_stop()
    try:
        publish(0, 20)
        until(lambda: events(a_id) == events(b_id) == 20 and both_idle(), (a, a_id), (b, b_id))
        a_old = a._parser.clock.watermark
        b_old = b._parser.clock.watermark

        # B's fetches stop (a slow fetch on a loaded machine); a burst reaches both topics
        b._consumer.pause([TopicPartition(scans, 0)])
        time.sleep(0.5)  # its last fetch request (fetch.wait.max.ms) has been answered
        publish(20, 40)
        mark = len(came)
        until(lambda: events(a_id) == 40, (a, a_id))
        time.sleep(3 * idle_s)  # a timer alone would have let A go on by now
        pump(a, a_id, 5)
        assert a._parser.clock.watermark > a_old
        assert ticks([i for _, i in came[mark:]]) == [a_old]  # A holds: B has not checked
        # B's cache still shows no new data: only a fresh query can tell
        cached = b._consumer.get_watermark_offsets(TopicPartition(scans, 0), cached=True)
        assert cached[1] == 20

        # B checks its end offset afresh (asked of a background thread: B's worker goes on
        # meanwhile, saying nothing); the answer shows data waiting: B holds at once
        woke = pump_until(b, b_id, lambda got: bool(got))
        assert ticks(woke) == [b_old] and events(b_id) == 20
        # settled: A goes on (caught up and quiet for long, it is idle now; B holds the watermark)
        assert ticks(pump(a, a_id)) == [IDLE]
        time.sleep(3 * idle_s)
        assert IDLE not in ticks(pump(b, b_id, 5))  # behind by offsets: never idle, unread
        b._consumer.resume([TopicPartition(scans, 0)])
        until(lambda: events(b_id) == 40 and both_idle(), (a, a_id), (b, b_id))

        # a wake with nothing waiting elsewhere: B's check finds nothing, B stays idle, A goes on
        a_old = a._parser.clock.watermark
        publish(40, 45, to_b=False)
        mark = len(came)
        until(lambda: events(a_id) == 45, (a, a_id))
        time.sleep(3 * idle_s)
        pump(a, a_id, 3)
        assert ticks([i for _, i in came[mark:]]) == [a_old]  # holds until B has checked
        # B's check finds nothing: B stays idle, nothing to say; A is settled once it has
        quiet_b: list = []
        deadline = time.monotonic() + 20
        while IDLE not in ticks(pump(a, a_id)):
            assert time.monotonic() < deadline, "timed out"
            quiet_b += pump(b, b_id)
        assert quiet_b == []
    finally:
        a.close()
        b.close()
        clear_stop()
        producer = None  # no reconnect attempts once the broker is gone

    r = Reorderer([a_id, b_id])
    late = []
    for pid, item in came:
        if isinstance(item, Tick):
            r.tick(pid, item.watermark, item.seen)
            r.release()
        elif isinstance(item, Event) and not r.push(item.t, item.tie, item.payload):
            late.append((pid, item.tie))
    assert late == []
    assert events(a_id) == 45 and events(b_id) == 40


def _us(second: int) -> int:
    return to_us(datetime.fromisoformat(_at(second).replace("Z", "+00:00")))


@pytest.mark.integration
def test_a_quiet_partition_applies_the_jump_it_holds(kafka_conf, unique_name):
    """The clock bound holds an event more than 6 h past its partition's last one until later
    events confirm or reject it. A partition that then stays caught up and quiet has its input
    end there for now: it applies what it holds, at the events' own times, before it goes idle,
    as the end of a file does. (It used to judge them against the highest clock of the
    partitions its own process read; alone, or in a cluster behind the rest of the stream, that
    kept them held for good, never applied.)"""
    scans = unique_name("deliveries-jump")
    ensure_topics(kafka_conf, [scans], 1)
    # the default clock bound: 6 h
    source = _live_source(kafka_conf, {"deliveries": scans}, 0.3, max_jump_us=6 * 3_600_000_000)
    part = source.build_part("in", kafka_part_id(scans, 0), None)
    producer = Producer(kafka_conf)
    producer.produce(scans, _scan(0, _at(0)), partition=0)
    later = "2026-03-04T10:00:00Z"  # two days after _at(0): a jump
    producer.produce(scans, _scan(1, later), partition=0)
    assert producer.flush(10) == 0
    events: list[Event] = []
    idle = False
    clear_stop()
    try:
        deadline = time.monotonic() + 20
        while not idle:
            assert time.monotonic() < deadline, f"not idle; emitted {events}"
            for item in part.next_batch():
                if isinstance(item, Event):
                    events.append(item)
                elif isinstance(item, Tick) and item.watermark == IDLE:
                    idle = True
            time.sleep(0.01)
    finally:
        part.close()
    assert [(e.payload.event_id, e.t) for e in events] == [
        ("S00000", to_us(datetime.fromisoformat(_at(0)))),
        ("S00001", to_us(datetime.fromisoformat(later))),
    ]


@pytest.mark.integration
def test_a_sparse_partition_follows_the_stream_by_checked_clocks(kafka_conf, unique_name):
    """A partition with nothing to read does not hold the watermark while the rest of the stream
    flows (issue 15, latency): a fresh end-offset check that finds it caught up moves its clock
    to what the process had read before the check (less the settle margin). Here partition B
    never gets an event while A flows, and idleness (30 s) cannot be what lets A's events go:
    they are released within seconds, every one at its own time, B never idle. Then B's fetches
    stop (its cache still says caught up) and an event waits on it: B's check finds it unread,
    and B's clock stays behind that event however far A goes, so it is not late when it comes."""
    orders, scans = unique_name("orders-checked"), unique_name("deliveries-checked")
    ensure_topics(kafka_conf, [orders, scans], 1)
    tol = 60_000_000  # _live_source's
    source = _live_source(kafka_conf, {"orders": orders, "deliveries": scans}, idle_s=30.0)
    a_id, b_id = kafka_part_id(orders, 0), kafka_part_id(scans, 0)
    a, b = source.build_part("in", a_id, None), source.build_part("in", b_id, None)
    reorderer = Reorderer([a_id, b_id])
    released: list = []
    b_ticks: list[int] = []
    producer = Producer(kafka_conf)

    def publish_a(first: int, last: int) -> None:
        for n in range(first, last):
            producer.produce(orders, line(order_placed(f"O{n:05d}", _at(n))), partition=0)
        assert producer.flush(10) == 0

    def pump() -> None:
        for part, pid in ((a, a_id), (b, b_id)):
            for item in part.next_batch():
                if isinstance(item, Event):  # in order: never behind the low watermark
                    assert reorderer.push(item.t, item.tie, item.payload), f"late: {item}"
                elif isinstance(item, Tick):
                    reorderer.tick(pid, item.watermark, item.seen)
                    if pid == b_id:
                        b_ticks.append(item.watermark)
        released.extend(reorderer.release())
        time.sleep(0.005)

    def pump_until(pred, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "timed out"
            pump()

    clear_stop()
    try:
        for first in range(0, 300, 10):  # A flows: 10 events at a time, 1 s of event time each
            publish_a(first, first + 10)
            pump()
        # everything A promised (its clock less the tolerance) goes, B having read nothing
        pump_until(lambda: len(released) >= 300 - 61)
        assert [t for t, _, _ in released] == [_us(n) for n in range(len(released))]
        assert IDLE not in b_ticks and b._parser.clock.watermark >= _us(299) - tol - 10**6

        # B's fetches stop; an event waits on B; A goes on far past it
        b._consumer.pause([TopicPartition(scans, 0)])
        time.sleep(0.5)  # its last fetch request (fetch.wait.max.ms) has been answered
        producer.produce(scans, _scan(300, _at(300)), partition=0)
        assert producer.flush(10) == 0
        mark = len(b_ticks)
        for first in range(301, 600, 10):
            publish_a(first, first + 10)
            pump()
        pump_until(lambda: a._parser.clock.max_t == _us(600))
        for _ in range(40):  # checks are asked and answered meanwhile: B finds its unread event
            pump()
        assert b._parser.clock.max_t < _us(300)  # held back: its unread event is not late
        assert all(wm < _us(300) - tol for wm in b_ticks[mark:])
        assert released[-1][0] < _us(300) - tol
        cached = b._consumer.get_watermark_offsets(TopicPartition(scans, 0), cached=True)
        assert cached[1] == 0  # only a fresh query could tell

        b._consumer.resume([TopicPartition(scans, 0)])
        pump_until(lambda: len(released) >= 601 - 61)  # B's event in its place, none late
        assert [t for t, _, _ in released] == [_us(n) for n in range(len(released))]
        assert released[300][2].event_type == "carrier_scan"
        assert IDLE not in b_ticks
    finally:
        a.close()
        b.close()
        clear_stop()
        producer = None


@pytest.mark.integration
def test_a_checked_clock_takes_what_was_read_a_settle_margin_before_its_check(
    kafka_conf, unique_name
):
    """The rule of a checked clock, on a real partition with answers placed in its probe: an
    answer sent at ``s`` that finds nothing unread moves the clock to the highest event time
    read before ``s - CLOCK_SETTLE_S`` (a producer's appends to other partitions may trail by
    that much), not to what was read later; an answer that shows unread data, or none, moves
    nothing."""
    topic = unique_name("deliveries-rule")
    ensure_topics(kafka_conf, [topic], 1)
    source = _live_source(kafka_conf, {"deliveries": topic}, idle_s=30.0)
    part_id = kafka_part_id(topic, 0)
    b = source.build_part("in", part_id, None)
    clear_stop()
    try:
        deadline = time.monotonic() + 20
        while not b._caught_up():  # its first fetch answered: the cache knows the (empty) end
            assert time.monotonic() < deadline, "timed out"
            b.next_batch()
            time.sleep(0.01)
        base = time.monotonic() + 100  # planted history, apart from anything real
        seen = b._seen
        for dt, second in ((0.0, 10), (0.010, 20), (0.050, 30)):
            seen.note(base + dt, _us(second))
        settle = CLOCK_SETTLE_S
        assert 0.010 < 0.055 - settle < 0.050  # the check below is sent between the two
        clock = b._parser.clock
        assert clock.max_t == BEGIN

        b._probe._answers[part_id] = (base + 0.055, (0, 3))  # unread data: no move
        b._advance(base + 1)
        assert clock.max_t == BEGIN
        b._probe._answers[part_id] = (base + 0.056, None)  # no answer from the broker
        b._advance(base + 1)
        assert clock.max_t == BEGIN
        b._probe._answers[part_id] = (base + 0.057, (0, 0))  # caught up when sent
        b._advance(base + 1)
        assert clock.max_t == _us(20)  # read 47 ms before the check, not the one 7 ms before
        b._advance(base + 1)  # the same answer again: nothing new
        assert clock.max_t == _us(20)
        b._probe._answers[part_id] = (base + 0.090, (0, 0))
        b._advance(base + 1)
        assert clock.max_t == _us(30)
        assert clock.watermark == _us(30) - 60_000_000
    finally:
        b.close()
        clear_stop()
