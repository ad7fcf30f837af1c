"""Hostile input, duplicates and late data (issue 6, items 3 and 4).

* a corpus of nasty records: each is a dead letter of a precise kind, or an accepted event whose
  interpretation is stated here;
* the same corpus salted into a real log: exactly one dead letter per bad record, the flow goes on
  and the triggers of the clean log are unchanged;
* duplicates and lateness with the *default* settings (60 s tolerance, 7 days max lateness);
* hypothesis fuzzing of the stateful stages with mutated, shuffled, duplicated real stories.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from salvage.connectors.outputs import DeadLetter, DeadLetterKind
from salvage.connectors.parse import MAX_EVENT_BYTES, RawRecord, parse
from salvage.features.eventtime import END, to_us
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, StageConfig
from tests.flowkit import jsonl, run_file_flow, sim_log
from tests.helpers import event, line, order_placed

GOOD = order_placed("O-hostile-1", "2026-03-02T10:00:00Z")


def _with(**kw) -> bytes:
    return line({**json.loads(line(GOOD)), **kw})


def _with_line(**kw) -> bytes:
    doc = json.loads(line(GOOD))
    doc["lines"][0].update(kw)
    return line(doc)


_PRICE = b'"unit_price": 80.0'
CORPUS: list[tuple[str, bytes, str]] = [
    ("invalid utf-8", b'{"event_id": "\xc3\x28", "event_type": "order_placed"}', "invalid_utf8"),
    ("truncated json", line(GOOD)[:-17], "invalid_json"),
    ("json array", b"[1, 2, 3]", "not_an_object"),
    ("json string", b'"order_placed"', "not_an_object"),
    ("json number", b"42", "not_an_object"),
    ("json null", b"null", "not_an_object"),
    ("empty object", b"{}", "missing_field"),
    ("deeply nested object", b'{"a":' * 3000 + b"1" + b"}" * 3000, "invalid_json"),
    ("deeply nested array, huge", b"[" * 40000 + b"]" * 40000, "too_large"),
    ("huge payload", _with(padding="x" * MAX_EVENT_BYTES), "too_large"),
    ("NaN amount", line(GOOD).replace(_PRICE, b'"unit_price": NaN'), "invalid_value"),
    ("infinite amount", line(GOOD).replace(_PRICE, b'"unit_price": Infinity'), "invalid_value"),
    ("negative amount", _with_line(unit_price=-5.0), "invalid_value"),
    ("absurd amount", _with_line(unit_price=1e300), "invalid_value"),
    ("absurd quantity", _with_line(qty=10**9), "invalid_value"),
    ("zero quantity", _with_line(qty=0), "invalid_value"),
    ("quantity as a float", _with_line(qty=1.5), "wrong_type"),
    ("quantity as a bool", _with_line(qty=True), "wrong_type"),
    ("timestamp without timezone", _with(occurred_at="2026-03-02T10:00:00"), "bad_timestamp"),
    ("timestamp centuries away", _with(occurred_at="2526-03-02T10:00:00Z"), "bad_timestamp"),
    ("timestamp centuries ago", _with(occurred_at="1526-03-02T10:00:00Z"), "bad_timestamp"),
    ("unparsable timestamp", _with(occurred_at="last tuesday"), "bad_timestamp"),
    # valid ISO 8601, but past datetime.max/min once in UTC (astimezone overflows)
    (
        "timestamp overflowing in UTC",
        _with(occurred_at="9999-12-31T23:00:00-23:00"),
        "bad_timestamp",
    ),
    (
        "timestamp underflowing in UTC",
        _with(occurred_at="0001-01-01T00:00:00+23:59"),
        "bad_timestamp",
    ),
    (
        "promise overflowing in UTC",
        _with(promised_delivery_at="9999-12-31T23:00:00-23:00"),
        "bad_timestamp",
    ),
    ("unknown event type", _with(event_type="teleported"), "unknown_event_type"),
    ("unknown schema version", _with(schema_version=2), "unsupported_schema_version"),
    ("id of the wrong type", _with(order_id=12345), "wrong_type"),
    ("id as a list", _with(event_id=["a"]), "wrong_type"),
    ("empty id", _with(event_id=""), "invalid_value"),
    ("absurdly long id", _with(order_id="O" * 5000), "invalid_value"),
    (
        "unknown enum value",
        line(
            event(
                "s-enum",
                "carrier_scan",
                "O-hostile-1",
                "2026-03-03T10:00:00Z",
                scan="teleported",
                courier="dhl",
            )
        ),
        "invalid_value",
    ),
    ("control characters in a label", _with(channel="w\u0000eb"), "invalid_value"),
    ("byte order mark", b"\xef\xbb\xbf" + line(GOOD), "invalid_json"),
    ("lone surrogate escape", line(GOOD).replace(b'"web"', b'"\\ud800"'), "invalid_json"),
    # parsed while its dead letter is built, so its free text can be dropped: each of these once
    # raised there (the stack, a surrogate that cannot be re-encoded) and stopped the flow
    ("nested arrays, deep enough to parse", b"[" * 500 + b"]" * 500, "invalid_json"),
    ("nested objects, deep enough to parse", b'{"a":' * 300 + b"1" + b"}" * 300, "invalid_json"),
    (
        "lone surrogate beside free text",
        _with(notes="call me", channel="\ud800"),
        "invalid_json",
    ),
]


@pytest.mark.parametrize(("name", "value", "kind"), CORPUS, ids=[c[0] for c in CORPUS])
def test_each_nasty_record_is_a_precise_dead_letter(name, value, kind):
    result = parse(RawRecord("corpus", 0, 1, value))
    assert isinstance(result, DeadLetter), f"{name}: accepted {result!r}"
    assert result.kind == DeadLetterKind(kind), f"{name}: {result.kind} {result.message}"
    assert result.message and len(result.message) <= 500
    assert len(result.raw_b64) <= 4 * (len(value) // 3 + 1)  # the bytes, nothing else


def test_hostile_nesting_gives_a_dead_letter_deep_in_a_stack():
    """The dataflow calls parse deep in Bytewax's stack: nesting that json.loads accepts must not
    exhaust what is left of it while the dead letter is built (no bytes kept: not redacted)."""

    def at_depth(n: int, value: bytes):
        return at_depth(n - 1, value) if n else parse(RawRecord("orders.jsonl", 0, 1, value))

    for value in (b"[" * 900 + b"]" * 900, b'{"a":' * 600 + b"1" + b"}" * 600):
        dl = at_depth(400, value)
        assert isinstance(dl, DeadLetter) and dl.kind == DeadLetterKind.INVALID_JSON
        assert dl.raw_b64 == "" and dl.raw_redacted and dl.raw_len == len(value)


def test_documented_interpretations_of_odd_but_valid_records():
    # unknown extra fields are ignored; an unknown *free-text* label (order channel) is kept as is
    ev = parse(RawRecord("c", 0, 1, _with(gift_wrap=True, channel="telepathy")))
    assert not isinstance(ev, DeadLetter) and ev.channel == "telepathy"
    # an offset is normalised to UTC
    ev = parse(RawRecord("c", 0, 1, _with(occurred_at="2026-03-02T12:00:00+02:00")))
    assert ev.occurred_at.isoformat() == "2026-03-02T10:00:00+00:00"
    # a refund larger than the order is accepted as issued (shipping, goodwill): see the flow test
    big = event(
        "r-big",
        "refund_issued",
        "O-hostile-1",
        "2026-03-09T10:00:00Z",
        amount=5000.0,
        currency="EUR",
    )
    assert not isinstance(parse(RawRecord("c", 0, 1, line(big))), DeadLetter)


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return sim_log(tmp_path_factory.mktemp("hostile"), orders=400, seed=13)


@pytest.fixture(scope="module")
def clean(log, tmp_path_factory) -> dict[str, bytes]:
    return run_file_flow([log], tmp_path_factory.mktemp("clean"))  # default tolerance (60 s)


def _metric(name: str, **labels: str) -> float:
    return sum(
        s.value
        for m in REGISTRY.collect()
        for s in m.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_corpus_salted_into_a_real_log_gives_one_dead_letter_each(log, clean, tmp_path):
    lines = log.read_bytes().splitlines()
    rng = random.Random(6)
    at = sorted(rng.sample(range(1, len(lines)), len(CORPUS)))
    salted, expected = [], {}
    bad = iter(CORPUS)
    for i, raw in enumerate(lines):
        if at and i == at[0]:
            at.pop(0)
            _, value, kind = next(bad)
            salted.append(value.replace(b"\n", b" "))
            expected[len(salted)] = kind
        salted.append(raw)
    path = tmp_path / "salted.jsonl"
    path.write_bytes(b"\n".join(salted) + b"\n")
    out = run_file_flow([path], tmp_path / "out")
    letters = jsonl(out["dead_letters"])
    assert {d["offset"]: d["kind"] for d in letters} == expected
    assert out["interventions"] == clean["interventions"]


def test_events_for_unknown_orders_and_outsized_refunds(log, clean, tmp_path):
    docs = [json.loads(x) for x in log.read_bytes().splitlines()]
    last = docs[-1]["occurred_at"]
    placed = order_placed("O-twice", last)
    extra = [
        event("ghost-1", "order_shipped", "O-never-placed", last, courier="dhl"),
        placed,
        {**placed, "event_id": "second-placement"},  # a second order_placed for an open order
    ]
    path = tmp_path / "extra.jsonl"
    path.write_bytes(log.read_bytes() + b"".join(line(d) + b"\n" for d in extra))
    out = run_file_flow([path], tmp_path / "out")
    kinds = sorted(d["kind"] for d in jsonl(out["dead_letters"]))
    assert kinds == ["inconsistent", "unknown_order"]


def test_refund_larger_than_the_order_is_applied_and_closes_the_case(tmp_path):
    placed = order_placed("O-refund", "2026-03-02T10:00:00Z", price=80.0)
    refund = event(
        "O-refund-r",
        "refund_issued",
        "O-refund",
        "2026-03-05T10:00:00Z",
        amount=900.0,
        currency="EUR",
    )
    later = order_placed("O-later", "2026-03-06T10:00:00Z", customer="c2")
    path = tmp_path / "refund.jsonl"
    path.write_bytes(b"".join(line(d) + b"\n" for d in (placed, refund, later)))
    before = _metric("salvage_cases_closed_total", outcome="refund")
    out = run_file_flow([path], tmp_path / "out")
    assert out["dead_letters"] == b""
    assert _metric("salvage_cases_closed_total", outcome="refund") == before + 1


# ----------------------------------------------------------------------------- duplicates, lateness


def _t(raw: bytes) -> datetime:
    return datetime.fromisoformat(json.loads(raw)["occurred_at"].replace("Z", "+00:00"))


def test_duplicates_with_default_settings_and_two_workers(log, clean, tmp_path):
    lines = log.read_bytes().splitlines(keepends=True)
    rng = random.Random(3)
    dup = set(rng.sample(range(len(lines)), 60))
    out_lines: list[bytes] = []
    for i, raw in enumerate(lines):
        out_lines.append(raw)
        if i in dup:
            # the duplicate arrives a little later in the stream (within the tolerance)
            out_lines.insert(min(len(out_lines), len(out_lines) + rng.randint(0, 3)), raw)
    path = tmp_path / "dups.jsonl"
    path.write_bytes(b"".join(out_lines))
    before = _metric("salvage_duplicate_events_total")
    out = run_file_flow([path], tmp_path / "out", workers=2)
    assert out["interventions"] == clean["interventions"]
    assert _metric("salvage_duplicate_events_total") - before == 60
    assert out["dead_letters"] == b""


def test_disorder_within_the_default_tolerance_changes_nothing(log, clean, tmp_path):
    lines = log.read_bytes().splitlines(keepends=True)
    rng = random.Random(8)
    keyed = sorted(
        (_t(x) + timedelta(seconds=rng.uniform(0, 50)), i, x) for i, x in enumerate(lines)
    )
    path = tmp_path / "jitter.jsonl"
    path.write_bytes(b"".join(x for _, _, x in keyed))
    assert path.read_bytes() != log.read_bytes()
    out = run_file_flow([path], tmp_path / "out")
    assert out["interventions"] == clean["interventions"]
    assert out["lane_alerts"] == clean["lane_alerts"]


def test_late_beyond_tolerance_is_counted_and_far_too_late_is_a_dead_letter(log, tmp_path):
    lines = log.read_bytes().splitlines(keepends=True)
    scans = [i for i, x in enumerate(lines) if b'"carrier_scan"' in x]
    rng = random.Random(4)
    pick = sorted(rng.sample(scans[: len(scans) // 2], 5))
    moved = set(pick)
    # five scans arrive ~2 days later than they should (late, not too late) ...
    head = [x for i, x in enumerate(lines) if i not in moved]
    t_of = {i: _t(lines[i]) for i in pick}
    out_lines: list[bytes] = []
    pending = sorted((t_of[i] + timedelta(days=2), i) for i in pick)
    for raw in head:
        while pending and _t(raw) >= pending[0][0]:
            out_lines.append(lines[pending.pop(0)[1]])
        out_lines.append(raw)
    out_lines += [lines[i] for _, i in pending]
    # ... and one event of the first day arrives at the very end (weeks behind: too late); a new
    # event id, as the same event again would be a duplicate (recognised before lateness)
    doc = json.loads(lines[1])
    doc["event_id"] += "-late"
    first_day = json.dumps(doc).encode() + b"\n"
    out_lines.append(first_day)
    path = tmp_path / "late.jsonl"
    path.write_bytes(b"".join(out_lines))
    late_before = _metric("salvage_late_events_total")
    out = run_file_flow([path], tmp_path / "out")
    letters = jsonl(out["dead_letters"])
    assert [d["kind"] for d in letters] == ["too_late"]
    assert letters[0]["event_id"] == json.loads(first_day)["event_id"]
    assert _metric("salvage_late_events_total") - late_before >= 5
    again = run_file_flow([path], tmp_path / "again")
    assert again == out  # the late rule is deterministic


def test_an_event_from_a_broken_future_clock_does_not_stall_its_partition(log, clean, tmp_path):
    """One scan dated 2099 in the middle of a real log: a ``bad_timestamp`` dead letter (it is
    past the wall clock by more than SALVAGE_MAX_FUTURE_SECONDS), and the events after it on the
    same partition are applied as if it had never been there (no ``too_late`` avalanche)."""
    lines = log.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"carrier_scan"' in x and i > len(lines) // 3)
    doc = json.loads(lines[i])
    doc["event_id"] = "from-2099"
    doc["occurred_at"] = "2099-01-01T00:00:00Z"
    path = tmp_path / "future.jsonl"
    path.write_bytes(b"".join([*lines[:i], json.dumps(doc).encode() + b"\n", *lines[i:]]))
    out = run_file_flow([path], tmp_path / "out")
    letters = jsonl(out["dead_letters"])
    assert [(d["kind"], d["event_id"]) for d in letters] == [("bad_timestamp", "from-2099")]
    assert "ahead of the wall clock" in letters[0]["message"]
    assert out["interventions"] == clean["interventions"]
    # the check is a setting: off, the partition's clock bound still rejects the record ...
    bound = run_file_flow([path], tmp_path / "bound", max_future_seconds=0)
    letters = jsonl(bound["dead_letters"])
    assert [(d["kind"], d["event_id"]) for d in letters] == [("bad_timestamp", "from-2099")]
    assert "SALVAGE_MAX_CLOCK_JUMP_SECONDS" in letters[0]["message"]
    assert bound["interventions"] == clean["interventions"]
    # ... and with both off the record is accepted and everything after it is late
    off = run_file_flow([path], tmp_path / "off", max_future_seconds=0, max_clock_jump_seconds=0)
    assert sum(d["kind"] == "too_late" for d in jsonl(off["dead_letters"])) > 100


@pytest.mark.parametrize("ahead", [timedelta(hours=20), timedelta(days=200)])
def test_one_event_far_ahead_of_its_partition_is_bad_timestamp_and_moves_nothing(
    log, clean, tmp_path, ahead
):
    """Issue 12: one valid-looking scan dated ahead of its stream (20 h: changed 48 triggers;
    a date in the past of the wall clock but long after the log: 10,084 too_late) is a
    ``bad_timestamp`` dead letter and the partition's clock does not move."""
    lines = log.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"carrier_scan"' in x and i > len(lines) // 3)
    doc = json.loads(lines[i])
    doc["event_id"] = "ahead"
    doc["occurred_at"] = (_t(lines[i]) + ahead).isoformat().replace("+00:00", "Z")
    path = tmp_path / "ahead.jsonl"
    path.write_bytes(b"".join([*lines[:i], json.dumps(doc).encode() + b"\n", *lines[i:]]))
    out = run_file_flow([path], tmp_path / "out")
    letters = jsonl(out["dead_letters"])
    assert [(d["kind"], d["event_id"]) for d in letters] == [("bad_timestamp", "ahead")]
    assert out["interventions"] == clean["interventions"]
    # without the bound the one event moves the clock: triggers change or events die too_late
    off = run_file_flow([path], tmp_path / "off", max_clock_jump_seconds=0)
    assert off["interventions"] != clean["interventions"] or jsonl(off["dead_letters"])


def test_a_quiet_gap_confirmed_by_the_next_events_is_not_rejected(log, clean, tmp_path):
    """A partition that is quiet for days and then carries on (a real log's weekend) moves its
    clock: the events after the gap confirm each other, none is dead-lettered, and the outputs
    equal a run without the bound."""
    lines = log.read_bytes().splitlines(keepends=True)
    cut = len(lines) // 2
    shifted = []
    for x in lines[cut:]:
        doc = json.loads(x)
        doc["occurred_at"] = (_t(x) + timedelta(days=3)).isoformat().replace("+00:00", "Z")
        shifted.append(json.dumps(doc).encode() + b"\n")
    path = tmp_path / "gap.jsonl"
    path.write_bytes(b"".join([*lines[:cut], *shifted]))
    out = run_file_flow([path], tmp_path / "out")
    assert out["dead_letters"] == b""
    off = run_file_flow([path], tmp_path / "off", max_clock_jump_seconds=0)
    assert out == off


@pytest.mark.parametrize(("kind", "head"), [("gzip", b"\x1f\x8b\x08\x00"), ("Parquet", b"PAR1")])
def test_file_mode_refuses_compressed_or_columnar_logs_with_a_clear_error(tmp_path, kind, head):
    from salvage.flows.sources import EventLogSource

    path = tmp_path / "log.bin"
    path.write_bytes(head + b"\x00" * 64)
    with pytest.raises(ValueError, match=f"is {kind}; file mode reads plain JSONL"):
        EventLogSource([path], 0, 0)


# ----------------------------------------------------------------------------- stage fuzzing

_STORIES: list[list[bytes]] = []


def _stories() -> list[list[bytes]]:
    if not _STORIES:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = sim_log(Path(d), orders=120, seed=17)
            by_order: dict[str, list[bytes]] = {}
            for raw in path.read_bytes().splitlines():
                by_order.setdefault(json.loads(raw)["order_id"], []).append(raw)
        _STORIES.extend(by_order.values())
    return _STORIES


_ALLOWED = {"unknown_order", "inconsistent"}


def _mutate(raw: bytes, shift_h: int, field_bomb: int) -> bytes:
    doc = json.loads(raw)
    t = datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00"))
    doc["occurred_at"] = (t + timedelta(hours=shift_h)).isoformat()
    if field_bomb == 1 and "amount" in doc:
        doc["amount"] = doc["amount"] * 1000
    if field_bomb == 2:
        doc["event_id"] = "same-id-for-all"
    return json.dumps(doc).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=6),
    ops=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(-96, 96), st.integers(0, 6)),
        max_size=30,
    ),
    seed=st.integers(0, 2**16),
)
def test_stages_survive_mutated_shuffled_duplicated_stories(picks, ops, seed):
    stories = _stories()
    raws = [r for p in picks for r in stories[p % len(stories)]]
    for idx, shift, bomb in ops:  # mutate: shift in time, duplicate, blow up amounts, clash ids
        i = idx % len(raws)
        raws.append(raws[i]) if bomb == 6 else raws.__setitem__(i, _mutate(raws[i], shift, bomb))
    random.Random(seed).shuffle(raws)
    cfg = StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("src",))
    cases = CaseStage(0, cfg)
    items: list[tuple] = []
    for n, raw in enumerate(raws):
        ev = parse(RawRecord("fuzz", 0, n, raw))
        if isinstance(ev, DeadLetter):  # a blown-up amount past the documented maximum
            assert ev.kind is DeadLetterKind.INVALID_VALUE, ev
            continue
        items.append(Event(to_us(ev.occurred_at), f"{ev.event_id}|{n}", ev))
    if not items:
        return
    max_t = max(i.t for i in items)
    half = len(items) // 2  # two batches: a watermark in the middle, then the end of input
    out = cases.on_batch([*items[:half], Tick("src", max_t - 86_400_000_000, max_t)])
    out += cases.on_batch([*items[half:], Tick("src", END, max_t)])
    for route, payload in out:
        if route == "dlq":
            assert payload.kind.value in _ALLOWED, payload
    # bounded state: at most one open case per order in the input, timers only for open cases
    orders = {json.loads(r)["order_id"] for r in raws}
    assert len(cases.cases) <= len(orders)
    assert set(cases.cases) | set(cases.tombstones) <= orders


def test_a_redelivered_event_of_a_closed_case_is_a_duplicate_not_a_dead_letter():
    """Producers retry and topics get re-published: an event the closed case already applied is
    counted as a duplicate; a *new* event for the closed order is still a dead letter."""
    story = next(s for s in _stories() if any(b'"refund_issued"' in r for r in s))
    events = [parse(RawRecord("s", 0, n, r)) for n, r in enumerate(story)]
    events.sort(key=lambda e: to_us(e.occurred_at))
    cfg = StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("src",))
    cases = CaseStage(0, cfg)
    items = [Event(to_us(e.occurred_at), f"{e.event_id}|{n}", e) for n, e in enumerate(events)]
    end = max(i.t for i in items) + 1
    cases.on_batch([*items, Tick("src", end, end)])
    order_id = events[0].order_id
    assert order_id in cases.tombstones and order_id not in cases.cases  # closed by the refund
    scan = next(e for e in events if e.event_type == "carrier_scan")
    fresh = scan.model_copy(update={"event_id": "never-seen-before"})
    dups = _metric("salvage_duplicate_events_total")
    out = cases.on_batch(
        [Event(end, "dup|1", scan), Event(end, "new|1", fresh), Tick("src", end + 1, end + 1)]
    )
    letters = [payload for route, payload in out if route == "dlq"]
    assert [(d.kind.value, d.event_id) for d in letters] == [("unknown_order", "never-seen-before")]
    assert _metric("salvage_duplicate_events_total") == dups + 1
