"""Per-courier-lane delay monitor: tumbling event-time windows against the lane's own baseline.

A shipment counts once per window (by order id): ``delayed`` if any delay signal was seen for it in
that window (delayed / exception / lost scan, or a carrier ETA beyond the promise). When the
watermark passes a window's end the window's delay rate is compared with the lane's baseline (an
EWMA over earlier, non-alerting windows). An alert opens once (rate far above baseline, with a
minimum volume) and closes once (rate back near baseline): hysteresis, no flapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from features.eventtime import HOUR_US


@dataclass(frozen=True, slots=True)
class LaneConfig:
    window_us: int = 6 * HOUR_US
    min_volume: int = 15
    prior_rate: float = 0.10
    ewma_alpha: float = 0.2
    open_margin: float = 0.20  # rate must exceed baseline by this much ...
    open_z: float = 3.0  # ... and be this many binomial standard errors above it
    close_margin: float = 0.05  # closes after `close_windows` windows at most this far above
    close_windows: int = 2
    critical_margin: float = 0.35


@dataclass(frozen=True, slots=True)
class LaneTransition:
    lane: str
    opened: bool  # True: alert opened; False: closed
    critical: bool
    delay_rate: float
    baseline_rate: float
    volume: int
    window_start: int
    window_end: int


@dataclass(slots=True)
class LaneMonitor:
    lane: str
    baseline: float = -1.0  # <0: no baseline yet (prior used)
    windows_seen: int = 0
    alert_open: bool = False
    calm_windows: int = 0  # consecutive calm windows while an alert is open
    # window start -> {order id: delayed?}
    windows: dict[int, dict[str, bool]] = field(default_factory=dict)
    shipments_total: int = 0
    delayed_total: int = 0

    def observe(self, t: int, order_id: str, delayed: bool, cfg: LaneConfig) -> None:
        start = t - t % cfg.window_us
        window = self.windows.setdefault(start, {})
        window[order_id] = window.get(order_id, False) or delayed

    def close_windows(self, watermark: int, cfg: LaneConfig) -> list[LaneTransition]:
        """Evaluate every window whose end is strictly below ``watermark``, oldest first."""
        out: list[LaneTransition] = []
        for start in sorted(s for s in self.windows if s + cfg.window_us < watermark):
            window = self.windows.pop(start)
            volume = len(window)
            delayed = sum(window.values())
            self.shipments_total += volume
            self.delayed_total += delayed
            rate = delayed / volume if volume else 0.0
            base = self.baseline if self.baseline >= 0 else cfg.prior_rate
            transition = None
            if volume >= cfg.min_volume:
                spread = math.sqrt(max(base, 0.02) * (1 - min(base, 0.98)) / volume)
                z = (rate - base) / spread
                if not self.alert_open:
                    if rate >= base + cfg.open_margin and z >= cfg.open_z:
                        self.alert_open = True
                        self.calm_windows = 0
                        transition = True
                    else:
                        self.baseline = (
                            rate
                            if self.baseline < 0
                            else (1 - cfg.ewma_alpha) * self.baseline + cfg.ewma_alpha * rate
                        )
                        self.windows_seen += 1
                elif rate <= base + cfg.close_margin:
                    self.calm_windows += 1
                    if self.calm_windows >= cfg.close_windows:
                        self.alert_open = False
                        transition = False
                else:
                    self.calm_windows = 0
            if transition is not None:
                out.append(
                    LaneTransition(
                        lane=self.lane,
                        opened=transition,
                        critical=rate >= base + cfg.critical_margin,
                        delay_rate=round(rate, 4),
                        baseline_rate=round(base, 4),
                        volume=volume,
                        window_start=start,
                        window_end=start + cfg.window_us,
                    )
                )
        return out

    def idle(self) -> bool:
        return not self.windows and not self.alert_open
