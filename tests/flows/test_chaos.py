"""Issue 12 chaos test: ``salvage run --follow`` on the real embedded broker, input published in
bursts with quiet spells between them, the process SIGKILLed at (seeded) random points and resumed
from its ``--recovery-dir``, hostile messages mixed in (oversized, a conflicting duplicate, an event
dated far ahead of its stream). Compared with file mode on the same valid events: no trigger lost,
none extra, a trigger repeated only as the very same trigger, and no valid event lost as
``unknown_order``. Bounded: every wait has a deadline, the whole test takes well under 2 minutes."""

from __future__ import annotations

import json
import random
import signal
import time
from datetime import datetime, timedelta

import pytest
from confluent_kafka import Consumer

from salvage.config import Settings
from salvage.connectors.broker import ensure_topics
from salvage.runner import publish_log
from tests.flowkit import jsonl, run_file_flow, sim_log
from tests.helpers import read_to_end, topic_reader

pytestmark = pytest.mark.integration

SEED = 12


def _t(raw: bytes) -> datetime:
    return datetime.fromisoformat(json.loads(raw)["occurred_at"].replace("Z", "+00:00"))


def _hostile(lines: list[bytes], rng: random.Random) -> tuple[list[bytes], set[bytes]]:
    """The log with three hostile records inserted; returns (all lines, the hostile ones)."""
    scans = [i for i, x in enumerate(lines) if b'"carrier_scan"' in x]
    a, b, c = sorted(rng.sample(scans[len(scans) // 4 : 3 * len(scans) // 4], 3))
    big = json.loads(lines[a])
    big["event_id"], big["note"] = "chaos-big", "x" * 70_000
    fake = json.loads(lines[b])
    fake["scan"] = "lost" if fake.get("scan") != "lost" else "delivered"  # same id, other payload
    # a second later: the original is the first in event-time order, the copy kept out whatever
    # the copies' digests (at equal times the digest orders them: which one is kept is then
    # deterministic, but not necessarily the original, which file mode's log has alone)
    fake["occurred_at"] = (_t(lines[b]) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    ahead = json.loads(lines[c])
    ahead["event_id"] = "chaos-ahead"
    ahead["occurred_at"] = (_t(lines[c]) + timedelta(hours=20)).isoformat().replace("+00:00", "Z")
    extra = {a: big, b: fake, c: ahead}
    out: list[bytes] = []
    hostile: set[bytes] = set()
    for i, x in enumerate(lines):
        out.append(x)
        if i in extra:
            raw = json.dumps(extra[i]).encode() + b"\n"
            hostile.add(raw)
            out.append(raw)
    return out, hostile


_reader = topic_reader


def _drain(consumer: Consumer, into: list[dict], quiet_s: float = 0.2) -> list[dict]:
    while True:
        msgs = consumer.consume(1000, quiet_s)
        if not msgs:
            return into
        into += [json.loads(m.value()) for m in msgs if m.error() is None]


def test_chaos_follow_with_pauses_kills_and_hostile_input_equals_file_mode(
    kafka_broker, tmp_path, unique_name, salvage_cli
):
    rng = random.Random(SEED)
    log = sim_log(tmp_path, orders=400, seed=9)
    valid = log.read_bytes().splitlines(keepends=True)
    lines, hostile = _hostile(valid, rng)
    expected = {
        t["trigger_id"] for t in jsonl(run_file_flow([log], tmp_path / "file")["interventions"])
    }

    suffix = unique_name("chaos")
    topics = {f"SALVAGE_TOPIC_{s.upper()}": f"{s}-{suffix}" for s in Settings().topics.inputs()}
    topics |= {
        "SALVAGE_TOPIC_INTERVENTIONS": f"interventions-{suffix}",
        "SALVAGE_TOPIC_LANE_ALERTS": f"lane-alerts-{suffix}",
        "SALVAGE_TOPIC_DEAD_LETTERS": f"dead-letters-{suffix}",
        "SALVAGE_TOPIC_PARTITIONS": "3",
    }
    settings = Settings(
        kafka_bootstrap=kafka_broker.bootstrap,
        **{k.removeprefix("SALVAGE_").lower(): v for k, v in topics.items()},
    )
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    # default idle timeout (0.5 s): on a loaded 2-core CI machine a partition's fetch shows a
    # burst up to 1.5 s after the others'; the wake-up is settled by fresh end-offset queries, not
    # by that timer (with the timer alone this needed 1.5 s: 1 failure in 3 CI runs at 0.5 s)
    env = {**topics, "SALVAGE_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    args = ["run", "--follow", "--shards", "4", "--redis-url", "", "--no-summary"]
    args += ["--recovery-dir", str(tmp_path / "db"), "--snapshot-interval", "0.2"]

    # the log in three bursts; quiet spells between them; kills at random points
    cuts = sorted(rng.sample(range(len(lines) // 5, 4 * len(lines) // 5), 2))
    bursts = [lines[: cuts[0]], lines[cuts[0] : cuts[1]], lines[cuts[1] :]]
    triggers: list[dict] = []
    reader = _reader(settings, settings.topics.interventions)
    proc = salvage_cli(*args, env=env)
    try:
        for n, burst in enumerate(bursts):
            if n:
                time.sleep(rng.uniform(1.0, 2.5))  # quiet: every partition caught up and idle
            part = tmp_path / f"burst{n}.jsonl"
            part.write_bytes(b"".join(burst))
            publish_log(settings, part)
            if n < len(bursts) - 1:  # SIGKILL somewhere while (or after) it is processed
                time.sleep(rng.uniform(0.3, 2.0))
                assert proc.poll() is None, proc.err_path.read_text()
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                proc = salvage_cli(*args, env=env)
        # input quiet from here: the trigger set must complete (bounded wait)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _drain(reader, triggers)
            if {t["trigger_id"] for t in triggers} >= expected:
                break
            assert proc.poll() is None, proc.err_path.read_text()
        time.sleep(2.0)  # quiet for 2 s: nothing more may come
        _drain(reader, triggers, 0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.err_path.read_text()
    finally:
        reader.close()

    by_id: dict[str, dict] = {}
    for t in triggers:
        assert by_id.setdefault(t["trigger_id"], t) == t  # a repeat is the very same trigger
    if set(by_id) != expected:  # what differs, for the failure message
        file_by_id = {
            t["trigger_id"]: t
            for t in jsonl((tmp_path / "file" / "interventions.jsonl").read_bytes())
        }
        (tmp_path / "diff.json").write_text(
            json.dumps(
                {
                    "missing": [file_by_id[i] for i in expected - set(by_id)],
                    "extra": [by_id[i] for i in set(by_id) - expected],
                },
                indent=1,
            )
        )
    assert set(by_id) == expected, tmp_path / "diff.json"  # none lost, none extra

    letters = read_to_end(settings, settings.topics.dead_letters)
    kinds = {d["kind"] for d in letters}
    assert "unknown_order" not in kinds
    assert {"too_large", "inconsistent", "bad_timestamp"} <= kinds
    ids = {(d["kind"], d.get("event_id")) for d in letters}
    assert ("bad_timestamp", "chaos-ahead") in ids
    assert len(hostile) == 3
