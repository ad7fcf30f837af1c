"""The simulated brand: contracts, determinism, ordering, and realism computed from its output."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salvage.connectors import simulator
from salvage.connectors.events import EVENT_ADAPTER, STREAM_OF, lane_of
from salvage.connectors.simulator import SCENARIOS, dumps, generate, write_log

N = 3000
SEED = 7
OUTCOME_EVENT = {
    "refund": "refund_issued",
    "chargeback": "chargeback_filed",
    "exchange": "exchange_completed",
    "store_credit": "store_credit_issued",
    "return_cancelled": "return_cancelled",
    "cancelled": "order_cancelled",
}
RETAINED = {"kept", "exchange", "store_credit", "return_cancelled"}


def _t(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


class Log:
    """One generated run, indexed the ways the tests need."""

    def __init__(self, scenario: str, orders: int = N, seed: int = SEED) -> None:
        self.items = list(generate(scenario, orders, seed))
        self.events = [obj for kind, obj in self.items if kind == "event"]
        self.truth = [obj for kind, obj in self.items if kind == "truth"]
        self.orders = {e["order_id"]: e for e in self.events if e["event_type"] == "order_placed"}
        self.by_order: dict[str, list[dict]] = defaultdict(list)
        for e in self.events:
            self.by_order[e["order_id"]].append(e)
        self.order_truth = {r["order_id"]: r for r in self.truth if r["type"] == "order"}
        self.incidents = [r for r in self.truth if r["type"] == "lane_incident"]

    def lane(self, order_id: str) -> str:
        o = self.orders[order_id]
        return lane_of(o["courier"], o["origin_region"], o["destination_region"])


_LOGS: dict[str, Log] = {}


def _log(scenario: str) -> Log:
    if scenario not in _LOGS:
        _LOGS[scenario] = Log(scenario)
    return _LOGS[scenario]


@pytest.fixture(scope="module", params=SCENARIOS)
def log(request: pytest.FixtureRequest) -> Log:
    return _log(request.param)


@pytest.fixture(scope="module")
def steady() -> Log:
    return _log("steady-state")


@pytest.fixture(scope="module")
def launch() -> Log:
    return _log("launch-week-backlog")


# ---------------------------------------------------------------- contracts


def test_every_event_validates_against_the_contract(log: Log) -> None:
    counts = Counter()
    for e in log.events:
        model = EVENT_ADAPTER.validate_json(dumps(e))
        assert model.event_type == e["event_type"]
        assert model.occurred_at.tzinfo is not None
        counts[e["event_type"]] += 1
    assert set(counts) <= set(STREAM_OF)
    # every kind of event the brand emits shows up in a few thousand orders (review verdicts come
    # from Salvage's own reviewers, not from the brand's systems)
    expected = set(STREAM_OF) - {"review_resolved"}
    assert set(counts) == expected, expected - set(counts)


def test_ids_versions_money_and_timestamps(log: Log) -> None:
    ids = [e["event_id"] for e in log.events]
    assert len(ids) == len(set(ids))
    for e in log.events:
        assert e["schema_version"] == 1
        assert e["occurred_at"].endswith("Z")
        for key in ("amount", "label_cost"):
            if key in e:
                assert round(e[key], 2) == e[key]
        for line in e.get("lines", ()):
            assert round(line["unit_price"], 2) == line["unit_price"]
            assert 0 < line["unit_cost"] < line["unit_price"]
            assert (line.get("size") is None) == line["sku_family"].startswith(
                ("beauty", "accessories", "home")
            )


def test_support_text_is_generic_and_some_intents_are_missing(log: Log) -> None:
    contacts = [e for e in log.events if e["event_type"] == "support_contact"]
    with_text = [e for e in contacts if "text" in e]
    assert len(with_text) > 100
    missing = sum("intent" not in e for e in with_text) / len(with_text)
    assert 0.08 < missing < 0.22
    assert all("intent" in e for e in contacts if "text" not in e)
    for e in with_text:  # no e-mail addresses, phone numbers, house numbers, names
        assert not re.search(r"[@\d]", e["text"]), e["text"]


# ---------------------------------------------------------------- determinism and ordering


def test_same_arguments_same_bytes_different_seed_different_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    ta, tb = tmp_path / "ta.jsonl", tmp_path / "tb.jsonl"
    counts_a = write_log("launch-week-backlog", 400, 3, a, ta)
    counts_b = write_log("launch-week-backlog", 400, 3, b, tb)
    write_log("launch-week-backlog", 400, 4, c)
    assert a.read_bytes() == b.read_bytes()
    assert ta.read_bytes() == tb.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert counts_a == counts_b
    lines = a.read_text().splitlines()
    assert counts_a["events"] == len(lines)
    assert counts_a["order_placed"] == 400
    assert sum(v for k, v in counts_a.items() if k != "events") == len(lines)
    # the file is exactly the canonical serialisation of generate()'s events
    expected = [
        json.dumps(obj, separators=(",", ":"), sort_keys=True)
        for kind, obj in generate("launch-week-backlog", 400, 3)
        if kind == "event"
    ]
    assert lines == expected


def _lateness(events: list[dict]) -> list[tuple[dict, float]]:
    """(event, seconds behind the latest occurred_at seen before it) for out-of-order lines."""
    out = []
    latest = float("-inf")
    for e in events:
        t = _t(e["occurred_at"])
        if t < latest:
            out.append((e, latest - t))
        latest = max(latest, t)
    return out


def test_event_time_order_except_documented_late_scans(log: Log) -> None:
    late = _lateness(log.events)
    assert late, "some carrier scans are recorded late"
    for e, behind in late:
        assert e["event_type"] == "carrier_scan"
        assert 0 < behind <= simulator.LATE_SCAN_MAX_MINUTES * 60
    scans = sum(e["event_type"] == "carrier_scan" for e in log.events)
    assert len(late) <= 3 * simulator.LATE_SCAN_PROB * scans + 10


def test_late_scans_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator, "LATE_SCAN_PROB", 0.0)
    events = [o for k, o in generate("steady-state", 300, 1) if k == "event"]
    assert _lateness(events) == []
    monkeypatch.setattr(simulator, "LATE_SCAN_PROB", 0.5)
    monkeypatch.setattr(simulator, "LATE_SCAN_MAX_MINUTES", 5)
    events = [o for k, o in generate("steady-state", 300, 1) if k == "event"]
    late = _lateness(events)
    assert len(late) > 100
    assert all(e["event_type"] == "carrier_scan" and s <= 300 for e, s in late)


def test_each_order_story_is_causal(log: Log) -> None:
    for oid, events in log.by_order.items():
        assert events[0]["event_type"] == "order_placed"
        placed = _t(events[0]["occurred_at"])
        delivered = [_t(e["occurred_at"]) for e in events if e.get("scan") == "delivered"]
        for e in events:
            assert _t(e["occurred_at"]) >= placed
            if e["event_type"].startswith("return_"):
                assert delivered and _t(e["occurred_at"]) > delivered[0], oid
        ranks = [
            _RETURN_RANK[e["event_type"]] for e in events if STREAM_OF[e["event_type"]] == "returns"
        ]
        assert ranks == sorted(ranks), (oid, [e["event_type"] for e in events])
        assert ranks.count(5) <= 1, oid  # one final outcome at most


_RETURN_RANK = {
    "return_requested": 0,
    "return_label_issued": 1,
    "return_in_transit": 2,
    "return_received": 3,
    "return_graded": 4,
    **dict.fromkeys(
        ("refund_issued", "exchange_completed", "store_credit_issued", "return_cancelled"), 5
    ),
    "chargeback_filed": 5,
}


# ---------------------------------------------------------------- truth


def test_truth_for_every_order_and_after_its_events(log: Log) -> None:
    assert set(log.order_truth) == set(log.orders)
    assert len(log.order_truth) == N
    position: dict[str, int] = {}
    for i, (kind, obj) in enumerate(log.items):
        if kind == "event":
            position[obj["order_id"]] = i
        elif obj["type"] == "order":
            assert position[obj["order_id"]] < i  # the story ended before its truth
    for r in log.order_truth.values():
        assert 0.0 <= r["recoverability"] <= 1.0
        assert r["retained"] == (r["outcome"] in RETAINED)
        assert r["abusive"] == (r["abuse_kind"] is not None)
        assert r["lane"] == log.lane(r["order_id"])
        assert r["slippage_hours"] >= 0


def test_outcome_events_agree_with_truth(log: Log) -> None:
    for oid, r in log.order_truth.items():
        types = Counter(e["event_type"] for e in log.by_order[oid])
        finals = {t for t in OUTCOME_EVENT.values() if types[t]}
        if r["retained"]:
            assert not types["refund_issued"] and not types["chargeback_filed"], oid
        if r["outcome"] == "kept":
            assert not finals, (oid, finals)
        else:
            assert OUTCOME_EVENT[r["outcome"]] in finals, (oid, r["outcome"], finals)
            assert len(finals) == 1, (oid, finals)


def test_sampled_outcomes_follow_latent_recoverability(log: Log) -> None:
    shipped = [r for r in log.order_truth.values() if r["outcome"] != "cancelled"]
    mean_r = sum(r["recoverability"] for r in shipped) / len(shipped)
    retained = sum(r["retained"] for r in shipped) / len(shipped)
    assert abs(mean_r - retained) < 0.03
    risky = [r for r in shipped if r["recoverability"] < 0.5]
    assert len(risky) > 50
    assert sum(r["retained"] for r in risky) / len(risky) < 0.5


# ---------------------------------------------------------------- realism


def test_customers_repeat_and_a_small_minority_is_abusive(log: Log) -> None:
    customers: dict[str, bool] = {}
    for r in log.order_truth.values():
        customers[r["customer_id"]] = r["customer_abusive"]
    repeat_share = 1 - len(customers) / len(log.order_truth)
    assert 0.28 <= repeat_share <= 0.45
    abusive_share = sum(customers.values()) / len(customers)
    assert 0.025 <= abusive_share <= 0.06  # documented: ~4% (ABUSIVE_SHARE)
    kinds = Counter(r["abuse_kind"] for r in log.order_truth.values() if r["abusive"])
    assert set(kinds) == {"wardrobing", "bracketing", "false_not_received"}


def test_return_rate_band_and_apparel_above_beauty(log: Log) -> None:
    by_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for oid, o in log.orders.items():
        if log.order_truth[oid]["outcome"] == "cancelled":
            continue
        returned = any(e["event_type"] == "return_requested" for e in log.by_order[oid])
        main = max(o["lines"], key=lambda ln: ln["qty"] * ln["unit_price"])["sku_family"]
        by_family[main][0] += returned
        by_family[main][1] += 1
    total = sum(v[0] for v in by_family.values()) / sum(v[1] for v in by_family.values())
    assert 0.12 <= total <= 0.32
    rate = {k: v[0] / v[1] for k, v in by_family.items()}
    assert min(rate["apparel_tops"], rate["apparel_bottoms"]) > max(
        rate["beauty_skincare"], rate["beauty_makeup"]
    )


def test_return_reasons_follow_their_causes(log: Log) -> None:
    expected = {
        "fit": {"too_small", "too_large"},
        "bracketing": {"too_small", "too_large"},
        "late": {"arrived_late"},
        "damaged": {"damaged"},
        "wrong_item": {"wrong_item"},
        "not_received": {"not_received"},
        "wardrobing": {"changed_mind", "quality"},
    }
    for oid, r in log.order_truth.items():
        for e in log.by_order[oid]:
            if e["event_type"] == "return_requested" and r["cause"] in expected:
                assert e["reason"] in expected[r["cause"]], (r["cause"], e["reason"])


def test_abuse_shows_up_in_grading_and_behaviour(log: Log) -> None:
    flagged = Counter()
    for e in log.events:
        if e["event_type"] == "return_graded":
            kind = log.order_truth[e["order_id"]]["abuse_kind"]
            flagged[(kind is not None, bool(e["abuse_flags"]))] += 1
    abusive = flagged[(True, True)] / max(1, flagged[(True, True)] + flagged[(True, False)])
    honest = flagged[(False, True)] / max(1, flagged[(False, True)] + flagged[(False, False)])
    assert abusive > 0.5
    assert honest < 0.05
    for oid, r in log.order_truth.items():
        events = log.by_order[oid]
        if r["abuse_kind"] == "bracketing":
            sizes = Counter(
                (ln["sku"].rsplit("-", 1)[0], ln["sku_family"]) for ln in log.orders[oid]["lines"]
            )
            assert max(sizes.values()) >= 2
        elif r["abuse_kind"] == "false_not_received":
            assert any(e.get("scan") == "delivered" for e in events)
            assert any(e["event_type"] == "support_contact" for e in events)
            assert any(
                e.get("reason") == "not_received" or e["event_type"] == "chargeback_filed"
                for e in events
            )
        elif r["abuse_kind"] == "wardrobing" and r["outcome"] != "kept":
            delivered = next(_t(e["occurred_at"]) for e in events if e.get("scan") == "delivered")
            req = [_t(e["occurred_at"]) for e in events if e["event_type"] == "return_requested"]
            assert all(15 * 86400 < t - delivered <= 30 * 86400 for t in req)


def test_steady_state_has_no_incidents(steady: Log) -> None:
    assert steady.incidents == []


def _delayed_scan_rate(log: Log, lanes: set[str], inside: bool, start: float, end: float):
    delayed = total = 0
    for e in log.events:
        if e["event_type"] != "carrier_scan" or log.lane(e["order_id"]) not in lanes:
            continue
        if (start <= _t(e["occurred_at"]) < end) != inside:
            continue
        total += 1
        delayed += e["scan"] == "delayed"
    return delayed / total, total


def test_launch_backlog_incident_lanes_spike_in_their_window(launch: Log) -> None:
    assert 2 <= len(launch.incidents) <= 3
    lanes = {r["lane"] for r in launch.incidents}
    start, end = _t(launch.incidents[0]["start"]), _t(launch.incidents[0]["end"])
    other = {launch.lane(oid) for oid in launch.orders} - lanes
    in_rate, n_in = _delayed_scan_rate(launch, lanes, True, start, end)
    out_rate, _ = _delayed_scan_rate(launch, lanes, False, start, end)
    other_in, _ = _delayed_scan_rate(launch, other, True, start, end)
    assert n_in > 300
    assert in_rate > 3 * out_rate
    assert in_rate > 5 * other_in
    assert all(r["delay_prob"] >= 0.5 for r in launch.incidents)


def test_launch_week_is_beauty_and_late_orders_stay_recoverable(launch: Log) -> None:
    t0 = _t(launch.events[0]["occurred_at"])
    in_launch = [
        o
        for o in launch.orders.values()
        if t0 + 1.5 * 86400 <= _t(o["occurred_at"]) < t0 + 7.5 * 86400
    ]
    beauty = sum(o["lines"][0]["sku_family"].startswith("beauty") for o in in_launch)
    assert beauty / len(in_launch) > 0.5
    assert sum(o.get("campaign") == "glow-launch" for o in in_launch) > len(in_launch) / 3
    lanes = {r["lane"] for r in launch.incidents}
    late = [
        r for r in launch.order_truth.values() if r["lane"] in lanes and r["slippage_hours"] > 24
    ]
    assert len(late) > 50
    contacted = sum(
        any(
            e["event_type"] == "support_contact" or e["event_type"] == "return_requested"
            for e in launch.by_order[r["order_id"]]
        )
        for r in late
    )
    assert contacted / len(late) > 0.6  # the WISMO / refund-request wave
    assert sum(r["recoverability"] for r in late) / len(late) > 0.6  # yet mostly savable


def test_lanes_and_couriers_carry_volume(steady: Log) -> None:
    lanes = Counter(steady.lane(oid) for oid in steady.orders)
    couriers = {ln.split(":")[0] for ln in lanes}
    regions = {ln.split(">")[1] for ln in lanes}
    assert 3 <= len(couriers) <= 4 and 4 <= len(regions) <= 6
    assert lanes.most_common(1)[0][1] > 100


# ---------------------------------------------------------------- API edges


def test_generate_is_lazy_and_streams() -> None:
    started = time.perf_counter()
    stream = generate("steady-state", 10_000_000, 1)
    first = [next(stream) for _ in range(100)]
    assert time.perf_counter() - started < 2.0
    assert first[0][0] == "event" and first[0][1]["event_type"] == "order_placed"


def test_progress_start_and_bad_arguments(tmp_path: Path) -> None:
    seen: list[int] = []
    start = datetime(2027, 1, 4, 12, tzinfo=UTC)
    write_log("steady-state", 50, 1, tmp_path / "x.jsonl", start=start, progress=seen.append)
    assert seen and seen[-1] == 50
    first = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0])
    assert start <= datetime.fromisoformat(first["occurred_at"]) < start + timedelta(days=2)
    with pytest.raises(ValueError):
        generate("nope", 10, 1)
    with pytest.raises(ValueError):
        generate("steady-state", 10, 1, start=datetime(2026, 1, 1))
    assert list(generate("steady-state", 0, 1)) == []


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenario=st.sampled_from(SCENARIOS),
    orders=st.integers(min_value=1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_small_run_is_valid_and_complete(scenario: str, orders: int, seed: int) -> None:
    items = list(generate(scenario, orders, seed))
    events = [o for k, o in items if k == "event"]
    for e in events:
        EVENT_ADAPTER.validate_json(dumps(e))
    assert all(e["event_type"] == "carrier_scan" for e, _ in _lateness(events))
    truth = [o for k, o in items if k == "truth" and o["type"] == "order"]
    assert len(truth) == orders == sum(e["event_type"] == "order_placed" for e in events)


def test_lane_profiles_describe_the_log(steady: Log) -> None:
    profiles = simulator.lane_profiles("steady-state", SEED)
    assert len(profiles) == len({p["lane"] for p in profiles})
    assert {steady.lane(oid) for oid in steady.orders} <= {p["lane"] for p in profiles}
    slow = [p for p in profiles if p["slow"]]
    assert 1 <= len(slow) <= max(1, round(0.05 * len(profiles)))
    normal = max(p["delay_prob"] for p in profiles if not p["slow"])
    assert all(p["delay_prob"] > normal for p in slow)


# ---------------------------------------------------------------- variants (issue 11)


def _variant(variants: tuple[str, ...]) -> tuple[list[dict], dict[str, dict]]:
    events, truth = [], {}
    for kind, obj in generate("steady-state", 3000, SEED, variants=variants):
        if kind == "event":
            events.append(obj)
        elif obj.get("type") == "order":
            truth[obj["order_id"]] = obj
    return events, truth


def test_bracketing_unflagged_hides_bracketing_from_grading_but_not_from_truth() -> None:
    plain, truth = _variant(())
    hidden, truth_h = _variant(("bracketing-unflagged",))

    def flagged_bracketers(events, truth):
        return {
            e["order_id"]
            for e in events
            if e["event_type"] == "return_graded"
            and e.get("abuse_flags")
            and truth[e["order_id"]]["abuse_kind"] == "bracketing"
        }

    assert len(flagged_bracketers(plain, truth)) > 5
    assert flagged_bracketers(hidden, truth_h) == set()
    graded = {e["order_id"] for e in hidden if e["event_type"] == "return_graded"}
    bracketers = [o for o in graded if truth_h[o]["abuse_kind"] == "bracketing"]
    assert len(bracketers) > 5 and all(truth_h[o]["abusive"] for o in bracketers)  # truth: abuse
    # other abuse is still flagged
    others = [e for e in hidden if e["event_type"] == "return_graded" and e.get("abuse_flags")]
    assert any(truth_h[e["order_id"]]["abuse_kind"] == "wardrobing" for e in others)


def test_realistic_text_is_varied_misspelled_mixed_and_half_labelled() -> None:
    plain, _ = _variant(())
    real, _ = _variant(("realistic-text",))
    strip = [{k: v for k, v in e.items() if k not in ("text", "intent")} for e in plain]
    assert strip == [{k: v for k, v in e.items() if k not in ("text", "intent")} for e in real]
    texts = [e for e in real if e["event_type"] == "support_contact" and "text" in e]
    generic = {p for phrases in simulator._TEXTS.values() for p in phrases}
    missing = sum("intent" not in e for e in texts) / len(texts)
    assert 0.4 < missing < 0.6
    assert len({e["text"] for e in texts}) > 0.6 * len(texts)  # varied
    assert sum(e["text"] not in generic for e in texts) > 0.9 * len(texts)
    assert any(". also " in e["text"] or ", but " in e["text"] for e in texts)  # mixed intent
    for e in texts:
        EVENT_ADAPTER.validate_json(json.dumps(e))
        assert not re.search(r"[@\d]", e["text"]), e["text"]


def test_split_returns_send_a_second_parcel_and_keep_the_money() -> None:
    """split-returns: an order sending back two or more units (received and settled) does so in
    two returns with their own ids, events and settlements; every other event is as without the
    variant, and the refunds, store credit and units returned add up to the same."""
    plain, _ = _variant(())
    split, truth = _variant(("split-returns",))
    seconds = {e["order_id"] for e in split if e.get("return_id", "").endswith("-R2")}
    assert len(seconds) > 20
    assert {o for o, t in truth.items() if t.get("split_return")} == seconds
    assert [e for e in plain if e["order_id"] not in seconds] == [
        e for e in split if e["order_id"] not in seconds
    ]

    def totals(events, kind, field):
        return round(sum(e[field] for e in events if e["event_type"] == kind), 2)

    for kind in ("refund_issued", "store_credit_issued"):
        assert totals(plain, kind, "amount") == totals(split, kind, "amount")

    def units(events):
        return sum(
            i["qty"] for e in events if e["event_type"] == "return_requested" for i in e["items"]
        )

    assert units(plain) == units(split)
    last: dict[str, str] = {}
    for e in split:
        EVENT_ADAPTER.validate_json(json.dumps(e))
        if e["order_id"] in seconds:
            assert e["occurred_at"] >= last.get(e["order_id"], "")  # each order's in time order
            last[e["order_id"]] = e["occurred_at"]
    for oid in seconds:
        mine = [e for e in split if e["order_id"] == oid and e.get("return_id")]
        for rid in (f"{oid}-R1", f"{oid}-R2"):
            kinds = [e["event_type"] for e in mine if e["return_id"] == rid]
            assert kinds[0] == "return_requested" and "return_received" in kinds
            assert kinds[-1] in ("refund_issued", "exchange_completed", "store_credit_issued")
        first, second = (
            next(e for e in mine if e["return_id"] == rid and e["event_type"] == "return_requested")
            for rid in (f"{oid}-R1", f"{oid}-R2")
        )
        assert (
            sum(i["qty"] for i in first["items"]) == 1
            and second["occurred_at"] > first["occurred_at"]
        )


def test_foreign_currency_relabels_only_the_currency_of_some_payments() -> None:
    """foreign-currency: about FOREIGN_CURRENCY_PROB of the refunds, store credits and
    chargebacks say FOREIGN_CURRENCY instead of the order's currency, their amounts as they were
    (no exchange rate); the truth names them; every other byte of the log is as without it."""
    from salvage.connectors.simulator import FOREIGN_CURRENCY, FOREIGN_CURRENCY_PROB

    plain, _ = _variant(())
    foreign, truth = _variant(("foreign-currency",))
    assert len(plain) == len(foreign)
    moved = [b for a, b in zip(plain, foreign, strict=True) if a != b]
    for a, b in zip(plain, foreign, strict=True):
        if a != b:
            assert {k for k in a if a[k] != b[k]} == {"currency"}
            assert (a["currency"], b["currency"]) == ("EUR", FOREIGN_CURRENCY)
            EVENT_ADAPTER.validate_json(json.dumps(b))
    money = [e for e in plain if e["event_type"] in _MONEY_EVENTS]
    assert {e["event_type"] for e in moved} == _MONEY_EVENTS
    assert abs(len(moved) / len(money) - FOREIGN_CURRENCY_PROB) < 0.05
    named = {
        m["event_id"]
        for t in truth.values()
        for m in t.get("foreign_currency", {}).get("events", ())
    }
    assert named == {e["event_id"] for e in moved}


_MONEY_EVENTS = {"refund_issued", "store_credit_issued", "chargeback_filed"}


# SHA-256 of events + truth (1,200 orders, seed 11), pinned when `_World.order` was split into
# story builders (issue 14 item 7): the split changed no byte. Together these logs take every story
# path but the rare chargeback on a lost parcel (cancelled, kept, never delivered, exchange / credit
# / refund after grading, the three warehouse breakages, not-received claims, chargebacks without
# a return, after a claim and with the return in transit). A deliberate change to the simulated
# world changes them: regenerate with the loop below and say why in the commit. Python's `random`
# and `json` are stable across versions for these calls.
PINNED = {
    ("steady-state", ()): "e5be445d64079d61e86127133501b3344a5bee9dc3f1fe02cc55f50de10aa12f",
    ("launch-week-backlog", ()): "31fe64b8da053198975936eb81015e9c7e64235d3ada69afb2d1db4893652f9d",
    ("silent-carrier-incident", ()): (
        "d4856d16167733257c532b94eda9e694a008e09cc2f9d2b002c80d8a632f1834"
    ),
    ("thin-lane-incident", ()): "bc66f9b1e6dc85d2f180a0397a5385537da10d57fd792b7f11166c8916767e88",
    ("steady-state", ("bracketing-unflagged",)): (
        "1ee03be8511ab23a72f4aa27f1ad0ebd6cf7e5599e806511324d56d79d4ca389"
    ),
    ("steady-state", ("realistic-text",)): (
        "980c2c694c3c0fe8f1b5fa59880a7d97bc9ffacf34d8a554fda3ef06bf663a47"
    ),
    ("steady-state", ("split-returns",)): (
        "3ca67395f03e2cf722a7603a83d44531e962dd5c9fd4d7d27523825c3764aa80"
    ),
}


@pytest.mark.parametrize(("scenario", "variants"), list(PINNED))
def test_pinned_bytes(tmp_path: Path, scenario: str, variants: tuple[str, ...]) -> None:
    events, truth = tmp_path / "e.jsonl", tmp_path / "t.jsonl"
    write_log(scenario, 1200, 11, events, truth, variants=variants)
    digest = hashlib.sha256(events.read_bytes() + truth.read_bytes()).hexdigest()
    assert digest == PINNED[(scenario, variants)]


def test_the_guest_checkout_variant_changes_only_guests_placements(tmp_path) -> None:
    """``guest-checkout``: the same customers check out as "guest" on every order (the truth keeps
    who they are); every other line of the log is the one without the variant."""
    from salvage.connectors.simulator import GUEST_ID, write_log

    base, guests = tmp_path / "base.jsonl", tmp_path / "guests.jsonl"
    write_log("steady-state", 400, 3, base, tmp_path / "base.truth")
    write_log("steady-state", 400, 3, guests, tmp_path / "g.truth", variants=("guest-checkout",))
    a, b = base.read_text().splitlines(), guests.read_text().splitlines()
    assert len(a) == len(b)
    truth = {
        r["order_id"]: r
        for r in map(json.loads, (tmp_path / "g.truth").read_text().splitlines())
        if r.get("type") == "order"
    }
    as_guest: dict[str, set[bool]] = {}
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        dx, dy = json.loads(x), json.loads(y)
        assert dx["event_type"] == "order_placed" and dy["customer_id"] == GUEST_ID
        assert {k: v for k, v in dx.items() if k != "customer_id"} == {
            k: v for k, v in dy.items() if k != "customer_id"
        }
        assert truth[dy["order_id"]]["customer_id"] == dx["customer_id"]
        assert truth[dy["order_id"]]["guest_checkout"] is True
    for r in truth.values():  # a customer is a guest on every order or on none
        as_guest.setdefault(r["customer_id"], set()).add(bool(r.get("guest_checkout")))
    assert all(len(v) == 1 for v in as_guest.values())
    assert 0.2 < sum(True in v for v in as_guest.values()) / len(as_guest) < 0.4
