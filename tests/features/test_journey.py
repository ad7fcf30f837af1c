"""Return-journey tracking: status updates and breakage alerts (features/journey.py).

Unit tests drive a real :class:`salvage.flows.stages.CaseStage` (events + watermark ticks, exactly
as the
dataflow does), a hypothesis property checks the state machine over random event orders and batch
splits, and flow tests check the outputs of a simulator log against the simulator's truth file.
"""

from __future__ import annotations

import itertools
import json
import pickle
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.outputs import JourneyAlert, JourneyStage, StatusUpdate
from salvage.features.eventtime import DAY_US, HOUR_US, from_us, iso, to_us
from salvage.features.journey import STAGE_RANK, add_business_days
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, StageConfig
from salvage.policy.config import PolicyError, load_policy
from salvage.schemas import all_schemas
from tests.flowkit import jsonl, run_file_flow, sim_log
from tests.helpers import event, order_placed

T0 = to_us(datetime(2026, 3, 2, 10, tzinfo=UTC))  # a Monday
DELIVERED = T0 + 2 * DAY_US
REQUESTED = T0 + 4 * DAY_US
RECEIVED = T0 + 8 * DAY_US  # Tuesday 2026-03-10 10:00 UTC
ORDER = "o1"


def _ev(doc: dict):
    return EVENT_ADAPTER.validate_json(json.dumps(doc))


def _doc(eid: str, kind: str, t: int, **fields) -> dict:
    return event(eid, kind, ORDER, iso(t), **fields)


def base_story(reason: str = "too_small", preferred: str = "refund") -> list[dict]:
    """An order delivered on day 2 and a return requested on day 4."""
    return [
        order_placed(ORDER, iso(T0), promised=iso(T0 + 3 * DAY_US)),
        _doc("s1", "carrier_scan", DELIVERED, scan="delivered", courier="dhl"),
        _doc(
            "r0",
            "return_requested",
            REQUESTED,
            return_id="R1",
            reason=reason,
            items=[{"sku": "sku-1", "qty": 1}],
            preferred_resolution=preferred,
        ),
    ]


def label(t: int, eid: str = "r1") -> dict:
    return _doc(eid, "return_label_issued", t, return_id="R1", courier="dhl", label_cost=5.0)


def transit(t: int, eid: str = "r2") -> dict:
    return _doc(eid, "return_in_transit", t, return_id="R1")


def received(t: int, eid: str = "r3") -> dict:
    return _doc(eid, "return_received", t, return_id="R1")


def graded(t: int, eid: str = "r4") -> dict:
    return _doc(eid, "return_graded", t, return_id="R1", grade="A", abuse_flags=[])


def refund(t: int, eid: str = "r5", amount: float = 80.0) -> dict:
    return _doc(eid, "refund_issued", t, return_id="R1", amount=amount, currency="EUR")


def exchange(t: int, eid: str = "r6") -> dict:
    return _doc(eid, "exchange_completed", t, return_id="R1")


def credit(t: int, eid: str = "r7") -> dict:
    return _doc(eid, "store_credit_issued", t, return_id="R1", amount=80.0, currency="EUR")


def cancel(t: int, eid: str = "r8") -> dict:
    return _doc(eid, "return_cancelled", t, return_id="R1")


def _cfg(policy_path: Path | None = None) -> StageConfig:
    return StageConfig(
        case_shards=1,
        cust_shards=1,
        lane_shards=1,
        sources=("src",),
        case_records=False,
        infer_intents=False,
        policy=load_policy(policy_path),
    )


class Harness:
    """One case shard fed like the dataflow feeds it: events, then a watermark tick."""

    def __init__(self, cfg: StageConfig | None = None) -> None:
        self.stage = CaseStage(0, cfg or _cfg())
        self.updates: list[StatusUpdate] = []
        self.alerts: list[JourneyAlert] = []
        self.views: list = []

    def feed(self, docs: list[dict], until: int) -> Harness:
        items = [Event(to_us(ev.occurred_at), ev.event_id, ev) for ev in map(_ev, docs)]
        items.append(Tick("src", until, until))
        for route, payload in self.stage.on_batch(items):
            if route not in ("out", "ctx"):
                continue
            _dest, batch = payload
            for _t, _tie, item in batch.items:
                if route == "ctx":
                    self.views.append(item)
                elif item[0] == "status_update":
                    self.updates.append(item[1])
                else:
                    assert item[0] == "journey_alert"
                    self.alerts.append(item[1])
        return self

    @property
    def stages(self) -> list[str]:
        return [u.stage.value for u in self.updates]

    @property
    def kinds(self) -> list[str]:
        return [a.kind.value for a in self.alerts]


def run(docs: list[dict], until: int, cfg: StageConfig | None = None) -> Harness:
    return Harness(cfg).feed(docs, until)


# ---------------------------------------------------------------- pure helpers


def test_business_days_skip_weekends():
    fri, sat = date(2026, 3, 6), date(2026, 3, 7)
    assert add_business_days(fri, 1) == date(2026, 3, 9)  # Monday
    assert add_business_days(sat, 0) == sat
    assert add_business_days(sat, 1) == date(2026, 3, 9)
    assert add_business_days(date(2026, 3, 4), 5) == date(2026, 3, 11)  # Wed -> next Wed
    assert add_business_days(fri, 10) == date(2026, 3, 20)


# ---------------------------------------------------------------- status updates


def test_a_smooth_return_announces_each_stage_once_with_the_expected_refund_date():
    docs = [
        *base_story(),
        label(REQUESTED + HOUR_US),
        transit(REQUESTED + DAY_US),
        received(RECEIVED),
        graded(RECEIVED + 20 * HOUR_US),
        refund(RECEIVED + 2 * DAY_US, amount=79.5),
    ]
    h = run(docs, RECEIVED + 60 * DAY_US)
    assert h.stages == ["label_issued", "picked_up", "received", "graded", "refund_issued"]
    assert h.alerts == []
    # received Tuesday 2026-03-10: + 5 business days = Tuesday 2026-03-17
    by = {u.stage.value: u for u in h.updates}
    assert by["received"].expected_refund_date == date(2026, 3, 17)
    assert by["graded"].expected_refund_date == date(2026, 3, 17)
    assert by["label_issued"].expected_refund_date is None
    assert by["refund_issued"].expected_refund_date is None
    assert by["refund_issued"].amount == 79.5
    assert by["picked_up"].amount is None
    for u in h.updates:
        assert u.order_id == ORDER and u.customer_id == "c1" and u.return_id == "R1"
        assert u.policy_version == "default-v1" and u.currency == "EUR"
        assert u.preferred_resolution == "refund"
    assert by["graded"].occurred_at == from_us(RECEIVED + 20 * HOUR_US)
    assert by["graded"].source_event_id == "r4"
    assert len({u.update_id for u in h.updates}) == 5
    # no PII beyond ids, and a valid contract
    for u in h.updates:
        doc = json.loads(u.model_dump_json())
        assert not {"name", "email", "address", "phone"} & set(doc)
        assert StatusUpdate.model_validate_json(u.model_dump_json()) == u


def test_ids_are_deterministic_across_runs_and_unique_per_stage():
    docs = [*base_story(), label(REQUESTED + HOUR_US), received(RECEIVED)]
    a = run(docs, RECEIVED + DAY_US)
    b = run(docs, RECEIVED + DAY_US)
    assert [u.update_id for u in a.updates] == [u.update_id for u in b.updates]
    assert len({u.update_id for u in a.updates}) == 2


def test_an_exchange_has_no_refund_date_and_settles_as_an_exchange():
    docs = [
        *base_story(preferred="exchange"),
        label(REQUESTED + HOUR_US),
        received(RECEIVED),
        graded(RECEIVED + DAY_US),
        exchange(RECEIVED + 2 * DAY_US),
    ]
    h = run(docs, RECEIVED + 40 * DAY_US)
    assert h.stages == ["label_issued", "received", "graded", "exchange_completed"]
    assert all(u.expected_refund_date is None for u in h.updates)
    assert h.updates[-1].amount is None
    assert h.alerts == []


def test_store_credit_carries_its_amount():
    docs = [*base_story(preferred="store_credit"), received(RECEIVED), credit(RECEIVED + DAY_US)]
    h = run(docs, RECEIVED + 40 * DAY_US)
    assert h.stages == ["received", "store_credit_issued"]
    assert h.updates[-1].amount == 80.0
    assert h.alerts == []  # graded? no: but settled within 72 h, and a credit is not a refund


def test_a_stage_behind_the_furthest_reached_is_not_announced():
    # the carrier's pick-up scan arrives (in event time) after the warehouse receipt
    docs = [*base_story(), received(RECEIVED), transit(RECEIVED + HOUR_US)]
    h = run(docs, RECEIVED + DAY_US)
    assert h.stages == ["received"]
    # a second receipt event (another id) is not a second update
    h.feed([received(RECEIVED + 2 * HOUR_US, eid="r3b")], RECEIVED + 2 * DAY_US)
    assert h.stages == ["received"]


def test_a_refund_without_a_return_is_not_a_return_journey():
    docs = [
        order_placed(ORDER, iso(T0), promised=iso(T0 + 3 * DAY_US)),
        _doc("s1", "carrier_scan", T0 + DAY_US, scan="lost", courier="dhl"),
        refund(T0 + 5 * DAY_US),
    ]
    h = run(docs, T0 + 10 * DAY_US)
    assert h.updates == [] and h.alerts == []


# ---------------------------------------------------------------- breakage alerts


def test_received_but_ungraded_alerts_once_at_exactly_72_hours_then_refund_overdue():
    docs = [*base_story(), label(REQUESTED + HOUR_US), received(RECEIVED)]
    h = run(docs, RECEIVED + 72 * HOUR_US)  # the watermark has not passed the deadline yet
    assert h.alerts == []
    h.feed([], RECEIVED + 72 * HOUR_US + 1)
    assert h.kinds == ["received_ungraded"]
    alert = h.alerts[0]
    assert alert.detected_at == from_us(RECEIVED + 72 * HOUR_US)
    assert alert.threshold_hours == 72.0 and alert.observed_hours == 72.0
    assert alert.received_at == from_us(RECEIVED)
    assert alert.source_event_id == f"~timer:{ORDER}"
    assert (alert.sku_family, alert.lane) == ("apparel_tops", "dhl:DE>FR")
    assert alert.return_reason == "too_small" and alert.return_value == 80.0
    h.feed([], RECEIVED + 6 * DAY_US)
    assert h.kinds == ["received_ungraded"]  # once per kind
    h.feed([], RECEIVED + 8 * DAY_US)
    assert h.kinds == ["received_ungraded", "refund_overdue"]
    assert h.alerts[1].detected_at == from_us(RECEIVED + 7 * DAY_US)
    assert h.alerts[1].threshold_hours == 168.0
    h.feed([graded(RECEIVED + 9 * DAY_US)], RECEIVED + 20 * DAY_US)
    assert h.kinds == ["received_ungraded", "refund_overdue"]
    assert len({a.alert_id for a in h.alerts}) == 2
    # the timers never became case updates: no extra view went to scoring and policy
    assert [v.source_id for v in h.views if v.source_id.startswith("~timer")] == []


def test_grading_at_exactly_72_hours_is_in_time_a_second_later_is_not():
    story = [*base_story(), received(RECEIVED)]
    on_time = run([*story, graded(RECEIVED + 72 * HOUR_US)], RECEIVED + 5 * DAY_US)
    assert on_time.alerts == []
    late = run([*story, graded(RECEIVED + 72 * HOUR_US + 1000000)], RECEIVED + 5 * DAY_US)
    assert late.kinds == ["received_ungraded"]
    assert late.stages == ["received", "graded"]  # the journey goes on


def test_refund_before_grading_alerts_on_the_refund_event():
    docs = [*base_story(), received(RECEIVED), refund(RECEIVED + 6 * HOUR_US)]
    h = run(docs, RECEIVED + 30 * DAY_US)
    assert h.kinds == ["refund_before_grading"]
    a = h.alerts[0]
    assert a.detected_at == from_us(RECEIVED + 6 * HOUR_US)
    assert a.threshold_hours is None and a.observed_hours == 6.0
    assert a.source_event_id == "r5"
    assert h.stages == ["received", "refund_issued"]  # the customer still hears about it


def test_refund_before_the_parcel_even_arrives_is_also_before_grading():
    docs = [*base_story(), label(REQUESTED + HOUR_US), refund(REQUESTED + DAY_US)]
    h = run(docs, REQUESTED + 30 * DAY_US)
    assert h.kinds == ["refund_before_grading"]
    assert h.alerts[0].observed_hours is None and h.alerts[0].received_at is None


def test_a_not_received_claim_has_nothing_to_grade():
    docs = [*base_story(reason="not_received"), refund(REQUESTED + 2 * DAY_US)]
    h = run(docs, REQUESTED + 30 * DAY_US)
    assert h.alerts == []
    assert h.stages == ["refund_issued"]


def test_a_graded_and_settled_return_never_alerts():
    docs = [
        *base_story(),
        received(RECEIVED),
        graded(RECEIVED + 71 * HOUR_US),
        refund(RECEIVED + 6 * DAY_US),
    ]
    assert run(docs, RECEIVED + 60 * DAY_US).alerts == []


def test_a_cancelled_return_stops_the_clocks():
    docs = [*base_story(), received(RECEIVED), cancel(RECEIVED + DAY_US)]
    h = run(docs, RECEIVED + 20 * DAY_US)
    assert h.alerts == []


def test_timer_alerts_survive_a_snapshot_and_restore():
    docs = [*base_story(), received(RECEIVED)]
    h = run(docs, RECEIVED + DAY_US)
    restored = Harness()
    restored.stage = pickle.loads(pickle.dumps(h.stage, protocol=pickle.HIGHEST_PROTOCOL))
    restored.feed([], RECEIVED + 8 * DAY_US)
    assert restored.kinds == ["received_ungraded", "refund_overdue"]
    h.feed([], RECEIVED + 8 * DAY_US)
    assert [a.model_dump() for a in h.alerts] == [a.model_dump() for a in restored.alerts]


def test_end_of_input_does_not_advance_time_past_the_last_event():
    from salvage.features.eventtime import END

    docs = [*base_story(), received(RECEIVED)]
    h = Harness()
    items = [Event(to_us(ev.occurred_at), ev.event_id, ev) for ev in map(_ev, docs)]
    h.stage.on_batch([*items, Tick("src", END, RECEIVED)])
    assert h.alerts == []  # the log ended the moment the parcel arrived: nothing is overdue


# ---------------------------------------------------------------- the policy section


def _policy(tmp_path: Path, journey: str) -> Path:
    text = Path("policy/default.yaml").read_text()
    head = text[: text.index("\njourney:")]
    path = tmp_path / "p.yaml"
    path.write_text(head + "\njourney:\n" + journey)
    return path


def test_thresholds_and_stages_come_from_the_policy(tmp_path):
    path = _policy(
        tmp_path,
        "  status_stages: [received, refund_issued]\n"
        "  alerts: [received_ungraded]\n"
        "  received_ungraded_hours: 24\n"
        "  refund_sla_business_days: 2\n",
    )
    docs = [*base_story(), label(REQUESTED + HOUR_US), received(RECEIVED)]
    h = run(docs, RECEIVED + 10 * DAY_US, _cfg(path))
    assert h.stages == ["received"]
    assert h.updates[0].expected_refund_date == date(2026, 3, 12)  # Tue + 2 business days
    assert h.kinds == ["received_ungraded"]  # refund_overdue is not enabled
    assert h.alerts[0].detected_at == from_us(RECEIVED + 24 * HOUR_US)


def test_journey_can_be_switched_off(tmp_path):
    path = _policy(tmp_path, "  enabled: false\n")
    docs = [*base_story(), received(RECEIVED), refund(RECEIVED + HOUR_US)]
    h = run(docs, RECEIVED + 10 * DAY_US, _cfg(path))
    assert h.updates == [] and h.alerts == []
    # and the case views (what scoring and policy see) are the same with it on or off
    on = run(docs, RECEIVED + 10 * DAY_US)
    assert [(v.t, v.source_id, v.changes) for v in on.views] == [
        (v.t, v.source_id, v.changes) for v in h.views
    ]


@pytest.mark.parametrize(
    ("journey", "where"),
    [
        ("  status_stages: [received, shipped_back]\n", "journey.status_stages.1"),
        ("  alerts: [received_ungraded, received_ungraded]\n", "journey.alerts"),
        ("  received_ungraded_hours: 0\n", "journey.received_ungraded_hours"),
        ("  refund_target_days: -1\n", "journey.refund_target_days"),
        ("  refund_sla_business_days: 2.5\n", "journey.refund_sla_business_days"),
        ("  ungraded_hours: 72\n", "journey.ungraded_hours"),
    ],
)
def test_a_bad_journey_section_names_its_field(tmp_path, journey, where):
    with pytest.raises(PolicyError) as err:
        load_policy(_policy(tmp_path, journey))
    assert where in str(err.value)


def test_contracts_are_published_as_json_schema():
    schemas = all_schemas()
    status, alerts = schemas["return-status"], schemas["journey-alerts"]
    assert set(status["required"]) >= {"update_id", "order_id", "stage", "occurred_at"}
    assert "expected_refund_date" in status["properties"]
    assert set(alerts["required"]) >= {"alert_id", "order_id", "kind", "detected_at"}
    kinds = alerts["$defs"]["JourneyAlertKind"]["enum"]
    assert kinds == ["refund_before_grading", "received_ungraded", "refund_overdue"]


# ---------------------------------------------------------------- property: any event order

JOURNEY_DOCS = {
    "label": label,
    "transit": transit,
    "received": received,
    "graded": graded,
    "refund": refund,
    "exchange": exchange,
    "credit": credit,
    "cancel": cancel,
}


# settlements close the case: weight the warehouse steps up so the clocks get to run
KINDS = ["label", "transit", *["received"] * 3, *["graded"] * 2, "refund", "exchange", "credit"]
KINDS += ["cancel"]


@st.composite
def journeys(draw):
    """Random journey events (types may repeat), at random times after the return request."""
    n = draw(st.integers(0, 9))
    docs = []
    for i in range(n):
        kind = draw(st.sampled_from(KINDS))
        offset = draw(st.integers(1, 15 * 24)) * HOUR_US + draw(st.integers(0, 3599)) * 1_000_000
        docs.append(JOURNEY_DOCS[kind](REQUESTED + offset, eid=f"j{i:02d}"))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    return docs, cuts


def _feed_in_batches(docs: list[dict], cuts: list[int]) -> Harness:
    """Feed the events (in arrival order) in batches, each followed by a watermark tick just
    below the earliest event still to come, then run the clock far past everything."""
    h = Harness()
    h.feed(base_story(), REQUESTED + 1)
    bounds = [0, *cuts, len(docs)]
    for lo, hi in itertools.pairwise(bounds):
        rest = [to_us(_ev(d).occurred_at) for d in docs[hi:]]
        wm = min(rest) if rest else REQUESTED + 40 * DAY_US
        h.feed(docs[lo:hi], max(wm, REQUESTED + 1))
    h.feed([], REQUESTED + 60 * DAY_US)
    return h


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journeys())
def test_any_order_of_journey_events_gives_one_update_per_stage_and_one_alert_per_kind(case):
    docs, cuts = case
    h = _feed_in_batches(docs, cuts)
    stages = h.stages
    assert len(stages) == len(set(stages))  # never two updates for one stage
    ranks = [STAGE_RANK[JourneyStage(s)] for s in stages]
    assert ranks == sorted(ranks) and len(ranks) == len(set(ranks))  # only forward
    assert len(h.kinds) == len(set(h.kinds))  # at most one alert per kind
    assert len({u.update_id for u in h.updates}) == len(h.updates)
    # batching does not matter: one batch gives the same updates and alerts
    one = _feed_in_batches(sorted(docs, key=lambda d: (d["occurred_at"], d["event_id"])), [])
    assert [u.model_dump() for u in one.updates] == [u.model_dump() for u in h.updates]
    assert [a.model_dump() for a in one.alerts] == [a.model_dump() for a in h.alerts]

    # and exactly what an independent, naive reading of the rules predicts
    assert [(to_us(u.occurred_at), u.stage.value) for u in h.updates] == oracle(docs)[0]
    assert [(to_us(a.detected_at), a.kind.value) for a in h.alerts] == oracle(docs)[1]


STAGE = {
    "return_label_issued": ("label_issued", 0),
    "return_in_transit": ("picked_up", 1),
    "return_received": ("received", 2),
    "return_graded": ("graded", 3),
    "refund_issued": ("refund_issued", 4),
    "exchange_completed": ("exchange_completed", 4),
    "store_credit_issued": ("store_credit_issued", 4),
}


def oracle(docs: list[dict]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The rules, spelled out naively: events in (time, id) order, a settlement closes the case
    (later events are dropped), a cancellation stops the clocks, timers due before an event's
    time fire before it."""
    evs = sorted((to_us(_ev(d).occurred_at), d["event_id"], d["event_type"]) for d in docs)
    received = graded = 0
    closed = cancelled = False
    reached = -1
    updates: list[tuple[int, str]] = []
    alerts: list[tuple[int, str]] = []

    def fire(until: int) -> None:
        while not closed and not cancelled and received:
            due = []
            if not graded and "received_ungraded" not in {k for _, k in alerts}:
                due.append((received + 72 * HOUR_US, "received_ungraded"))
            if "refund_overdue" not in {k for _, k in alerts}:
                due.append((received + 7 * DAY_US, "refund_overdue"))
            due = [d for d in due if d[0] < until]
            if not due:
                return
            alerts.append(min(due))

    for t, _eid, kind in evs:
        fire(t)
        if closed:
            continue
        if kind == "return_received":
            received = t
        elif kind == "return_graded":
            graded = t
        elif kind == "return_cancelled":
            cancelled = True
        elif kind == "refund_issued" and not graded:
            alerts.append((t, "refund_before_grading"))
        if kind in STAGE and STAGE[kind][1] > reached:
            reached = STAGE[kind][1]
            updates.append((t, STAGE[kind][0]))
        if kind in ("refund_issued", "exchange_completed", "store_credit_issued"):
            closed = True
    fire(REQUESTED + 60 * DAY_US)
    return updates, alerts


# ---------------------------------------------------------------- flow: simulator log vs truth


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("journey")
    log = sim_log(root, "launch-week-backlog", orders=800, seed=21)
    return log, root / "launch-week-backlog-800-21.truth"


@pytest.fixture(scope="module")
def flow_out(sim, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("journey-out")
    run_file_flow([sim[0]], out)
    return out


def _t(e: dict) -> int:
    return to_us(datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")))


def test_the_simulator_marks_its_breakages_and_leaves_every_other_order_alone(monkeypatch):
    from salvage.connectors import simulator

    def stories(share: float) -> tuple[dict[str, list[dict]], dict[str, str | None]]:
        monkeypatch.setattr(simulator, "JOURNEY_ANOMALY_SHARE", share)
        by_order: dict[str, list[dict]] = {}
        truth: dict[str, str | None] = {}
        for kind, obj in simulator.generate("steady-state", 800, 21):
            if kind == "event":
                by_order.setdefault(obj["order_id"], []).append(obj)
            elif obj["type"] == "order":
                truth[obj["order_id"]] = obj["journey_anomaly"]
        return by_order, truth

    share = simulator.JOURNEY_ANOMALY_SHARE
    plain, none = stories(0.0)
    assert set(none.values()) == {None}
    salted, truth = stories(share)
    marked = {o: k for o, k in truth.items() if k}
    assert set(marked.values()) == set(simulator.JOURNEY_ANOMALIES)
    assert {o: e for o, e in salted.items() if o not in marked} == {
        o: e for o, e in plain.items() if o not in marked
    }
    settles = ("refund_issued", "exchange_completed", "store_credit_issued")
    received_returns = 0
    for order_id, events in salted.items():
        at = {e["event_type"]: _t(e) for e in events}
        if "return_received" not in at:
            assert order_id not in marked
            continue
        received_returns += 1
        rec, kind = at["return_received"], marked.get(order_id)
        settled = next(at[k] for k in settles if k in at)
        graded_in = at.get("return_graded", 0) - rec
        if kind == "refund_before_grading":
            assert "return_graded" not in at and "refund_issued" in at and settled > rec
        elif kind == "received_ungraded":
            assert graded_in > 72 * HOUR_US and settled - rec < 7 * DAY_US
        elif kind == "refund_overdue":
            assert 0 < graded_in < 72 * HOUR_US and settled - rec > 7 * DAY_US
        else:  # an ordinary return: graded within 72 h, settled within 7 days of receipt
            assert 0 < graded_in < 72 * HOUR_US and settled - rec < 7 * DAY_US
    assert 0.02 < len(marked) / received_returns < 0.1


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_alerts_on_a_simulator_log_are_exactly_the_simulated_breakages(sim, flow_out):
    _log, truth_path = sim
    truth = [json.loads(x) for x in truth_path.read_text().splitlines()]
    anomalies = {
        (r["order_id"], r["journey_anomaly"])
        for r in truth
        if r.get("type") == "order" and r["journey_anomaly"]
    }
    assert Counter(k for _, k in anomalies) == {
        "refund_before_grading": 1,
        "received_ungraded": 6,
        "refund_overdue": 3,
    }
    alerts = jsonl((flow_out / "journey_alerts.jsonl").read_bytes())
    assert {(a["order_id"], a["kind"]) for a in alerts} == anomalies
    assert len(alerts) == len(anomalies)
    for a in alerts:
        JourneyAlert.model_validate(a)
        if a["kind"] != "refund_before_grading":
            assert a["observed_hours"] == a["threshold_hours"]
    detected = [a["detected_at"] for a in alerts]
    assert detected == sorted(detected)  # the output stage orders everything by event time


def test_status_updates_on_a_simulator_log_match_the_events(sim, flow_out):
    log, _ = sim
    events = [json.loads(x) for x in log.read_text().splitlines()]
    with_return = {e["order_id"] for e in events if e["event_type"] == "return_requested"}
    stage_of = {
        "return_label_issued": "label_issued",
        "return_in_transit": "picked_up",
        "return_received": "received",
        "return_graded": "graded",
        "refund_issued": "refund_issued",
        "store_credit_issued": "store_credit_issued",
        "exchange_completed": "exchange_completed",
    }
    expected = Counter(
        stage_of[e["event_type"]]
        for e in events
        if e["event_type"] in stage_of and e["order_id"] in with_return
    )
    updates = jsonl((flow_out / "status_updates.jsonl").read_bytes())
    assert Counter(u["stage"] for u in updates) == expected
    assert expected["received"] > 100 and expected["refund_issued"] > 50
    assert len({u["update_id"] for u in updates}) == len(updates)
    pairs = Counter((u["order_id"], u["stage"]) for u in updates)
    assert max(pairs.values()) == 1
    # every received return that wants a refund was promised a date 5 business days out
    for u in updates:
        if u["stage"] == "received":
            day = date.fromisoformat(u["occurred_at"][:10])
            if u["preferred_resolution"] == "refund":
                assert date.fromisoformat(u["expected_refund_date"]) == add_business_days(day, 5)
                assert timedelta(days=5) <= date.fromisoformat(u["expected_refund_date"]) - day
            else:
                assert u["expected_refund_date"] is None
    assert _metric("salvage_status_updates_total", stage="received") >= expected["received"]
    assert _metric("salvage_journey_alerts_total", kind="received_ungraded") >= 6
    assert _metric("salvage_grading_delay_seconds_count") > 0


def test_journey_outputs_do_not_depend_on_workers_or_shards(sim, flow_out, tmp_path):
    other = tmp_path / "w2"
    run_file_flow([sim[0]], other, workers=2, shards=7)
    for name in ("status_updates", "journey_alerts"):
        assert (other / f"{name}.jsonl").read_bytes() == (flow_out / f"{name}.jsonl").read_bytes()


@pytest.mark.integration
def test_kafka_mode_publishes_the_same_journey_messages_keyed_by_order(
    kafka_broker, sim, flow_out, tmp_path, unique_name
):
    from bytewax.testing import cluster_main
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from salvage.config import Settings
    from salvage.connectors.broker import ensure_topics
    from salvage.flows.recovery import FlowSpec, build_flow
    from salvage.runner import publish_log

    suffix = unique_name("j")
    topics = ("orders", "deliveries", "support", "returns", "interventions", "status_updates")
    settings = Settings(
        kafka_bootstrap=kafka_broker.bootstrap,
        redis_url="",
        shards=4,
        topic_partitions=2,
        **{f"topic_{s}": f"{s}-{suffix}" for s in topics},
        topic_lane_alerts=f"lane-alerts-{suffix}",
        topic_dead_letters=f"dead-letters-{suffix}",
        topic_journey_alerts=f"journey-alerts-{suffix}",
    )
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        settings.topics.partitions,
    )
    publish_log(settings, sim[0])
    cluster_main(build_flow(FlowSpec(settings, to_end=True, case_store=False)), [], 0)

    def drain(topic: str) -> list[tuple[str, dict]]:
        """Every message of ``topic`` as (key, document), read by partition (no group join)."""
        consumer = Consumer(
            {
                **settings.kafka.as_librdkafka_dict(),
                "group.id": unique_name("g"),
                "enable.partition.eof": True,
            }
        )
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.topics.partitions)]
        )
        got, eof = [], set()
        try:
            while len(eof) < settings.topics.partitions:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    eof.add(msg.partition())
                    continue
                got.append((msg.key().decode(), json.loads(msg.value())))
        finally:
            consumer.close()
        return got

    for topic, name, id_field in (
        (settings.topics.status_updates, "status_updates", "update_id"),
        (settings.topics.journey_alerts, "journey_alerts", "alert_id"),
    ):
        got = drain(topic)
        assert all(key == doc["order_id"] for key, doc in got)
        expected = jsonl((flow_out / f"{name}.jsonl").read_bytes())
        assert {d[id_field]: d for _, d in got} == {d[id_field]: d for d in expected}
        assert len(got) == len(expected) > 0
