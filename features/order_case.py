"""Per-order case state: rolling post-purchase features in event time, and the case's outcome.

Pure Python, no I/O. Times are integer microseconds since the Unix epoch (see
:mod:`salvage.features.eventtime`). Events are applied in ``(event time, event id)`` order by the
flow;
the state machine itself tolerates any order (no event is rejected for arriving "too early"), and a
hypothesis test checks that any order within the reorder tolerance yields the same final case.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from salvage.connectors.events import (
    CarrierScan,
    ChargebackFiled,
    ExchangeCompleted,
    OrderCancelled,
    OrderPlaced,
    OrderShipped,
    RefundIssued,
    ReturnCancelled,
    ReturnGraded,
    ReturnLabelIssued,
    ReturnReceived,
    ReturnRequested,
    ScanCode,
    StoreCreditIssued,
    SupportContact,
    lane_of,
)
from salvage.features import journey
from salvage.features.eventtime import DAY_US, HOUR_US, to_us

MAX_CONTACTS = 32  # rolling contact memory per case; older contacts only count in totals
MAX_SEEN_IDS = 256  # dedupe memory per case: its last 256 event ids (an order has ~10-30 events)
PROMISE_GRACE_US = 2 * HOUR_US  # a promise is "missed" this long after it passes undelivered
# a case is closed this long after its parcel was due (its promise, or its placement when it has
# none or it is later), whatever happened (OrderCase.ttl_at). From the promise, not the placement:
# a pre-order promised 100 days out, delivered on time, would otherwise close as kept 20 days
# into its 30-day return window, and its return come as an unknown_order dead letter
HARD_TTL_US = 120 * DAY_US
# A late parcel that stays undelivered is looked at again this long after its promise (after the
# first "missed" check at PROMISE_GRACE_US): each check is a case update, so reassurance or a delay
# intervention can fire on a parcel whose carrier never says anything.
PROMISE_RECHECKS_US: tuple[int, ...] = (6 * HOUR_US, 24 * HOUR_US, 72 * HOUR_US)


class Status(StrEnum):
    """A case is open until an outcome (or the hard TTL) closes it.

    >>> Status.OPEN == "open", Status("closed") is Status.CLOSED
    (True, True)
    """

    OPEN = "open"
    CLOSED = "closed"


class Outcome(StrEnum):
    """Final outcome; retained = kept | exchange | store_credit | return_cancelled.

    >>> sorted(o.value for o in RETAINED), sorted(o.value for o in LOST)
    (['exchange', 'kept', 'return_cancelled', 'store_credit'], ['chargeback', 'refund'])
    >>> Outcome("undelivered") in RETAINED | LOST  # neither kept nor refunded: no label
    False
    """

    KEPT = "kept"
    EXCHANGE = "exchange"
    STORE_CREDIT = "store_credit"
    RETURN_CANCELLED = "return_cancelled"
    REFUND = "refund"
    CHARGEBACK = "chargeback"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNDELIVERED = "undelivered"  # never delivered by the hard TTL (lost, returned, silent)


RETAINED = frozenset(
    {Outcome.KEPT, Outcome.EXCHANGE, Outcome.STORE_CREDIT, Outcome.RETURN_CANCELLED}
)
LOST = frozenset({Outcome.REFUND, Outcome.CHARGEBACK})

REFUND_INTENTS = frozenset({"refund_request", "return_request", "cancel_request"})
DELAY_INTENTS = frozenset({"where_is_my_order", "complaint"})
FIT_INTENTS = frozenset({"sizing_question", "product_question", "exchange_request"})
# per promise re-check setting: its offsets past the grace period (the checkpoints after the first)
_RECHECK_OFFSETS: dict[tuple[int, ...], tuple[int, ...]] = {}


def promise_us(promised: Any) -> int:
    """A promised delivery time in µs. A promise at midnight exactly is a *date*, "delivered
    on that day", as a brand that promises days sends it: the end of that day. (Read as the
    midnight it starts with, every parcel delivered on its promised day was late, and a
    helper's independent brand had 16% of its on-time parcels told "running late" at 06:00.)

    >>> from datetime import UTC, datetime
    >>> from salvage.features.eventtime import iso
    >>> iso(promise_us(datetime(2026, 9, 3, tzinfo=UTC)))
    '2026-09-04T00:00:00Z'
    >>> iso(promise_us(datetime(2026, 9, 3, 18, tzinfo=UTC)))
    '2026-09-03T18:00:00Z'
    """
    t = to_us(promised)
    return t + DAY_US if t % DAY_US == 0 else t


def own_time(ev: Any, t: int) -> int:
    """When ``ev`` happened, as its source says, for an update applied at ``t``: an event
    uploaded late (behind its partition's watermark) is applied at the watermark, but a parcel
    arrived, or a return was received, when the carrier or the warehouse says (README "Late
    scans"); never after ``t``, so never from the future."""
    return min(to_us(ev.occurred_at), t)


@dataclass(slots=True)
class ReturnState:
    """The part of a case that only a return (or a claim, a review) sets, allocated by the first
    of them: most open cases never have one, and these 20 fields would cost each ~160 B. Read and
    written as attributes of the case (``case.return_id``: properties, see ``_delegate``)."""

    return_id: str = ""
    return_requested_at: int = 0
    return_reason: str = ""
    preferred_resolution: str = ""
    return_units: int = 0
    return_value: float = 0.0
    label_issued_at: int = 0
    label_cost: float = 0.0
    received_at: int = 0
    graded_at: int = 0
    grade: str = ""
    abuse_flags: tuple[str, ...] = ()
    refunded_amount: float = 0.0
    refund_at: int = 0
    review_verdict: str = ""
    reviewed_at: int = 0  # first verdict (the abuse label's time, for the leakage cut)
    resolved_at: int = 0
    # return journey (features/journey.py): furthest stage reached (-1: none), stages announced
    # and alert kinds raised (bit sets)
    journey_rank: int = -1
    journey_sent: int = 0
    journey_alerted: int = 0
    # other returns of the order requested while this one is open (see OrderCase._other_return):
    # (return id, units, reason, preferred resolution) in the order requested; the abuse flags
    # their grades gave; those cancelled since (at most MAX_OTHER_RETURNS of each)
    other_returns: tuple[tuple[str, int, str, str], ...] = ()
    other_flags: tuple[str, ...] = ()
    other_closed: tuple[tuple[str, int, str, str], ...] = ()
    # goodwill paid while no return was open (see OrderCase._goodwill): cash refunds and store
    # credit, in the case's currency units; the case stays open
    goodwill_refunded: float = 0.0
    goodwill_credit: float = 0.0
    # money refunded or charged back in another currency than the order's (a cross-border store
    # refunding in the shopper's currency, or a data error): (currency, amount) per currency, never
    # added to refunded_amount nor compared with the order's value (no exchange rates here); see
    # OrderCase.money_refusal. At most MAX_OTHER_CURRENCIES entries (in the flow one: the payment
    # closes the case)
    refunded_other: tuple[tuple[str, float], ...] = ()


RETURN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ReturnState))
MAX_OTHER_RETURNS = 16  # other returns of one order a case keeps (open, and cancelled)
# the events that settle a return (and close its case)
SETTLEMENTS = frozenset({"refund_issued", "exchange_completed", "store_credit_issued"})
# A refund or store credit that names no return, while no return is open, and brings what the
# order got as goodwill to at most this share of its value is goodwill (an apology for a late
# parcel, "keep it, here is 20% back"): the order is kept, the case stays open. More than that
# (a lost parcel refunded in full) settles the case, as it did before.
GOODWILL_MAX_SHARE = 0.5
# currencies other than the order's one case keeps money in (refunded_other); a payment in yet
# another one is refused (OrderCase.money_refusal), never summed with another currency
MAX_OTHER_CURRENCIES = 4
# the events that pay money out, each with its own ``currency``
MONEY_EVENTS = frozenset({"refund_issued", "store_credit_issued", "chargeback_filed"})
# the resolutions a customer asks for that keep the sale (a cash refund is not what they want)
_KEEPING = frozenset({"exchange", "store_credit"})
# While a return is open and its goods are not received yet, a refund or store credit naming no
# return is that return's settlement only when it is plausibly its money: when it brings what
# the order got as goodwill to more than GOODWILL_MAX_SHARE of the return's value (a refund
# before receipt, "instant refund at drop-off", is the return's full value, less a fee of a few
# percent at most). Up to that share it is goodwill (an apology for a late parcel paid while the
# customer's return is on its way: 5-20% of the value in practice), and the return goes on to
# its own settlement. Once the goods are received any payment naming no return is the
# return's: a grade-based partial refund (an item worn or damaged) can be any share of it.
# (OrderCase._goodwill_base)
# A refund or store credit of less than journey.NO_MONEY (0.00 once rounded to the cent) moves no
# money: a return denied (an item worn, out of policy) is closed kept, not refunded
# (OrderCase._resolve), and the customer is told of no refund (journey.on_event)
NO_MONEY = journey.NO_MONEY
NO_RETURN = ReturnState()  # what a case without a ReturnState reads (never written)


@dataclass(slots=True)
class OrderCase:
    """The state of one order, folded from its events in event time (µs).

    An order placed for two tops, then a carrier scan saying it runs two days late:

    >>> from datetime import UTC, datetime
    >>> from salvage.connectors.events import CarrierScan, OrderLine, OrderPlaced, ScanCode
    >>> from salvage.features.eventtime import iso
    >>> at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    >>> placed = OrderPlaced(
    ...     event_id="e1", event_type="order_placed", order_id="o1", occurred_at=at,
    ...     schema_version=1, customer_id="c1", channel="web", currency="EUR",
    ...     lines=[OrderLine(sku="s1", sku_family="tops", qty=2, unit_price=40.0, unit_cost=15.0)],
    ...     promised_delivery_at=datetime(2026, 3, 4, 18, tzinfo=UTC),
    ...     courier="dhl", origin_region="DE", destination_region="FR")
    >>> case, window = OrderCase("o1"), 30 * DAY_US  # window: the return window
    >>> case.apply(placed, to_us(at), window)
    ['placed']
    >>> case.order_value, case.margin, case.lane, iso(case.promised_at)
    (80.0, 50.0, 'dhl:DE>FR', '2026-03-04T18:00:00Z')
    >>> scan = CarrierScan(
    ...     event_id="e2", event_type="carrier_scan", order_id="o1", schema_version=1,
    ...     occurred_at=datetime(2026, 3, 3, 8, tzinfo=UTC), scan=ScanCode.DELAYED,
    ...     courier="dhl", estimated_delivery_at=datetime(2026, 3, 6, 12, tzinfo=UTC))
    >>> now = to_us(scan.occurred_at)
    >>> case.apply(scan, now, window), case.is_duplicate("e2")
    (['scan', 'delay_signal'], True)
    >>> f = case.features(now)  # the carrier's ETA is 42 h past the promise
    >>> f["slippage_hours"], f["delayed_scans"], f["delivered"], f["margin_rate"]
    (42.0, 1.0, 0.0, 0.625)

    Time alone changes a case: the promise is missed ``PROMISE_GRACE_US`` after it passes
    undelivered, re-checked later, and the case closes at the hard TTL:

    >>> due = case.next_deadline(window)
    >>> iso(due), case.on_time(due, window)
    ('2026-03-04T20:00:00Z', ['promise_missed', 'delay_signal'])
    >>> iso(case.next_deadline(window))  # the first re-check, 6 h after the promise
    '2026-03-05T00:00:00Z'
    >>> _ = case.on_time(case.promised_at + HARD_TTL_US - 1, window)  # from the promise, not
    >>> case.status  # the placement: still open after placement + HARD_TTL_US
    <Status.OPEN: 'open'>
    >>> case.on_time(case.promised_at + HARD_TTL_US, window), case.status, case.outcome
    (['closed'], <Status.CLOSED: 'closed'>, <Outcome.UNDELIVERED: 'undelivered'>)
    >>> case.next_deadline(window)  # closed: nothing is due any more
    0
    """

    order_id: str
    customer_id: str = ""
    placed_at: int = 0
    currency: str = "EUR"
    order_value: float = 0.0
    margin: float = 0.0
    n_units: int = 0
    n_lines: int = 0
    sku_family: str = "unknown"  # family of the highest-value line
    bracketing_lines: int = 0  # extra lines of the same family in another size
    campaign: str = "none"
    channel: str = "unknown"
    courier: str = "unknown"
    lane: str = "unknown"
    promised_at: int = 0
    # delivery
    shipped_at: int = 0
    last_scan_at: int = 0
    last_scan: str = ""
    carrier_eta: int = 0
    delivered_at: int = 0
    exception_count: int = 0
    delayed_scan_count: int = 0
    lost: bool = False
    returned_to_sender: bool = False
    promise_checks: int = 0  # promise checkpoints (grace, then the re-checks) already passed
    # support: rolling (t, intent, urgency_high, sentiment); the shared empty tuple until the
    # first contact (most cases have none: an empty list is 56 B per case)
    contacts: list[tuple[int, str, bool, float]] | tuple[()] = ()
    contacts_total: int = 0
    contacts_after_delivery: int = 0
    wismo_after_delivered: int = 0
    # lifecycle
    status: Status = Status.OPEN
    outcome: Outcome | None = None
    closed_at: int = 0
    events: int = 0
    last_event_at: int = 0
    # event ids applied, oldest first: a tuple (48 B + 8 B per id) rather than a set or dict
    # (200+ B even for one id); a case has ~10-30 events, a linear scan of them is cheap
    seen: tuple[str, ...] = ()
    # payload digests (crc32, 4 bytes each) of the ids in ``seen``, same positions (kept by the
    # case stage)
    digests: bytes = b""
    has_order: bool = False
    # what only a return (or a claim, a review) sets: see ReturnState and the properties of the
    # same names below; None until the first of them
    ret: ReturnState | None = None
    # the deadline of this case's entry in its case stage's timer heap (0: none): an update that
    # leaves the next deadline where it was pushes nothing (not state: recomputed on load)
    timer: int = field(default=0, compare=False, repr=False)
    # the lane monitor holds (or has judged) this shipment: the case stage sent it a fact with
    # this lane and promise, so a repeated "shipped" fact would change nothing (stored with the
    # case, so a restored stage sends what the original would; state written before it existed
    # reads False: one more fact per case, which the monitor ignores)
    lane_noted: bool = field(default=False, compare=False, repr=False)

    if TYPE_CHECKING:  # for the type checker: the ReturnState fields, properties (_delegate)
        return_id: str = ""
        return_requested_at: int = 0
        return_reason: str = ""
        preferred_resolution: str = ""
        return_units: int = 0
        return_value: float = 0.0
        label_issued_at: int = 0
        label_cost: float = 0.0
        received_at: int = 0
        graded_at: int = 0
        grade: str = ""
        abuse_flags: tuple[str, ...] = ()
        refunded_amount: float = 0.0
        refund_at: int = 0
        review_verdict: str = ""
        reviewed_at: int = 0
        resolved_at: int = 0
        journey_rank: int = -1
        journey_sent: int = 0
        journey_alerted: int = 0
        other_returns: tuple[tuple[str, int, str, str], ...] = ()
        other_flags: tuple[str, ...] = ()
        other_closed: tuple[tuple[str, int, str, str], ...] = ()
        goodwill_refunded: float = 0.0
        goodwill_credit: float = 0.0
        refunded_other: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, order_id: str, **values: Any) -> OrderCase:
        """A case with any of its values, the ReturnState ones included (the dataclass
        constructor takes the others), e.g. ``OrderCase.of("o1", customer_id="c1",
        return_requested_at=1)``."""
        ret = {k: values.pop(k) for k in RETURN_FIELDS if k in values}
        case = cls(order_id, **values)
        for name, value in ret.items():
            setattr(case, name, value)
        return case

    # ------------------------------------------------------------------ apply

    def is_duplicate(self, event_id: str) -> bool:
        return event_id in self.seen

    def apply(self, ev, t: int, return_window_us: int, intent: str | None = None) -> list[str]:
        """Apply one event at effective time ``t``; return change codes (e.g. ``delay_signal``).

        ``intent``: for a support contact without an agent-set intent, the inferred one."""
        seen = (*self.seen, ev.event_id)
        self.seen = seen[-MAX_SEEN_IDS:] if len(seen) > MAX_SEEN_IDS else seen  # forget the oldest
        self.events += 1
        if t > self.last_event_at:
            self.last_event_at = t
        kind = ev.event_type
        changes: list[str]
        if kind == "carrier_scan":
            changes = self._scan(ev, t)
        elif kind == "support_contact":
            changes = self._contact(ev, t, intent)
        elif kind == "order_placed":
            self._placed(ev, t)
            changes = ["placed"]
        elif kind == "order_shipped":
            self._shipped(ev, t)
            changes = []
        elif kind == "order_cancelled":
            self._cancelled(ev, t)
            changes = ["cancelled"]
        else:
            changes = self._returns(ev, t)
        status = self.status
        if status is Status.OPEN:
            if self.delivered_at:
                self._maybe_close(t, return_window_us)
                status = self.status
        if status is Status.CLOSED:
            changes.append("closed")
        return changes

    def _placed(self, ev: OrderPlaced, t: int) -> None:
        self.has_order = True
        self.customer_id = ev.customer_id
        self.placed_at = t
        # low-cardinality labels: one shared copy per process (see shared), not one per case
        self.currency = shared(ev.currency)
        self.campaign = shared(ev.campaign) if ev.campaign else "none"
        self.channel = shared(ev.channel)
        self.courier = shared(ev.courier)
        self.lane = shared(lane_of(ev.courier, ev.origin_region, ev.destination_region))
        self.promised_at = promise_us(ev.promised_delivery_at)
        self.lane_noted = False  # a new lane or promise: the monitor must hear of it again
        value = margin = 0.0
        units = 0
        best = -1.0
        families: dict[str, set[str | None]] = {}
        for line in ev.lines:
            line_value = line.qty * line.unit_price
            value += line_value
            margin += line.qty * (line.unit_price - line.unit_cost)
            units += line.qty
            if line_value > best:
                best, self.sku_family = line_value, shared(line.sku_family)
            families.setdefault(line.sku_family, set()).add(line.size)
        self.order_value = round(value, 2)
        self.margin = round(margin, 2)
        self.n_units = units
        self.n_lines = len(ev.lines)
        self.bracketing_lines = sum(
            len(sizes) - 1 for sizes in families.values() if None not in sizes and len(sizes) > 1
        )

    def _shipped(self, ev: OrderShipped, t: int) -> None:
        self.shipped_at = self.shipped_at or own_time(ev, t)
        if ev.courier:
            courier = shared(ev.courier)
            old = self.courier
            if courier != old and self.lane.startswith(f"{old}:"):
                # the carrier chosen at shipping (the order said "standard", say): the parcel
                # travels on that carrier's lane, and the lane monitor must hear of it there
                self.lane = shared(f"{courier}:{self.lane[len(old) + 1 :]}")
                self.lane_noted = False
            self.courier = courier

    def _cancelled(self, ev: OrderCancelled, t: int) -> None:
        """The order is off: the case closes, before delivery, shipped or not (a parcel
        intercepted on its way; its later scans are a settled case's, counted only). After
        delivery a cancellation changes nothing (the goods are there: a return follows)."""
        if not self.delivered_at:
            self._close(Outcome.CANCELLED, t)

    def _scan(self, ev: CarrierScan, t: int) -> list[str]:
        changes = ["scan"]
        if t > self.last_scan_at:
            self.last_scan_at = t
        scan = ev.scan
        self.last_scan = scan._value_  # the member's value (a plain attribute, no descriptor)
        if ev.estimated_delivery_at is not None:
            self.carrier_eta = to_us(ev.estimated_delivery_at)
        if scan is ScanCode.DELIVERED:
            self.delivered_at = self.delivered_at or own_time(ev, t)
            changes.append("delivered")
        elif scan is ScanCode.EXCEPTION:
            self.exception_count += 1
            changes.append("delay_signal")
        elif scan is ScanCode.DELAYED:
            self.delayed_scan_count += 1
            changes.append("delay_signal")
        elif scan is ScanCode.LOST:
            self.lost = True
            changes.append("delay_signal")
        elif scan is ScanCode.RETURNED_TO_SENDER:
            self.returned_to_sender = True
            changes.append("delay_signal")
        elif scan is ScanCode.PICKED_UP and not self.shipped_at:
            self.shipped_at = own_time(ev, t)
        if (
            "delay_signal" not in changes
            and self.promised_at
            and not self.delivered_at
            and self.carrier_eta > self.promised_at + PROMISE_GRACE_US
        ):
            changes.append("delay_signal")
        return changes

    def _contact(self, ev: SupportContact, t: int, inferred: str | None) -> list[str]:
        intent = ev.intent._value_ if ev.intent is not None else inferred or "other"
        contacts = self.contacts
        if type(contacts) is not list:  # the first contact (a restored case: a list already)
            contacts = self.contacts = list(contacts)
        contacts.append((t, intent, ev.urgency._value_ == "high", ev.sentiment or 0.0))
        if len(contacts) > MAX_CONTACTS:
            del contacts[0]
        self.contacts_total += 1
        if self.delivered_at and t >= self.delivered_at:
            self.contacts_after_delivery += 1
            if intent == "where_is_my_order":
                self.wismo_after_delivered += 1
        return ["contact", f"intent:{intent}"]

    def _returns(self, ev, t: int) -> list[str]:
        kind = ev.event_type
        if kind in MONEY_EVENTS and ev.currency != self.currency and self.money_refusal(ev):
            return []  # (the flow dead-letters it before: see money_refusal)
        if kind == "return_requested":
            assert isinstance(ev, ReturnRequested)
            if ev.return_id != self.return_id and self.return_open():
                return self._other_return(ev, t)  # (the case is open: apply returns early)
            ret = self.ret
            if ret is not None and ret.other_closed:  # a cancelled other return, asked again
                ret.other_closed = _without(ret.other_closed, ev.return_id)
            if self.outcome is Outcome.RETURN_CANCELLED and self.status is not Status.CLOSED:
                # a new return after a cancelled one: the case's return is open again (else it
                # would be treated as resolved, and close as cancelled with the new one pending)
                self.outcome = None
                self.resolved_at = 0
                self.return_requested_at = 0  # the new return's, below
                # its journey starts afresh (the cancelled one's stages are not the new one's)
                self.journey_rank, self.journey_sent, self.journey_alerted = -1, 0, 0
            self.return_id = ev.return_id
            self.return_requested_at = self.return_requested_at or t
            self.return_reason = ev.reason.value
            self.preferred_resolution = ev.preferred_resolution.value
            # (with the other returns' units, if any: a repeated request keeps them)
            others = self.ret.other_returns if self.ret is not None else ()
            self._set_return_units(sum(i.qty for i in ev.items) + sum(o[1] for o in others))
            return ["return_requested"]
        if self.is_other_return(ev):
            return self._other_return(ev, t)
        if kind == "return_label_issued":
            assert isinstance(ev, ReturnLabelIssued)
            self.label_issued_at = t
            self.label_cost += ev.label_cost
            return ["return_progress"]
        if kind == "return_received":
            assert isinstance(ev, ReturnReceived)
            self.received_at = t
            return ["return_progress"]
        if kind == "return_graded":
            assert isinstance(ev, ReturnGraded)
            self.graded_at = self.graded_at or t  # a re-grade does not move the label's time
            self.grade = ev.grade.value
            # (the other returns' flags stay: a clean grade of this one does not clear them)
            kept = self.ret.other_flags if self.ret is not None else ()
            flags = {f.value for f in ev.abuse_flags}
            self.abuse_flags = tuple(sorted({*flags, *kept}))
            # (a clean grade is not an abuse flag for the customer's history, whatever the other
            # returns' grades flagged)
            return ["graded", "clean_grade"] if kept and not flags else ["graded"]
        if kind in SETTLEMENTS:
            if kind != "exchange_completed":
                if ev.amount < NO_MONEY:  # no money: a return denied (or nothing at all)
                    if ev.return_id is None and not self.return_open():
                        return []  # no return it could close: nothing happened
                    return self._resolve(ev, t)
                if self._goodwill(ev):
                    return ["goodwill"]
            return self._resolve(ev, t)
        if kind == "return_cancelled":
            assert isinstance(ev, ReturnCancelled)
            ret = self.ret
            if ret is not None and ret.other_returns and ev.return_id == ret.return_id:
                # another return of the order is still open: the case follows it from now on.
                # Its progress so far was not followed: its journey announces its next stages,
                # and raises no alerts (they would be judged on progress it does not know)
                (rid, units, reason, resolution), *rest = ret.other_returns
                ret.other_closed = (*ret.other_closed, _own_entry(ret))[-MAX_OTHER_RETURNS:]
                ret.other_returns = tuple(rest)
                ret.return_id, ret.return_reason, ret.preferred_resolution = rid, reason, resolution
                self._set_return_units(units + sum(o[1] for o in rest))
                ret.label_issued_at = ret.received_at = ret.graded_at = 0
                ret.grade = ""
                ret.journey_rank, ret.journey_sent = -1, 0
                ret.journey_alerted = journey.ALL_ALERTS
                return ["return_cancelled"]
            if ret is not None and ret.other_returns and ev.return_id != ret.return_id:
                return []  # a return the case does not know of, while others are open
            # The return is off; the order is kept unless something else happens.
            self.resolved_at = t
            self.outcome = Outcome.RETURN_CANCELLED
            return ["return_cancelled"]
        if kind == "chargeback_filed":
            assert isinstance(ev, ChargebackFiled)
            self._refunded(ev.amount, ev.currency)
            self._close(Outcome.CHARGEBACK, t)
            return ["outcome"]
        if kind == "review_resolved":
            self.review_verdict = ev.verdict.value
            self.reviewed_at = self.reviewed_at or t
            return ["reviewed"]
        return []  # return_in_transit: nothing decision-relevant beyond the event count

    def is_other_return(self, ev) -> bool:
        """Is ``ev`` an event of another return of this order than the one the case follows, one
        requested while the case's return was open (``other_returns``, or cancelled since)?"""
        ret = self.ret
        if ret is None or not (ret.other_returns or ret.other_closed):
            return False
        rid = getattr(ev, "return_id", None)
        return (
            rid is not None
            and rid != ret.return_id
            and any(o[0] == rid for o in (*ret.other_returns, *ret.other_closed))
        )

    def _other_return(self, ev, t: int) -> list[str]:
        """Another return of the order while the case's return is open (a customer sending back
        two items of one order in two parcels). The case keeps following its first return (its
        id, reason, resolution, journey and timestamps); the other one adds its units to the
        return's units and value, its label cost and its grade's abuse flags, and a cancellation
        takes its units back (later events of a cancelled one change nothing). Its refund,
        exchange or store credit settles the case (the first settlement closes it): the case
        then takes that return's id, reason and resolution, and the first return becomes the
        other one, which a settled case hears later (``flows/stages/case.py``, ``Settled``)."""
        kind = ev.event_type
        ret = self.ret
        assert ret is not None
        rid = ev.return_id
        entry = next((o for o in ret.other_returns if o[0] == rid), None)
        if kind == "return_requested":
            assert isinstance(ev, ReturnRequested)
            if entry is not None or len(ret.other_returns) >= MAX_OTHER_RETURNS:
                return []  # a repeated request of that return (or one too many: bounded state)
            units = sum(i.qty for i in ev.items)
            reason = ev.reason.value
            ret.other_closed = _without(ret.other_closed, rid)  # asked again
            ret.other_returns = (
                *ret.other_returns,
                (rid, units, reason, ev.preferred_resolution.value),
            )
            self._set_return_units(ret.return_units + units)
            # (the features keep the first return's reason: the customer's history counts this
            # request's own "not received" claim by its change code)
            claim = ["not_received_claim"] if reason == "not_received" else []
            return ["return_requested", "other_return", *claim]
        settles = kind in SETTLEMENTS
        if entry is None:
            # a cancelled other return: only its settlement counts (money moved after all)
            entry = next((o for o in ret.other_closed if o[0] == rid), None)
            if entry is None or not settles:
                return []
            ret.other_closed = _without(ret.other_closed, rid)
            ret.other_returns = (*ret.other_returns, (entry[0], 0, entry[2], entry[3]))
        if kind == "return_cancelled":
            ret.other_returns = _without(ret.other_returns, rid)
            ret.other_closed = (*ret.other_closed, entry)[-MAX_OTHER_RETURNS:]
            self._set_return_units(ret.return_units - entry[1])
            return ["return_progress"]
        if kind == "return_label_issued":
            assert isinstance(ev, ReturnLabelIssued)
            self.label_cost += ev.label_cost
            return ["return_progress"]
        if kind == "return_graded":
            # (its own grade decides its disposition: the case stage puts it in the view)
            assert isinstance(ev, ReturnGraded)
            flags = {f.value for f in ev.abuse_flags}
            ret.other_flags = tuple(sorted({*ret.other_flags, *flags}))
            self.abuse_flags = tuple(sorted({*ret.abuse_flags, *flags}))
            return ["graded"] if flags or not ret.abuse_flags else ["graded", "clean_grade"]
        if settles:
            # the other return settles first: the case settles with it, and its own return is
            # now the other one (open: heard after the close)
            own = _own_entry(ret)
            ret.other_returns = tuple(o if o[0] != rid else own for o in ret.other_returns)
            ret.return_id, _, ret.return_reason, ret.preferred_resolution = entry
            return self._resolve(ev, t)
        return []  # received, in transit: the case follows its first return's progress

    def _goodwill_base(self, ev: RefundIssued | StoreCreditIssued) -> float:
        """The value this refund or store credit would be goodwill against, by its amount
        (0.0: it is not goodwill, whatever its amount: it names a return, the parcel was scanned
        lost or returned to sender, a return is open that it settles).

        While a return is open, a payment naming no return is goodwill against the return's
        value (up to the share, it is an apology; beyond it, the return's settlement) while the
        return's goods are not received, or when it is a cash refund and the customer asked for
        an exchange or store credit (a fee refunded, an apology); once the goods are received
        (any other payment naming no return), it is the return's settlement, whatever its amount
        (a partial refund after grading)."""
        value = self.order_value
        if ev.return_id is not None or not value:
            return 0.0
        if self.lost or self.returned_to_sender:  # part of a lost parcel's refund: not goodwill
            return 0.0
        if self.return_open():
            keeping = ev.event_type == "refund_issued" and self.preferred_resolution in _KEEPING
            if self.received_at and not keeping:
                return 0.0
            value = self.return_value or value
        return value

    def _goodwill(self, ev: RefundIssued | StoreCreditIssued) -> bool:
        """Is this refund or store credit goodwill (:data:`GOODWILL_MAX_SHARE` of
        :meth:`_goodwill_base`; never for a parcel scanned lost or returned to sender: that is
        part of its refund)? If so, it is added to the case's goodwill and the case stays open
        (the KPIs count it when paid)."""
        value = self._goodwill_base(ev)
        if not value:
            return False
        paid = round(self.goodwill_refunded + self.goodwill_credit + ev.amount, 2)
        if paid > round(GOODWILL_MAX_SHARE * value, 2):
            return False
        if ev.event_type == "refund_issued":
            self.goodwill_refunded = round(self.goodwill_refunded + ev.amount, 2)
        else:
            self.goodwill_credit = round(self.goodwill_credit + ev.amount, 2)
        return True

    def money_refusal(self, ev: RefundIssued | StoreCreditIssued | ChargebackFiled) -> str:
        """Why a payment in another currency than the order's cannot be applied to this case
        ('': it can). There are no exchange rates here, so such money is never summed with the
        order's nor compared with its value. Where what the payment *is* does not depend on its
        amount (the refund or store credit of a return, a chargeback, a lost parcel's refund), it
        is applied like any, and its money kept apart by currency (``refunded_other``). Where it
        does, a refund or store credit naming no return that would be goodwill if it came to at
        most :data:`GOODWILL_MAX_SHARE` of the order's (or the open return's) value, and the
        settlement otherwise, Salvage cannot tell which it is: the case stage dead-letters it
        (``currency_mismatch``) with this reason, and the case is as without it. So is money in
        a currency past :data:`MAX_OTHER_CURRENCIES` other ones. Applied anyway (``apply``), a
        refused payment changes nothing."""
        currency = ev.currency
        if currency == self.currency:
            return ""
        kind = ev.event_type
        if (
            not isinstance(ev, ChargebackFiled)
            and not self.is_other_return(ev)
            and self._goodwill_base(ev)
        ):
            whose = "the open return's" if self.return_open() else "the order's"
            return (
                f"{kind} of {ev.amount:.2f} {currency} naming no return, on an order in "
                f"{self.currency}: whether it is goodwill (at most {GOODWILL_MAX_SHARE:.0%} of "
                f"{whose} value) or {whose} settlement cannot be told without an exchange "
                "rate; not applied"
            )
        other = self.refunded_other
        if (
            kind != "store_credit_issued"
            and len(other) >= MAX_OTHER_CURRENCIES
            and all(c != currency for c, _ in other)
        ):
            return (
                f"{kind} in {currency}, on an order in {self.currency} that has money in "
                f"{MAX_OTHER_CURRENCIES} other currencies already; not applied"
            )
        return ""

    def _refunded(self, amount: float, currency: str) -> None:
        """Money refunded or charged back: the order's currency into ``refunded_amount``, any
        other kept apart by currency (``refunded_other``; never summed together)."""
        if currency == self.currency:
            self.refunded_amount = round(self.refunded_amount + amount, 2)
            return
        other = self.refunded_other
        for i, (c, paid) in enumerate(other):
            if c == currency:
                self.refunded_other = (*other[:i], (c, round(paid + amount, 2)), *other[i + 1 :])
                return
        self.refunded_other = (*other, (shared(currency), round(amount, 2)))

    def _resolve(self, ev, t: int) -> list[str]:
        """A refund, an exchange or a store credit: the case's outcome (it closes). A refund or
        store credit of no money (below :data:`NO_MONEY`: a return denied) closes the case kept:
        no money went back, the customer has the goods (change code ``no_money``; no refund
        time, nothing refunded, no status update: ``journey.on_event``)."""
        kind = ev.event_type
        if kind != "exchange_completed" and ev.amount < NO_MONEY:
            self._close(Outcome.KEPT, t)
            return ["outcome", "no_money"]
        if kind == "refund_issued":
            assert isinstance(ev, RefundIssued)
            self._refunded(ev.amount, ev.currency)
            self.refund_at = self.refund_at or t
            self._close(Outcome.REFUND, t)
        elif kind == "exchange_completed":
            assert isinstance(ev, ExchangeCompleted)
            self._close(Outcome.EXCHANGE, t)
        else:
            assert isinstance(ev, StoreCreditIssued)
            self._close(Outcome.STORE_CREDIT, t)
        return ["outcome"]

    def _set_return_units(self, units: int) -> None:
        """The returns' units and the value they are worth (at most the order's)."""
        self.return_units = units
        unit_value = self.order_value / self.n_units if self.n_units else 0.0
        self.return_value = round(min(self.order_value, unit_value * self.return_units), 2)

    # ------------------------------------------------------------------ lifecycle

    def _close(self, outcome: Outcome, t: int) -> None:
        if self.status is Status.CLOSED:
            return
        self.status = Status.CLOSED
        self.outcome = outcome
        self.closed_at = t
        self.resolved_at = self.resolved_at or t

    def return_open(self) -> bool:
        return bool(self.return_requested_at) and self.outcome is None

    def next_deadline(
        self,
        return_window_us: int,
        journey_cfg: journey.JourneyConfig | None = None,
        rechecks: tuple[int, ...] = PROMISE_RECHECKS_US,
    ) -> int:
        """The next event time at which time alone changes this case or raises a journey alert
        (0: none)."""
        core = self.core_deadline(return_window_us, rechecks)
        # a journey alert needs a received return: a case without a ReturnState has none (most)
        j = (
            journey.deadline(self, journey_cfg)
            if journey_cfg is not None and self.ret is not None
            else 0
        )
        return min(core, j) if core and j else core or j

    def core_deadline(
        self, return_window_us: int, rechecks: tuple[int, ...] = PROMISE_RECHECKS_US
    ) -> int:
        """The next event time at which time alone changes this case (0: none)."""
        if self.status is Status.CLOSED:
            return 0
        # the least of: the hard TTL, the next promise checkpoint, the end of the return window
        best = self.ttl_at() or None
        delivered_at = self.delivered_at
        if delivered_at:
            if not self.return_requested_at or self.outcome is not None:  # no return open
                due = delivered_at + return_window_us
                if best is None or due < best:
                    best = due
        elif self.promised_at:
            check = self._promise_check(rechecks)
            if check and (best is None or check < best):
                best = check
        return 0 if best is None else best

    def ttl_at(self) -> int:
        """When the hard TTL closes this case (0: not placed): :data:`HARD_TTL_US` after the
        later of its placement and its promise."""
        placed_at = self.placed_at
        if not placed_at:
            return 0
        promised_at = self.promised_at
        return (promised_at if promised_at > placed_at else placed_at) + HARD_TTL_US

    def _promise_check(self, rechecks: tuple[int, ...]) -> int:
        """The next promise checkpoint of an undelivered parcel (0: none left): the "missed"
        check PROMISE_GRACE_US after the promise, then each re-check."""
        k = self.promise_checks
        if k == 0:
            return self.promised_at + PROMISE_GRACE_US
        offsets = _RECHECK_OFFSETS.get(rechecks)
        if offsets is None:
            offsets = tuple(o for o in rechecks if o > PROMISE_GRACE_US)
            _RECHECK_OFFSETS[rechecks] = offsets
        return self.promised_at + offsets[k - 1] if k - 1 < len(offsets) else 0

    def on_time(
        self, now: int, return_window_us: int, rechecks: tuple[int, ...] = PROMISE_RECHECKS_US
    ) -> list[str]:
        """Time passed ``now`` with no event: close the case, or flag a missed promise (first
        check) or a parcel still late and undelivered (re-checks)."""
        self.last_event_at = max(self.last_event_at, now)
        if self.status is Status.CLOSED:
            return []
        if self.placed_at and now >= self.ttl_at():
            if self.return_open():
                outcome = Outcome.EXPIRED
            elif not self.delivered_at:
                outcome = Outcome.UNDELIVERED  # never delivered: not "kept"
            else:
                outcome = Outcome.KEPT
            self._close(outcome, now)
            return ["closed"]
        self._maybe_close(now, return_window_us)
        if self.status is Status.CLOSED:
            return ["closed"]
        if self.promised_at and not self.delivered_at:
            first = self.promise_checks == 0
            passed = False
            while (check := self._promise_check(rechecks)) and now >= check:
                self.promise_checks += 1
                passed = True
            if passed:
                return ["promise_missed" if first else "promise_recheck", "delay_signal"]
        return []

    def _maybe_close(self, now: int, return_window_us: int) -> None:
        if (
            self.delivered_at
            and not self.return_open()
            and now >= self.delivered_at + return_window_us
        ):
            self._close(
                self.outcome if self.outcome is Outcome.RETURN_CANCELLED else Outcome.KEPT, now
            )

    def facts(self) -> dict:
        """Scalar facts of the case (for KPIs at close); times in µs, 0 when unknown."""
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "placed_at": self.placed_at,
            "currency": self.currency,
            "order_value": self.order_value,
            "margin": self.margin,
            "units": self.n_units,
            "sku_family": self.sku_family,
            "campaign": self.campaign,
            "channel": self.channel,
            "courier": self.courier,
            "lane": self.lane,
            "promised_at": self.promised_at,
            "delivered_at": self.delivered_at,
            "slippage_hours": self.slippage_hours(self.closed_at or self.last_event_at),
            "contacts_total": self.contacts_total,
            "last_contact_intent": self.contacts[-1][1] if self.contacts else "",
            "return_requested_at": self.return_requested_at,
            "return_reason": self.return_reason,
            "preferred_resolution": self.preferred_resolution,
            "return_value": self.return_value,
            "label_issued_at": self.label_issued_at,
            "label_cost": self.label_cost,
            "received_at": self.received_at,
            "graded_at": self.graded_at,
            "grade": self.grade,
            "abuse_flags": list(self.abuse_flags),
            "refunded_amount": self.refunded_amount,  # in the order's currency
            "refunded_other": dict(self.refunded_other),  # in others: {currency: amount}
            # goodwill cash paid while the case was open (counted by the KPIs when paid): for
            # the outcome record's refunded money (DispatchStage._outcome)
            "goodwill_refunded": self.goodwill_refunded,
            "refund_at": self.refund_at,
            "outcome": self.outcome.value if self.outcome else None,
            "closed_at": self.closed_at,
            "review_verdict": self.review_verdict,
            "reviewed_at": self.reviewed_at,
        }

    # ------------------------------------------------------------------ features

    def slippage_hours(self, now: int) -> float:
        """How far delivery is (or is expected to be) behind the promise, in hours (>= 0)."""
        if not self.promised_at:
            return 0.0
        if self.delivered_at:
            end = self.delivered_at
        else:
            end = max(self.carrier_eta, now if now > self.promised_at else 0)
        return max(0.0, (end - self.promised_at) / HOUR_US)

    def features(self, now: int) -> dict[str, float]:
        """Numeric features known at ``now`` (never anything from the future), by name
        (:data:`CASE_FEATURES`, in that order): :meth:`values` as a dict."""
        return dict(zip(CASE_FEATURES, self.values(now), strict=True))

    def values(self, now: int) -> tuple[float, ...]:
        """:meth:`features`' values in :data:`CASE_FEATURES` order (what the case stage sends
        downstream: a tuple, not a dict per update)."""
        # counts kept as floats (what the features are; exact for any count)
        c24 = c7d = wismo7 = refund7 = fit7 = high7 = sentiment_sum = 0.0
        contacts = self.contacts
        if contacts:
            for t, intent, high, sentiment in contacts:
                if t > now:
                    continue
                age = now - t
                if age <= _WEEK_US:
                    c7d += 1.0
                    sentiment_sum += sentiment
                    if intent in DELAY_INTENTS:
                        wismo7 += 1.0
                    if intent in REFUND_INTENTS:
                        refund7 += 1.0
                    if intent in FIT_INTENTS:
                        fit7 += 1.0
                    if high:
                        high7 += 1.0
                    if age <= DAY_US:
                        c24 += 1.0
            last_sentiment = contacts[-1][3]
        else:
            last_sentiment = 0.0
        delivered_at = self.delivered_at
        promised_at = self.promised_at
        if promised_at:  # slippage_hours(now), inline
            if delivered_at:
                end = delivered_at
            else:
                end = max(self.carrier_eta, now if now > promised_at else 0)
            slippage = max(0.0, (end - promised_at) / HOUR_US)
        else:
            slippage = 0.0
        order_value = self.order_value
        margin = self.margin
        n_units = self.n_units
        last_scan_at = self.last_scan_at
        ret = self.ret or NO_RETURN  # (the properties, without their call per field)
        resolution = ret.preferred_resolution
        flags = _REASON_FLAGS.get(ret.return_reason)
        if flags is None:
            flags = _reason_flags(ret.return_reason)
        fit, late, damaged, not_received, changed_mind = flags
        return (
            order_value,
            margin,
            margin / order_value if order_value else 0.0,
            float(n_units),
            float(self.bracketing_lines),
            slippage,
            float(self.exception_count),
            float(self.delayed_scan_count),
            float(self.lost),
            (now - last_scan_at) / HOUR_US if last_scan_at and not delivered_at else 0.0,
            1.0 if delivered_at else 0.0,
            (now - delivered_at) / DAY_US if delivered_at else 0.0,
            c24,
            c7d,
            wismo7,
            refund7,
            fit7,
            high7,
            sentiment_sum / c7d if c7d else 0.0,
            last_sentiment,
            float(self.wismo_after_delivered),
            1.0 if ret.return_requested_at else 0.0,
            ret.return_units / n_units if n_units else 0.0,
            1.0 if resolution == "exchange" else 0.0,
            1.0 if resolution == "refund" else 0.0,
            fit,
            late,
            damaged,
            not_received,
            changed_mind,
        )


CASE_FEATURES: tuple[str, ...] = (
    "order_value",
    "margin",
    "margin_rate",
    "units",
    "bracketing_lines",
    "slippage_hours",
    "exception_count",
    "delayed_scans",
    "lost",
    "hours_since_last_scan",
    "delivered",
    "days_since_delivery",
    "contacts_24h",
    "contacts_7d",
    "wismo_7d",
    "refund_intent_7d",
    "fit_intent_7d",
    "urgent_contacts_7d",
    "mean_sentiment_7d",
    "last_contact_sentiment",
    "wismo_after_delivered",
    "return_requested",
    "return_share",
    "prefers_exchange",
    "prefers_refund",
    "reason_fit",
    "reason_late",
    "reason_damaged",
    "reason_not_received",
    "reason_changed_mind",
)
"""The names of :meth:`OrderCase.values`, in order (the keys of :meth:`OrderCase.features`)."""


def _delegate(name: str) -> property:
    """``OrderCase.<name>``: the field of its ReturnState (the default without one); writing a
    value other than the default allocates the ReturnState."""
    slot = getattr(ReturnState, name)  # the slot's member descriptor
    get_slot, set_slot = slot.__get__, slot.__set__
    default = getattr(NO_RETURN, name)

    def get(case: OrderCase) -> Any:
        ret = case.ret
        return default if ret is None else get_slot(ret)

    def put(case: OrderCase, value: Any) -> None:
        ret = case.ret
        if ret is None:
            if value == default:
                return
            ret = case.ret = ReturnState()
        set_slot(ret, value)

    return property(get, put, doc=f"ReturnState.{name} of the case")


for _name in RETURN_FIELDS:
    setattr(OrderCase, _name, _delegate(_name))
del _name

# the order of a case's values in recovery state (flows/state.py), as before ReturnState: the
# ReturnState fields after wismo_after_delivered, ``ret`` itself not stored
_CORE = [f.name for f in fields(OrderCase) if f.name not in ("ret", "timer")]
_AT = _CORE.index("wismo_after_delivered") + 1
STATE_FIELDS: tuple[str, ...] = (*_CORE[:_AT], *RETURN_FIELDS, *_CORE[_AT:])

_WEEK_US = 7 * DAY_US

ReturnEntry = tuple[str, int, str, str]  # another return: (id, units, reason, resolution)


def _own_entry(ret: ReturnState) -> ReturnEntry:
    """The return a case follows, as an entry of ``other_returns`` (its units: the case's less
    the other returns')."""
    units = ret.return_units - sum(o[1] for o in ret.other_returns)
    return (ret.return_id, units, ret.return_reason, ret.preferred_resolution)


def _without(entries: tuple[ReturnEntry, ...], return_id: str) -> tuple[ReturnEntry, ...]:
    return tuple(o for o in entries if o[0] != return_id)


def shared(label: str) -> str:
    """One copy per process of a low-cardinality label (courier, region lane, channel, currency,
    campaign, SKU family): ``sys.intern`` (interned strings are freed when no case holds them any
    more). Every open case would otherwise keep its own copy of each, as parsed (~50 B each)."""
    return sys.intern(label) if type(label) is str else label


# return reason -> (reason_fit, reason_late, reason_damaged, reason_not_received,
# reason_changed_mind), as features() reports them
_REASON_FLAGS: dict[str, tuple[float, float, float, float, float]] = {
    "": (0.0, 0.0, 0.0, 0.0, 0.0),  # no return (yet)
    "too_small": (1.0, 0.0, 0.0, 0.0, 0.0),
    "too_large": (1.0, 0.0, 0.0, 0.0, 0.0),
    "arrived_late": (0.0, 1.0, 0.0, 0.0, 0.0),
    "damaged": (0.0, 0.0, 1.0, 0.0, 0.0),
    "wrong_item": (0.0, 0.0, 1.0, 0.0, 0.0),
    "not_received": (0.0, 0.0, 0.0, 1.0, 0.0),
    "changed_mind": (0.0, 0.0, 0.0, 0.0, 1.0),
    "quality": (0.0, 0.0, 0.0, 0.0, 1.0),
}


def _reason_flags(reason: str) -> tuple[float, float, float, float, float]:
    """The reason features of any other reason (none: all 0.0)."""
    return (
        float(reason in ("too_small", "too_large")),
        float(reason == "arrived_late"),
        float(reason in ("damaged", "wrong_item")),
        float(reason == "not_received"),
        float(reason in ("changed_mind", "quality")),
    )
