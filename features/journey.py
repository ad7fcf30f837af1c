"""The return journey: status updates for the messaging systems, breakage alerts for operations.

Pure Python, no I/O. The journey's state is three plain ints on
:class:`salvage.features.order_case.OrderCase` (``journey_rank``, ``journey_sent``,
``journey_alerted``) next to the case's own return timestamps, so it is pickled with the case
shard and survives Bytewax recovery (the timers are recomputed from it). Times are integer
microseconds since the Unix epoch.

Stages, in journey order (rank)::

    label_issued (0) < picked_up (1) < received (2) < graded (3)
        < refund_issued | store_credit_issued | exchange_completed (4: the return is settled)

A stage is announced at most once per order, and only when it moves the journey *forward*: an event
for a stage behind the furthest one reached (a late ``return_in_transit`` after ``return_received``)
is applied to the case but not announced. Settlements count only for cases with a return request
(a refund for a lost parcel is not a return journey).

Alerts, each at most once per kind per order, only while the return is open (no outcome yet):

* ``refund_before_grading`` -- a ``refund_issued`` for a return (not a ``not_received`` claim,
  where there is nothing to grade) with no grade recorded. Detected on the refund event.
* ``received_ungraded`` -- received and still not graded *more than* ``received_ungraded_hours``
  later: an event-time timer at receipt + threshold (a grade at exactly the threshold is in time,
  because events at time T are applied before timers due at T fire).
* ``refund_overdue`` -- received and not settled (refund, exchange, store credit or a cancelled
  return) ``refund_target_days`` after receipt: a timer at receipt + target.

The expected refund date told to the customer is the receipt date (UTC) plus
``refund_sla_business_days`` business days (Monday to Friday), for returns whose customer asked for
a refund (or did not say); it rides on the ``received`` and ``graded`` updates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from salvage.connectors.outputs import JourneyAlertKind, JourneyStage
from salvage.features.eventtime import DAY_US, HOUR_US, from_us

if TYPE_CHECKING:
    from salvage.features.order_case import OrderCase

STAGE_OF_EVENT: dict[str, JourneyStage] = {
    "return_label_issued": JourneyStage.LABEL_ISSUED,
    "return_in_transit": JourneyStage.PICKED_UP,
    "return_received": JourneyStage.RECEIVED,
    "return_graded": JourneyStage.GRADED,
    "refund_issued": JourneyStage.REFUND_ISSUED,
    "store_credit_issued": JourneyStage.STORE_CREDIT_ISSUED,
    "exchange_completed": JourneyStage.EXCHANGE_COMPLETED,
}
STAGE_RANK: dict[JourneyStage, int] = {
    JourneyStage.LABEL_ISSUED: 0,
    JourneyStage.PICKED_UP: 1,
    JourneyStage.RECEIVED: 2,
    JourneyStage.GRADED: 3,
    JourneyStage.REFUND_ISSUED: 4,
    JourneyStage.STORE_CREDIT_ISSUED: 4,
    JourneyStage.EXCHANGE_COMPLETED: 4,
}
SETTLED = frozenset(s for s, r in STAGE_RANK.items() if r == 4)
WITH_REFUND_DATE = frozenset({JourneyStage.RECEIVED, JourneyStage.GRADED})
STAGE_BIT = {s: 1 << i for i, s in enumerate(JourneyStage)}
KIND_BIT = {k: 1 << i for i, k in enumerate(JourneyAlertKind)}
ALL_ALERTS = sum(KIND_BIT.values())  # journey_alerted with every kind raised: no alert to come
# A refund or store credit of less than this (0.00 once rounded to the cent) moves no money: a
# return denied. It closes the case kept (OrderCase._resolve) and is no stage of the journey: no
# "refund_issued 0.0" status update, no refund_before_grading alert (on_event)
NO_MONEY = 0.005
# Customers who asked for these (or did not say) are waiting for money back.
REFUND_PREFERENCES = frozenset({"refund", ""})


@dataclass(frozen=True, slots=True)
class JourneyConfig:
    """What to announce and when to alert (built from the policy's ``journey`` section)."""

    stages: frozenset[JourneyStage] = frozenset(JourneyStage)
    alerts: frozenset[JourneyAlertKind] = frozenset(JourneyAlertKind)
    received_ungraded_us: int = 72 * HOUR_US
    refund_target_us: int = 7 * DAY_US
    refund_sla_business_days: int = 5


@dataclass(frozen=True, slots=True)
class StatusNotice:
    stage: JourneyStage
    t: int
    expected_refund_date: date | None
    amount: float | None


@dataclass(frozen=True, slots=True)
class AlertNotice:
    kind: JourneyAlertKind
    t: int
    threshold_hours: float | None
    observed_hours: float | None


def journey_id(order_id: str, return_id: str, what: str) -> str:
    """Deterministic id of one status update or alert: once per (order, return, stage / kind).

    >>> journey_id("o1", "r1", "received")
    'bbe5b712b8b705d1d3c5440385d9b435'
    >>> journey_id("o1", "r1", "graded") != journey_id("o1", "r1", "received")
    True
    """
    return hashlib.sha256(f"journey|{order_id}|{return_id}|{what}".encode()).hexdigest()[:32]


def add_business_days(day: date, n: int) -> date:
    """``day`` + ``n`` business days (Monday-Friday); n = 0 is ``day`` itself.

    >>> add_business_days(date(2026, 3, 6), 1), add_business_days(date(2026, 3, 6), 5)  # a Friday
    (datetime.date(2026, 3, 9), datetime.date(2026, 3, 13))
    """
    added = 0
    while added < n:
        day += timedelta(days=1)
        if day.weekday() < 5:
            added += 1
    return day


def expected_refund_date(case: OrderCase, cfg: JourneyConfig) -> date | None:
    if not case.received_at or case.preferred_resolution not in REFUND_PREFERENCES:
        return None
    return add_business_days(from_us(case.received_at).date(), cfg.refund_sla_business_days)


def _hours_since_receipt(case: OrderCase, t: int) -> float | None:
    return round((t - case.received_at) / HOUR_US, 3) if case.received_at else None


def on_event(
    case: OrderCase, event_type: str, t: int, amount: float | None, cfg: JourneyConfig
) -> tuple[list[StatusNotice], list[AlertNotice]]:
    """After ``case.apply`` of a returns event at ``t``: the status updates and alerts it causes.

    A return received on Friday 2026-03-06 (a refund is expected five business days later), a
    late ``return_in_transit`` (behind the journey: not announced), then a refund before grading:

    >>> from datetime import UTC, datetime
    >>> from salvage.features.eventtime import to_us
    >>> from salvage.features.order_case import OrderCase
    >>> cfg = JourneyConfig()
    >>> case = OrderCase.of(
    ...     "o1", return_id="r1", return_requested_at=1, preferred_resolution="refund"
    ... )
    >>> case.received_at = t = to_us(datetime(2026, 3, 6, 9, tzinfo=UTC))  # as apply() sets it
    >>> [status], alerts = on_event(case, "return_received", t, None, cfg)
    >>> status.stage.value, status.expected_refund_date, alerts
    ('received', datetime.date(2026, 3, 13), [])
    >>> on_event(case, "return_in_transit", t + 1, None, cfg)
    ([], [])
    >>> [status], [alert] = on_event(case, "refund_issued", t + 100 * HOUR_US, 80.0, cfg)
    >>> status.stage.value, status.amount, alert.kind.value, alert.observed_hours
    ('refund_issued', 80.0, 'refund_before_grading', 100.0)
    """
    stage = STAGE_OF_EVENT.get(event_type)
    if stage is None or (stage in SETTLED and not case.return_requested_at):
        return [], []
    if stage in SETTLED and amount is not None and amount < NO_MONEY:
        return [], []  # no money went back (a return denied): nothing to announce
    alerts: list[AlertNotice] = []
    kind = JourneyAlertKind.REFUND_BEFORE_GRADING
    if (
        stage is JourneyStage.REFUND_ISSUED
        and kind in cfg.alerts
        and not case.graded_at
        and case.return_reason != "not_received"
        and not case.journey_alerted & KIND_BIT[kind]
    ):
        case.journey_alerted |= KIND_BIT[kind]
        alerts.append(AlertNotice(kind, t, None, _hours_since_receipt(case, t)))
    statuses: list[StatusNotice] = []
    rank = STAGE_RANK[stage]
    if rank > case.journey_rank:
        case.journey_rank = rank
        if stage in cfg.stages and not case.journey_sent & STAGE_BIT[stage]:
            case.journey_sent |= STAGE_BIT[stage]
            erd = expected_refund_date(case, cfg) if stage in WITH_REFUND_DATE else None
            paid = amount if stage is not JourneyStage.EXCHANGE_COMPLETED else None
            statuses.append(StatusNotice(stage, t, erd, paid))
    return statuses, alerts


def _due(case: OrderCase, cfg: JourneyConfig) -> list[tuple[int, JourneyAlertKind, int]]:
    """(deadline, kind, threshold µs) of each timer alert still pending for this case."""
    if case.status == "closed" or case.outcome is not None or not case.received_at:
        return []
    due = []
    kind = JourneyAlertKind.RECEIVED_UNGRADED
    if kind in cfg.alerts and not case.graded_at and not case.journey_alerted & KIND_BIT[kind]:
        due.append((case.received_at + cfg.received_ungraded_us, kind, cfg.received_ungraded_us))
    kind = JourneyAlertKind.REFUND_OVERDUE
    if kind in cfg.alerts and not case.journey_alerted & KIND_BIT[kind]:
        due.append((case.received_at + cfg.refund_target_us, kind, cfg.refund_target_us))
    return due


def deadline(case: OrderCase, cfg: JourneyConfig) -> int:
    """The next event time at which a journey alert is due for this case (0: none).

    >>> from salvage.features.order_case import OrderCase, Outcome
    >>> case = OrderCase.of("o1", return_requested_at=1, received_at=10 * DAY_US)
    >>> cfg = JourneyConfig()  # received_ungraded after 72 h, refund_overdue after 7 days
    >>> (deadline(case, cfg) - case.received_at) // HOUR_US
    72
    >>> case.graded_at = 11 * DAY_US  # graded in time: only the refund target is left
    >>> (deadline(case, cfg) - case.received_at) // DAY_US
    7
    >>> case.outcome = Outcome.REFUND  # settled: nothing is due
    >>> deadline(case, cfg)
    0
    """
    # _due(case, cfg)'s least deadline, without building its list (this runs on every update)
    received_at = case.received_at
    if not received_at or case.outcome is not None or case.status == "closed":
        return 0
    alerted = case.journey_alerted
    alerts = cfg.alerts
    best = None
    if _UNGRADED in alerts and not case.graded_at and not alerted & _UNGRADED_BIT:
        best = received_at + cfg.received_ungraded_us
    if _OVERDUE in alerts and not alerted & _OVERDUE_BIT:
        due = received_at + cfg.refund_target_us
        if best is None or due < best:
            best = due
    return 0 if best is None else best


_UNGRADED = JourneyAlertKind.RECEIVED_UNGRADED
_UNGRADED_BIT = KIND_BIT[_UNGRADED]
_OVERDUE = JourneyAlertKind.REFUND_OVERDUE
_OVERDUE_BIT = KIND_BIT[_OVERDUE]


def on_time(case: OrderCase, now: int, cfg: JourneyConfig) -> list[AlertNotice]:
    """Time reached ``now`` with nothing resolving them: the alerts due by then, in time order.

    Each alert is raised once per order:

    >>> from salvage.features.order_case import OrderCase
    >>> case = OrderCase.of("o1", return_requested_at=1, received_at=10 * DAY_US)
    >>> cfg = JourneyConfig()
    >>> on_time(case, 13 * DAY_US - 1, cfg)  # 1 µs short of 72 h
    []
    >>> def alerts(now):
    ...     return [(a.kind.value, a.threshold_hours, a.observed_hours)
    ...             for a in on_time(case, now, cfg)]
    >>> alerts(13 * DAY_US)  # exactly 72 h after receipt: due
    [('received_ungraded', 72.0, 72.0)]
    >>> alerts(20 * DAY_US)  # 7 days were due at day 17
    [('refund_overdue', 168.0, 240.0)]
    >>> on_time(case, 30 * DAY_US, cfg), deadline(case, cfg)
    ([], 0)
    """
    alerts = []
    for due, kind, threshold in sorted(_due(case, cfg)):
        if due <= now:
            case.journey_alerted |= KIND_BIT[kind]
            alerts.append(
                AlertNotice(
                    kind, now, round(threshold / HOUR_US, 3), _hours_since_receipt(case, now)
                )
            )
    return alerts
