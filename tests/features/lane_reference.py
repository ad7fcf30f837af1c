"""Test oracle: :class:`ReferenceLaneMonitor` is ``features/lane.py``'s ``LaneMonitor`` as it was
before the promise index of issue 15 (commit 7b7176b), kept verbatim so that
``test_lane_reference.py`` can check the indexed monitor gives the same transitions and state.
Do not optimise this copy. Changes of the monitor's behaviour since, made here too: a shipment is
judged only once an undelivered parcel would be late (past promise + grace), a shift that
lasts ``adapt_after_us`` becomes the lane's baseline (``shift_*``; fix/lane-shift), and a delay
signal counts a parcel late only while it is undelivered: a delivered parcel is late iff its
delivery came after promise + grace (lane-ontime)."""

from __future__ import annotations

from dataclasses import dataclass, field

from salvage.features.lane import LaneConfig, LaneTransition, beta_sf


@dataclass(slots=True)
class ReferenceLaneMonitor:
    """The lane monitor as it was before its promise index (issue 15): every evaluation
    walks every open shipment. The test oracle of :class:`salvage.features.lane.LaneMonitor`."""

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
    shift_from: int = 0  # a shift in progress: its first alert's opening (0: none)
    shift_late: float = 0.0  # decayed counts of the shipments judged since
    shift_volume: float = 0.0

    # ---------------------------------------------------------------- input

    def observe(self, t: int, order_id: str, promise: int, kind: str, cfg: LaneConfig) -> None:
        """``kind``: ``shipped`` (or any first scan), ``late`` (a delay signal), ``delivered``.

        Call :meth:`advance` to ``t`` first (evaluations strictly before ``t``)."""
        if promise <= 0:
            return
        rec = self.shipments.get(order_id)
        if rec is None:
            if promise <= t - cfg.windows_us[-1]:  # past every window (judged, maybe): ignored
                return
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
        deadline = promise + cfg.late_grace_us
        if delivered:  # the delivery time decides, whatever the carrier signalled
            return delivered > deadline
        if signal:  # a delay scan on a parcel still on its way
            return True
        return now > deadline

    def _evaluate(self, now: int, cfg: LaneConfig) -> LaneTransition | None:
        windows = cfg.windows_us
        longest = windows[-1]
        counts = [[0, 0] for _ in windows]  # [volume, late] per window
        leaving_n = leaving_late = judged = delayed = 0
        gone = []
        for oid, rec in self.shipments.items():
            promise = rec[0]
            if promise >= now:
                continue  # not due yet (a promise exactly now is judged at the next step)
            age = now - promise
            late = self._late(rec, now, cfg)
            # judged once an undelivered parcel would be late (earlier it would count on time)
            if age >= cfg.baseline_lag_us and age > cfg.late_grace_us and not rec[3]:
                rec[3] = True
                self.shipments_total += 1
                self.delayed_total += late
                judged += 1
                delayed += late
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
        decay = 0.5 ** (cfg.step_us / cfg.baseline_half_life_us)
        if self.shift_from:
            if not cfg.adapt_after_us or (not self.alert_open and now - self.skip_to > longest):
                self.shift_from, self.shift_late, self.shift_volume = 0, 0.0, 0.0
            else:
                self.shift_late = decay * self.shift_late + delayed
                self.shift_volume = decay * self.shift_volume + judged
        elif self.alert_open and cfg.adapt_after_us:
            self.shift_from = now
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
                p = confidence(*counts[i])
                if p < cfg.close_confidence:
                    transition = self._transition(False, now, i, counts, base, p, cfg)
                elif (
                    cfg.adapt_after_us
                    and self.shift_from
                    and now - self.shift_from >= cfg.adapt_after_us
                    and self.shift_volume > 0.0
                ):
                    self.base_late, self.base_volume = self.shift_late, self.shift_volume
                    self.shift_from, self.shift_late, self.shift_volume = 0, 0.0, 0.0
                    base = self.baseline(cfg)
                    theta = cfg.threshold(base)
                    p = confidence(*counts[i])
                    transition = self._transition(False, now, i, counts, base, p, cfg, True)
                    self.skip_from = now
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
