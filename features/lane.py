"""Per-courier-lane lateness monitor over **shipment cohorts**, in event time.

A shipment joins its lane when it is shipped (or first scanned) with a delivery promise. It counts
in the cohort of its promise time. Once delivered, its delivery time is the truth: it is **late**
iff delivered after the promise plus ``late_grace_us``, whatever scans came before. Until then it
is late when either holds (carriers differ: many send only a pick-up and a delivery scan, so the
promise itself is the signal that never fails):

* its promise passed (plus ``late_grace_us`` of slack) and it is not delivered yet;
* a delay signal arrived: a delay / exception / lost / returned scan, or the carrier's ETA moved
  past the promise. An early warning only: a parcel delivered on time after one counts on time
  (careful carriers send precautionary delay scans), and a delay signal after the delivery
  changes nothing.

A shipment is judged once (``shipments_total``, and the baseline), ``baseline_lag_us`` after its
promise and not before its lateness is known (past promise + ``late_grace_us``: judged earlier, a
parcel still undelivered would count on time for good), and dropped when its promise leaves the
longest window. A fact that would add a shipment whose promise is already past the
longest window is ignored: it was judged and dropped already if the lane saw it before (a parcel
scanned again long after its promise), and no window can count it.

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
  or when no shipment at all is left in the longest window;
* **close as the new normal** when the *shift* has lasted ``adapt_after_us`` (28 days; 0: never)
  and its alert is still open. A shift starts when an alert opens and none is in progress; an
  alert closed and reopened within the longest window continues it (a persistent shift's alert may
  close on one lucky cohort); closed for longer, it ended (a short incident's, say: its alert
  closes when the cohort recovers, as above, and it taught the baseline nothing). The shipments
  judged during the shift, decayed as the baseline is, *become* the baseline (the history before
  is forgotten): the closing alert carries the new baseline and threshold (``new_normal``), and a
  later spike above the new normal alerts again. An alert restored from a snapshot older than
  this rule starts its shift at the first evaluation after the restore.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush

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
    # a shift that keeps the lane in alert this long is its new normal (0: never)
    adapt_after_us: int = 28 * DAY_US

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
        if self.adapt_after_us < 0 or (
            self.adapt_after_us
            and self.windows_us
            and self.adapt_after_us < max(self.windows_us[-1], self.baseline_lag_us + self.step_us)
        ):
            problems.append(
                "adapt_after must be 0 (never) or at least the longest window and the baseline "
                "lag plus a step (a new normal is learned from judged shipments)"
            )
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
    new_normal: bool = False  # closed: the shift lasted adapt_after_us and is the baseline now


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
    # order id -> [promise, late signal seen (bool), delivered at (0: not yet), learned (bool)];
    # the signal counts only while the parcel is undelivered (the delivery time decides after)
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
    # a shift in progress (adapt_after_us): since its first alert opened at shift_from (0: none;
    # an alert reopening within the longest window of a close continues it), the decayed counts
    # of the shipments judged, the baseline it becomes once it has lasted adapt_after_us
    shift_from: int = 0
    shift_late: float = 0.0
    shift_volume: float = 0.0
    # derived from ``shipments`` (not part of the state: rebuilt when missing), see _Index
    index: _Index | None = field(
        default=None, repr=False, compare=False, metadata={"derived": True}
    )

    # ---------------------------------------------------------------- input

    def observe(
        self, t: int, order_id: str, promise: int, kind: str, cfg: LaneConfig, at: int = 0
    ) -> None:
        """``kind``: ``shipped`` (or any first scan), ``late`` (a delay signal: late until the
        delivery, which then decides; after the delivery it changes nothing), ``delivered`` (at
        ``at``, the delivery's own time, when it differs from ``t``: a scan uploaded late).

        Call :meth:`advance` to ``t`` first (evaluations strictly before ``t``)."""
        if promise <= 0:
            return
        rec = self.shipments.get(order_id)
        ix = self.index
        if ix is not None and ix.grace != cfg.late_grace_us:
            ix = self.index = None  # rebuilt at the next evaluation
        if rec is None:
            if promise <= t - cfg.windows_us[-1]:
                # past every window: its record (if it had one) was judged and dropped, and a
                # fact re-adding it would be judged a second time (a parcel scanned again after
                # its promise plus the longest window); no window can count it either
                return
            rec = self.shipments[order_id] = [promise, False, 0, False]
            if not self.next_eval:
                self.next_eval = t - t % cfg.step_us + cfg.step_us
            if kind == "late":
                rec[1] = True
            elif kind == "delivered" and t:
                rec[2] = at or t
            if ix is not None:
                ix.add(order_id, rec)
        elif kind == "late":
            if not rec[1]:
                if ix is not None and not rec[2]:  # delivered: its delivery time decides
                    ix.move(rec, _LATE)
                rec[1] = True
        elif kind == "delivered" and not rec[2] and t:
            delivered = at or t
            if ix is not None:  # by its delivery time, a delay signal before or not
                ix.move(rec, _LATE if delivered > rec[0] + ix.grace else _ON_TIME)
            rec[2] = delivered

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

    def _counts(self, now: int, cfg: LaneConfig) -> tuple[list[list[int]], int, int, int, int]:
        """Judge the shipments whose promise is ``baseline_lag_us`` old (the totals; returns how
        many may teach the baseline, and how many of those were late, then how many were judged
        and how many of those were late), drop those that left the longest window and count the
        windows' cohorts: ``[volume, late]`` per window.

        Through the index: only the shipments judged or dropped at ``now`` are visited, a
        window's counts are ranges of the index's sorted promises (the same counts as walking
        every shipment, as :class:`tests.features.lane_reference.ReferenceLaneMonitor` does)."""
        ix = self.index
        if ix is None or ix.grace != cfg.late_grace_us:
            ix = self.index = _Index(self.shipments, cfg.late_grace_us)
        grace = ix.grace
        shipments = self.shipments
        leaving_n = leaving_late = judged = delayed = 0
        heap = ix.unlearned
        # judged baseline_lag_us after the promise, and once an undelivered parcel would be late
        # (past promise + grace): judged earlier, it would count on time for good
        cut = now - cfg.baseline_lag_us
        due = now - grace
        if heap and heap[0][0] <= cut and heap[0][0] < due:
            frozen = self.alert_open
            skip_from, skip_to = self.skip_from, self.skip_to
            while heap and (promise := heap[0][0]) <= cut and promise < due:
                oid = heappop(heap)[1]
                rec = shipments.get(oid)
                if rec is None or rec[3] or rec[0] != promise:
                    continue  # left the longest window before its judgement (lag > longest)
                rec[3] = True
                # by the delivery time; undelivered past promise + grace: late (a delay signal
                # or not)
                delivered = rec[2]
                late = delivered > promise + grace if delivered else True
                judged += 1
                delayed += late
                # an alert's cohort does not teach the baseline (frozen while alerting)
                if not (frozen or skip_from <= promise < skip_to):
                    leaving_n += 1
                    leaving_late += late
            self.shipments_total += judged
            self.delayed_total += delayed
        windows = cfg.windows_us
        promises, late_cls, waiting = ix.promises, ix.late, ix.waiting
        cut = now - windows[-1]
        expiry = ix.expiry
        if expiry and expiry[0][0] <= cut:
            while expiry and expiry[0][0] <= cut:
                del shipments[heappop(expiry)[1]]
            del promises[: bisect_right(promises, cut)]
            del late_cls[: bisect_right(late_cls, cut)]
            del waiting[: bisect_right(waiting, cut)]
        # cohort of window w: promises in (now - w, now); late: class _LATE (delivered after
        # promise + grace, or undelivered with a delay signal), or waiting and now > promise + grace
        top_n = bisect_left(promises, now)
        top_late = bisect_left(late_cls, now)
        top_wait = bisect_left(waiting, min(now, now - grace))
        counts = []
        for w in windows:
            lo = now - w
            n_wait = top_wait - bisect_right(waiting, lo)
            counts.append(
                [
                    top_n - bisect_right(promises, lo),
                    top_late - bisect_right(late_cls, lo) + (n_wait if n_wait > 0 else 0),
                ]
            )
        return counts, leaving_n, leaving_late, judged, delayed

    def _evaluate(self, now: int, cfg: LaneConfig) -> LaneTransition | None:
        windows = cfg.windows_us
        counts, leaving_n, leaving_late, judged, delayed = self._counts(now, cfg)
        decay = 0.5 ** (cfg.step_us / cfg.baseline_half_life_us)
        if self.shift_from:
            if not cfg.adapt_after_us or (
                not self.alert_open and now - self.skip_to > windows[-1]
            ):  # it ended: closed for the longest window (or adaptation was switched off)
                self.shift_from, self.shift_late, self.shift_volume = 0, 0.0, 0.0
            else:  # every shipment judged during a shift, as the baseline would learn it
                self.shift_late = decay * self.shift_late + delayed
                self.shift_volume = decay * self.shift_volume + judged
        elif self.alert_open and cfg.adapt_after_us:
            self.shift_from = now  # an alert restored from a snapshot without one: from now on
        base = self.baseline(cfg)
        theta = cfg.threshold(base)
        k = cfg.evidence_weight
        # the cohort's Beta posterior: 1 + late + k * base, 1 + n - late + k * (1 - base)
        k_late, k_on_time = k * base, k * (1.0 - base)

        transition: LaneTransition | None = None
        if not self.alert_open:
            # learn from the shipments judged this step, winsorised while some window leans
            # above the threshold (an incident building up below it must not drag the baseline
            # with it); not always: on a thin lane clipping lumpy steps would bias the baseline
            # low. During warm-up the cap is looser (3x) but always on: a lane slow from the
            # start becomes normal within days, an incident at the start still stands out.
            learn: float = leaving_late
            if self.learned < cfg.warmup_shipments:
                learn = min(leaving_late, (base + 3 * cfg.learn_cap) * leaving_n)
            elif leaving_late and any(
                n
                and beta_sf(theta, 1.0 + late + k_late, 1.0 + n - late + k_on_time)
                >= cfg.close_confidence
                for n, late in counts
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
                        p = beta_sf(theta, 1.0 + n_late + k_late, 1.0 + n - n_late + k_on_time)
                        if p >= cfg.open_confidence and (best is None or p > best[0]):
                            best = (p, i)
                if best is not None:
                    self.alert_open = True
                    self.skip_from, self.skip_to = now - windows[best[1]], now
                    if cfg.adapt_after_us and not self.shift_from:
                        self.shift_from = now
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
                n, n_late = counts[i]
                p = beta_sf(theta, 1.0 + n_late + k_late, 1.0 + n - n_late + k_on_time)
                if p < cfg.close_confidence:
                    transition = self._transition(False, now, i, counts, base, p, cfg)
                elif (
                    cfg.adapt_after_us
                    and self.shift_from
                    and now - self.shift_from >= cfg.adapt_after_us
                    and self.shift_volume > 0.0
                ):
                    # the shift lasted: its shipments are the lane's baseline (the history
                    # before it is forgotten), the alert closes on the new threshold
                    self.base_late, self.base_volume = self.shift_late, self.shift_volume
                    self.shift_from, self.shift_late, self.shift_volume = 0, 0.0, 0.0
                    base = self.baseline(cfg)
                    theta = cfg.threshold(base)
                    p = beta_sf(theta, 1.0 + n_late + k * base, 1.0 + n - n_late + k * (1 - base))
                    transition = self._transition(False, now, i, counts, base, p, cfg, True)
                    self.skip_from = now  # the shift's shipments judged from now on teach it
            if transition is not None:
                self.alert_open = False
                self.skip_to = now
        return transition

    def _transition(
        self, opened, now, i, counts, base, p, cfg: LaneConfig, new_normal: bool = False
    ) -> LaneTransition:
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
            new_normal=new_normal,
        )


# a shipment's class in the index: late whatever the time (delivered after promise + grace, or
# undelivered with a delay signal: until its delivery, which then decides), on time for good
# (delivered by promise + grace, a delay signal before or not), or waiting (undelivered, no
# signal: late once the evaluation time is past promise + grace)
_LATE, _ON_TIME, _WAITING = 0, 1, 2


class _Index:
    """A lane's shipments indexed by promise (derived from ``LaneMonitor.shipments``; rebuilt
    from it when missing, e.g. after a restore, or when ``late_grace_us`` changed).

    ``promises``: every shipment's promise, sorted; ``late`` / ``waiting``: the promises of the
    shipments of that class, sorted (a window's counts are ranges of these); ``unlearned``: a
    heap of (promise, order id) not judged yet; ``expiry``: a heap of (promise, order id) of
    every shipment (dropped when the promise leaves the longest window)."""

    __slots__ = ("expiry", "grace", "late", "promises", "unlearned", "waiting")

    def __init__(self, shipments: dict[str, list], grace: int) -> None:
        self.grace = grace
        self.promises: list[int] = sorted(rec[0] for rec in shipments.values())
        self.late: list[int] = []
        self.waiting: list[int] = []
        for rec in shipments.values():
            cls = self.cls(rec)
            if cls == _LATE:
                self.late.append(rec[0])
            elif cls == _WAITING:
                self.waiting.append(rec[0])
        self.late.sort()
        self.waiting.sort()
        self.expiry = [(rec[0], oid) for oid, rec in shipments.items()]
        heapify(self.expiry)
        self.unlearned = [e for e in self.expiry if not shipments[e[1]][3]]
        heapify(self.unlearned)

    def add(self, order_id: str, rec: list) -> None:
        """A new shipment (``rec`` as recorded): its promise, its class, its heap entries."""
        promise = rec[0]
        insort(self.promises, promise)
        cls = self.cls(rec)
        if cls == _LATE:
            insort(self.late, promise)
        elif cls == _WAITING:
            insort(self.waiting, promise)
        entry = (promise, order_id)
        heappush(self.expiry, entry)
        heappush(self.unlearned, entry)

    def cls(self, rec: list) -> int:
        if rec[2]:  # delivered: its delivery time is the truth, whatever the signals
            return _LATE if rec[2] > rec[0] + self.grace else _ON_TIME
        if rec[1]:
            return _LATE
        return _WAITING

    def move(self, rec: list, to: int) -> None:
        """``rec`` (before its change) becomes class ``to``."""
        cls = self.cls(rec)
        if cls == to:
            return
        promise = rec[0]
        if cls == _LATE:
            del self.late[bisect_left(self.late, promise)]
        elif cls == _WAITING:
            del self.waiting[bisect_left(self.waiting, promise)]
        if to == _LATE:
            insort(self.late, promise)
        elif to == _WAITING:
            insort(self.waiting, promise)
