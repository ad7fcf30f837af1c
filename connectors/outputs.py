"""Wire contracts for Salvage's output streams: interventions, lane-alerts, dead-letters,
model-events, dispositions, and the return journey's status updates (return-status) and breakage
alerts (journey-alerts); :data:`OUTPUTS` declares each stream once.

Triggers carry ids only (order, customer): no names, emails or addresses. ``trigger_id`` is a
deterministic hash of what decided it, so a replay or a restart yields the same ids and downstream
consumers can dedupe on it; ``update_id`` and the journey ``alert_id`` likewise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from salvage.connectors.events import SCHEMA_VERSION


class Action(StrEnum):
    PROACTIVE_REASSURANCE = "proactive_reassurance"
    DELAY_INTERVENTION = "delay_intervention"
    EXCHANGE_FIRST_OFFER = "exchange_first_offer"
    PRODUCT_GUIDANCE = "product_guidance"
    HUMAN_REVIEW = "human_review"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scores(_Out):
    recoverability: float = Field(ge=0.0, le=1.0)
    abuse: float = Field(ge=0.0, le=1.0)


class Trigger(_Out):
    """An intervention for downstream messaging / ops tooling. Key: order_id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    trigger_id: str
    order_id: str
    customer_id: str
    action: Action
    priority: Priority
    reason_codes: list[str]
    scores: Scores
    expected_value: float
    cost: float = Field(
        0.0, ge=0, description="expected cost of the action (goodwill capped at the margin), in EV"
    )
    currency: str
    policy_version: str
    model_version: str
    holdout: bool = False
    decided_at: AwareDatetime = Field(description="event time of the case update that decided it")
    expires_at: AwareDatetime
    source_event_id: str


class AlertState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class LaneAlertReason(StrEnum):
    NEW_NORMAL = "new_normal"  # closed: the shift lasted, it is the lane's baseline now


class LaneAlert(_Out):
    """A courier-lane delay spike opening or closing. Key: lane."""

    schema_version: Literal[1] = SCHEMA_VERSION
    alert_id: str
    lane: str
    courier: str
    origin_region: str
    destination_region: str
    state: AlertState
    severity: Severity
    delay_rate: float  # late share of the shipment cohort (promises in the window)
    baseline_rate: float  # the lane's own late rate
    volume: int  # shipments in the cohort
    late: int = 0  # ... of which late (evidence)
    threshold_rate: float = 0.0  # the rate the test compares with (multiplier * baseline + margin)
    confidence: float = 0.0  # P(cohort late rate > threshold) under the cohort's posterior
    window_start: AwareDatetime
    window_end: AwareDatetime
    reason: LaneAlertReason | None = Field(
        None,
        exclude_if=lambda v: v is None,  # absent unless set: other alerts' bytes unchanged
        description="why a closed alert closed when it is not the cohort's recovery: "
        "new_normal (the shift lasted SALVAGE_LANE_ADAPT_AFTER_DAYS and is the lane's baseline "
        "now: baseline_rate and threshold_rate are the new ones)",
    )


class DeadLetterKind(StrEnum):
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    WRONG_TYPE = "wrong_type"
    BAD_TIMESTAMP = "bad_timestamp"
    INVALID_VALUE = "invalid_value"
    WRONG_STREAM = "wrong_stream"
    TOO_LATE = "too_late"
    UNKNOWN_ORDER = "unknown_order"
    INCONSISTENT = "inconsistent"
    CURRENCY_MISMATCH = "currency_mismatch"


class DeadLetter(_Out):
    """Anything we could not accept, where it came from, and a bounded, redacted copy of it.

    ``raw_b64`` holds at most ``SALVAGE_DEAD_LETTER_MAX_BYTES`` (4096) bytes of the payload, with
    free-text fields (support ``text``, notes, names...) dropped when the payload is JSON; on the
    support stream an unparsable payload keeps no bytes at all. ``raw_len`` and ``raw_sha256``
    always describe the original bytes, so a letter can be matched to its source message.

    The case stage's dead letters (``unknown_order``, ``inconsistent``, ``too_late``,
    ``currency_mismatch``...; ``source`` is ``stage:<shard key>``, ``offset`` -1) come from a
    validated event, whose original bytes are no longer at hand: ``raw_b64`` is that event
    re-serialised (the contract's JSON), and ``event_id`` and ``order_id`` name it at its
    source."""

    schema_version: Literal[1] = SCHEMA_VERSION
    source: str = Field(description="input topic, or file path in file mode")
    partition: int
    offset: int = Field(description="Kafka offset, or 1-based line number in file mode")
    kind: DeadLetterKind
    message: str
    raw_b64: str = Field(description="base64 of the kept bytes (a bounded, redacted prefix)")
    raw_len: int = Field(0, ge=0, description="length of the original payload, in bytes")
    raw_sha256: str = Field("", description="hex SHA-256 of the original payload")
    raw_truncated: bool = Field(False, description="raw_b64 is a prefix of the (redacted) bytes")
    raw_redacted: bool = Field(False, description="free-text fields were dropped from raw_b64")
    event_id: str | None = None
    order_id: str | None = None


class JourneyStage(StrEnum):
    """Where a return stands, in journey order (the three settlements share the last rank)."""

    LABEL_ISSUED = "label_issued"
    PICKED_UP = "picked_up"
    RECEIVED = "received"
    GRADED = "graded"
    REFUND_ISSUED = "refund_issued"
    STORE_CREDIT_ISSUED = "store_credit_issued"
    EXCHANGE_COMPLETED = "exchange_completed"


class StatusUpdate(_Out):
    """A return-journey status for the messaging systems. Key: order_id.

    A service message, not an intervention: never held out, never counted against contact caps,
    at most one per stage per order, and the journey only moves forward (a stage behind one
    already reached is not announced)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    update_id: str = Field(description="hash of (order, return, stage): the same on every replay")
    order_id: str
    customer_id: str
    return_id: str
    stage: JourneyStage
    occurred_at: AwareDatetime = Field(description="event time of the event that moved the return")
    preferred_resolution: str = Field(description="refund, exchange or store_credit ('' unknown)")
    expected_refund_date: date | None = Field(
        description="receipt date + the policy's refund SLA in business days (Mon-Fri, UTC); "
        "on received and graded when the customer asked for a refund (or did not say); else null"
    )
    amount: float | None = Field(
        None, description="on refund_issued / store_credit_issued: the amount paid out"
    )
    currency: str
    policy_version: str
    source_event_id: str


class JourneyAlertKind(StrEnum):
    REFUND_BEFORE_GRADING = "refund_before_grading"
    RECEIVED_UNGRADED = "received_ungraded"
    REFUND_OVERDUE = "refund_overdue"


class JourneyAlert(_Out):
    """A breakage in a return's journey, for the operations team. Key: order_id.

    At most one per kind per order. ``received_ungraded`` and ``refund_overdue`` are event-time
    timers: they fire when the watermark passes receipt + threshold with nothing resolving them,
    so ``observed_hours`` equals ``threshold_hours`` for them (the moment of the breach)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    alert_id: str = Field(description="hash of (order, return, kind): the same on every replay")
    order_id: str
    return_id: str
    kind: JourneyAlertKind
    detected_at: AwareDatetime = Field(description="event time of the breach")
    threshold_hours: float | None = Field(description="the policy threshold (none: a rule)")
    observed_hours: float | None = Field(
        description="hours since receipt at detection (null when the parcel was never received)"
    )
    received_at: AwareDatetime | None
    return_reason: str
    return_value: float
    currency: str
    sku_family: str
    lane: str
    policy_version: str
    source_event_id: str = Field(description="the event that revealed it, or '~timer:<order>'")


class ModelChange(StrEnum):
    PROMOTED = "promoted"
    DEMOTED = "demoted"


class ModelEvent(_Out):
    """A model promoted (shadow -> active) or demoted, with the evidence. Key: model."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: str = Field(description="recoverability or abuse")
    change: ModelChange
    version: str = Field(description="the model's version after the change")
    reason: str
    labels: int = Field(ge=0, description="labels the model had learned from")
    model_auc: float | None = Field(description="rolling ROC AUC; null when undefined")
    rules_auc: float | None = Field(description="the rule baseline's, on the same labels")
    model_auc_flagged: float | None = Field(
        None, description="the model's rolling AUC on the cases the rules flag; null: undefined"
    )
    rules_auc_flagged: float | None = Field(
        None, description="the rules' rolling AUC on the cases they flag; null: undefined"
    )
    t: int = Field(description="event time of the change, microseconds since the epoch (UTC)")
    at: AwareDatetime = Field(description="event time of the change")
    shard: int = Field(ge=0, description="model shard (customers hash to one)")


class DispositionCandidate(_Out):
    route: str
    recovered: float = Field(description="expected recovered value of this route")
    resale: float
    handling: float
    days: float = Field(description="days from receipt to sale on this route")


class Disposition(_Out):
    """The warehouse route for a graded return, by expected recovered value. Key: order_id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    disposition_id: str = Field(description="hash of (order, the grading event): stable")
    order_id: str
    decided_at: AwareDatetime
    policy_version: str
    route: str = Field(description="restock, open_box, refurbish, donate or dispose")
    expected_recovered_value: float
    grade: str
    sku_family: str
    item_value: float
    waited_days: float = Field(description="days between receipt and grading")
    candidates: list[DispositionCandidate]


class OrderOutcome(_Out):
    """A line of a run's ``outcomes.jsonl`` (its out dir, in file and Kafka mode alike): the
    closing outcome of an order assigned to an uplift arm (:mod:`salvage.uplift`), written when
    its case closes. Ids only."""

    order_id: str
    outcome: str = Field(
        description="kept, exchange, store_credit, return_cancelled, refund, chargeback, "
        "cancelled, expired or undelivered"
    )
    retained: bool = Field(description="no refund and no chargeback at the close (DESIGN §11)")
    refunded_amount: float = Field(
        ge=0,
        description="money refunded on the order up to its close: refunds, chargebacks and "
        "goodwill cash paid while it was open (currency units)",
    )
    closed_at: AwareDatetime


class OutcomeAmended(_Out):
    """A line of ``outcomes.jsonl`` after an order's :class:`OrderOutcome`: money paid on it
    after its close, within ``SALVAGE_SETTLED_GRACE_DAYS`` (a refund's later payment, a
    cancelled order's refund, a store credit paid out in cash, an exchange's price difference,
    another return's refund, a chargeback), one line per payment, counted in the KPIs' refunded
    value with ``basis``. Append-only: it restates the outcome (``outcome`` and ``closed_at``
    stay the close's) with the order's new refunded total, so the latest line of an order has
    its total, and whether the order is still retained (money going back after the close ends
    it, an exchange's price difference does not). Ids only."""

    record: Literal["outcome_amended"]
    order_id: str
    outcome: str = Field(description="the close's outcome (unchanged)")
    retained: bool = Field(
        description="the order's after this payment: false once money went back after the close "
        "(a chargeback, another return's refund, a store credit paid out in cash, a cancelled "
        "order's refund), except an exchange's price difference; once false, false"
    )
    refunded_amount: float = Field(
        ge=0, description="the order's refunded total now: the close's plus every later payment"
    )
    closed_at: AwareDatetime
    amended_at: AwareDatetime = Field(description="event time of the payment")
    late: Literal["refund_issued", "chargeback_filed"] = Field(description="the payment's event")
    amount: float = Field(gt=0, description="the payment (currency units)")
    currency: str
    basis: str = Field(
        description="its refund-leakage basis, as salvage_refunded_by_basis_total counts it "
        "(sinks/leakage.py BASES)"
    )
    source_event_id: str = Field(description="the payment's event id: one line per payment")


OUTCOME_RECORDS: dict[str, type[_Out]] = {
    "outcome": OrderOutcome,
    "outcome_amended": OutcomeAmended,
}
"""The lines of ``outcomes.jsonl`` by kind (an :class:`OrderOutcome` line has no ``record``)."""


@dataclass(frozen=True)
class OutputStream:
    """One output stream, declared once: sinks, JSON Schemas, the demo's drain and the tests loop
    over :data:`OUTPUTS`.

    ``item`` is the tag of the output stage's items for this stream; ``sink`` and ``step`` name
    the Bytewax sink and output step (step ids are recovery state: never rename them); ``tag``
    is the one-letter prefix of its serialising step."""

    name: str
    item: str
    model: type[_Out]
    key: Callable[[Any], str]
    topic_setting: str
    file_name: str
    sink: str
    step: str
    tag: str

    def serialise(self, value: Any) -> str:
        """One JSON document (dict items are validated against the contract first)."""
        if not isinstance(value, self.model):
            value = self.model.model_validate(value)
        return value.model_dump_json()


OUTPUTS: tuple[OutputStream, ...] = (
    OutputStream(
        "interventions",
        "trigger",
        Trigger,
        lambda t: t.order_id,
        "topic_interventions",
        "interventions.jsonl",
        "triggers",
        "out_triggers",
        "t",
    ),
    OutputStream(
        "lane-alerts",
        "alert",
        LaneAlert,
        lambda a: a.lane,
        "topic_lane_alerts",
        "lane_alerts.jsonl",
        "alerts",
        "out_alerts",
        "a",
    ),
    OutputStream(
        "dead-letters",
        "dlq",
        DeadLetter,
        lambda d: d.order_id or d.source,
        "topic_dead_letters",
        "dead_letters.jsonl",
        "dlq",
        "out_dlq",
        "d",
    ),
    OutputStream(
        "model-events",
        "model_event",
        ModelEvent,
        lambda m: m["model"],
        "topic_model_events",
        "model_events.jsonl",
        "model_events",
        "out_model_events",
        "m",
    ),
    OutputStream(
        "dispositions",
        "disposition",
        Disposition,
        lambda d: d["order_id"],
        "topic_dispositions",
        "dispositions.jsonl",
        "dispositions",
        "out_dispositions",
        "p",
    ),
    OutputStream(
        "return-status",
        "status_update",
        StatusUpdate,
        lambda u: u.order_id,
        "topic_status_updates",
        "status_updates.jsonl",
        "status_updates",
        "out_status_updates",
        "s",
    ),
    OutputStream(
        "journey-alerts",
        "journey_alert",
        JourneyAlert,
        lambda a: a.order_id,
        "topic_journey_alerts",
        "journey_alerts.jsonl",
        "journey_alerts",
        "out_journey_alerts",
        "j",
    ),
)
