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
    """Deterministic id of one status update or alert: once per (order, return, stage / kind)."""
    return hashlib.sha256(f"journey|{order_id}|{return_id}|{what}".encode()).hexdigest()[:32]


def add_business_days(day: date, n: int) -> date:
    """``day`` + ``n`` business days (Monday-Friday); n = 0 is ``day`` itself."""
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
    """After ``case.apply`` of a returns event at ``t``: the status updates and alerts it causes."""
    stage = STAGE_OF_EVENT.get(event_type)
    if stage is None or (stage in SETTLED and not case.return_requested_at):
        return [], []
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
    """The next event time at which a journey alert is due for this case (0: none)."""
    due = _due(case, cfg)
    return min(d for d, _, _ in due) if due else 0


def on_time(case: OrderCase, now: int, cfg: JourneyConfig) -> list[AlertNotice]:
    """Time reached ``now`` with nothing resolving them: the alerts due by then, in time order."""
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
