"""A lane whose normal shifts for good (a carrier moved a depot: 30% late instead of 5%) alerts,
then, once the shift has lasted ``LaneConfig.adapt_after_us`` (28 days), closes its alert as the
lane's *new normal*: the shift's shipments are its baseline, so a further spike alerts again.
Short incidents are unchanged (alert, close on recovery, baseline not taught the incident).

The streams here are not the detector's model: a carrier that sends only pick-up and delivery
(no delay scan), promises at 21:00, fewer parcels at weekends, late parcels delivered 14-100 h
after their promise and 3% of them never."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.config import Settings
from salvage.connectors.simulator import write_log
from salvage.features.eventtime import DAY_US, HOUR_US
from salvage.features.lane import LaneConfig, LaneMonitor, LaneTransition
from salvage.flows.state import LANE
from tests.features.test_lane_alerts import _RUN, _onset_and_recovery, _ts
from tests.flowkit import jsonl

D = DAY_US
CFG = LaneConfig()
OFF = replace(CFG, adapt_after_us=0)  # the monitor before: an alert waits for the cohort
SHIFT = ("silent-carrier-incident", 18200, 1, 350.0)  # 52 days; the lane ~18 parcels a day


def _facts(rate_of_day: Callable[[int], float], per_day: float, days: int, seed: int) -> list:
    """(time, order, promise, kind) in time order; one cohort a day, promised at 21:00."""
    rng = random.Random(seed)
    out = []
    for day in range(days):
        volume = per_day * (0.6 if day % 7 in (5, 6) else 1.15)
        count = int(volume) + (rng.random() < volume - int(volume))
        promise = day * D + 21 * HOUR_US
        for j in range(count):
            oid = f"o{day}-{j}"
            out.append((promise - rng.randrange(D, 3 * D + D // 2), oid, promise, "shipped"))
            if rng.random() < rate_of_day(day):
                if rng.random() >= 0.03:  # late, no scan says so; 3% never delivered
                    late_by = int(rng.uniform(14, 100) * HOUR_US)
                    out.append((promise + late_by, oid, promise, "delivered"))
            else:
                out.append((promise - int(rng.uniform(1, 11) * HOUR_US), oid, promise, "delivered"))
    out.sort()
    return out


def _run(facts: list, cfg: LaneConfig, until: int, monitor: LaneMonitor | None = None):
    monitor = monitor or LaneMonitor("parcelgo:central>south")
    out: list[LaneTransition] = []
    for t, oid, promise, kind in facts:
        out += monitor.advance(t, cfg)
        monitor.observe(t, oid, promise, kind, cfg)
    out += monitor.advance(until, cfg)
    return out, monitor


def _shift(day: int) -> float:
    """5% late; from day 30 on 30% for good; days 70-73 a spike to 75% on top."""
    return 0.05 if day < 30 else 0.75 if 70 <= day < 74 else 0.3


def _days(tr: LaneTransition) -> float:
    return tr.window_end / D


@pytest.mark.parametrize("seed", range(4))
def test_a_permanent_shift_alerts_then_becomes_the_new_normal_and_a_later_spike_alerts(seed):
    out, monitor = _run(_facts(_shift, 30, 100, seed), CFG, 112 * D)
    adapt = CFG.adapt_after_us / D
    # the first shifted cohort is due at 21:00 of day 30: the alert opens within 4 days
    first = out[0]
    assert first.opened and 30.875 < _days(first) <= 35, (seed, out)
    # a persistent shift's alert may close on one lucky cohort and reopen: the shift goes on
    nn = [i for i, t in enumerate(out) if t.new_normal]
    assert len(nn) == 1, (seed, out)
    closing = out[nn[0]]
    assert not closing.opened
    flaps = out[1 : nn[0]]  # closes, each reopened within the longest window (8 days)
    assert [t.opened for t in flaps] == [False, True] * (len(flaps) // 2), (seed, out)
    pairs = zip(flaps[::2], flaps[1::2], strict=True)
    assert all(b.window_end - a.window_end <= 8 * D for a, b in pairs), out
    # closed as the new normal 28 days after the shift's alert opened (+ a reopening's delay)
    assert _days(first) + adapt <= _days(closing) <= _days(first) + adapt + 3, (seed, out)
    # ... with the shift's late rate (30% plus the 5% the lane had) as its baseline
    assert 0.24 <= closing.baseline_rate <= 0.36, closing
    assert closing.threshold == pytest.approx(CFG.threshold(closing.baseline_rate), abs=1e-3)
    # then silence on the new normal, until the spike: opens within 1.5 days of its first
    # cohort (day 70, 21:00), closes within 2 days of its last one (day 73), as a recovery
    rest = out[nn[0] + 1 :]
    assert [t.opened for t in rest] == [True, False], (seed, rest)
    spike_open, spike_close = rest
    assert 70.875 < _days(spike_open) <= 72.5, (seed, spike_open)
    assert spike_open.baseline_rate > 0.2 and spike_open.delay_rate > spike_open.threshold
    assert 73.875 < _days(spike_close) <= 76, (seed, spike_close)
    assert not spike_close.new_normal
    assert 0.24 <= monitor.baseline(CFG) <= 0.36


def test_without_adaptation_the_shift_stays_in_alert_and_hides_the_spike():
    """The defect (``adapt_after_us=0`` is the monitor as it was): the baseline frozen at 5%,
    the shift in alert until its shipments run out, the spike never its own alert."""
    out, monitor = _run(_facts(_shift, 30, 100, 0), OFF, 112 * D)
    opened = [t for t in out if t.opened]
    assert opened and not any(t.new_normal for t in out)
    assert monitor.baseline(OFF) < 0.07
    assert not any(70 < _days(t) < 77 for t in opened)  # the spike: no alert of its own


def _incident(day: int) -> float:
    return 0.7 if 30 <= day < 34 else 0.05


@pytest.mark.parametrize("seed", range(4))
def test_a_short_incident_is_unchanged(seed):
    """Alert, close when the cohort recovers: the same transitions and the same baseline as the
    monitor without adaptation; the incident did not teach the baseline."""
    facts = _facts(_incident, 30, 70, seed)
    out, monitor = _run(facts, CFG, 82 * D)
    before, old = _run(facts, OFF, 82 * D)
    assert out == before and [t.opened for t in out] == [True, False], (seed, out)
    assert (monitor.base_late, monitor.base_volume) == (old.base_late, old.base_volume)
    assert monitor.baseline(CFG) < 0.07 and not any(t.new_normal for t in out)
    assert monitor.shift_from == 0  # the shift it started ended with the longest window


def test_a_shift_on_a_thin_lane():
    """5 parcels a day: slower evidence, the same story."""
    shift = lambda day: 0.04 if day < 30 else 0.35  # noqa: E731
    out, monitor = _run(_facts(shift, 5, 100, 3), CFG, 112 * D)
    assert out[0].opened and 30 < _days(out[0]) <= 36, out
    nn = [t for t in out if t.new_normal]
    assert len(nn) == 1 and _days(out[0]) + 28 <= _days(nn[0]) <= _days(out[0]) + 31, out
    assert all(t.window_end <= nn[0].window_end for t in out), out  # nothing after
    assert 0.2 <= monitor.baseline(CFG) <= 0.4


@st.composite
def _segments(draw):
    """A lane's late rate as segments (days, rate): short incidents, long shifts, recoveries."""
    segs = [(draw(st.integers(12, 25)), draw(st.sampled_from([0.02, 0.05, 0.1])))]
    for _ in range(draw(st.integers(1, 4))):
        segs.append((draw(st.integers(2, 40)), draw(st.sampled_from([0.05, 0.2, 0.35, 0.6, 0.9]))))
    return segs, draw(st.sampled_from([4, 12, 30])), draw(st.integers(0, 10**6))


@settings(max_examples=40, deadline=None)
@given(_segments())
def test_adaptation_changes_nothing_before_a_new_normal(case):
    """State machine property: with and without adaptation the transitions are the same until
    the first new-normal close; alerts alternate open / close; a new-normal close comes at least
    adapt_after_us after the opening of its shift (an alert opening with no shift in progress:
    none yet, the last one closed as a new normal, or closed longer than the longest window)."""
    segs, per_day, seed = case
    rates = [rate for days, rate in segs for _ in range(days)]
    facts = _facts(lambda day: rates[day], per_day, len(rates), seed)
    until = (len(rates) + 12) * D
    out, _ = _run(facts, CFG, until)
    before, _ = _run(facts, OFF, until)
    first_nn = next((i for i, t in enumerate(out) if t.new_normal), len(out))
    assert out[:first_nn] == before[:first_nn]
    assert [t.opened for t in out] == [i % 2 == 0 for i in range(len(out))]
    longest = CFG.windows_us[-1]
    shift_from: int | None = None
    closed_at = 0  # the last close that may be bridged
    for t in out:
        if t.opened:
            if shift_from is None or t.window_end - closed_at > longest:
                shift_from = t.window_end
        elif t.new_normal:
            assert shift_from is not None and t.window_end - shift_from >= CFG.adapt_after_us
            shift_from = None
        else:
            closed_at = t.window_end


def test_a_restored_alert_from_an_older_snapshot_adapts_from_the_restore():
    """A lane monitor written before these fields (no shift_*: its schema lacks them) loads
    with no shift in progress; an alert open in it starts its shift clock at the first
    evaluation after the restore and becomes the new normal adapt_after_us later."""
    facts = _facts(_shift, 30, 100, 1)
    cut = next(i for i, f in enumerate(facts) if f[0] >= 40 * D)
    _, monitor = _run(facts[:cut], CFG, facts[cut][0])
    assert monitor.alert_open and monitor.shift_from
    old_names = tuple(n for n in LANE.names if not n.startswith("shift_"))
    values = [getattr(monitor, n) for n in old_names]
    values = [({k: list(v) for k, v in x.items()} if isinstance(x, dict) else x) for x in values]
    restored = LANE.decoder(old_names)(values)
    assert restored.alert_open and (restored.shift_from, restored.shift_volume) == (0, 0.0)
    out, _ = _run(facts[cut:], CFG, 112 * D, restored)
    nn = [t for t in out if t.new_normal]
    assert len(nn) == 1, out
    # the clock started at the restore (day 40), not at the alert's opening (day ~31)
    assert 40 + 28 <= _days(nn[0]) <= 40 + 31, nn


def test_the_setting_is_exposed_and_validated():
    assert Settings().lanes.config().adapt_after_us == 28 * D
    assert Settings(lane_adapt_after_days=14).lanes.config().adapt_after_us == 14 * D
    assert Settings(lane_adapt_after_days=0).lanes.config().adapt_after_us == 0
    for bad in (-1, 3):  # negative; shorter than the longest window (8 days)
        with pytest.raises(ValueError):
            Settings(lane_adapt_after_days=bad)
    with pytest.raises(ValueError, match="adapt_after"):
        LaneConfig(adapt_after_us=7 * D).validate()
    LaneConfig(adapt_after_us=8 * D).validate()
    # the fields of the state: three numbers per lane
    names = {f.name for f in fields(LaneMonitor)}
    assert {"shift_from", "shift_late", "shift_volume"} <= names


def test_the_lane_stage_publishes_the_new_normal_and_other_lanes_stay_silent():
    """Three lanes through the lane stage (daily batches, watermark ticks): the shifted one,
    one steady at 5% and one always slow (15%). Only the shifted lane alerts; its new-normal
    close says so on the wire (``"reason": "new_normal"``), its other alerts carry no reason
    (their bytes as before)."""
    from salvage.connectors.outputs import OUTPUTS
    from salvage.flows.messages import Batch, Route, Tick
    from salvage.flows.stages import LaneStage, StageConfig, case_key
    from salvage.sinks import kpis

    t0 = 1_772_409_600_000_000  # 2026-03-02T00:00Z
    lanes = {
        "parcelgo:central>south": _shift,
        "parcelgo:north>north": lambda day: 0.05,
        "swiftship:west>west": lambda day: 0.15,
    }
    facts = sorted(
        (t0 + t, f"{lane}|{oid}", (lane, f"{lane}|{oid}", t0 + promise, kind))
        for seed, (lane, rates) in enumerate(lanes.items())
        for t, oid, promise, kind in _facts(rates, 25, 100, seed)
    )
    kpis.configure()
    stage = LaneStage(0, StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("p",)))
    out = []
    day = 0
    while facts:
        cut = t0 + (day + 1) * D
        batch = [f for f in facts if f[0] < cut]
        facts = facts[len(batch) :]
        out += stage.on_batch([Batch(batch), Tick(case_key(0), cut, cut)])
        day += 1
    alerts = [p[1].payload[1] for route, p in out if route is Route.OUTPUT]
    assert {a.lane for a in alerts} == {"parcelgo:central>south"}, alerts
    stream = next(s for s in OUTPUTS if s.name == "lane-alerts")
    wire = [stream.serialise(a) for a in alerts]
    reasons = [a.reason for a in alerts]
    assert reasons.count("new_normal") == 1
    (nn,) = (w for w in wire if '"reason"' in w)
    assert '"state":"closed"' in nn and '"reason":"new_normal"' in nn
    assert [a.state for a in alerts][-2:] == ["open", "closed"]  # the spike, after it
    assert alerts[-2].window_end > alerts[reasons.index("new_normal")].window_end


# ---------------------------------------------------------------- the simulator, file mode


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """``silent-carrier-incident --variant lane-shift``: carriers send only pick-up and delivery;
    a 3.5-day incident on swiftship:central>central (days 3-6.5), and parcelgo:central>south
    (~3% late) 30% late for good from day 10, a spike to 80% on top on days 44-48."""
    scenario, orders, seed, per_day = SHIFT
    root = tmp_path_factory.mktemp("lane-shift")
    log, truth = root / "events.jsonl", root / "events.truth"
    write_log(scenario, orders, seed, log, truth, orders_per_day=per_day, variants=("lane-shift",))
    out = root / "out"
    out.mkdir()
    subprocess.run(  # a child process, as test_lane_alerts' runs (metric label series)
        [sys.executable, "-c", _RUN, str(log), str(out)],
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        timeout=300,
        capture_output=True,
    )
    records = [json.loads(x) for x in truth.read_text().splitlines()]
    return jsonl((out / "lane_alerts.jsonl").read_bytes()), records, log


def test_the_simulated_depot_move_alerts_becomes_the_new_normal_and_the_spike_alerts(shifted):
    alerts, truth, log = shifted
    (shift,) = (r for r in truth if r["type"] == "lane_shift")
    assert shift["scans"] == "picked_up+delivered" and shift["end"] is None
    incidents = {r["lane"]: r for r in truth if r["type"] == "lane_incident"}
    spike = incidents.pop(shift["lane"])
    (short,) = incidents.values()
    by_lane: dict[str, list[dict]] = {}
    for a in alerts:
        by_lane.setdefault(a["lane"], []).append(a)
    assert set(by_lane) == {shift["lane"], short["lane"]}, "other lanes: no alert"

    # the short incident: open within a day of its onset, closed within a day of its recovery
    t = _onset_and_recovery(log, short)
    opened, closed = by_lane[short["lane"]]
    assert (opened["state"], closed["state"]) == ("open", "closed")
    assert t["onset"] <= _ts(opened["window_end"]) <= t["onset"] + timedelta(days=1)
    assert _ts(closed["window_end"]) <= t["recovered"] + timedelta(days=1)
    assert "reason" not in opened and "reason" not in closed

    # the shift: the lane's parcels picked up from its start until the spike
    truth_shift = _onset_and_recovery(log, shift | {"end": spike["start"]})
    assert truth_shift["baseline"] <= 0.05 and truth_shift["late_rate"] >= 0.25
    mine = by_lane[shift["lane"]]
    first = mine[0]
    assert first["state"] == "open"
    assert _ts(first["window_end"]) <= truth_shift["onset"] + timedelta(days=2), first
    (i,) = (n for n, a in enumerate(mine) if a.get("reason") == "new_normal")
    new_normal = mine[i]
    assert new_normal["state"] == "closed"
    flaps = mine[1:i]  # a close on one lucky cohort, reopened within the longest window
    assert [a["state"] for a in flaps] == ["closed", "open"] * (len(flaps) // 2)
    # 28 days after the shift's alert opened, the shift's late rate is the lane's baseline
    held = _ts(new_normal["window_end"]) - _ts(first["window_end"])
    assert timedelta(days=28) <= held <= timedelta(days=29), held
    assert abs(new_normal["baseline_rate"] - truth_shift["late_rate"]) <= 0.05, new_normal
    assert new_normal["threshold_rate"] > truth_shift["late_rate"]

    # the spike on the new normal: its own alert, closed when its cohort recovered
    truth_spike = _onset_and_recovery(log, spike)
    after = mine[i + 1 :]
    assert [a["state"] for a in after] == ["open", "closed"], after
    assert _ts(after[0]["window_end"]) <= truth_spike["onset"] + timedelta(days=2), after
    assert after[0]["baseline_rate"] == pytest.approx(new_normal["baseline_rate"], abs=0.03)
    assert _ts(after[1]["window_end"]) <= truth_spike["recovered"] + timedelta(days=1)
    assert "reason" not in after[1]
