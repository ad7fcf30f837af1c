"""Replay and record: log formats, pacing, time windows, Kafka mode == file mode, re-publishing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from salvage.cli import app
from salvage.config import Settings
from salvage.connectors.broker import ensure_topics
from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.replay import Pacer, detect_format, event_time_us, iter_records, parse_time
from salvage.flows.recovery import FlowSpec
from salvage.runner import consume_topic, record_topics, replay_log, run_flow
from tests.flowkit import jsonl, run_file_flow, sim_log
from tests.helpers import kafka_settings

WIDE = {"reorder_tolerance_seconds": 3600.0}


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return sim_log(tmp_path_factory.mktemp("replay"), orders=300, seed=21)


def _raw_lines(path: Path) -> list[bytes]:
    return [x for x in path.read_bytes().splitlines() if x.strip()]


def test_gzip_is_detected_by_content_and_reads_the_same_records(log, tmp_path):
    gz = tmp_path / "events.log"  # no telling suffix: detection is by magic bytes
    gz.write_bytes(gzip.compress(log.read_bytes() + b"\n\n"))
    assert detect_format(gz) == "jsonl.gz" and detect_format(log) == "jsonl"
    assert list(iter_records(gz)) == list(iter_records(log)) == _raw_lines(log)


def test_parquet_event_tables_and_raw_tables(log, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raws = _raw_lines(log)
    docs = [json.loads(x) for x in raws]
    # a table of events (one column per field, nulls where an event type lacks a field)
    table = pa.Table.from_struct_array(pa.array(docs))  # schema: the union of all fields
    pq.write_table(table, tmp_path / "events.parquet")
    got = list(iter_records(tmp_path / "events.parquet"))
    assert len(got) == len(raws)
    for a, b in zip(got, raws, strict=True):
        assert EVENT_ADAPTER.validate_json(a) == EVENT_ADAPTER.validate_json(b)
    # a table of raw records: bytes kept as they are (garbage included)
    raw_table = pa.table({"raw": pa.array([*raws[:50], b"\xff not json"], type=pa.binary())})
    pq.write_table(raw_table, tmp_path / "raw.parquet")
    assert list(iter_records(tmp_path / "raw.parquet")) == [*raws[:50], b"\xff not json"]
    # file mode reads only JSONL; the replay path reads Parquet: same triggers after a round trip
    back = tmp_path / "back.jsonl"
    back.write_bytes(b"\n".join(got) + b"\n")
    a = run_file_flow([log], tmp_path / "a", **WIDE)["interventions"]
    b = run_file_flow([back], tmp_path / "b", **WIDE)["interventions"]
    assert a == b and a


def test_event_time_and_window_parsing():
    assert event_time_us(b'{"occurred_at": "1970-01-01T00:00:01Z"}') == 1_000_000
    assert event_time_us(b'{"occurred_at": "1970-01-01T00:00:01"}') is None  # no zone
    assert event_time_us(b"[1, 2]") is None
    assert event_time_us(b"\xff") is None
    assert parse_time("2026-03-02T10:00:00+01:00") == parse_time("2026-03-02T09:00:00Z")
    with pytest.raises(ValueError):
        parse_time("2026-03-02T10:00:00")


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.now += s


def test_pacer_follows_event_time_and_caps_the_rate():
    clock = _FakeClock()
    pacer = Pacer(speed=60, clock=clock, sleep=clock.sleep)
    minute = 60_000_000
    for t in (0, minute, minute, 3 * minute, 2 * minute, None, 4 * minute):
        pacer.wait(t)
    # one event-time minute = one wall second; a late record (2 min after 3) and an untimed one
    # go at once
    assert clock.slept == [1.0, 2.0, 1.0]
    clock = _FakeClock()
    pacer = Pacer(rate=4, clock=clock, sleep=clock.sleep)
    for _ in range(9):
        pacer.wait(None)
    assert clock.now == pytest.approx(102.0)  # 9 records at 4/s: the 9th at +2 s
    with pytest.raises(ValueError):
        Pacer(speed=0)


def _settings(bootstrap: str, suffix: str) -> Settings:
    return kafka_settings(bootstrap, suffix, **WIDE)


@pytest.mark.integration
def test_replay_twice_then_kafka_mode_equals_file_mode_and_record_round_trips(
    kafka_broker, log, tmp_path, unique_name, monkeypatch
):
    settings = _settings(kafka_broker.bootstrap, unique_name("rp"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    gz = tmp_path / "events.jsonl.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    # through the CLI, as a data engineer would, with a gzip'd log
    for key, value in settings.topics.model_dump().items():
        monkeypatch.setenv(f"SALVAGE_TOPIC_{key.upper()}", str(value))
    result = CliRunner().invoke(
        app, ["replay", str(gz), "--max", "--kafka-bootstrap", kafka_broker.bootstrap]
    )
    assert result.exit_code == 0, result.output
    n = len(_raw_lines(log))
    assert f"published {n:,} messages" in result.output
    # publishing the same log again is harmless: same keys, same event ids (dropped as duplicates)
    again = replay_log(settings, log)
    assert again.published == n

    run_flow(FlowSpec(settings, to_end=True, case_store=False))
    got = tmp_path / "interventions.jsonl"
    consume_topic(settings, settings.topics.interventions, got, group=unique_name("g"))
    expected = run_file_flow([log], tmp_path / "file", **WIDE)["interventions"]
    # identical triggers, byte for byte (the topic's partitions interleave them on reading)
    assert sorted(got.read_bytes().splitlines()) == sorted(expected.splitlines())
    assert len(jsonl(expected)) > 0

    recorded = tmp_path / "recorded.jsonl"
    written, skipped = record_topics(settings, recorded)
    assert (written, skipped) == (2 * n, 0)
    # each record twice (published twice): the recorded log runs to the very same triggers
    assert sorted(_raw_lines(recorded)) == sorted(_raw_lines(log) * 2)
    rerun = run_file_flow([recorded], tmp_path / "rec", **WIDE)
    assert rerun["interventions"] == expected


@pytest.mark.integration
def test_replay_time_window_and_rate(kafka_broker, log, tmp_path, unique_name):
    settings = _settings(kafka_broker.bootstrap, unique_name("rw"))
    ensure_topics(settings.kafka.as_librdkafka_dict(), list(settings.topics.inputs().values()), 3)
    lines = _raw_lines(log)
    times = sorted(t for t in (event_time_us(x) for x in lines) if t is not None)
    lo, hi = times[len(times) // 4], times[len(times) // 2]
    garbage = tmp_path / "with-garbage.jsonl"
    garbage.write_bytes(b"\n".join([b"not json", *lines]) + b"\n")
    stats = replay_log(settings, garbage, t_from=lo, t_to=hi, rate=50_000)
    inside = sum(1 for x in lines if lo <= (event_time_us(x) or 0) < hi)
    assert stats.published == inside + 1  # the untimed garbage record is always published
    assert stats.untimed == 1 and stats.skipped == len(lines) - inside
    assert stats.published / stats.seconds <= 50_000 * 1.05
