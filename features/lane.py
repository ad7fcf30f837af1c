"""Per-courier-lane delay monitor: tumbling event-time windows against the lane's own baseline.

A shipment counts once per window (by order id): ``delayed`` if any delay signal was seen for it in
that window (delayed / exception / lost scan, or a carrier ETA beyond the promise). When the
watermark passes a window's end the lane is evaluated over the trailing ``span_windows`` windows
(24 h by default: enough volume on a mid-sized lane, and no time-of-day effect from when carriers
scan), a shipment counting once in the span. The rate is compared with the lane's **own** baseline,
so a systematically slow lane is normal for itself and does not alert:

* baseline: exponentially decayed counts of delayed / all shipments over earlier, non-alerting
  windows, shrunk towards ``prior_rate`` by ``prior_weight`` pseudo-shipments; after warm-up a
  window teaches at most ``baseline + learn_cap`` (an incident building up below the threshold
  must not drag the baseline up with it);
* warm-up: no alert before ``warmup_windows`` windows with shipments have built the baseline;
* open once: ``open_windows`` consecutive evaluations with span volume >= ``min_volume`` (and >=
  ``min_volume_share`` of the lane's usual volume: when intake dries up the parcels still scanning
  are the late ones), rate >=
  baseline + ``open_margin`` and at least ``open_z`` binomial standard errors above it;
* close once: ``close_windows`` consecutive evaluations with the excess over the baseline at most
  ``close_margin`` or at most ``close_fraction`` of the peak excess (recovering: parcels delayed
  by the incident keep signalling for days after it ends), or, when the lane has gone quiet,
  ``quiet_windows`` evaluations without enough volume to judge; the baseline is frozen while an
  alert is open;
* re-arm: after a close, ``rearm_windows`` windows feed the baseline before the lane may open
  again: hysteresis, no flapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from features.eventtime import HOUR_US


@dataclass(frozen=True, slots=True)
class LaneConfig:
    window_us: int = 6 * HOUR_US
    span_windows: int = 4  # evaluate over the trailing 4 windows (24 h)
    min_volume: int = 20  # shipments in the span ...
    min_volume_share: float = 0.5  # ... and this share of the lane's usual span volume (when
    # intake dries up, e.g. at the end of a campaign, the parcels still scanning are the late ones)
    prior_rate: float = 0.06
    prior_weight: float = 30.0  # pseudo-shipments at prior_rate
    baseline_decay: float = 0.95  # per window: half-life ~3.4 days
    warmup_windows: int = 6  # windows with shipments before the lane may alert
    learn_cap: float = 0.05  # after warm-up a window teaches at most baseline + this rate
    open_margin: float = 0.27  # rate must exceed baseline by this much ...
    open_z: float = 3.0  # ... and be this many binomial standard errors above it ...
    open_windows: int = 2  # ... in this many consecutive evaluations
    close_margin: float = 0.10  # calm: at most this far above the baseline, or ...
    close_fraction: float = 0.5  # ... at most this share of the peak excess left (recovering)
    close_windows: int = 2
    quiet_windows: int = 8  # an open alert on a lane without enough volume closes after these
    rearm_windows: int = 12
    critical_margin: float = 0.35


@dataclass(frozen=True, slots=True)
class LaneTransition:
    lane: str
    opened: bool  # True: alert opened; False: closed
    critical: bool
    delay_rate: float
    baseline_rate: float
    volume: int
    window_start: int  # start of the evaluated span
    window_end: int


@dataclass(slots=True)
class LaneMonitor:
    lane: str
    baseline: float = -1.0  # <0: no baseline yet (prior used)
    windows_seen: int = 0
    alert_open: bool = False
    calm_windows: int = 0  # consecutive calm (or quiet) evaluations while an alert is open
    # window start -> {order id: delayed?}
    windows: dict[int, dict[str, bool]] = field(default_factory=dict)
    shipments_total: int = 0
    delayed_total: int = 0
    # decayed baseline counts
    base_delayed: float = 0.0
    base_volume: float = 0.0
    # the last closed windows (start, {order id: delayed?}), oldest first, at most span_windows
    recent: list[tuple[int, dict[str, bool]]] = field(default_factory=list)
    quiet_windows: int = 0
    rearm_left: int = 0
    hot_windows: int = 0  # consecutive evaluations over the open threshold
    peak_rate: float = 0.0  # highest span rate while the alert is open

    def observe(self, t: int, order_id: str, delayed: bool, cfg: LaneConfig) -> None:
        start = t - t % cfg.window_us
        window = self.windows.setdefault(start, {})
        window[order_id] = window.get(order_id, False) or delayed

    def _baseline(self, cfg: LaneConfig) -> float:
        return (self.base_delayed + cfg.prior_rate * cfg.prior_weight) / (
            self.base_volume + cfg.prior_weight
        )

    def _learn(self, window: dict[str, bool], cap: float, cfg: LaneConfig) -> None:
        delayed = sum(window.values())
        if self.windows_seen >= cfg.warmup_windows:
            # winsorised: a window far above the baseline moves it only a little (an incident
            # building up below the alert threshold must not drag the baseline with it)
            delayed = min(delayed, cap * len(window))
        self.base_delayed = cfg.baseline_decay * self.base_delayed + delayed
        self.base_volume = cfg.baseline_decay * self.base_volume + len(window)
        self.baseline = self._baseline(cfg)
        if window:
            self.windows_seen += 1
        if self.rearm_left:
            self.rearm_left -= 1

    def close_windows(self, watermark: int, cfg: LaneConfig) -> list[LaneTransition]:
        """Evaluate every window whose end is strictly below ``watermark``, oldest first."""
        out: list[LaneTransition] = []
        for start in sorted(s for s in self.windows if s + cfg.window_us < watermark):
            window = self.windows.pop(start)
            volume1 = len(window)
            self.shipments_total += volume1
            self.delayed_total += sum(window.values())
            # trailing span: drop windows that fell out of it (gaps count as empty windows)
            span_start = start - (cfg.span_windows - 1) * cfg.window_us
            self.recent = [(s, w) for s, w in self.recent if s >= span_start]
            self.recent.append((start, window))
            merged: dict[str, bool] = {}
            for _s, w in self.recent:
                for order_id, d in w.items():
                    merged[order_id] = merged.get(order_id, False) or d
            volume = len(merged)
            delayed = sum(merged.values())
            rate = delayed / volume if volume else 0.0
            base = self._baseline(cfg)
            transition = None
            if not self.alert_open:
                armed = self.windows_seen >= cfg.warmup_windows and not self.rearm_left
                spread = math.sqrt(max(base, 0.02) * (1 - min(base, 0.98)) / max(volume, 1))
                usual = cfg.span_windows * self.base_volume * (1 - cfg.baseline_decay)
                hot = (
                    volume >= max(cfg.min_volume, cfg.min_volume_share * usual)
                    and rate >= base + cfg.open_margin
                    and (rate - base) / spread >= cfg.open_z
                )
                self.hot_windows = self.hot_windows + 1 if hot else 0
                if armed and self.hot_windows >= cfg.open_windows:
                    self.alert_open = True
                    self.peak_rate = rate
                    self.calm_windows = 0
                    self.quiet_windows = 0
                    transition = True
                else:
                    self._learn(window, base + cfg.learn_cap, cfg)
            elif volume < cfg.min_volume:
                self.quiet_windows += 1
                if self.quiet_windows >= cfg.quiet_windows:
                    transition = False
            else:
                self.quiet_windows = 0
                self.peak_rate = max(self.peak_rate, rate)
                excess = rate - base
                if excess <= max(cfg.close_margin, cfg.close_fraction * (self.peak_rate - base)):
                    self.calm_windows += 1
                    if self.calm_windows >= cfg.close_windows:
                        transition = False
                else:
                    self.calm_windows = 0
            if transition is False:
                self.alert_open = False
                self.hot_windows = 0
                self.rearm_left = cfg.rearm_windows
            if transition is not None:
                out.append(
                    LaneTransition(
                        lane=self.lane,
                        opened=transition,
                        critical=rate >= base + cfg.critical_margin,
                        delay_rate=round(rate, 4),
                        baseline_rate=round(base, 4),
                        volume=volume,
                        window_start=span_start,
                        window_end=start + cfg.window_us,
                    )
                )
        return out
