"""Flow tests: the whole dataflow in file mode through bytewax.testing, 1 and 2 workers."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.flowkit import jsonl, run_file_flow, sim_log

WIDE = {"reorder_tolerance_seconds": 3600.0}  # wider than any disorder the tests introduce


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return sim_log(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def baseline(log, tmp_path_factory) -> dict[str, bytes]:
    return run_file_flow([log], tmp_path_factory.mktemp("base"), **WIDE)


def _metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_flow_emits_every_action_with_valid_triggers(baseline):
    triggers = jsonl(baseline["interventions"])
    actions = Counter(t["action"] for t in triggers)
    assert set(actions) == {
        "proactive_reassurance",
        "delay_intervention",
        "exchange_first_offer",
        "product_guidance",
        "human_review",
    }
    assert len({t["trigger_id"] for t in triggers}) == len(triggers)
    for t in triggers:
        assert t["reason_codes"], t
        assert t["expires_at"] > t["decided_at"]
        # which scorer drove it: the rule baseline, or promoted model versions
        assert t["model_version"] == "rules-v1" or t["model_version"].startswith("recoverability:")
        assert not {"name", "email", "address"} & set(t)
    # decided in event-time order: the output stage totally orders triggers
    assert [t["decided_at"] for t in triggers] == sorted(t["decided_at"] for t in triggers)


def test_same_input_twice_is_byte_identical(log, baseline, tmp_path):
    again = run_file_flow([log], tmp_path, **WIDE)
    assert again["interventions"] == baseline["interventions"]
    assert again["lane_alerts"] == baseline["lane_alerts"]


def test_two_workers_give_the_same_bytes(log, baseline, tmp_path):
    two = run_file_flow([log], tmp_path, workers=2, **WIDE)
    assert two["interventions"] == baseline["interventions"]
    assert two["lane_alerts"] == baseline["lane_alerts"]
    # the uplift's inputs too (ITT assignments and assigned orders' outcomes)
    assert two["assignments"] == baseline["assignments"] and baseline["assignments"]
    assert two["outcomes"] == baseline["outcomes"]
    assert two["orders"] == baseline["orders"] and baseline["orders"]  # repeat orders' input


def _intent_samples() -> dict[str, float]:
    out = {f"inferred:{k[0][1]}": v for k, v in _samples("salvage_intents_inferred_total").items()}
    for name in ("salvage_intent_accuracy", "salvage_intent_coverage"):
        out[name] = _metric(name, shard="0")
    return out


def test_shard_count_changes_nothing_with_intent_inference_on(log, tmp_path):
    """One intent classifier per deployment (the intent stage), fed in event-time order: 1 or 8
    case shards give the same inferred intents (counts per intent), the same delivered accuracy
    and coverage, and byte-identical outputs (triggers depend on the inferred intents)."""
    runs = {}
    for shards in (1, 8):
        before = _intent_samples()
        out = run_file_flow([log], tmp_path / str(shards), shards=shards, **WIDE)
        after = _intent_samples()
        inferred = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("inferred:")}
        gauges = {k: after[k] for k in after if not k.startswith("inferred:")}
        model_events = (tmp_path / str(shards) / "model_events.jsonl").read_bytes()
        runs[shards] = (out, model_events, inferred, gauges)
    assert runs[1] == runs[8]
    _, _, inferred, gauges = runs[8]
    assert sum(inferred.values()) > 10 and sum(
        v for k, v in inferred.items() if k != "inferred:other"
    )
    assert 0.5 < gauges["salvage_intent_accuracy"] <= 1.0
    assert 0.3 < gauges["salvage_intent_coverage"] <= 1.0


def test_split_partitions_interleave_to_the_same_result(log, baseline, tmp_path):
    """Orders+returns in one file, deliveries+support in another: two source partitions."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with log.open("rb") as src, a.open("wb") as fa, b.open("wb") as fb:
        for raw in src:
            kind = json.loads(raw)["event_type"]
            (fb if kind in ("carrier_scan", "support_contact") else fa).write(raw)
    for workers in (1, 2):
        out = run_file_flow([a, b], tmp_path / f"w{workers}", workers=workers, **WIDE)
        assert out["interventions"] == baseline["interventions"]


def test_shuffling_within_tolerance_gives_the_same_triggers(log, baseline, tmp_path):
    rng = random.Random(11)
    lines = log.read_bytes().splitlines(keepends=True)

    def jittered(raw: bytes) -> datetime:
        t = datetime.fromisoformat(json.loads(raw)["occurred_at"].replace("Z", "+00:00"))
        return t + timedelta(minutes=rng.uniform(0, 20))

    keyed = sorted(((jittered(x), i, x) for i, x in enumerate(lines)))
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_bytes(b"".join(x for _, _, x in keyed))
    assert shuffled.read_bytes() != log.read_bytes()
    out = run_file_flow([shuffled], tmp_path / "out", **WIDE)
    assert out["interventions"] == baseline["interventions"]
    assert out["lane_alerts"] == baseline["lane_alerts"]


def test_duplicates_are_dropped_and_counted(log, baseline, tmp_path):
    lines = log.read_bytes().splitlines(keepends=True)
    dup_at = set(random.Random(5).sample(range(len(lines)), 40))
    doubled = tmp_path / "dups.jsonl"
    with doubled.open("wb") as f:
        for i, x in enumerate(lines):
            f.write(x)
            if i in dup_at:
                f.write(x)
    before = _metric("salvage_duplicate_events_total")
    out = run_file_flow([doubled], tmp_path / "out", **WIDE)
    assert out["interventions"] == baseline["interventions"]
    assert _metric("salvage_duplicate_events_total") - before == 40
    assert out["dead_letters"] == b""


CORRUPT = [
    (b"this is not json", "invalid_json"),
    (
        b'{"event_type": "carrier_scan", "order_id": "O1", "schema_version": 1, '
        b'"occurred_at": "2026-03-02T10:00:00Z", "scan": "delivered", "courier": "x"}',
        "missing_field",
    ),
    (
        b'{"event_id": "bad-ts", "event_type": "support_contact", "order_id": "O00000001", '
        b'"schema_version": 1, "occurred_at": "2026-03-02 10:00", "channel": "chat"}',
        "bad_timestamp",
    ),
    (
        b'{"event_id": "alien", "event_type": "abducted_by_aliens", "order_id": "O00000001", '
        b'"schema_version": 1, "occurred_at": "2026-03-02T10:00:00Z"}',
        "unknown_event_type",
    ),
    (
        b'{"event_id": 42, "event_type": "support_contact", "order_id": "O00000001", '
        b'"schema_version": 1, "occurred_at": "2026-03-02T10:00:00Z", "channel": "chat"}',
        "wrong_type",
    ),
    (b'{"event_id": "\xff\xfe", "event_type": "support_contact"}', "invalid_utf8"),
    (b"[]", "not_an_object"),
]


def test_each_corrupted_line_is_exactly_one_dead_letter(log, baseline, tmp_path):
    lines = log.read_bytes().splitlines(keepends=True)
    positions = sorted(random.Random(2).sample(range(1, len(lines)), len(CORRUPT)))
    corrupted = tmp_path / "corrupt.jsonl"
    expected: dict[int, str] = {}
    with corrupted.open("wb") as f:
        line_no = 0
        bad = iter(CORRUPT)
        for i, x in enumerate(lines):
            if positions and i == positions[0]:
                positions.pop(0)
                value, kind = next(bad)
                f.write(value + b"\n")
                line_no += 1
                expected[line_no] = kind
            f.write(x)
            line_no += 1
    out = run_file_flow([corrupted], tmp_path / "out", **WIDE)
    letters = jsonl(out["dead_letters"])
    assert {d["offset"]: d["kind"] for d in letters} == expected
    assert all(d["message"] and d["raw_b64"] for d in letters)
    # every valid event still processed: the triggers are those of the clean log
    assert out["interventions"] == baseline["interventions"]


def _samples(name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for m in REGISTRY.collect()
        for s in m.samples
        if s.name == name
    }


def test_cases_close_in_event_time_and_state_is_evicted(log, tmp_path):
    """Closed cases leave state; what is still open at the end of the log stays open (the end
    of a replayed log is not the end of time), and only those whose deadline lies beyond it."""
    docs = [json.loads(x) for x in log.read_bytes().splitlines()]
    placed = {d["order_id"] for d in docs if d["event_type"] == "order_placed"}
    closed_before = sum(_samples("salvage_cases_closed_total").values())
    run_file_flow([log], tmp_path, **WIDE)
    closed = sum(_samples("salvage_cases_closed_total").values()) - closed_before
    still_open = sum(_samples("salvage_open_cases").values())
    assert closed + still_open == len(placed)
    assert closed > 0.9 * len(placed)


def test_dead_letters_from_the_case_stage_are_counted(log, tmp_path):
    """Events for an order never placed are dead letters, and counted like parse failures."""
    lines = log.read_bytes().splitlines(keepends=True)
    at = len(lines) // 3
    when = json.loads(lines[at])["occurred_at"]  # in time order, so it is not too late
    orphan = json.dumps(
        {
            "event_id": "orphan-1",
            "event_type": "carrier_scan",
            "order_id": "NEVER-PLACED",
            "schema_version": 1,
            "occurred_at": when,
            "scan": "delayed",
            "courier": "dhl",
        }
    )
    with_orphan = tmp_path / "orphan.jsonl"
    with_orphan.write_bytes(
        b"".join(lines[: at + 1]) + orphan.encode() + b"\n" + b"".join(lines[at + 1 :])
    )
    before = _metric("salvage_dead_letters_total", kind="unknown_order")
    out = run_file_flow([with_orphan], tmp_path / "out", **WIDE)
    letters = jsonl(out["dead_letters"])
    assert [(d["kind"], d["order_id"]) for d in letters] == [("unknown_order", "NEVER-PLACED")]
    assert _metric("salvage_dead_letters_total", kind="unknown_order") - before == 1
