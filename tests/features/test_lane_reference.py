"""The indexed lane monitor (features/lane.py, issue 15) against its reference: random shipment
streams through :class:`LaneMonitor` and :class:`ReferenceLaneMonitor` (the monitor before the
index, kept verbatim in ``lane_reference.py``) give the same transitions, bit for bit, and the
same state after every call, including through a snapshot round trip (the index rebuilt)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import fields, replace
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salvage.features.eventtime import DAY_US, END, HOUR_US
from salvage.features.lane import LaneConfig, LaneMonitor, _Index
from salvage.flows.messages import Batch, Tick
from salvage.flows.stages import LaneStage, StageConfig, case_key
from salvage.flows.state import LANE
from salvage.sinks import kpis
from salvage.sinks.cost_model import CostModel
from tests.features.lane_reference import ReferenceLaneMonitor

T0 = 1_772_000_000_000_000 - 1_772_000_000_000_000 % DAY_US

CONFIGS = (
    LaneConfig(),
    LaneConfig(warmup_shipments=0),
    LaneConfig(warmup_shipments=0, min_late=1, close_min_shipments=2, late_grace_us=3 * HOUR_US),
    LaneConfig(
        step_us=5 * HOUR_US,  # windows not multiples of the step
        windows_us=(7 * HOUR_US, DAY_US + HOUR_US, 3 * DAY_US),
        baseline_lag_us=0,
        warmup_shipments=3,
        learn_cap=0.0,
        evidence_weight=2.0,
        open_confidence=0.9,
        close_confidence=0.6,
        close_min_shipments=3,
    ),
    # judged after leaving the longest window: never taught to the baseline
    LaneConfig(windows_us=(HOUR_US, 6 * HOUR_US), baseline_lag_us=2 * DAY_US, step_us=HOUR_US),
    LaneConfig(late_grace_us=2 * DAY_US, warmup_shipments=5, min_late=1),
    # judged when an undelivered parcel turns late (not at promise + grace exactly: the step after)
    LaneConfig(step_us=HOUR_US, late_grace_us=3 * HOUR_US, baseline_lag_us=3 * HOUR_US),
    # alert-prone with short windows and a shift that is the new normal after 2 days: alerts
    # close as new normals, bridged reopenings, shifts ending
    LaneConfig(
        step_us=2 * HOUR_US,
        windows_us=(6 * HOUR_US, DAY_US),
        warmup_shipments=0,
        min_late=1,
        open_confidence=0.3,
        close_confidence=0.2,
        close_min_shipments=4,
        late_grace_us=HOUR_US,
        adapt_after_us=2 * DAY_US,
    ),
    # alert-prone: transitions (with their window counts) on most streams
    LaneConfig(
        warmup_shipments=0,
        min_late=1,
        open_confidence=0.3,
        close_confidence=0.2,
        close_min_shipments=1,
        late_grace_us=HOUR_US,
    ),
)

PERSISTED = tuple(f.name for f in fields(ReferenceLaneMonitor))


@st.composite
def streams(draw):
    """(kind, ...) calls: observe(t, order, promise, kind) with t non-decreasing, or advance(t);
    promises from minutes to weeks after the shipment (thin lanes: few orders, long gaps); some
    parcels get a delay signal and then their delivery, often before the promise (a cautious
    carrier's precautionary delay scan)."""
    n_orders = draw(st.integers(1, 40))
    calls = []
    # times and promises often on the hour grid: on evaluation times and window edges exactly
    t = T0 + draw(st.one_of(st.integers(0, DAY_US), st.integers(0, 24).map(HOUR_US.__mul__)))
    promises: dict[int, int] = {}
    for _ in range(draw(st.integers(1, 160))):
        t += draw(
            st.one_of(
                st.integers(0, HOUR_US),
                st.integers(0, 2 * DAY_US),
                st.integers(0, 48).map(HOUR_US.__mul__),
                st.sampled_from([0, 6 * HOUR_US, 12 * DAY_US]),
            )
        )
        what = draw(
            st.sampled_from(
                ["shipped", "shipped", "late", "delivered", "delivered", "adv", "cautious"]
            )
        )
        if what == "adv":
            calls.append(("advance", t + draw(st.integers(0, 3 * DAY_US))))
            continue
        order = draw(st.integers(0, n_orders - 1))
        if order not in promises or draw(st.integers(0, 9)) == 0:
            lead = draw(
                st.one_of(
                    st.integers(-DAY_US, 5 * DAY_US),
                    st.integers(0, 30 * DAY_US),  # long promises
                    st.integers(-24, 240).map(HOUR_US.__mul__),
                    st.sampled_from([0, -1, 1]),
                )
            )
            promises[order] = t - t % HOUR_US + lead if lead % HOUR_US == 0 else t + lead
        if what == "cautious":
            # a precautionary delay scan, then the delivery soon after: on time when the promise
            # (+ grace) is not past yet (a signal must not make such a parcel late)
            calls.append(("observe", t, f"o{order}", promises[order], "late"))
            t += draw(st.one_of(st.integers(0, 6 * HOUR_US), st.sampled_from([0, 1])))
            what = "delivered"
        calls.append(("observe", t, f"o{order}", promises[order], what))
    calls.append(("advance", t + draw(st.integers(0, 20 * DAY_US))))
    return calls


def _reference_counts(shipments: dict, now: int, cfg: LaneConfig) -> list[list[int]]:
    """The window counts of ReferenceLaneMonitor._evaluate at ``now`` (its loop, read only)."""
    counts = [[0, 0] for _ in cfg.windows_us]
    for promise, signal, delivered, _ in shipments.values():
        age = now - promise
        if promise >= now or age >= cfg.windows_us[-1]:
            continue
        deadline = promise + cfg.late_grace_us
        late = delivered > deadline if delivered else (signal or now > deadline)
        for i, w in enumerate(cfg.windows_us):
            if age < w:
                counts[i][0] += 1
                counts[i][1] += late
    return counts


@contextmanager
def _recorded_counts():
    """LaneMonitor._counts, recording (now, window counts) of every evaluation."""
    seen: list = []
    original = LaneMonitor._counts

    def counts(self, now, cfg):
        out = original(self, now, cfg)
        seen.append((now, [list(c) for c in out[0]]))
        return out

    with patch.object(LaneMonitor, "_counts", counts):
        yield seen


def _advance_both(new, ref, until: int, cfg: LaneConfig, seen: list) -> None:
    before = {oid: list(rec) for oid, rec in ref.shipments.items()}
    seen.clear()
    assert new.advance(until, cfg) == ref.advance(until, cfg)
    for now, counts in seen:  # an evaluation only drops shipments no later window counts
        assert counts == _reference_counts(before, now, cfg), now


def _check_index(monitor: LaneMonitor) -> None:
    """The incrementally kept index equals one built afresh from the shipments (no leftovers)."""
    ix = monitor.index
    if ix is None:
        return
    fresh = _Index(monitor.shipments, ix.grace)
    assert (ix.promises, ix.late, ix.waiting) == (fresh.promises, fresh.late, fresh.waiting)
    assert sorted(ix.expiry) == sorted(fresh.expiry)
    # judged or dropped entries may linger in the heap (skipped when popped), nothing is missing
    assert set(fresh.unlearned) <= set(ix.unlearned)


def _state(monitor) -> dict:
    return {name: getattr(monitor, name) for name in PERSISTED}


def _restored(monitor: LaneMonitor) -> LaneMonitor:
    """Through the lane codec (as after a restart): the index is not stored, it is rebuilt."""
    values = LANE.encode(monitor)
    copy = LANE.decoder(None)(
        [({k: list(v) for k, v in x.items()} if isinstance(x, dict) else x) for x in values]
    )
    assert copy.index is None
    return copy


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CONFIGS), streams(), st.integers(0, 200))
def test_indexed_monitor_equals_the_reference(cfg, calls, restore_at):
    cfg.validate()
    new, ref = LaneMonitor("dhl:DE>FR"), ReferenceLaneMonitor("dhl:DE>FR")
    with _recorded_counts() as seen:
        for step, call in enumerate(calls):
            if step == restore_at:
                new = _restored(new)
            if call[0] == "advance":
                _advance_both(new, ref, call[1], cfg, seen)
            else:
                _, t, order, promise, kind = call
                # the stage's order: evaluations strictly before t, then the fact
                _advance_both(new, ref, t, cfg, seen)
                new.observe(t, order, promise, kind, cfg)
                ref.observe(t, order, promise, kind, cfg)
            assert _state(new) == _state(ref)
            assert list(new.shipments) == list(ref.shipments)  # insertion order (snapshots)
            _check_index(new)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CONFIGS[:3]), streams(), st.integers(0, 3 * HOUR_US))
def test_a_changed_grace_rebuilds_the_index(cfg, calls, grace):
    """A restored lane may run under a different late_grace_us (a config change): same result."""
    other = replace(cfg, late_grace_us=grace)
    new, ref = LaneMonitor("l"), ReferenceLaneMonitor("l")
    for step, call in enumerate(calls):
        c = other if step >= len(calls) // 2 else cfg
        if call[0] == "advance":
            assert new.advance(call[1], c) == ref.advance(call[1], c)
        else:
            _, t, order, promise, kind = call
            assert new.advance(t, c) == ref.advance(t, c)
            new.observe(t, order, promise, kind, c)
            ref.observe(t, order, promise, kind, c)
        assert _state(new) == _state(ref)


@pytest.mark.parametrize(
    ("cfg", "facts", "until"),
    [
        # delivered exactly at promise + grace: on time (an update of a waiting parcel)
        (
            LaneConfig(late_grace_us=HOUR_US),
            [(0, "shipped"), (DAY_US + HOUR_US, "delivered")],
            3 * DAY_US,
        ),
        # ... and as the parcel's first fact
        (LaneConfig(late_grace_us=HOUR_US), [(DAY_US + HOUR_US, "delivered")], 3 * DAY_US),
        # a promise exactly at an evaluation is not due there (lag 0: not judged there either)
        (LaneConfig(baseline_lag_us=0, step_us=HOUR_US), [(0, "shipped")], DAY_US + HOUR_US),
        # due for judgement exactly at promise + grace: judged (late) at the next step
        (
            LaneConfig(step_us=HOUR_US, late_grace_us=3 * HOUR_US, baseline_lag_us=3 * HOUR_US),
            [(0, "shipped")],
            DAY_US + 4 * HOUR_US,
        ),
    ],
)
def test_edges_as_the_reference(cfg, facts, until):
    """Parcels promised at T0 + 1 day; every call of both monitors gives the same."""
    cfg.validate()
    new, ref = LaneMonitor("l"), ReferenceLaneMonitor("l")
    promise = T0 + DAY_US
    for j in range(3):  # the first on the evaluation grid (T0 + 1 day), then 1 and 2 µs later
        for t, kind in facts:
            t = T0 + t + j
            assert new.advance(t, cfg) == ref.advance(t, cfg)
            new.observe(t, f"o{j}", promise + j, kind, cfg)
            ref.observe(t, f"o{j}", promise + j, kind, cfg)
    for step in range(0, until + 3 * HOUR_US, HOUR_US // 2):
        assert new.advance(T0 + step, cfg) == ref.advance(T0 + step, cfg)
        assert _state(new) == _state(ref), step
        _check_index(new)


def test_an_incident_stream_gives_the_reference_transitions():
    """A busy lane with an incident (real alerts, open and close) through both monitors."""
    import random

    cfg = LaneConfig()
    rng = random.Random(7)
    facts = []
    for day in range(60):
        rate = 0.6 if 25 <= day < 30 else 0.05
        for j in range(30):
            promise = T0 + day * DAY_US + rng.randrange(DAY_US)
            oid = f"o{day}-{j}"
            facts.append((promise - 3 * DAY_US, oid, promise, "shipped"))
            if rng.random() < rate:
                facts.append((promise - DAY_US, oid, promise, "late"))
                facts.append((promise + 2 * DAY_US, oid, promise, "delivered"))
            elif rng.random() < 0.97:
                facts.append((promise - HOUR_US, oid, promise, "delivered"))
    new, ref = LaneMonitor("l"), ReferenceLaneMonitor("l")
    got, want = [], []
    for t, oid, promise, kind in sorted(facts):
        got += new.advance(t, cfg)
        want += ref.advance(t, cfg)
        new.observe(t, oid, promise, kind, cfg)
        ref.observe(t, oid, promise, kind, cfg)
    got += new.advance(T0 + 80 * DAY_US, cfg)
    want += ref.advance(T0 + 80 * DAY_US, cfg)
    assert [t.opened for t in want] == [True, False]
    assert got == want and _state(new) == _state(ref)


class _ReferenceLaneStage(LaneStage):
    """LaneStage.apply before issue 15: every lane advanced (and its label bucketed), in name
    order, on every call."""

    def apply(self, released, low: int, out) -> None:
        lcfg = self.cfg.lane
        lanes = self.lanes
        for t, _tie, (lane, order_id, promise, fact) in released:
            monitor = lanes.get(lane)
            if monitor is None:
                monitor = lanes[lane] = LaneMonitor(lane)
            if monitor.next_eval and monitor.next_eval < t:
                self._advance(monitor, t, out)
            monitor.observe(t, order_id, promise, fact, lcfg)
        horizon = self.horizon(low)
        for lane in sorted(lanes):
            self._advance(lanes[lane], horizon, out)


@st.composite
def lane_batches(draw):
    """Batches of lane facts (several lanes, some past the top-N, some refused as labels), each
    followed by a tick; event time grows across batches."""
    names = ["b:x>y", "a:x>y", "c:x>z", "a:y>x", "d:1234567>x", "e:x>y", "f:q>r"]
    t = T0
    batches = []
    for _ in range(draw(st.integers(1, 12))):
        items = []
        for _ in range(draw(st.integers(0, 12))):
            t += draw(st.one_of(st.integers(0, 3 * HOUR_US), st.sampled_from([0, 2 * DAY_US])))
            lane = draw(st.sampled_from(names))
            order = f"{lane}-{draw(st.integers(0, 15))}"
            promise = t + draw(st.integers(-DAY_US, 4 * DAY_US))
            kind = draw(st.sampled_from(["shipped", "late", "delivered"]))
            items.append((t, f"{order}|{len(items)}", (lane, order, promise, kind)))
        watermark = t + draw(st.sampled_from([1, HOUR_US, DAY_US]))
        batches.append((items, watermark))
    return batches


@settings(max_examples=150, deadline=None)
@given(lane_batches(), st.integers(0, 4))
def test_lane_stage_skips_idle_lanes_with_the_same_outputs_and_label_order(batches, top_n):
    """Only lanes with an evaluation due are advanced: same outputs, same lane state, and the
    metric labels claimed in the same order (top-N first come) as advancing every lane."""
    cfg = StageConfig(
        case_shards=1,
        cust_shards=1,
        lane_shards=1,
        sources=("p",),
        lane=LaneConfig(warmup_shipments=0, min_late=1, step_us=2 * HOUR_US),
    )
    runs = []
    for make in (LaneStage, _ReferenceLaneStage):
        kpis.configure(kpis.KpiSettings(top_n_lane_monitor=top_n), CostModel())
        try:
            stage = make(0, cfg)
            out = []
            for items, watermark in batches:
                out += stage.on_batch([Batch(items), Tick(case_key(0), watermark, watermark)])
            out += stage.on_batch([Tick(case_key(0), END, batches[-1][1])])
            lanes = {lane: _state(m) for lane, m in stage.lanes.items()}
            runs.append((out, lanes, list(kpis.claimed("lane_monitor").items())))
        finally:
            kpis.configure()
    assert runs[0] == runs[1]
