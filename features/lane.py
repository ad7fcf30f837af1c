"""Per-courier-lane lateness monitor over **shipment cohorts**, in event time.

A shipment joins its lane when it is shipped (or first scanned) with a delivery promise. It counts
in the cohort of its promise time and is **late** when any of these holds (carriers differ: many
send only a pick-up and a delivery scan, so the promise itself is the signal that never fails):

* its promise passed and it was not delivered by then (``late_grace_us`` of slack);
* it was delivered after the promise;
* a delay / exception / lost / returned scan arrived, or the carrier's ETA moved past the promise.

Every ``step_us`` of event time the lane is evaluated: for each test window ``w`` in
``windows_us`` the cohort is the shipments whose promise fell in ``(now - w, now]`` (all resolved:
on time or late). The lane's **own** baseline ``b`` is a slowly decayed late rate of the shipments
whose promise is ``baseline_lag_us`` old, shrunk towards ``prior_rate`` (frozen while an alert is
open, and an alert's cohort never teaches it; while some window leans above the threshold a step
teaches at most ``b + learn_cap`` (during warm-up always at most ``b + 3 learn_cap``), so an
incident building up below the threshold barely moves it). With the
threshold ``theta = rate_multiplier * b + rate_margin`` and a Beta posterior for the cohort's
late rate (``evidence_weight`` pseudo-shipments at the baseline as prior):

* **open** when in some window ``P(rate > theta) >= open_confidence`` with at least ``min_late``
  late shipments, once ``warmup_shipments`` shipments have built the baseline. The short windows
  catch a busy lane within hours; the long ones let a thin lane (a few parcels a day) alert as
  soon as the evidence is there, with no fixed volume gate;
* **close** (hysteresis) when the most recent cohort holding ``close_min_shipments`` shipments
  (the shortest window that does, else the longest) has ``P(rate > theta) < close_confidence``,
  or when no shipment at all is left in the longest window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from salvage.features.eventtime import DAY_US, HOUR_US


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """The lane monitor's settings (see the module docstring); times in µs.

    >>> cfg = LaneConfig()
    >>> cfg.threshold(0.06)  # 1.5 x the baseline + 0.05
    0.14
    >>> LaneConfig(windows_us=(DAY_US, HOUR_US), close_confidence=0.995).validate()
    Traceback (most recent call last):
    ...
    ValueError: lane monitor: windows must be increasing; close_confidence must be below \
open_confidence (hysteresis)
    """

    step_us: int = 6 * HOUR_US  # evaluation step (event time)
    windows_us: tuple[int, ...] = (
        12 * HOUR_US,
        DAY_US,
        2 * DAY_US,
        4 * DAY_US,
        8 * DAY_US,
    )  # cohort test windows (promises in the last w, strictly before now)
    late_grace_us: int = 0  # delivered this long after the promise still counts as on time
    prior_rate: float = 0.06  # the baseline before the lane has history
    prior_weight: float = 20.0  # pseudo-shipments at prior_rate in the baseline
    baseline_half_life_us: int = 14 * DAY_US
    baseline_lag_us: int = DAY_US  # a shipment teaches the baseline this long after its promise
    warmup_shipments: int = 20  # shipments learned before the lane may alert
    learn_cap: float = 0.05  # a step teaches at most baseline + this rate (winsorised)
    rate_multiplier: float = 1.5  # threshold: rate_multiplier * baseline + rate_margin
    rate_margin: float = 0.05
    evidence_weight: float = 10.0  # Beta prior of a cohort: pseudo-shipments at the baseline
    open_confidence: float = 0.99  # P(rate > threshold) to open
    min_late: int = 3  # late shipments in the window to open
    close_confidence: float = 0.5  # close when P(rate > threshold) drops below this ...
    close_min_shipments: int = 20  # ... in the shortest window holding this many shipments
    critical_margin: float = 0.35  # severity critical: window rate >= baseline + this

    def validate(self) -> LaneConfig:
        """Raise ValueError on settings that cannot work; return self."""
        problems = []
        if self.step_us <= 0:
            problems.append("step must be > 0")
        if not self.windows_us or any(w <= 0 for w in self.windows_us):
            problems.append("windows must be a non-empty list of positive durations")
        elif list(self.windows_us) != sorted(set(self.windows_us)):
            problems.append("windows must be increasing")
        for name in ("prior_rate", "learn_cap", "rate_margin"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1)")
        for name in ("open_confidence", "close_confidence"):
            if not 0.0 < getattr(self, name) < 1.0:
                problems.append(f"{name} must be in (0, 1)")
        if self.close_confidence >= self.open_confidence:
            problems.append("close_confidence must be below open_confidence (hysteresis)")
        if self.rate_multiplier < 1.0:
            problems.append("rate_multiplier must be >= 1")
        if self.prior_weight <= 0 or self.evidence_weight <= 0:
            problems.append("prior_weight and evidence_weight must be > 0")
        if self.baseline_lag_us < 0:
            problems.append("baseline lag must be >= 0")
        if self.baseline_half_life_us <= 0:
            problems.append("baseline half-life must be > 0")
        if self.warmup_shipments < 0 or self.min_late < 1 or self.close_min_shipments < 1:
            problems.append("warmup_shipments >= 0, min_late >= 1, close_min_shipments >= 1")
        if self.late_grace_us < 0:
            problems.append("late grace must be >= 0")
        if problems:
            raise ValueError("lane monitor: " + "; ".join(problems))
        return self

    def threshold(self, baseline: float) -> float:
        return min(0.99, self.rate_multiplier * baseline + self.rate_margin)


@dataclass(frozen=True, slots=True)
class LaneTransition:
    lane: str
    opened: bool  # True: alert opened; False: closed
    critical: bool
    delay_rate: float  # late share of the window's cohort
    baseline_rate: float
    volume: int  # shipments in the window's cohort
    late: int  # late shipments in it
    threshold: float
    confidence: float  # P(rate > threshold) under the cohort's posterior
    window_start: int  # promises in (window_start, window_end)
    window_end: int


def beta_sf(x: float, a: float, b: float) -> float:
    """P(X > x) for X ~ Beta(a, b) (regularised incomplete beta, continued fraction)."""
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast on this side
        return _ibeta(1.0 - x, b, a)
    return 1.0 - _ibeta(x, a, b)


def _ibeta(x: float, a: float, b: float) -> float:
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    front = math.exp(ln + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return min(1.0, max(0.0, front * f))


@dataclass(slots=True)
class LaneMonitor:
    """One courier lane's shipments, baseline and alert state (see the module docstring).

    Ten parcels promised for day 10; four arrive an hour early, six are not delivered when the
    promise passes. With no warm-up the baseline is the prior (6%), the threshold 14%:

    >>> cfg = LaneConfig(warmup_shipments=0)
    >>> lane, promise = LaneMonitor("dhl:DE>FR"), 10 * DAY_US
    >>> for i in range(10):
    ...     lane.observe(DAY_US, f"o{i}", promise, "shipped", cfg)
    >>> for i in range(6, 10):
    ...     lane.observe(promise - HOUR_US, f"o{i}", promise, "delivered", cfg)
    >>> lane.advance(promise, cfg)  # evaluations before the promise: nothing is due yet
    []
    >>> [alert] = lane.advance(promise + cfg.step_us + 1, cfg)  # the step after the promise
    >>> alert.opened, alert.volume, alert.late, alert.delay_rate, alert.threshold
    (True, 10, 6, 0.6, 0.14)
    >>> alert.confidence, alert.critical  # P(rate > 14%) >= open_confidence (0.99)
    (0.9906, True)
    >>> [closed] = lane.advance(promise + 10 * DAY_US, cfg)  # the cohort left every window
    >>> closed.opened, closed.volume, (closed.window_end - promise) // DAY_US, lane.alert_open
    (False, 0, 8, False)
    >>> lane.shipments_total, lane.delayed_total  # judged one day after the promise
    (10, 6)
    """

    lane: str
    # order id -> [promise, late signal seen (bool), delivered at (0: not yet), learned (bool)]
    shipments: dict[str, list] = field(default_factory=dict)
    next_eval: int = 0  # next evaluation time (0: set by the first shipment)
    alert_open: bool = False
    base_late: float = 0.0  # decayed counts of shipments that left the longest window
    base_volume: float = 0.0
    learned: int = 0  # shipments learned (warm-up)
    # cohort of the last alert, promises in [skip_from, skip_to): never taught to the baseline,
    # and no window reaching back before skip_to may open a new alert (hysteresis)
    skip_from: int = 0
    skip_to: int = 0
    shipments_total: int = 0  # shipments judged (baseline_lag_us after their promise)
    delayed_total: int = 0  # ... of which late

    # ---------------------------------------------------------------- input

    def observe(self, t: int, order_id: str, promise: int, kind: str, cfg: LaneConfig) -> None:
        """``kind``: ``shipped`` (or any first scan), ``late`` (a delay signal), ``delivered``.

        Call :meth:`advance` to ``t`` first (evaluations strictly before ``t``)."""
        if promise <= 0:
            return
        rec = self.shipments.get(order_id)
        if rec is None:
            rec = self.shipments[order_id] = [promise, False, 0, False]
            if not self.next_eval:
                self.next_eval = t - t % cfg.step_us + cfg.step_us
        if kind == "late":
            rec[1] = True
        elif kind == "delivered" and not rec[2]:
            rec[2] = t

    # ---------------------------------------------------------------- evaluation

    def baseline(self, cfg: LaneConfig) -> float:
        return (self.base_late + cfg.prior_rate * cfg.prior_weight) / (
            self.base_volume + cfg.prior_weight
        )

    def advance(self, until: int, cfg: LaneConfig) -> list[LaneTransition]:
        """Evaluate at every step time strictly below ``until``, oldest first."""
        out: list[LaneTransition] = []
        if not self.next_eval:
            return out
        while self.next_eval < until:
            now = self.next_eval
            self.next_eval += cfg.step_us
            tr = self._evaluate(now, cfg)
            if tr is not None:
                out.append(tr)
            if not self.shipments and not self.alert_open:
                self.next_eval = 0  # idle lane: wake up with its next shipment
                break
        return out

    def _late(self, rec: list, now: int, cfg: LaneConfig) -> bool:
        promise, signal, delivered, _ = rec
        if signal:
            return True
        deadline = promise + cfg.late_grace_us
        return delivered > deadline if delivered else now > deadline

    def _evaluate(self, now: int, cfg: LaneConfig) -> LaneTransition | None:
        windows = cfg.windows_us
        longest = windows[-1]
        counts = [[0, 0] for _ in windows]  # [volume, late] per window
        leaving_n = leaving_late = 0
        gone = []
        for oid, rec in self.shipments.items():
            promise = rec[0]
            if promise >= now:
                continue  # not due yet (a promise exactly now is judged at the next step)
            age = now - promise
            late = self._late(rec, now, cfg)
            if age >= cfg.baseline_lag_us and not rec[3]:
                rec[3] = True
                self.shipments_total += 1
                self.delayed_total += late
                # an alert's cohort does not teach the baseline (frozen while alerting)
                if not (self.alert_open or self.skip_from <= promise < self.skip_to):
                    leaving_n += 1
                    leaving_late += late
            if age >= longest:
                gone.append(oid)
                continue
            for i, w in enumerate(windows):
                if age < w:
                    c = counts[i]
                    c[0] += 1
                    c[1] += late
        for oid in gone:
            del self.shipments[oid]
        base = self.baseline(cfg)
        theta = cfg.threshold(base)
        k = cfg.evidence_weight

        def confidence(n: int, late: int) -> float:
            return beta_sf(theta, 1.0 + late + k * base, 1.0 + n - late + k * (1.0 - base))

        transition: LaneTransition | None = None
        if not self.alert_open:
            # learn from the shipments judged this step, winsorised while some window leans
            # above the threshold (an incident building up below it must not drag the baseline
            # with it); not always: on a thin lane clipping lumpy steps would bias the baseline
            # low. During warm-up the cap is looser (3x) but always on: a lane slow from the
            # start becomes normal within days, an incident at the start still stands out.
            decay = 0.5 ** (cfg.step_us / cfg.baseline_half_life_us)
            learn: float = leaving_late
            if self.learned < cfg.warmup_shipments:
                learn = min(leaving_late, (base + 3 * cfg.learn_cap) * leaving_n)
            elif leaving_late and any(
                n and confidence(n, late) >= cfg.close_confidence for n, late in counts
            ):
                learn = min(leaving_late, (base + cfg.learn_cap) * leaving_n)
            self.base_late = decay * self.base_late + learn
            self.base_volume = decay * self.base_volume + leaving_n
            self.learned += leaving_n
            if self.learned >= cfg.warmup_shipments:
                best = None
                for i, (n, n_late) in enumerate(counts):
                    if now - windows[i] < self.skip_to:
                        break  # reaches back into the last alert's cohort
                    if n and n_late >= cfg.min_late:
                        p = confidence(n, n_late)
                        if p >= cfg.open_confidence and (best is None or p > best[0]):
                            best = (p, i)
                if best is not None:
                    self.alert_open = True
                    self.skip_from, self.skip_to = now - windows[best[1]], now
                    transition = self._transition(True, now, best[1], counts, base, best[0], cfg)
        else:
            n_longest = counts[-1][0]
            if not n_longest:
                i = len(windows) - 1
                transition = self._transition(False, now, i, counts, base, 0.0, cfg)
            else:
                i = next(
                    (j for j, c in enumerate(counts) if c[0] >= cfg.close_min_shipments),
                    len(windows) - 1,
                )
                p = confidence(*counts[i])
                if p < cfg.close_confidence:
                    transition = self._transition(False, now, i, counts, base, p, cfg)
            if transition is not None:
                self.alert_open = False
                self.skip_to = now
        return transition

    def _transition(self, opened, now, i, counts, base, p, cfg: LaneConfig) -> LaneTransition:
        n, late = counts[i]
        rate = late / n if n else 0.0
        return LaneTransition(
            lane=self.lane,
            opened=opened,
            critical=rate >= base + cfg.critical_margin,
            delay_rate=round(rate, 4),
            baseline_rate=round(base, 4),
            volume=n,
            late=late,
            threshold=round(cfg.threshold(base), 4),
            confidence=round(p, 4),
            window_start=now - cfg.windows_us[i],
            window_end=now,
        )
