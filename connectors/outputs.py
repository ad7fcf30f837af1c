"""Wire contracts for Salvage's output streams: interventions, lane-alerts, dead-letters, and the
return journey's status updates (return-status) and breakage alerts (journey-alerts).

Triggers carry ids only (order, customer): no names, emails or addresses. ``trigger_id`` is a
deterministic hash of what decided it, so a replay or a restart yields the same ids and downstream
consumers can dedupe on it; ``update_id`` and the journey ``alert_id`` likewise.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from connectors.events import SCHEMA_VERSION


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


class DeadLetter(_Out):
    """Anything we could not accept, with the original bytes (base64) and where it came from."""

    schema_version: Literal[1] = SCHEMA_VERSION
    source: str = Field(description="input topic, or file path in file mode")
    partition: int
    offset: int = Field(description="Kafka offset, or 1-based line number in file mode")
    kind: DeadLetterKind
    message: str
    raw_b64: str
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
