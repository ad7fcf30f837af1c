"""Wire contracts for Salvage's four input streams (pydantic v2).

Every event is one JSON object with ``event_id`` (idempotency key), ``event_type`` (which also
names its stream), ``occurred_at`` (event time, timezone-aware, normalised to UTC), ``order_id``
and ``schema_version``. Unknown extra fields are tolerated (ignored); wrong types are not: the
models run in pydantic's strict mode, so ``"12"`` is not a quantity and ``123`` is not an id
(an integral float, ``12.0``, is a quantity: JSON Schema's ``integer`` takes it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
)

SCHEMA_VERSION: Final = 1

# Time bounds: anything outside is a data error (a clock set to 1970 or to year 9999), not a case.
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2100, 1, 1, tzinfo=UTC)
MAX_AMOUNT = 1_000_000.0
MAX_QTY = 1_000


def _utc_in_range(value: datetime) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-23:00: past datetime.max in UTC
        raise ValueError("timestamp outside the supported range 2000-01-01..2100-01-01") from None
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError("timestamp outside the supported range 2000-01-01..2100-01-01")
    return value


def _integral(value: object) -> object:
    """An integral float (``2.0``, ``2e0``) as the int it is: JSON Schema's ``integer`` (the
    published schemas) accepts it, so the contract does; ``2.5``, ``"2"`` and ``true`` stay
    wrong types (strict mode)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
"""Lets an integer field take an integral float (the fast parse leaves those to pydantic)."""

UtcTime = Annotated[AwareDatetime, AfterValidator(_utc_in_range)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$")]
Money = Annotated[float, Field(ge=0.0, le=MAX_AMOUNT, allow_inf_nan=False)]
Qty = Annotated[int, INTEGRAL, Field(ge=1, le=MAX_QTY)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
REVIEWER_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
ReviewerId = Annotated[str, StringConstraints(pattern=REVIEWER_ID_PATTERN)]
"""A reviewer's internal id: letters, digits, ``.``, ``_``, ``-`` (no spaces, no ``@``): never a
name or an email."""


class Stream(StrEnum):
    ORDERS = "orders"
    DELIVERIES = "deliveries"
    SUPPORT = "support"
    RETURNS = "returns"


class ScanCode(StrEnum):
    LABEL_CREATED = "label_created"
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    EXCEPTION = "exception"
    DELAYED = "delayed"
    LOST = "lost"
    RETURNED_TO_SENDER = "returned_to_sender"


class Intent(StrEnum):
    WHERE_IS_MY_ORDER = "where_is_my_order"
    RETURN_REQUEST = "return_request"
    REFUND_REQUEST = "refund_request"
    EXCHANGE_REQUEST = "exchange_request"
    DAMAGED_ITEM = "damaged_item"
    WRONG_ITEM = "wrong_item"
    SIZING_QUESTION = "sizing_question"
    PRODUCT_QUESTION = "product_question"
    CANCEL_REQUEST = "cancel_request"
    COMPLAINT = "complaint"
    OTHER = "other"


class ContactChannel(StrEnum):
    EMAIL = "email"
    CHAT = "chat"
    PHONE = "phone"
    SOCIAL = "social"
    FORM = "form"


class Urgency(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class ReturnReason(StrEnum):
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    NOT_AS_DESCRIBED = "not_as_described"
    DAMAGED = "damaged"
    WRONG_ITEM = "wrong_item"
    CHANGED_MIND = "changed_mind"
    ARRIVED_LATE = "arrived_late"
    QUALITY = "quality"
    NOT_RECEIVED = "not_received"
    OTHER = "other"


class Resolution(StrEnum):
    REFUND = "refund"
    EXCHANGE = "exchange"
    STORE_CREDIT = "store_credit"


class Grade(StrEnum):
    A = "A"
    B = "B"
    REFURBISH = "refurbish"
    DISPOSE = "dispose"


class AbuseFlag(StrEnum):
    WORN = "worn"
    EMPTY_BOX = "empty_box"
    SWAPPED_ITEM = "swapped_item"


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Event(_Model):
    event_id: Id
    occurred_at: UtcTime
    order_id: Id
    schema_version: Literal[1]


# ---------------------------------------------------------------- orders


class OrderLine(_Model):
    sku: Id
    sku_family: Label
    qty: Qty
    unit_price: Money
    unit_cost: Money
    size: Label | None = None


class OrderPlaced(_Event):
    event_type: Literal["order_placed"]
    customer_id: Id
    channel: Label
    campaign: Label | None = None
    lines: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    currency: Currency
    promised_delivery_at: UtcTime
    courier: Label
    origin_region: Label
    destination_region: Label


class OrderShipped(_Event):
    event_type: Literal["order_shipped"]
    courier: Label | None = None


class OrderCancelled(_Event):
    event_type: Literal["order_cancelled"]
    reason: Label | None = None


# ---------------------------------------------------------------- deliveries


class CarrierScan(_Event):
    event_type: Literal["carrier_scan"]
    scan: ScanCode
    courier: Label
    estimated_delivery_at: UtcTime | None = None
    region: Label | None = None


# ---------------------------------------------------------------- support


class SupportContact(_Event):
    event_type: Literal["support_contact"]
    channel: ContactChannel
    intent: Intent | None = None
    text: Annotated[str, StringConstraints(max_length=4000)] | None = None
    sentiment: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] | None = None
    urgency: Urgency = Urgency.NORMAL


# ---------------------------------------------------------------- returns


class ReturnItem(_Model):
    sku: Id
    qty: Qty


class ReturnRequested(_Event):
    event_type: Literal["return_requested"]
    return_id: Id
    reason: ReturnReason
    items: Annotated[list[ReturnItem], Field(min_length=1, max_length=100)]
    preferred_resolution: Resolution


class ReturnLabelIssued(_Event):
    event_type: Literal["return_label_issued"]
    return_id: Id
    courier: Label
    label_cost: Money = 0.0


class ReturnInTransit(_Event):
    event_type: Literal["return_in_transit"]
    return_id: Id


class ReturnReceived(_Event):
    event_type: Literal["return_received"]
    return_id: Id


class ReturnGraded(_Event):
    event_type: Literal["return_graded"]
    return_id: Id
    grade: Grade
    abuse_flags: Annotated[list[AbuseFlag], Field(max_length=3)] = []


class RefundIssued(_Event):
    event_type: Literal["refund_issued"]
    return_id: Id | None = None
    amount: Money
    currency: Currency


class ExchangeCompleted(_Event):
    event_type: Literal["exchange_completed"]
    return_id: Id
    new_sku: Id | None = None


class StoreCreditIssued(_Event):
    event_type: Literal["store_credit_issued"]
    return_id: Id | None = None
    amount: Money
    currency: Currency


class ReturnCancelled(_Event):
    event_type: Literal["return_cancelled"]
    return_id: Id


class Verdict(StrEnum):
    APPROVE = "approve"  # legitimate: proceed (refund / exchange as requested)
    DENY = "deny"  # refused, not necessarily abuse
    ABUSE_CONFIRMED = "abuse_confirmed"


class ReviewResolved(_Event):
    """A human reviewer's verdict on a case sent to review (published by ``salvage review``)."""

    event_type: Literal["review_resolved"]
    review_id: Id
    verdict: Verdict
    reviewer: ReviewerId | None = None  # an internal reviewer id, never a name or an email


class ChargebackFiled(_Event):
    event_type: Literal["chargeback_filed"]
    amount: Money
    currency: Currency
    reason: Label | None = None


Event = Annotated[
    OrderPlaced
    | OrderShipped
    | OrderCancelled
    | CarrierScan
    | SupportContact
    | ReturnRequested
    | ReturnLabelIssued
    | ReturnInTransit
    | ReturnReceived
    | ReturnGraded
    | RefundIssued
    | ExchangeCompleted
    | StoreCreditIssued
    | ReturnCancelled
    | ChargebackFiled
    | ReviewResolved,
    Field(discriminator="event_type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_MODELS: dict[str, type[_Event]] = {
    m.model_fields["event_type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (
        OrderPlaced,
        OrderShipped,
        OrderCancelled,
        CarrierScan,
        SupportContact,
        ReturnRequested,
        ReturnLabelIssued,
        ReturnInTransit,
        ReturnReceived,
        ReturnGraded,
        RefundIssued,
        ExchangeCompleted,
        StoreCreditIssued,
        ReturnCancelled,
        ChargebackFiled,
        ReviewResolved,
    )
}

STREAM_OF: dict[str, Stream] = {
    "order_placed": Stream.ORDERS,
    "order_shipped": Stream.ORDERS,
    "order_cancelled": Stream.ORDERS,
    "carrier_scan": Stream.DELIVERIES,
    "support_contact": Stream.SUPPORT,
    **{
        t: Stream.RETURNS
        for t in (
            "return_requested",
            "return_label_issued",
            "return_in_transit",
            "return_received",
            "return_graded",
            "refund_issued",
            "exchange_completed",
            "store_credit_issued",
            "return_cancelled",
            "chargeback_filed",
            "review_resolved",
        )
    },
}
assert set(STREAM_OF) == set(EVENT_MODELS)


def lane_of(courier: str, origin_region: str, destination_region: str) -> str:
    """Courier lane key: bounded by couriers x regions, safe as a Prometheus label bucket."""
    return f"{courier}:{origin_region}>{destination_region}"
