"""The lane stage: per-courier-lane delay monitors for one lane shard."""

from __future__ import annotations

import hashlib

from salvage.connectors.outputs import (
    AlertState,
    LaneAlert,
    LaneAlertReason,
    Severity,
)
from salvage.features.eventtime import from_us
from salvage.features.lane import LaneMonitor, LaneTransition
from salvage.flows.messages import Emit, Event, Route
from salvage.flows.stages.base import OUT_KEY, StageConfig, _Stage, lane_key
from salvage.sinks import kpis, metrics


class LaneStage(_Stage):
    """Per-courier-lane delay monitors for one lane shard."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(lane_key(shard), cfg.case_keys())
        self.shard = shard
        self.cfg = cfg
        self.lanes: dict[str, LaneMonitor] = {}

    def apply(self, released, low: int, out: Emit) -> None:
        lcfg = self.cfg.lane
        lanes = self.lanes
        for t, _tie, item in released:
            # (lane, order id, promise, fact, delivered at); a fact from a snapshot taken before
            # it carried its delivery time has four (delivered at t)
            lane, order_id, promise, fact = item[:4]
            at = item[4] if len(item) > 4 else 0
            monitor = lanes.get(lane)
            if monitor is None:
                monitor = lanes[lane] = LaneMonitor(lane)
            # evaluations strictly before this fact's time first: the same alerts whatever the
            # batching of the input
            if monitor.next_eval and monitor.next_eval < t:
                self._advance(monitor, t, out)
            monitor.observe(t, order_id, promise, fact, lcfg, at)
        horizon = self.horizon(low)
        # every lane with an evaluation due, in name order; a lane with none due is skipped
        # (advance would do nothing) once its metric label is claimed: the first bucket() call
        # of a lane claims it (top 256, then other), in the same order as advancing every lane
        claimed = kpis.claimed("lane_monitor")
        due = [
            lane
            for lane, monitor in lanes.items()
            if (monitor.next_eval and monitor.next_eval < horizon) or lane not in claimed
        ]
        due.sort()
        for lane in due:
            self._advance(lanes[lane], horizon, out)

    def _advance(self, monitor: LaneMonitor, until: int, out: Emit) -> None:
        shipped, delayed_before = monitor.shipments_total, monitor.delayed_total
        # lanes are built from free-text payload fields: bounded labels (top 256, then other);
        # the alert gauge counts open alerts, so "other" adds up its lanes (and shards)
        label = kpis.bucket("lane_monitor", monitor.lane)
        for tr in monitor.advance(until, self.cfg.lane):
            alert = _lane_alert(tr)
            metrics.LANE_ALERT_OPEN.labels(label).inc(1 if tr.opened else -1)
            out.append(
                (
                    Route.OUTPUT,
                    (OUT_KEY, Event(tr.window_end, f"a|{alert.alert_id}", ("alert", alert))),
                )
            )
        if monitor.shipments_total != shipped:
            metrics.LANE_SHIPMENTS.labels(label).inc(monitor.shipments_total - shipped)
            metrics.LANE_DELAYED.labels(label).inc(monitor.delayed_total - delayed_before)


def _lane_alert(tr: LaneTransition) -> LaneAlert:
    courier, _, route = tr.lane.partition(":")
    origin, _, destination = route.partition(">")
    state = AlertState.OPEN if tr.opened else AlertState.CLOSED
    alert_id = hashlib.sha256(f"{tr.lane}|{state}|{tr.window_end}".encode()).hexdigest()[:24]
    return LaneAlert(
        alert_id=alert_id,
        lane=tr.lane,
        courier=courier,
        origin_region=origin,
        destination_region=destination,
        state=state,
        severity=Severity.CRITICAL if tr.critical else Severity.WARNING,
        delay_rate=tr.delay_rate,
        baseline_rate=tr.baseline_rate,
        volume=tr.volume,
        late=tr.late,
        threshold_rate=tr.threshold,
        confidence=tr.confidence,
        window_start=from_us(tr.window_start),
        window_end=from_us(tr.window_end),
        reason=LaneAlertReason.NEW_NORMAL if tr.new_normal else None,
    )
