"""The simulated brand: a seeded, deterministic generator of one interleaved event log.

``generate`` yields ``("event", dict)`` in event-time order (the stream of an event follows from its
``event_type``, see :data:`salvage.connectors.events.STREAM_OF`) interleaved with ``("truth",
dict)``
records that say what really happened; ``write_log`` writes them as JSON lines. Every event
validates against :data:`salvage.connectors.events.EVENT_ADAPTER` (strict mode, via
``validate_json``).

The world
---------
* **Customers** (ids ``C0000001``...): a latent value tier (``new`` / ``regular`` / ``vip``), a home
  region and a temperament; ~35% of orders come from returning customers (vip ones return most).
  ``ABUSIVE_SHARE`` (4%) of customers are abusive, each with one behaviour, attempted on
  ~75% of their orders where it applies (an attempt always ends in a return or a claim;
  abusive customers also reorder more often than average):

  - *wardrobing*: an ordinary order of wearables, returned late in the window (day 17-29) as
    ``changed_mind``/``quality``; graded B/refurbish with ``worn`` (sometimes ``swapped_item`` /
    ``empty_box``) most of the time;
  - *bracketing*: the same style ordered in 2-3 adjacent sizes (separate lines, same
    ``sku_family``), all but one returned soon after delivery as ``too_small``/``too_large``;
  - *false_not_received*: the carrier scans ``delivered`` on time, then ``where_is_my_order``
    ("tracking says delivered but nothing arrived") and often a ``complaint``, then either a
    ``return_requested`` with reason ``not_received`` (refund, no return shipment, no grading)
    or a ``chargeback_filed``. ~0.4% of honest deliveries are genuinely misdelivered and look
    the same on the wire (hard negatives); ~3% of honest orders with a sized first line bracket
    2 sizes; ~1.5% of honest wearable returns are graded ``worn``.

* **SKUs**: seven families (apparel_tops, apparel_bottoms, footwear, beauty_skincare,
  beauty_makeup, accessories, home) with price ranges, cost ratios (``unit_cost < unit_price``),
  sizes for apparel/footwear (a SKU id is style + size, e.g. ``TOP-0042-M``), and per-family
  rates of fit / quality / damage / changed-mind problems. The launch SKUs are ``GLOW-01``...
* **Lanes**: 4 couriers x 3 origin warehouses x 5 destination regions. Each lane has a transit
  time and a delay probability (most 2.5-6%; ``SLOW_LANE_SHARE`` of lanes systematically slower).
  ``lane_profiles(scenario, seed)`` returns these hidden baselines.
  Scans: label_created, picked_up, in_transit (1-3), out_for_delivery, delivered, with
  ``estimated_delivery_at`` (the carrier's current ETA) on every scan but ``delivered``;
  delayed shipments get 1-3 ``delayed`` scans pushing the ETA, sometimes an ``exception``;
  rarely ``lost`` or ``returned_to_sender`` (never delivered).
* **Support**: WISMO and complaints grow with slippage (and start when a delayed scan pushes the
  ETA), refund/cancel requests on badly late orders, sizing questions and exchange requests
  around fit returns, damaged/wrong-item reports. ~70% of contacts carry a generic free
  ``text`` (no names, emails, addresses or digits); 15% of those have no ``intent``.
* **Outcomes**: every order gets a latent ``recoverability`` = P(retained) from its signals
  (slippage, damage, wrong item, fit, quality, changed mind, lost, abuse, tier, temperament);
  the outcome is sampled from it: retained orders are kept, or start a return that ends in an
  exchange, store credit or a cancelled return; lost orders end in a refund or a chargeback.
  A cancelled order (before shipping) has recoverability 0.
* **Warehouse breakages**: a returned parcel is graded 0.1-3 days after receipt and settled
  (refund, exchange, store credit) 0.05-1.5 days after grading, except for
  ``JOURNEY_ANOMALY_SHARE`` (5%) of received returns, drawn from a separate seeded stream (the
  rest of the log is unchanged by them): ``refund_before_grading`` (refunds only: the full
  amount is refunded between receipt and the grading that would have happened, and no
  ``return_graded`` follows), ``received_ungraded`` (graded 3.5-5 days after receipt, settled
  within 6 days) and ``refund_overdue`` (graded in time, settled 8-12 days after receipt). With
  the default journey policy (72 h, 7 days) each raises exactly its own journey alert, and
  ordinary returns raise none.
* **Scenarios**: ``steady-state`` (no incidents) and ``launch-week-backlog`` (the ``glow-launch``
  campaign: beauty dominates orders on days 1-8 at 1.8x volume; a courier backlog at the central
  hub makes 3 lanes from ``central`` badly delayed for pick-ups on days 2-6, then they recover.
  Late launch orders stay fairly recoverable: the product is fine).

Time
----
Orders arrive at ~``ORDERS_PER_DAY`` (diurnal profile) over ``max(min days, orders / rate)``
days, so memory is bounded by the orders in flight (the scheduler holds one entry per open order
story; customers cost a few bytes each), not by the total; the log then runs on for the
follow-up tail (returns up to ``RETURN_WINDOW_DAYS`` after delivery). Lines are in
``occurred_at`` order, ties broken deterministically, except that a carrier scan is *recorded*
late with probability ``LATE_SCAN_PROB``: its line appears up to ``LATE_SCAN_MAX_MINUTES``
after its ``occurred_at``.

Ids: orders ``O00000001``, customers ``C0000001``, events ``{order_id}-{nn}``, returns
``{order_id}-R1`` (at most one return per order). Optional fields that are unknown are omitted.

Truth records
-------------
``{"type": "order", "order_id", "customer_id", "recoverability", "abusive" (this order is an
abuse attempt), "abuse_kind", "outcome", "retained", "lane", "slippage_hours" (hours delivered
after the promise, >= 0; for lost / returned parcels up to that scan), plus "segment",
"customer_abusive", "cause" (the main problem or null), "journey_anomaly" (a warehouse breakage
above, or null), "final_at"}`` is emitted when the order's
story ends (its last event, or the end of the return window for kept orders). ``{"type":
"lane_incident", "lane", "start", "end", "delay_prob"}`` is emitted at the incident's end; an
incident applies to shipments *picked up* in ``[start, end)``. A shift of a lane's normal (the
``lane-shift`` variant) is ``{"type": "lane_shift", ..., "end": null}``, emitted at its start.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import random
import zlib
from array import array
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import accumulate
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path

from salvage.connectors.events import SCHEMA_VERSION, lane_of

__all__ = [
    "DEFAULT_START",
    "LATE_SCAN_MAX_MINUTES",
    "LATE_SCAN_PROB",
    "SCENARIOS",
    "VARIANTS",
    "generate",
    "lane_profiles",
    "write_log",
]

SCENARIOS: tuple[str, ...] = (
    "steady-state",
    "launch-week-backlog",
    "silent-carrier-incident",
    "thin-lane-incident",
)
# Lane-monitor variants (features/lane.py): carriers that send only picked_up + delivered scans
# (no delayed / exception / lost scans, no ETA), one lane incident each.
# ``silent-carrier-incident``: a depot incident makes most of one busy lane's parcels late for
# 3.5 days (800 orders/day);
# ``thin-lane-incident``: every promise is ~3 weeks (transit + 18 days), 150 orders/day (a few
# parcels a day per lane) and one thin lane's late rate triples for 3 weeks.
SILENT_SCENARIOS = ("silent-carrier-incident", "thin-lane-incident")
SILENT_SCANS = ("picked_up", "delivered")
SCENARIO_ORDERS_PER_DAY = {"silent-carrier-incident": 800.0, "thin-lane-incident": 150.0}
SILENT_INCIDENT = (3.0, 6.5, 0.7)  # days after start (pick-ups), delay probability
THIN_INCIDENT = (40.0, 61.0, 0.35)
THIN_EXTRA_TRANSIT_DAYS = 18
DEFAULT_START = datetime(2026, 3, 2, tzinfo=UTC)

LATE_SCAN_PROB = 0.005
"""Probability that a carrier scan is recorded late (its line appears after later events)."""
LATE_SCAN_MAX_MINUTES = 30
"""A late-recorded scan appears at most this many minutes after its ``occurred_at``."""

ORDERS_PER_DAY = 2500
RETURN_WINDOW_DAYS = 30
CURRENCY = "EUR"
REPEAT_SHARE = 0.36  # share of orders placed by an existing customer
ABUSIVE_SHARE = 0.04  # share of customers who are abusive
ABUSE_ATTEMPT_PROB = 0.75  # an abusive customer's order where the behaviour applies
SLOW_LANE_SHARE = 0.02
CANCEL_PROB = 0.02
TEXT_INTENT_MISSING_PROB = 0.15
LAUNCH_CAMPAIGN = "glow-launch"
LAUNCH_DAYS = (1.0, 8.0)  # launch window, days after start
LAUNCH_RATE_MULT = 1.8
BACKLOG_DAYS = (2.0, 6.0)  # incident window (shipments picked up in it), days after start
JOURNEY_ANOMALY_SHARE = 0.05  # received returns with a warehouse breakage (see the docstring)
JOURNEY_ANOMALIES = ("refund_before_grading", "received_ungraded", "refund_overdue")

HOUR = 3600
DAY = 86400
BUCKET_SECONDS = HOUR  # scheduler: entries due later than this hour wait in hourly buckets
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------- static world

TIERS = ("new", "regular", "vip")
TIER_WEIGHTS = (0.55, 0.35, 0.10)
TIER_LOGIT = (-0.3, 0.2, 0.7)  # recoverability bonus
ABUSE_KINDS = ("wardrobing", "bracketing", "false_not_received")
ABUSE_KIND_WEIGHTS = (0.45, 0.35, 0.20)
# repeat-order weight per customer group: new, regular, vip, abusive
GROUP_REPEAT_WEIGHT = (1.0, 3.0, 8.0, 5.0)

COURIERS = ("swiftship", "parcelgo", "northpost", "bluebird")
COURIER_WEIGHTS = (0.34, 0.30, 0.22, 0.14)
COURIER_DELAY = (1.0, 1.1, 0.8, 1.4)
COURIER_DAMAGE = (1.0, 1.2, 0.8, 1.3)
COURIER_BUFFER_DAYS = (0, 1, 1, 1)  # promise buffer on top of the nominal transit
REGIONS = ("north", "south", "east", "west", "central")
REGION_WEIGHTS = (0.22, 0.24, 0.20, 0.18, 0.16)
_COORD = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0), "central": (0, 0)}
ORIGINS = ("central", "north", "west")
ORIGIN_WEIGHTS_BY_DEST = {
    "north": (0.3, 0.6, 0.1),
    "south": (0.7, 0.1, 0.2),
    "east": (0.5, 0.4, 0.1),
    "west": (0.3, 0.1, 0.6),
    "central": (0.8, 0.1, 0.1),
}
CHANNELS = ("web", "app", "marketplace")
CHANNEL_WEIGHTS = (0.50, 0.35, 0.15)
CAMPAIGNS = ("spring-sale", "newsletter", "influencer", "loyalty-vip", "retargeting")
CAMPAIGN_WEIGHTS = (0.30, 0.25, 0.20, 0.10, 0.15)
CAMPAIGN_PROB = 0.40

CONTACT_CHANNELS = ("email", "chat", "phone", "social", "form")
CONTACT_CHANNEL_WEIGHTS = (0.30, 0.35, 0.12, 0.08, 0.15)
TEXT_PROB = {"email": 0.8, "chat": 0.8, "phone": 0.3, "social": 0.85, "form": 0.6}


class _Family:
    __slots__ = (
        "changed_mind",
        "code",
        "cost",
        "damage",
        "fit",
        "name",
        "price",
        "qty_cum",
        "quality",
        "size_cum",
        "sizes",
        "style_cum",
        "styles",
    )

    def __init__(
        self,
        name: str,
        code: str,
        price: tuple[float, float],
        cost: tuple[float, float],
        sizes: tuple[str, ...] | None,
        size_weights: tuple[float, ...] | None,
        n_styles: int,
        fit: float,
        quality: float,
        damage: float,
        changed_mind: float,
        qty_weights: tuple[float, ...],
    ) -> None:
        self.name = name
        self.code = code
        self.price = price
        self.cost = cost
        self.sizes = sizes
        self.size_cum = list(accumulate(size_weights)) if size_weights else None
        self.fit = fit
        self.quality = quality
        self.damage = damage
        self.changed_mind = changed_mind
        self.qty_cum = list(accumulate(qty_weights))
        self.styles: list[tuple[str, float, float]] = []  # (style id, price, cost)
        self.style_cum = list(accumulate(1.0 / (i + 1) ** 0.8 for i in range(n_styles)))


_FAMILY_SPECS = (
    # name, code, price, cost ratio, sizes, size weights, styles, fit, quality, damage, cm, qty
    ("apparel_tops", "TOP", (14, 79), (0.28, 0.5), ("XS", "S", "M", "L", "XL", "XXL"),
     (6, 20, 32, 25, 12, 5), 180, 0.15, 0.04, 0.006, 0.05, (90, 10)),
    ("apparel_bottoms", "BTM", (24, 119), (0.3, 0.5), ("26", "28", "30", "32", "34", "36", "38"),
     (5, 12, 22, 25, 18, 11, 7), 140, 0.19, 0.04, 0.006, 0.05, (92, 8)),
    ("footwear", "FTW", (39, 189), (0.35, 0.55),
     ("36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46"),
     (3, 6, 9, 11, 12, 13, 13, 12, 10, 7, 4), 120, 0.14, 0.035, 0.012, 0.045, (95, 5)),
    ("beauty_skincare", "SKC", (9, 89), (0.18, 0.35), None, None, 150,
     0.0, 0.03, 0.015, 0.035, (68, 22, 10)),
    ("beauty_makeup", "MKP", (7, 49), (0.18, 0.35), None, None, 160,
     0.0, 0.035, 0.015, 0.04, (70, 22, 8)),
    ("accessories", "ACC", (9, 149), (0.3, 0.5), None, None, 130,
     0.0, 0.04, 0.01, 0.045, (90, 10)),
    ("home", "HOM", (14, 249), (0.4, 0.62), None, None, 110,
     0.0, 0.035, 0.035, 0.035, (88, 12)),
)  # fmt: skip
FAMILY_NAMES = tuple(s[0] for s in _FAMILY_SPECS)
FAMILY_MIX = (0.22, 0.15, 0.12, 0.14, 0.12, 0.13, 0.12)
LAUNCH_FAMILY_MIX = (0.09, 0.06, 0.05, 0.45, 0.20, 0.08, 0.07)
SIZED = frozenset({"apparel_tops", "apparel_bottoms", "footwear"})
WEARABLE = frozenset({"apparel_tops", "apparel_bottoms", "footwear", "accessories"})
N_LINES_CUM = list(accumulate((55, 28, 12, 5)))
LAUNCH_SKUS = 8
# 24 hourly arrival-rate multipliers (UTC), normalised to mean 1 below
_DIURNAL_RAW = (0.3, 0.2, 0.15, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0, 1.1, 1.2, 1.2,
                1.3, 1.3, 1.2, 1.2, 1.3, 1.4, 1.5, 1.6, 1.6, 1.5, 1.1, 0.6)  # fmt: skip
DIURNAL = tuple(x * 24 / sum(_DIURNAL_RAW) for x in _DIURNAL_RAW)

# ---------------------------------------------------------------- support texts (generic only)

_TEXTS: dict[str, tuple[str, ...]] = {
    "where_is_my_order": (
        "where is my parcel, it is late",
        "my order has not arrived yet",
        "tracking has not updated for days",
        "when will my package be delivered",
        "order still not here, any update",
        "it was supposed to arrive already, where is it",
        "the delivery date has passed and nothing came",
    ),
    "wismo_early": (
        "when will my order ship",
        "can you tell me when my parcel will arrive",
        "is my order on its way",
        "tracking says the date moved, why",
    ),
    "wismo_delivered": (
        "tracking says delivered but nothing arrived",
        "my parcel shows as delivered but i never got it",
        "marked as delivered, not here",
        "it says delivered but there is no package",
    ),
    "complaint": (
        "this is unacceptable, the delivery is very late",
        "really disappointed with the service",
        "worst delivery experience, nobody answers",
        "i have been waiting forever, very unhappy",
        "not happy at all with how this was handled",
    ),
    "complaint_not_received": (
        "it says delivered but nothing came, this is unacceptable",
        "second time a parcel goes missing, very unhappy",
        "nobody helps me with my missing parcel",
    ),
    "refund_request": (
        "i want my money back",
        "please refund my order",
        "it is taking too long, refund me",
        "where is my refund",
        "i sent it back, when do i get the refund",
    ),
    "return_request": (
        "how do i return this",
        "i would like to send this back",
        "can i get a return label",
        "i want to return part of my order",
    ),
    "exchange_request": (
        "can i swap this for another size",
        "need a different size please",
        "can i exchange it instead of a refund",
        "i would like the next size up",
    ),
    "sizing_question": (
        "does this run small",
        "what size should i take, the one i got is tight",
        "the fit is off, is there a size chart",
        "is this true to size",
    ),
    "damaged_item": (
        "the item arrived broken",
        "box was crushed and the product is damaged",
        "the bottle leaked inside the parcel",
        "it came with a tear in it",
    ),
    "wrong_item": (
        "i received the wrong item",
        "this is not what i ordered",
        "wrong colour in the box",
        "got someone else's order by mistake",
    ),
    "product_question": (
        "is this suitable for sensitive skin",
        "what is the material",
        "how do i use this",
        "is this the new version",
    ),
    "cancel_request": (
        "please cancel my order",
        "i do not need it anymore, cancel",
        "cancel it, it is taking too long",
    ),
    "other": (
        "do you have a discount code",
        "can i change my delivery slot",
        "question about my invoice",
        "can i add something to my order",
    ),
}
# ---- the "realistic-text" variant: real-style phrasing (colloquial, misspelled, mixed-intent,
# only half labelled), drawn from its own random stream so the rest of the log is unchanged
VARIANTS: tuple[str, ...] = (
    "bracketing-unflagged",
    "realistic-text",
    "split-returns",
    "goodwill",
    "split-refunds",
    "foreign-currency",
    "lane-shift",
    "guest-checkout",
    "batch-uploads",
)
# split-returns: a customer sending back two or more units of an order (a return that is
# received, graded and settled) sends them in two parcels, two returns of one order: the first
# unit as requested, the rest requested SPLIT_DELAY_DAYS later (so the second return is still open
# at the first one's refund, or comes after it), each with its own label, scans, grade and
# settlement; refunds and store credit split by units (their total as without the variant)
SPLIT_RETURN_PROB = 0.6
SPLIT_DELAY_DAYS = (0.5, 12.0)
# goodwill: a brand that says sorry for a late parcel with money, the order kept: a parcel
# delivered more than GOODWILL_LATE_HOURS after its promise gets, with GOODWILL_PROB, a refund or a
# store credit naming no return (GOODWILL_SHARE of the order's value) GOODWILL_AFTER_HOURS after
# delivery, when no return was requested (and nothing settled) by then
GOODWILL_PROB = 0.5
GOODWILL_LATE_HOURS = 24.0
GOODWILL_SHARE = (0.05, 0.2)
GOODWILL_AFTER_HOURS = (2.0, 36.0)
# split-refunds: a return's refund paid in two parts (the item, then the shipping fee or a
# correction): with SPLIT_REFUND_PROB, a refund naming a return keeps SPLIT_REFUND_FIRST of its
# amount, and the rest comes SPLIT_REFUND_DELAY_DAYS later under a new event id (same return)
SPLIT_REFUND_PROB = 0.5
SPLIT_REFUND_FIRST = (0.6, 0.95)
SPLIT_REFUND_DELAY_DAYS = (0.5, 5.0)
# foreign-currency: a brand that pays some money out in another currency than the order's (a
# cross-border store refunding in the shopper's currency, or a data error): with
# FOREIGN_CURRENCY_PROB, a refund, store credit or chargeback says FOREIGN_CURRENCY, its amount as
# it was (the simulator has no exchange rate either: each currency's total can be checked against
# the log without the variant). After the other variants, so their money is relabelled too
FOREIGN_CURRENCY_PROB = 0.15
FOREIGN_CURRENCY = "GBP"
_MONEY = frozenset({"refund_issued", "store_credit_issued", "chargeback_filed"})
# lane-shift: a carrier moves a depot: from LANE_SHIFT_DAY on (pick-ups, days after start) a share
# LANE_SHIFT_PROB of one busy lane's parcels (parcelgo central>south, ~5% of orders, ~3% late
# before) arrive 2-4 days late, for good (on the silent scenarios no delay scan says so);
# LANE_SHIFT_SPIKE (start, end, delay probability) is an incident on top of that new normal. The
# log changes from the shift on (the lane's parcels draw their delays from the world's stream).
LANE_SHIFT_LANE = (1, "central", "south")
LANE_SHIFT_DAY = 10.0
LANE_SHIFT_PROB = 0.3
LANE_SHIFT_SPIKE = (44.0, 48.0, 0.8)
# guest-checkout: a share GUEST_PROB of customers (chosen per customer, from the seed alone) check
# out as a guest on every order: their order_placed says customer_id GUEST_ID (the truth keeps the
# real customer); the rest of the log is unchanged
GUEST_PROB = 0.3
GUEST_ID = "guest"
# batch-uploads: one carrier's handhelds upload their scans in batches, every BATCH_UPLOAD_HOURS
# on the hour of the day (00:00, 04:00, ...): a scan's line appears at the first upload after its
# occurred_at (unchanged), behind the other carriers' scans of the same hours
BATCH_UPLOAD_COURIER = "parcelgo"
BATCH_UPLOAD_HOURS = 4
_SETTLEMENTS = frozenset({"refund_issued", "exchange_completed", "store_credit_issued"})
_ENVELOPE = frozenset({"event_id", "event_type", "occurred_at", "order_id", "schema_version"})
REALISTIC_INTENT_MISSING_PROB = 0.5
_REAL_TEXTS: dict[str, tuple[str, ...]] = {
    "where_is_my_order": (
        "ordered ages ago and still nothing, whats going on",
        "any news on my delivery? courier site shows nothing",
        "package hasnt moved since it left your warehouse",
        "was meant to come yesterday, still waiting",
        "could you chase the courier for me, parcel is stuck",
    ),
    "wismo_early": (
        "has it been dispatched yet",
        "when does it leave the warehouse",
        "eta on my stuff?",
    ),
    "wismo_delivered": (
        "app says it was dropped off but my doorstep is empty",
        "courier claims it was handed over, it wasnt",
        "shows completed but i have nothing, neighbours neither",
    ),
    "complaint": (
        "honestly fed up, third time chasing this",
        "terrible service, i will not order again",
        "nobody replies to my emails, ridiculous",
        "so annoyed, this was a gift and it is late",
    ),
    "complaint_not_received": (
        "you say delivered, i say it never came, sort it out",
        "lost again?? this is a joke",
    ),
    "refund_request": (
        "just give me my money back",
        "i expect a full reimbursement",
        "returned it weeks ago and still no money on my card",
        "want the payment reversed please",
    ),
    "return_request": (
        "how do i send it back, no slip in the box",
        "need a prepaid label to return",
        "i want to return the jacket, how does it work",
    ),
    "exchange_request": (
        "can you send a bigger one and i send this back",
        "swap for a medium instead please",
        "rather have another colour than money back",
    ),
    "sizing_question": (
        "the trousers are too tight around the waist, which size do i need",
        "do these come up big or small",
        "between two sizes, what do you recommend",
    ),
    "damaged_item": (
        "arrived smashed, glass everywhere",
        "the zip is broken out of the box",
        "stain on the front, looks used",
    ),
    "wrong_item": (
        "you sent me a completely different product",
        "i ordered black and got blue",
        "not my size in the bag, wrong label",
    ),
    "product_question": (
        "does it contain fragrance",
        "can it go in the washing machine",
        "is it vegan",
    ),
    "cancel_request": (
        "stop the order please, found it cheaper",
        "dont ship it, i changed my mind",
    ),
    "other": (
        "can i get an invoice with my company name",
        "do you deliver to a parcel locker",
        "is there a student discount",
    ),
}
_REAL_OPENERS = ("", "", "hi ", "hello there, ", "good morning, ", "hey team, ", "dear support, ")
_REAL_CLOSERS = ("", "", " thx", " pls", " cheers", "!!", "??", " asap!!", " kind regards")
_SLANG = {"you": "u", "please": "pls", "thanks": "thx", "are": "r", "because": "cos"}


def realistic_text(rng: random.Random, key: str) -> str:
    """A real-style support message for ``key`` (an intent or a ``_TEXTS`` variant): its own or
    the generic phrasing, sometimes a second sentence of another intent (the label stays the
    first one's), slang, dropped/swapped/doubled letters, odd casing and punctuation."""
    own = _REAL_TEXTS.get(key, ()) + _TEXTS[key]
    text = own[int(rng.random() * len(own))]
    if rng.random() < 0.3:  # mixed intent: the customer mentions something else as well
        other = sorted(_TEXTS)[int(rng.random() * len(_TEXTS))]
        extra = _TEXTS[other][int(rng.random() * len(_TEXTS[other]))]
        text = f"{text}. also {extra}" if rng.random() < 0.5 else f"{extra}, but {text}"
    words = []
    for w in text.split():
        if w in _SLANG and rng.random() < 0.4:
            w = _SLANG[w]
        r = rng.random()
        if len(w) > 3 and r < 0.06:  # dropped letter
            i = 1 + int(rng.random() * (len(w) - 2))
            w = w[:i] + w[i + 1 :]
        elif len(w) > 3 and r < 0.11:  # swapped letters
            i = int(rng.random() * (len(w) - 1))
            w = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
        elif len(w) > 2 and r < 0.14:  # doubled letter
            i = int(rng.random() * len(w))
            w = w[:i] + w[i] + w[i:]
        words.append(w)
    text = " ".join(words)
    if rng.random() < 0.1:
        text = text.upper()
    elif rng.random() < 0.3:
        text = text.capitalize()
    opener = _REAL_OPENERS[int(rng.random() * len(_REAL_OPENERS))]
    return opener + text + _REAL_CLOSERS[int(rng.random() * len(_REAL_CLOSERS))]


_PREFIXES = ("", "", "", "hi, ", "hello, ", "hey, ")
_SUFFIXES = ("", "", "", " thanks", " please help", "!", " asap", " thank you")
_SENTIMENT_BASE = {
    "where_is_my_order": -0.25,
    "complaint": -0.7,
    "refund_request": -0.4,
    "return_request": -0.05,
    "exchange_request": 0.0,
    "sizing_question": 0.1,
    "damaged_item": -0.5,
    "wrong_item": -0.4,
    "product_question": 0.25,
    "cancel_request": -0.25,
    "other": 0.05,
}
_HIGH_URGENCY = frozenset({"complaint", "damaged_item", "wrong_item"})
_LOW_URGENCY = frozenset({"product_question", "sizing_question", "other"})

# ---------------------------------------------------------------- helpers


@lru_cache(maxsize=8192)
def _day_str(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).strftime("%Y-%m-%d")


_TIME_OF_DAY: list[str] = []  # "THH:MM:SSZ" for every second of a day, built on first use


def _seconds(iso_time: str) -> int:
    """An event's ISO time back as epoch seconds (what :func:`_iso` wrote)."""
    return int(datetime.fromisoformat(iso_time).timestamp())


def _iso(ts: int) -> str:
    """Integer epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ``."""
    d, s = divmod(ts, DAY)
    if not _TIME_OF_DAY:
        _TIME_OF_DAY.extend(
            f"T{h:02d}:{m:02d}:{sec:02d}Z"
            for h in range(24)
            for m in range(60)
            for sec in range(60)
        )
    return _day_str(d) + _TIME_OF_DAY[s]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _make_encoder() -> Callable[[dict], str]:
    """``json.dumps(obj, separators=(",", ":"), sort_keys=True)``, byte for byte, minus the
    per-call encoder construction (the C encoder is built once; no circular check needed)."""
    slow = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
    if c_make_encoder is None:  # pragma: no cover - pure-Python json
        return slow.encode

    def default(obj: object) -> object:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    fast = c_make_encoder(None, default, encode_basestring_ascii, None, ":", ",", True, False, True)

    def encode(obj: dict) -> str:
        return "".join(fast(obj, 0))

    return encode


_ENCODE = _make_encoder()


def dumps(obj: dict) -> str:
    """The log's canonical serialisation: ``json.dumps(obj, separators=(",", ":"),
    sort_keys=True)``."""
    return _ENCODE(obj)


class _Lane:
    __slots__ = ("courier_i", "delay_mean_h", "delay_p", "key", "slow", "transit_days")

    def __init__(self, key: str, courier_i: int, transit_days: int, delay_p: float) -> None:
        self.key = key
        self.courier_i = courier_i
        self.transit_days = transit_days
        self.delay_p = delay_p
        self.delay_mean_h = 30.0
        self.slow = False


class _Incident:
    __slots__ = ("backlog", "delay_prob", "end", "lane", "mean_h", "start")

    def __init__(
        self,
        lane: str,
        start: int,
        end: int,
        delay_prob: float,
        mean_h: float,
        backlog: bool = True,
    ) -> None:
        self.lane = lane
        self.start = start
        self.end = end  # 0: for good (a shift of the lane's normal, see LANE_SHIFT_DAY)
        self.delay_prob = delay_prob
        self.mean_h = mean_h
        self.backlog = backlog  # stuck at a hub (parcels lost more often), not ordinary delays


class _Story:
    """One order's events: (emit time, creation index, event); sorted before emission."""

    __slots__ = ("items", "oid")

    def __init__(self, oid: str) -> None:
        self.oid = oid
        self.items: list[tuple[int, int, dict]] = []

    def add(self, ts: int, etype: str, fields: dict, emit: int | None = None) -> None:
        n = len(self.items)
        event = {
            "event_id": f"{self.oid}-{n + 1:02d}",
            "event_type": etype,
            "occurred_at": _iso(ts),
            "order_id": self.oid,
            "schema_version": SCHEMA_VERSION,
        }
        event.update(fields)
        self.items.append((ts if emit is None else emit, n, event))


class _Order:
    """One order's story in the making: the state the story builders of :meth:`_World.order` pass
    along (set as the story goes; a builder reads only what earlier ones set)."""

    __slots__ = (
        "bracket_honest",
        "campaign",
        "cancel_p",
        "cause",
        "ci",
        "courier",
        "days",
        "delayed",
        "delivered_at",
        "dest",
        "exception",
        "fams",
        "fit_line",
        "handling",
        "items",
        "kind",
        "label_cost",
        "lane",
        "lines",
        "lost",
        "new_sku",
        "origin",
        "outcome",
        "preferred",
        "promised",
        "pushes",
        "reason",
        "ret_value",
        "retained",
        "return_id",
        "rts",
        "slip_h",
        "st",
        "t0",
        "t_end",
        "t_label_r",
        "t_req",
        "t_ship",
        "t_transit",
        "temper",
        "tier",
        "truth",
        "value",
    )
    # placed
    kind: str | None
    lines: list[dict]
    fams: set[str]
    bracket_honest: bool
    tier: int
    temper: float
    ci: int
    courier: str
    lane: _Lane
    origin: str
    dest: str
    campaign: str | None
    value: float
    promised: int
    truth: dict
    handling: int
    cancel_p: float
    # shipped
    t_ship: int
    t_end: int
    delivered_at: int
    pushes: list[tuple[int, int]]
    delayed: bool
    lost: bool
    rts: bool
    exception: bool
    slip_h: float
    # latent
    fit_line: int
    retained: bool
    cause: str | None
    # the return
    reason: str | None
    items: list[dict]
    new_sku: str | None
    ret_value: float
    days: float
    t_req: int
    return_id: str
    outcome: str
    preferred: str
    label_cost: float
    t_label_r: int
    t_transit: int

    def __init__(self, oid: str, t0: int) -> None:
        self.st = _Story(oid)
        self.t0 = t0


# ---------------------------------------------------------------- the world


class _World:
    def __init__(
        self,
        scenario: str,
        orders: int,
        seed: int,
        start: datetime | None,
        orders_per_day: float = ORDERS_PER_DAY,
        variants: Iterable[str] = (),
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {SCENARIOS}")
        variants = frozenset(variants)
        if not variants <= set(VARIANTS):
            raise ValueError(f"unknown variant(s) {sorted(variants - set(VARIANTS))}")
        self.bracketing_unflagged = "bracketing-unflagged" in variants
        self.realistic_text = "realistic-text" in variants
        self.text_rng = random.Random(f"text-{seed}")
        self.split_returns = "split-returns" in variants
        self.split_rng = random.Random(f"split-{seed}")  # own stream, as text_rng
        self.goodwill = "goodwill" in variants
        self.goodwill_rng = random.Random(f"goodwill-{seed}")
        self.split_refunds = "split-refunds" in variants
        self.refund_rng = random.Random(f"split-refunds-{seed}")
        self.foreign_currency = "foreign-currency" in variants
        self.currency_rng = random.Random(f"foreign-currency-{seed}")
        self.lane_shift = "lane-shift" in variants
        self.guest_checkout = "guest-checkout" in variants
        self.batch_uploads = "batch-uploads" in variants
        self.guest_seed = seed
        if orders < 0:
            raise ValueError("orders must be >= 0")
        start = DEFAULT_START if start is None else start
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.scenario = scenario
        self.launch = scenario == "launch-week-backlog"
        self.orders = orders
        self.rng = random.Random(seed)
        # return-journey breakages draw from their own stream, so the rest of the log is the same
        # bytes as without them (only the affected orders' warehouse timings change)
        self.journey_rng = random.Random(f"journey-{seed}")
        self.t_start = int((start.astimezone(UTC) - _EPOCH).total_seconds())
        # arrival rate: ~orders_per_day, spread over at least a week (two for the launch)
        if orders_per_day <= 0:
            raise ValueError("orders_per_day must be > 0")
        if orders_per_day == ORDERS_PER_DAY:
            orders_per_day = SCENARIO_ORDERS_PER_DAY.get(scenario, orders_per_day)
        self.silent_scans = scenario in SILENT_SCENARIOS
        min_days = 14.0 if self.launch else 7.0
        self.span_days = max(min_days, orders / orders_per_day)
        effective = self.span_days
        if self.launch:
            effective += (LAUNCH_RATE_MULT - 1.0) * (LAUNCH_DAYS[1] - LAUNCH_DAYS[0])
        self.base_rate = orders / effective / DAY  # orders per second before modulation
        self.launch_from = self.t_start + int(LAUNCH_DAYS[0] * DAY)
        self.launch_to = self.t_start + int(LAUNCH_DAYS[1] * DAY)
        self._build_catalog()
        self._build_lanes()
        # customers: parallel byte arrays + index lists per repeat group
        self.c_tier = bytearray()
        self.c_abuse = bytearray()  # 0 none, 1.. ABUSE_KINDS index + 1
        self.c_region = bytearray()
        self.c_temper = array("b")
        self.groups: tuple[array, array, array, array] = (
            array("I"),
            array("I"),
            array("I"),
            array("I"),
        )
        self.tier_cum = list(accumulate(TIER_WEIGHTS))
        self.kind_cum = list(accumulate(ABUSE_KIND_WEIGHTS))
        self.region_cum = list(accumulate(REGION_WEIGHTS))
        self.courier_cum = list(accumulate(COURIER_WEIGHTS))
        self.channel_cum = list(accumulate(CHANNEL_WEIGHTS))
        self.campaign_cum = list(accumulate(CAMPAIGN_WEIGHTS))
        self.contact_cum = list(accumulate(CONTACT_CHANNEL_WEIGHTS))
        self.mix_cum = list(accumulate(FAMILY_MIX))
        self.launch_mix_cum = list(accumulate(LAUNCH_FAMILY_MIX))
        self.origin_cum = {d: list(accumulate(w)) for d, w in ORIGIN_WEIGHTS_BY_DEST.items()}
        self.placed = 0  # orders generated so far (for progress reports)

    # ------------------------------------------------------------ setup

    def _build_catalog(self) -> None:
        rng = self.rng
        self.families: list[_Family] = []
        for spec in _FAMILY_SPECS:
            fam = _Family(*spec)
            lo, hi = fam.price
            for i in range(len(fam.style_cum)):
                price = round(rng.uniform(lo, hi), 2)
                price = math.floor(price) + 0.99 if rng.random() < 0.6 else price
                cost = round(price * rng.uniform(*fam.cost), 2)
                fam.styles.append((f"{fam.code}-{i + 1:04d}", round(price, 2), cost))
            self.families.append(fam)
        self.fam_by_name = {f.name: f for f in self.families}
        self.launch_skus = []
        for i in range(LAUNCH_SKUS):
            price = math.floor(rng.uniform(64, 139)) + 0.99
            cost = round(price * rng.uniform(0.2, 0.3), 2)
            self.launch_skus.append((f"GLOW-{i + 1:02d}", price, cost))

    def _build_lanes(self) -> None:
        rng = self.rng
        self.lanes: dict[tuple[int, str, str], _Lane] = {}
        for ci, courier in enumerate(COURIERS):
            for origin in ORIGINS:
                for dest in REGIONS:
                    (ox, oy), (dx, dy) = _COORD[origin], _COORD[dest]
                    dist = abs(ox - dx) + abs(oy - dy)
                    transit = 1 + (dist >= 1) + (dist >= 2)
                    delay_p = rng.uniform(0.025, 0.06) * COURIER_DELAY[ci]
                    key = lane_of(courier, origin, dest)
                    self.lanes[(ci, origin, dest)] = _Lane(key, ci, transit, delay_p)
        lanes = list(self.lanes.values())
        n_slow = max(1, round(SLOW_LANE_SHARE * len(lanes)))
        for lane in rng.sample(lanes, n_slow):
            lane.slow = True
            lane.delay_p = rng.uniform(0.12, 0.18)
            lane.delay_mean_h = 40.0
        self.incidents: dict[str, list[_Incident]] = {}
        self.incident_list: list[_Incident] = []
        if self.scenario in SILENT_SCENARIOS:
            self._silent_lane_incident()
        if self.launch:
            ci = rng.randrange(2)  # one of the two big couriers, at the central hub
            start = self.t_start + int(BACKLOG_DAYS[0] * DAY)
            end = self.t_start + int(BACKLOG_DAYS[1] * DAY)
            for dest in rng.sample(REGIONS, 3):
                lane = self.lanes[(ci, "central", dest)]
                inc = _Incident(lane.key, start, end, round(rng.uniform(0.55, 0.75), 2), 60.0)
                self.incidents.setdefault(lane.key, []).append(inc)
                self.incident_list.append(inc)
        if self.lane_shift:  # after the scenario's incidents: the later one applies
            lane = self.lanes[LANE_SHIFT_LANE]
            at = self.t_start + int(LANE_SHIFT_DAY * DAY)
            shift = _Incident(lane.key, at, 0, LANE_SHIFT_PROB, 60.0, backlog=False)
            s0, s1, prob = LANE_SHIFT_SPIKE
            start, end = self.t_start + int(s0 * DAY), self.t_start + int(s1 * DAY)
            for inc in (shift, _Incident(lane.key, start, end, prob, 60.0)):
                self.incidents.setdefault(lane.key, []).append(inc)
                self.incident_list.append(inc)

    def _silent_lane_incident(self) -> None:
        """One lane incident of the silent-carrier scenarios (see SILENT_SCENARIOS)."""
        thin = self.scenario == "thin-lane-incident"
        if thin:
            for lane in self.lanes.values():
                lane.transit_days += THIN_EXTRA_TRANSIT_DAYS
        lane = self.lanes[(0, "central", "central")]  # ~4.4% of orders: ~6.5/day when thin
        start_d, end_d, prob = THIN_INCIDENT if thin else SILENT_INCIDENT
        start = self.t_start + int(start_d * DAY)
        end = self.t_start + int(end_d * DAY)
        inc = _Incident(lane.key, start, end, prob, 60.0)
        self.incidents.setdefault(lane.key, []).append(inc)
        self.incident_list.append(inc)

    # ------------------------------------------------------------ draws

    def _pick(self, cum: Sequence[float]) -> int:
        return bisect(cum, self.rng.random() * cum[-1])

    def _customer(self) -> int:
        rng = self.rng
        groups = self.groups
        n = len(self.c_tier)
        if n and rng.random() < REPEAT_SHARE:
            weights = [len(g) * w for g, w in zip(groups, GROUP_REPEAT_WEIGHT, strict=True)]
            g = groups[self._pick(list(accumulate(weights)))]
            return g[int(rng.random() * len(g))]
        tier = self._pick(self.tier_cum)
        abuse = self._pick(self.kind_cum) + 1 if rng.random() < ABUSIVE_SHARE else 0
        self.c_tier.append(tier)
        self.c_abuse.append(abuse)
        self.c_region.append(self._pick(self.region_cum))
        self.c_temper.append(max(-127, min(127, round(rng.gauss(0.0, 1.0) * 40))))
        groups[3 if abuse else tier].append(n)
        return n

    def _contact(
        self,
        st: _Story,
        ts: int,
        intent: str,
        temper: float,
        slip_h: float = 0.0,
        text_key: str | None = None,
        mood: float = 0.0,
    ) -> None:
        rng = self.rng
        channel = CONTACT_CHANNELS[self._pick(self.contact_cum)]
        if intent == "complaint" and rng.random() < 0.4:
            channel = "social" if rng.random() < 0.5 else "phone"
        fields: dict = {"channel": channel}
        labelled: str | None = intent
        if rng.random() < TEXT_PROB[channel]:
            phrases = _TEXTS[text_key or intent]
            text = phrases[int(rng.random() * len(phrases))]
            fields["text"] = (
                _PREFIXES[int(rng.random() * len(_PREFIXES))]
                + text
                + _SUFFIXES[int(rng.random() * len(_SUFFIXES))]
            )
            if rng.random() < TEXT_INTENT_MISSING_PROB:
                labelled = None
            if self.realistic_text:  # own stream: the main one draws exactly as without it
                trng = self.text_rng
                fields["text"] = realistic_text(trng, text_key or intent)
                missing = trng.random() < REALISTIC_INTENT_MISSING_PROB
                labelled = None if missing else intent
        if labelled is not None:
            fields["intent"] = labelled
        if rng.random() < 0.9:
            s = _SENTIMENT_BASE[intent] - min(slip_h, 240.0) / 300.0 + 0.15 * temper + mood
            s += rng.gauss(0.0, 0.15)
            fields["sentiment"] = round(max(-1.0, min(1.0, s)), 2)
        if intent in _HIGH_URGENCY or slip_h > 72:
            urgency = "high"
        elif intent in _LOW_URGENCY:
            urgency = "low"
        else:
            urgency = "normal"
        if rng.random() < 0.1:
            urgency = ("low", "normal", "high")[int(rng.random() * 3)]
        fields["urgency"] = urgency
        st.add(ts, "support_contact", fields)

    def _scan(
        self,
        st: _Story,
        ts: int,
        scan: str,
        courier: str,
        region: str,
        eta: int | None,
    ) -> None:
        if self.silent_scans:
            if scan not in SILENT_SCANS:
                return  # this carrier reports pick-up and delivery only
            eta = None
        items = st.items
        n = len(items)
        event = {  # built inline (the hottest path: ~60% of all events are scans)
            "event_id": f"{st.oid}-{n + 1:02d}",
            "event_type": "carrier_scan",
            "occurred_at": _iso(ts),
            "order_id": st.oid,
            "schema_version": SCHEMA_VERSION,
            "scan": scan,
            "courier": courier,
            "region": region,
        }
        if eta is not None:
            event["estimated_delivery_at"] = _iso(eta)
        emit = ts
        if self.rng.random() < LATE_SCAN_PROB:
            emit = ts + self.rng.randint(1, int(LATE_SCAN_MAX_MINUTES * 60))
        items.append((emit, n, event))

    def _lines(self, abuse_kind: str | None, launch_window: bool) -> tuple[list[dict], bool, bool]:
        """Order lines; returns (lines, has GLOW sku, honest 2-size bracket)."""
        rng = self.rng
        mix = self.launch_mix_cum if launch_window else self.mix_cum
        n_lines = self._pick(N_LINES_CUM) + 1
        lines: list[dict] = []
        glow = False
        bracket_honest = False
        used: set[str] = set()
        for i in range(n_lines):
            fam = self.families[self._pick(mix)]
            if i == 0 and abuse_kind in ("wardrobing", "bracketing") and rng.random() < 0.85:
                fam = self.families[self._pick(self.mix_cum[:3])]  # a sized family
            if fam.name == "beauty_skincare" and (
                (launch_window and rng.random() < 0.7) or rng.random() < 0.08
            ):
                sku, price, cost = self.launch_skus[int(rng.random() * LAUNCH_SKUS)]
                glow = True
            else:
                sku, price, cost = fam.styles[self._pick(fam.style_cum)]
            qty = self._pick(fam.qty_cum) + 1
            if fam.sizes is None:
                if sku in used:
                    continue
                used.add(sku)
                lines.append(
                    {
                        "sku": sku,
                        "sku_family": fam.name,
                        "qty": qty,
                        "unit_price": price,
                        "unit_cost": cost,
                    }
                )
                continue
            assert fam.size_cum is not None  # sized families only (the others `continue` above)
            si = self._pick(fam.size_cum)
            sizes = [si]
            if abuse_kind == "bracketing" and i == 0:
                k = 2 + (rng.random() < 0.4)
                lo = max(0, min(si - (k // 2), len(fam.sizes) - k))
                sizes = list(range(lo, lo + k))
            elif abuse_kind is None and i == 0 and rng.random() < 0.03:
                bracket_honest = True
                lo = max(0, min(si, len(fam.sizes) - 2))
                sizes = [lo, lo + 1]
            for s in sizes:
                sized = f"{sku}-{fam.sizes[s]}"
                if sized in used:
                    continue
                used.add(sized)
                lines.append(
                    {
                        "sku": sized,
                        "sku_family": fam.name,
                        "qty": 1 if len(sizes) > 1 else qty,
                        "unit_price": price,
                        "unit_cost": cost,
                        "size": fam.sizes[s],
                    }
                )
        return lines, glow, bracket_honest

    # ------------------------------------------------------------ one order's story

    def order(self, n: int, t0: int) -> _Story:
        """One order's story, told by the story builders below in a fixed order of random draws:
        placed -> cancelled before shipping | shipped -> never delivered (lost / returned to
        sender) | kept | a return or claim -> chargeback without a return | a not-received claim |
        a cancelled return | a chargeback with the return in transit | received, graded, settled."""
        o = self._place(n, t0)
        if o.kind is None and self.rng.random() < o.cancel_p:
            return self._cancellation(o)
        self._ship(o)
        self._latent(o)
        self._journey_contacts(o)
        if o.lost or o.rts:
            return self._never_delivered(o)
        if not self._return_starts(o):
            return self._kept(o)
        self._plan_return(o)
        self._return_contacts(o)
        # the chargeback route skips the return for not-received claims half the time
        if o.outcome == "chargeback" and self.rng.random() < 0.5:
            return self._chargeback_without_return(o)
        self._request_return(o)
        if o.cause == "not_received":
            return self._not_received_claim(o)
        return self._return_shipment(o)

    def _place(self, n: int, t0: int) -> _Order:
        """The customer, the lines, the lane and the ``order_placed`` event."""
        rand = self.rng.random
        o = _Order(f"O{n:08d}", t0)
        cidx = self._customer()
        cid = f"C{cidx + 1:07d}"
        o.tier = tier = self.c_tier[cidx]
        abuse_code = self.c_abuse[cidx]
        o.temper = self.c_temper[cidx] / 40.0
        launch_window = self.launch and self.launch_from <= t0 < self.launch_to

        # intended abuse kind for this order (confirmed below once we know the lines)
        kind = ABUSE_KINDS[abuse_code - 1] if abuse_code and rand() < ABUSE_ATTEMPT_PROB else None
        lines, glow, o.bracket_honest = self._lines(kind, launch_window)
        o.fams = fams = {ln["sku_family"] for ln in lines}
        if kind == "wardrobing" and not (fams & WEARABLE):
            kind = None
        if kind == "bracketing":
            if len(lines) < 2 or lines[0].get("size") is None or lines[1].get("size") is None:
                kind = None
            elif lines[0]["sku"].rsplit("-", 1)[0] != lines[1]["sku"].rsplit("-", 1)[0]:
                kind = None
        o.kind = kind
        o.lines = lines

        dest = (
            REGIONS[self.c_region[cidx]] if rand() < 0.92 else REGIONS[self._pick(self.region_cum)]
        )
        origin = ORIGINS[self._pick(self.origin_cum[dest])]
        if glow:
            origin = "central"  # launch stock sits at the central warehouse
        o.ci = ci = self._pick(self.courier_cum)
        o.courier = courier = COURIERS[ci]
        o.lane = lane = self.lanes[(ci, origin, dest)]
        o.origin, o.dest = origin, dest
        channel = CHANNELS[self._pick(self.channel_cum)]
        if launch_window and glow and rand() < 0.9:
            campaign: str | None = LAUNCH_CAMPAIGN
        elif rand() < CAMPAIGN_PROB:
            campaign = CAMPAIGNS[self._pick(self.campaign_cum)]
            if campaign == "loyalty-vip" and tier != 2:
                campaign = "newsletter"
        else:
            campaign = None
        o.campaign = campaign
        if campaign == "spring-sale":
            for ln in lines:
                sale = round(ln["unit_price"] * 0.8, 2)
                if sale > ln["unit_cost"]:
                    ln["unit_price"] = sale
        o.value = round(sum(ln["qty"] * ln["unit_price"] for ln in lines), 2)

        day0 = t0 // DAY
        promised = (day0 + 1 + lane.transit_days + COURIER_BUFFER_DAYS[ci]) * DAY + 21 * HOUR
        o.promised = promised
        placed = {
            "customer_id": cid,
            "channel": channel,
            "lines": lines,
            "currency": CURRENCY,
            "promised_delivery_at": _iso(promised),
            "courier": courier,
            "origin_region": origin,
            "destination_region": dest,
        }
        if campaign is not None:
            placed["campaign"] = campaign
        o.st.add(t0, "order_placed", placed)

        o.truth = {
            "type": "order",
            "order_id": o.st.oid,
            "customer_id": cid,
            "segment": TIERS[tier],
            "customer_abusive": bool(abuse_code),
            "lane": lane.key,
            "journey_anomaly": None,
        }
        o.handling = int(self.rng.uniform(4, 28) * HOUR)
        o.cancel_p = CANCEL_PROB * (1.5 if channel == "marketplace" else 1.0)
        return o

    def _cancellation(self, o: _Order) -> _Story:
        """Cancelled before shipping (recoverability 0)."""
        rand, uni = self.rng.random, self.rng.uniform
        st, t0 = o.st, o.t0
        t_cancel = t0 + int(o.handling * uni(0.1, 0.9))
        reason_i = self._pick([0.6, 0.85, 1.0])
        if reason_i == 0 and rand() < 0.6:
            self._contact(
                st, t0 + int((t_cancel - t0) * uni(0.3, 0.95)), "cancel_request", o.temper
            )
        cancel_reason = ("customer_request", "payment_failed", "out_of_stock")[reason_i]
        st.add(t_cancel, "order_cancelled", {"reason": cancel_reason})
        o.truth.update(
            recoverability=0.0,
            abusive=False,
            abuse_kind=None,
            outcome="cancelled",
            retained=False,
            slippage_hours=0.0,
            cause=None,
        )
        return self._finish(st, o.truth, t_cancel)

    def _ship(self, o: _Order) -> None:
        """The outbound shipment: carrier scans, delays and ETA pushes, lost / returned parcels."""
        rng = self.rng
        rand = rng.random
        uni = rng.uniform
        st, lane, courier, origin, dest = o.st, o.lane, o.courier, o.origin, o.dest
        t0, promised = o.t0, o.promised
        t_label = t0 + int(o.handling * uni(0.2, 0.6))
        o.t_ship = t_ship = t0 + o.handling
        t_pick = t_ship + int(uni(0.5, 3) * HOUR)
        delay_p, mean_h, lost_p, rts_p = lane.delay_p, lane.delay_mean_h, 0.002, 0.002
        backlog = False
        for inc in self.incidents.get(lane.key, ()):
            if inc.start <= t_pick and (t_pick < inc.end or not inc.end):
                delay_p, mean_h = inc.delay_prob, inc.mean_h
                if inc.backlog:
                    lost_p, backlog = 0.012, True
        nominal_day = t_pick // DAY + lane.transit_days
        jitter = rand()
        if jitter < 0.08 and lane.transit_days >= 2:
            nominal_day -= 1
        elif jitter > 0.95:
            nominal_day += 1  # a silent slip: no delayed scan
        nominal = nominal_day * DAY + int(uni(9.5, 20) * HOUR)
        nominal_eta = nominal_day * DAY + 21 * HOUR
        o.delayed = delayed = rand() < delay_p
        delay_h = 0.0
        if delayed:
            base = 40.0 if mean_h > 50 else 14.0
            delay_h = min(base + rng.expovariate(1.0 / (mean_h - base + 1e-9)), 220.0)
        fate = rand()
        o.lost = lost = fate < lost_p
        o.rts = rts = not lost and fate < lost_p + rts_p
        actual_day = nominal_day + math.ceil(delay_h / 24.0)
        o.delivered_at = delivered_at = actual_day * DAY + int(uni(9.5, 20) * HOUR)

        st.add(t_ship, "order_shipped", {"courier": courier})
        self._scan(st, t_label, "label_created", courier, origin, promised)
        self._scan(st, t_pick, "picked_up", courier, origin, nominal_eta)
        # delay discovery and ETA pushes
        t_end = delivered_at  # when the parcel's journey ends (delivered / lost / returned)
        if lost:
            t_end = nominal + int(uni(2, 8) * DAY)
        elif rts:
            t_end = nominal + int(uni(2, 5) * DAY)
        o.t_end = t_end
        o.pushes = pushes = []  # (scan time, new eta)
        if delayed:
            if backlog:  # stuck at the hub: the carrier says so within hours of pick-up
                t_d1 = t_pick + int(uni(2, 14) * HOUR)
            else:
                t_d1 = t_pick + int((nominal - t_pick) * uni(0.3, 0.9))
            final_eta = actual_day * DAY + 21 * HOUR
            first_eta = nominal_eta + int((final_eta - nominal_eta) * uni(0.4, 1.0))
            first_eta = (first_eta // DAY) * DAY + 21 * HOUR
            if delay_h <= 48:
                first_eta = final_eta
            pushes.append((t_d1, max(first_eta, nominal_eta)))
            if delay_h > 48:
                if backlog:
                    t_d2 = t_d1 + int(uni(10, 30) * HOUR)
                else:
                    t_d2 = t_d1 + int((delivered_at - t_d1) * uni(0.3, 0.6))
                pushes.append((t_d2, final_eta))
            if delay_h > 120:
                t_d3 = t_d2 + int((delivered_at - t_d2) * uni(0.2, 0.5))
                pushes.append((t_d3, final_eta + DAY))
                # the last push overshoots; out_for_delivery corrects it
        o.exception = exception = (delayed and rand() < 0.3) or rand() < 0.01
        ofd = actual_day * DAY + int(uni(6.5, 8.5) * HOUR)
        if lost or rts:
            ofd = 0
        # in-transit scans spread over the journey
        journey_end = ofd if ofd else t_end
        k = 1 + int(rand() * 3) + (1 if delayed else 0)
        transit_times = sorted(
            t_pick + int((journey_end - t_pick) * (j + uni(0.2, 0.8)) / (k + 1)) for j in range(k)
        )
        hub = "central" if origin != "central" else dest
        scans: list[tuple[int, str, str]] = []
        for j, t in enumerate(transit_times):
            region = origin if j == 0 else (dest if j == k - 1 else hub)
            scans.append((t, "in_transit", region))
        for t, _eta in pushes:
            scans.append((t, "delayed", hub))
        if exception:
            t_x = (
                pushes[0][0] + int(uni(-2, 6) * HOUR) if pushes else t_pick + int(uni(6, 20) * HOUR)
            )
            scans.append((max(t_pick + 60, t_x), "exception", hub))
        scans.sort()
        eta = nominal_eta
        push_map = dict(pushes)
        for t, code, region in scans:
            if code == "delayed":
                eta = push_map[t]
            if t >= journey_end:
                t = journey_end - 60 * (1 + int(rand() * 30))
            self._scan(st, t, code, courier, region, eta)
        if lost:
            self._scan(st, t_end, "lost", courier, hub, None)
        elif rts:
            t_x = max(t_pick + HOUR, t_end - int(uni(1, 3) * DAY))
            self._scan(st, t_x, "exception", courier, dest, eta)
            self._scan(st, t_end, "returned_to_sender", courier, dest, None)
        else:
            self._scan(st, ofd, "out_for_delivery", courier, dest, actual_day * DAY + 21 * HOUR)
            self._scan(st, delivered_at, "delivered", courier, dest, None)

        o.slip_h = max(0.0, (t_end - promised) / HOUR)

    def _latent(self, o: _Order) -> None:
        """Latent problems, the recoverability they leave, whether the order is retained and its
        primary cause (the truth record's fields)."""
        rng = self.rng
        rand = rng.random
        lines, tier, slip_h = o.lines, o.tier, o.slip_h
        kind, lost, rts, delayed = o.kind, o.lost, o.rts, o.delayed
        fit_line = -1
        quality = damaged = False
        dmg_mult = COURIER_DAMAGE[o.ci] * (1.6 if delayed else 1.0) * (2.0 if o.exception else 1.0)
        for i, ln in enumerate(lines):
            fam = self.fam_by_name[ln["sku_family"]]
            if fit_line < 0 and fam.fit and rand() < fam.fit * (0.7 if tier == 2 else 1.0):
                fit_line = i
            if rand() < fam.quality:
                quality = True
            if rand() < fam.damage * dmg_mult:
                damaged = True
        cm_p = max(self.fam_by_name[f].changed_mind for f in o.fams)
        if o.campaign == "spring-sale":
            cm_p *= 1.5
        changed_mind = rand() < cm_p
        wrong = rand() < 0.008
        misdelivered = not (lost or rts) and kind is None and rand() < 0.004
        bracket_honest = o.bracket_honest
        if lost or rts:
            kind = None  # the parcel never arrived: no abuse possible, no other problem either
            bracket_honest = False
        if kind is not None or lost or rts or misdelivered:
            fit_line, quality, damaged, changed_mind, wrong = -1, False, False, False, False
        if bracket_honest:
            fit_line = -1
        o.kind, o.bracket_honest, o.fit_line = kind, bracket_honest, fit_line

        logit = 4.4 + TIER_LOGIT[tier] + 0.35 * o.temper + rng.gauss(0.0, 0.3)
        logit -= 0.022 * min(slip_h, 160.0)
        if fit_line >= 0:
            logit -= 2.6
        if damaged:
            logit -= 2.3
        if wrong:
            logit -= 2.2
        if quality:
            logit -= 3.3
        if changed_mind:
            logit -= 4.6
        if bracket_honest:
            logit -= 3.0
        if misdelivered:
            logit -= 2.5
        if lost:
            logit -= 4.0
        if rts:
            logit -= 3.2
        if kind == "wardrobing":
            logit -= 5.2
        elif kind == "bracketing":
            logit -= 5.4
        elif kind == "false_not_received":
            logit -= 5.6
        recoverability = _sigmoid(logit)
        o.retained = rand() < recoverability

        # primary cause -> return reason
        late = slip_h > 24
        cause: str | None
        if kind == "false_not_received" or misdelivered:
            cause = "not_received"
        elif kind is not None:
            cause = kind
        elif lost:
            cause = "lost"
        elif rts:
            cause = "returned_to_sender"
        elif wrong:
            cause = "wrong_item"
        elif damaged:
            cause = "damaged"
        elif bracket_honest or fit_line >= 0:
            cause = "fit"
        elif quality:
            cause = "quality"
        elif late:
            cause = "late"
        elif changed_mind:
            cause = "changed_mind"
        else:
            cause = None
        o.cause = cause
        o.truth.update(
            recoverability=round(recoverability, 4),
            abusive=kind is not None,
            abuse_kind=kind,
            slippage_hours=round(slip_h, 2),
            cause=cause,
        )

    def _journey_contacts(self, o: _Order) -> None:
        """Support contacts driven by the outbound journey (WISMO, complaints, refund requests)."""
        rand, uni = self.rng.random, self.rng.uniform
        st, temper, t0, t_ship, t_end = o.st, o.temper, o.t0, o.t_ship, o.t_end
        promised, slip_h, pushes = o.promised, o.slip_h, o.pushes
        if rand() < 0.02:
            self._contact(st, t0 + int((t_ship - t0) * rand()), "product_question", temper)
        if rand() < 0.01:
            self._contact(st, t0 + int((t_end - t0) * rand()), "other", temper)
        if pushes and rand() < 0.2:
            t_c = pushes[0][0] + int((t_end - pushes[0][0]) * uni(0.05, 0.5))
            self._contact(st, t_c, "where_is_my_order", temper, 0.0, "wismo_early")
        elif rand() < 0.03:
            t_c = t_ship + int((min(t_end, promised) - t_ship) * rand())
            self._contact(st, t_c, "where_is_my_order", temper, 0.0, "wismo_early")
        if t_end > promised:
            seg = 1.2 if o.tier == 2 else 1.0
            lam = min(0.15 + slip_h / 30.0, 3.5) * seg
            for _ in range(self._poisson(lam)):
                self._contact(
                    st,
                    promised + int((t_end - promised) * rand()),
                    "where_is_my_order",
                    temper,
                    slip_h,
                )
            if slip_h > 36 and rand() < min(0.08 + slip_h / 200.0, 0.6):
                t_c = promised + DAY + int((t_end - promised) * rand())
                self._contact(st, t_c, "complaint", temper, slip_h)
            if slip_h > 36 and rand() < min(0.15 + slip_h / 200.0, 0.6):
                t_c = promised + int(1.5 * DAY) + int(max(0, t_end - promised - 1.5 * DAY) * rand())
                self._contact(st, t_c, "refund_request", temper, slip_h)
            if slip_h > 24 and rand() < 0.08:
                t_c = promised + int((t_end - promised) * rand())
                self._contact(st, t_c, "cancel_request", temper, slip_h)

    def _never_delivered(self, o: _Order) -> _Story:
        """Lost / returned to sender: resolved without a return shipment (credit, refund or a
        chargeback)."""
        rand, uni = self.rng.random, self.rng.uniform
        st, t_end, value, lost = o.st, o.t_end, o.value, o.lost
        t_res = t_end + int(uni(1, 4) * DAY)
        if lost and rand() < 0.5:
            self._contact(st, t_end + int(uni(0.1, 2) * DAY), "complaint", o.temper, o.slip_h)
        if o.retained:
            st.add(t_res, "store_credit_issued", {"amount": value, "currency": CURRENCY})
            outcome = "store_credit"
        elif lost and rand() < 0.12:
            t_res = t_end + int(uni(5, 25) * DAY)
            st.add(
                t_res,
                "chargeback_filed",
                {"amount": value, "currency": CURRENCY, "reason": "item_not_received"},
            )
            outcome = "chargeback"
        else:
            st.add(t_res, "refund_issued", {"amount": value, "currency": CURRENCY})
            outcome = "refund"
        o.truth.update(outcome=outcome, retained=o.retained)
        return self._finish(st, o.truth, t_res)

    def _return_starts(self, o: _Order) -> bool:
        """Does a return (or claim) start? Always for an order not retained or an abuse attempt."""
        cause, slip_h = o.cause, o.slip_h
        if o.retained and o.kind is None:
            if cause is None:
                p_return = 0.0
            elif cause == "late":
                p_return = min(0.15 + slip_h / 200.0, 0.6)
            else:
                p_return = {
                    "fit": 0.75,
                    "damaged": 0.7,
                    "wrong_item": 0.8,
                    "quality": 0.45,
                    "changed_mind": 0.4,
                    "not_received": 0.6,
                }.get(cause, 0.5)
            return self.rng.random() < p_return
        return True  # not retained, or an abuse attempt (the return is the abuse)

    def _kept(self, o: _Order) -> _Story:
        """Kept: maybe a damaged-item or sizing contact; the story ends with the return window."""
        rand, uni = self.rng.random, self.rng.uniform
        st, delivered_at = o.st, o.delivered_at
        if o.cause == "damaged" and rand() < 0.3:
            self._contact(st, delivered_at + int(uni(0.1, 3) * DAY), "damaged_item", o.temper)
        if o.fit_line >= 0 and rand() < 0.15:
            self._contact(st, delivered_at + int(uni(0.1, 5) * DAY), "sizing_question", o.temper)
        o.truth.update(outcome="kept", retained=True)
        return self._finish(st, o.truth, delivered_at + RETURN_WINDOW_DAYS * DAY)

    def _plan_return(self, o: _Order) -> None:
        """The return's reason, items, value and timing, its outcome and the customer's preferred
        resolution."""
        rng = self.rng
        rand, uni = rng.random, rng.uniform
        lines, retained = o.lines, o.retained
        if o.cause is None:
            o.cause = "changed_mind"
        cause = o.cause
        reason: str | None
        if cause == "late":
            reason = "arrived_late"
        elif cause in ("fit", "bracketing"):
            reason = None  # from the sizes below
        elif cause == "quality":
            reason = "quality" if rand() < 0.6 else "not_as_described"
        elif cause == "wardrobing":
            reason = "changed_mind" if rand() < 0.6 else "quality"
        elif cause == "changed_mind":
            reason = "changed_mind" if rand() < 0.8 else "other"
        else:
            reason = cause  # damaged / wrong_item / not_received
        items: list[dict] = []
        new_sku: str | None = None
        if cause == "bracketing" or (cause == "fit" and o.bracket_honest):
            style = lines[0]["sku"].rsplit("-", 1)[0]
            group = [i for i, ln in enumerate(lines) if ln["sku"].rsplit("-", 1)[0] == style]
            keep = group[int(rand() * len(group))]
            if cause == "fit":  # an honest bracket: the smaller or larger of the two goes back
                keep = group[0] if rand() < 0.5 else group[-1]
            back = [i for i in group if i != keep]
            items = [{"sku": lines[i]["sku"], "qty": lines[i]["qty"]} for i in back]
            reason = "too_small" if back[0] < keep else "too_large"
        elif cause == "fit":
            ln = lines[o.fit_line]
            fam = self.fam_by_name[ln["sku_family"]]
            si = fam.sizes.index(ln["size"])  # type: ignore[union-attr]
            small = rand() < (0.55 if fam.name == "footwear" else 0.5)
            if si == 0:
                small = True
            elif si == len(fam.sizes) - 1:  # type: ignore[arg-type]
                small = False
            reason = "too_small" if small else "too_large"
            ns = fam.sizes[si + 1 if small else si - 1]  # type: ignore[index]
            new_sku = f"{ln['sku'].rsplit('-', 1)[0]}-{ns}"
            items = [{"sku": ln["sku"], "qty": 1}]
        elif cause == "wardrobing":
            items = [
                {"sku": ln["sku"], "qty": ln["qty"]} for ln in lines if ln["sku_family"] in WEARABLE
            ]
        elif cause in ("not_received", "late"):
            items = [{"sku": ln["sku"], "qty": ln["qty"]} for ln in lines]
        elif cause == "changed_mind" and len(lines) > 1 and rand() < 0.4:
            items = [{"sku": ln["sku"], "qty": ln["qty"]} for ln in lines]
        else:
            ln = lines[int(rand() * len(lines))]
            items = [{"sku": ln["sku"], "qty": ln["qty"]}]
        price = {ln["sku"]: ln["unit_price"] for ln in lines}
        o.ret_value = round(sum(price[it["sku"]] * it["qty"] for it in items), 2)

        after = {
            "fit": (1.0, 3.0, 27.0),
            "bracketing": (1.0, 2.5, 12.0),
            "damaged": (0.1, 1.2, 10.0),
            "wrong_item": (0.1, 1.2, 10.0),
            "quality": (1.0, 5.0, 27.0),
            "late": (0.05, 1.0, 10.0),
            "changed_mind": (1.0, 6.0, 28.0),
            "not_received": (0.3, 1.5, 8.0),
        }
        if cause == "wardrobing":
            days = uni(17.0, 29.5)
        else:
            lo, mean, cap = after[cause]
            days = min(lo + rng.expovariate(1.0 / mean), cap)
        o.days = days
        o.t_req = o.delivered_at + int(days * DAY)
        o.return_id = f"{o.st.oid}-R1"

        # outcome of the return path
        if not retained:
            if cause == "not_received":
                outcome = "chargeback" if rand() < (0.45 if o.kind else 0.15) else "refund"
            elif rand() < (0.08 if o.slip_h > 96 else 0.015):
                outcome = "chargeback"
            else:
                outcome = "refund"
        else:
            r = rand()
            if cause in ("fit",) and new_sku is not None:
                outcome = (
                    "exchange" if r < 0.75 else ("store_credit" if r < 0.9 else "return_cancelled")
                )
            elif cause in ("damaged", "wrong_item"):
                outcome = (
                    "exchange" if r < 0.6 else ("store_credit" if r < 0.9 else "return_cancelled")
                )
                new_sku = items[0]["sku"]
            elif cause == "late":
                outcome = "return_cancelled" if r < 0.55 else "store_credit"
            elif cause == "not_received":
                outcome = "return_cancelled" if r < 0.7 else "store_credit"
            elif cause == "quality" or cause == "changed_mind":
                outcome = (
                    "store_credit" if r < 0.45 else ("return_cancelled" if r < 0.85 else "exchange")
                )
                new_sku = items[0]["sku"]
            else:  # abuse or honest bracket, retained: credit instead of cash, or they keep it
                outcome = "store_credit" if r < 0.6 else "return_cancelled"
        natural = {
            "refund": "refund",
            "chargeback": "refund",
            "exchange": "exchange",
            "store_credit": "store_credit",
        }.get(outcome)
        if natural is not None and rand() < 0.7:
            preferred = natural
        elif cause == "fit":
            preferred = ("exchange", "refund", "store_credit")[self._pick([0.55, 0.95, 1.0])]
        else:
            preferred = ("refund", "store_credit", "exchange")[self._pick([0.75, 0.9, 1.0])]
        o.reason, o.items, o.new_sku, o.outcome, o.preferred = (
            reason,
            items,
            new_sku,
            outcome,
            preferred,
        )

    def _return_contacts(self, o: _Order) -> None:
        """Support contacts around the return (before the request)."""
        rand, uni = self.rng.random, self.rng.uniform
        st, temper, cause = o.st, o.temper, o.cause
        delivered_at, t_req = o.delivered_at, o.t_req
        if cause == "not_received":
            t_c = delivered_at + int(o.days * DAY * uni(0.2, 0.8))
            self._contact(st, t_c, "where_is_my_order", temper, 0.0, "wismo_delivered", -0.3)
            if rand() < (0.5 if o.kind else 0.25):
                t_c += int(uni(1, 20) * HOUR)
                self._contact(st, t_c, "complaint", temper, 0.0, "complaint_not_received")
        elif cause in ("fit", "bracketing") and rand() < 0.35:
            t_c = delivered_at + int((t_req - delivered_at) * uni(0.1, 0.9))
            self._contact(st, t_c, "sizing_question", temper)
        elif cause in ("damaged", "wrong_item") and rand() < 0.65:
            t_c = delivered_at + int((t_req - delivered_at) * uni(0.05, 0.8))
            self._contact(st, t_c, "damaged_item" if cause == "damaged" else "wrong_item", temper)
        if o.preferred == "exchange" and rand() < 0.4:
            t_c = t_req - int(uni(0.5, 24) * HOUR)
            self._contact(st, max(delivered_at + 600, t_c), "exchange_request", temper)
        elif rand() < 0.15:
            t_c = t_req - int(uni(0.5, 24) * HOUR)
            self._contact(st, max(delivered_at + 600, t_c), "return_request", temper)

    def _chargeback_without_return(self, o: _Order) -> _Story:
        """A bank dispute instead of a return request."""
        cause = o.cause
        t_cb = o.delivered_at + int(self.rng.uniform(max(o.days, 5.0), 30.0) * DAY)
        reason_cb = "item_not_received" if cause == "not_received" else "not_as_described"
        if cause == "late":
            reason_cb = "service_not_provided"
        o.st.add(
            t_cb,
            "chargeback_filed",
            {"amount": o.value, "currency": CURRENCY, "reason": reason_cb},
        )
        o.truth.update(outcome="chargeback", retained=False)
        return self._finish(o.st, o.truth, t_cb)

    def _request_return(self, o: _Order) -> None:
        o.st.add(
            o.t_req,
            "return_requested",
            {
                "return_id": o.return_id,
                "reason": o.reason,
                "items": o.items,
                "preferred_resolution": o.preferred,
            },
        )

    def _not_received_claim(self, o: _Order) -> _Story:
        """No parcel to send back: refund, chargeback, credit or withdrawn claim."""
        uni = self.rng.uniform
        st, t_req, return_id, outcome, ret_value = (
            o.st,
            o.t_req,
            o.return_id,
            o.outcome,
            o.ret_value,
        )
        t_res = t_req + int(uni(1, 4) * DAY)
        if outcome == "refund":
            st.add(
                t_res,
                "refund_issued",
                {"return_id": return_id, "amount": ret_value, "currency": CURRENCY},
            )
        elif outcome == "chargeback":
            t_res = t_req + int(uni(4, 20) * DAY)
            st.add(
                t_res,
                "chargeback_filed",
                {"amount": o.value, "currency": CURRENCY, "reason": "item_not_received"},
            )
        elif outcome == "store_credit":
            st.add(
                t_res,
                "store_credit_issued",
                {"return_id": return_id, "amount": ret_value, "currency": CURRENCY},
            )
        else:
            st.add(t_res, "return_cancelled", {"return_id": return_id})
        o.truth.update(outcome=outcome, retained=o.retained)
        return self._finish(st, o.truth, t_res)

    def _return_shipment(self, o: _Order) -> _Story:
        """A return label, then: the return is cancelled, or a chargeback while it is in transit,
        or it is received, graded and settled."""
        uni = self.rng.uniform
        o.label_cost = round(uni(3.9, 8.9), 2)
        o.t_label_r = o.t_req + int(uni(0.1, 6) * HOUR)
        if o.outcome == "return_cancelled":
            return self._cancelled_return(o)
        o.st.add(
            o.t_label_r,
            "return_label_issued",
            {"return_id": o.return_id, "courier": o.courier, "label_cost": o.label_cost},
        )
        o.t_transit = o.t_label_r + int(uni(0.5, 5) * DAY)
        if o.outcome == "chargeback":
            return self._chargeback_in_transit(o)
        return self._warehouse(o)

    def _cancelled_return(self, o: _Order) -> _Story:
        """The customer withdraws the return (maybe after a label): the order is kept."""
        rand, uni = self.rng.random, self.rng.uniform
        st = o.st
        t_cancel = o.t_req + int(uni(0.5, 7) * DAY)
        if rand() < 0.7:
            st.add(
                o.t_label_r,
                "return_label_issued",
                {"return_id": o.return_id, "courier": o.courier, "label_cost": o.label_cost},
            )
        st.add(t_cancel, "return_cancelled", {"return_id": o.return_id})
        o.truth.update(outcome=o.outcome, retained=True)
        return self._finish(st, o.truth, max(t_cancel, o.delivered_at + RETURN_WINDOW_DAYS * DAY))

    def _chargeback_in_transit(self, o: _Order) -> _Story:
        """A return in flight, then the bank dispute anyway."""
        st, t_transit = o.st, o.t_transit
        st.add(t_transit, "return_in_transit", {"return_id": o.return_id})
        t_cb = t_transit + int(self.rng.uniform(2, 10) * DAY)
        st.add(
            t_cb,
            "chargeback_filed",
            {"amount": o.value, "currency": CURRENCY, "reason": "credit_not_processed"},
        )
        o.truth.update(outcome="chargeback", retained=False)
        return self._finish(st, o.truth, t_cb)

    def _warehouse(self, o: _Order) -> _Story:
        """Received, graded (unless refunded first) and settled: refund, exchange or store credit,
        with the occasional warehouse breakage (``_journey_anomaly``)."""
        rand, uni = self.rng.random, self.rng.uniform
        st, return_id, outcome, ret_value = o.st, o.return_id, o.outcome, o.ret_value
        t_transit = o.t_transit
        t_recv = t_transit + int(uni(1.5, 5) * DAY)
        t_grade = t_recv + int(uni(0.1, 3) * DAY)
        t_res = t_grade + int(uni(0.05, 1.5) * DAY)
        anomaly = self._journey_anomaly(outcome)
        if anomaly is not None:
            jr = self.journey_rng
            if anomaly == "refund_before_grading":  # refunded on the receipt scan, never graded
                t_res = t_recv + int((t_grade - t_recv) * jr.uniform(0.2, 0.8))
            elif anomaly == "received_ungraded":  # sits 3.5-5 days, settled within 6 days
                t_grade = t_recv + int(jr.uniform(3.5, 5.0) * DAY)
                t_res = t_grade + int(jr.uniform(0.05, 1.0) * DAY)
            else:  # refund_overdue: graded in time, settled 8-12 days after receipt
                t_res = t_recv + int(jr.uniform(8.0, 12.0) * DAY)
            o.truth["journey_anomaly"] = anomaly
        st.add(t_transit, "return_in_transit", {"return_id": return_id})
        st.add(t_recv, "return_received", {"return_id": return_id})
        assert o.cause is not None  # a return always has one (``_plan_return``)
        grade, flags = self._grade(o.cause, o.lines)
        if anomaly != "refund_before_grading":
            st.add(
                t_grade,
                "return_graded",
                {"return_id": return_id, "grade": grade, "abuse_flags": flags},
            )
        if outcome == "refund" and rand() < 0.2:
            self._contact(st, t_recv + int((t_res - t_recv) * rand()), "refund_request", o.temper)
        if outcome == "refund":
            amount = ret_value
            if "empty_box" in flags or "swapped_item" in flags:
                amount = round(ret_value * uni(0.0, 0.5), 2)  # partial refund after a dispute
                if anomaly == "refund_before_grading":  # nobody looked: the full amount went out
                    amount = ret_value
            st.add(
                t_res,
                "refund_issued",
                {"return_id": return_id, "amount": amount, "currency": CURRENCY},
            )
        elif outcome == "exchange":
            ev: dict = {"return_id": return_id}
            if o.new_sku is not None:
                ev["new_sku"] = o.new_sku
            st.add(t_res, "exchange_completed", ev)
        else:
            bonus = 1.1 if rand() < 0.3 else 1.0
            st.add(
                t_res,
                "store_credit_issued",
                {
                    "return_id": return_id,
                    "amount": round(ret_value * bonus, 2),
                    "currency": CURRENCY,
                },
            )
        o.truth.update(outcome=outcome, retained=o.retained)
        return self._finish(st, o.truth, t_res)

    def _journey_anomaly(self, outcome: str) -> str | None:
        """A warehouse breakage for a received return (``JOURNEY_ANOMALY_SHARE``), or None."""
        jr = self.journey_rng
        if jr.random() >= JOURNEY_ANOMALY_SHARE:
            return None
        r = jr.random()
        if outcome == "refund" and r < 0.5:
            return "refund_before_grading"
        return "received_ungraded" if jr.random() < 0.5 else "refund_overdue"

    def _grade(self, cause: str, lines: list[dict]) -> tuple[str, list[str]]:
        rand = self.rng.random
        flags: list[str] = []
        if cause == "wardrobing":
            r = rand()
            if r < 0.75:
                flags.append("worn")
            elif r < 0.83:
                flags.append("swapped_item")
            elif r < 0.88:
                flags.append("empty_box")
            grade = ("B", "refurbish", "A")[self._pick([0.7, 0.9, 1.0])]
            if "empty_box" in flags:
                grade = "dispose"
        elif cause == "bracketing":
            r = rand()
            if r < 0.55:
                flags.append("worn")
            elif r < 0.65:
                flags.append("swapped_item")
            grade = ("A", "B", "refurbish")[self._pick([0.5, 0.9, 1.0])]
            if self.bracketing_unflagged:  # grading sees clean extra sizes (truth: still abuse)
                flags.clear()
                grade = "A" if grade == "refurbish" else grade
        elif cause == "damaged":
            grade = ("dispose", "refurbish", "B")[self._pick([0.5, 0.9, 1.0])]
        else:
            grade = ("A", "B", "refurbish", "dispose")[self._pick([0.65, 0.85, 0.95, 1.0])]
            wearable = any(ln["sku_family"] in WEARABLE for ln in lines)
            if wearable and rand() < 0.015:
                flags.append("worn")  # an honest return that was tried on a bit much
        return grade, flags

    def _poisson(self, lam: float) -> int:
        rand = self.rng.random
        limit = math.exp(-lam)
        k = 0
        p = rand()
        while p > limit:
            k += 1
            p *= rand()
        return k

    def _finish(self, st: _Story, truth: dict, final: int) -> _Story:
        if self.split_returns:
            self._split_return(st, truth)
        if self.goodwill:
            self._goodwill(st, truth)
        if self.split_refunds:
            self._split_refunds(st, truth)
        if self.foreign_currency:
            self._foreign_currency(st, truth)
        if self.guest_checkout:
            self._guest_checkout(st, truth)
        if self.batch_uploads:
            self._batch_uploads(st)
        last = max(item[0] for item in st.items)
        final = max(final, last)
        truth["final_at"] = _iso(final)
        st.items.sort()  # by (emit time, creation index); indices are unique
        st.items.append((final, len(st.items), truth))
        return st

    def _split_return(self, st: _Story, truth: dict) -> None:
        """The split-returns variant (see :data:`SPLIT_RETURN_PROB`) on one order's story."""
        events = [item[2] for item in st.items]
        req = next((e for e in events if e["event_type"] == "return_requested"), None)
        if req is None:
            return
        rid = req["return_id"]
        own = [item for item in st.items if item[2].get("return_id") == rid]
        kinds = {item[2]["event_type"] for item in own}
        units = sum(i["qty"] for i in req["items"])
        if (
            units < 2
            or "return_received" not in kinds
            or kinds.isdisjoint(_SETTLEMENTS)
            or self.split_rng.random() >= SPLIT_RETURN_PROB
        ):
            return
        first, *rest = req["items"]
        others = ([{**first, "qty": first["qty"] - 1}] if first["qty"] > 1 else []) + rest
        req["items"] = [{**first, "qty": 1}]
        rid2 = f"{rid[:-1]}2" if rid.endswith("R1") else f"{rid}-2"
        shift = int(self.split_rng.uniform(*SPLIT_DELAY_DAYS) * DAY)
        for emit, _, e in sorted(own, key=lambda item: item[:2]):
            fields = {k: v for k, v in e.items() if k not in _ENVELOPE}
            fields["return_id"] = rid2
            if e is req:
                fields["items"] = others
            if "amount" in e:  # the first parcel's share by units, the rest to the second
                first_share = round(e["amount"] / units, 2)
                fields["amount"] = round(e["amount"] - first_share, 2)
                e["amount"] = first_share
            st.add(_seconds(e["occurred_at"]) + shift, e["event_type"], fields, emit + shift)
        truth["split_return"] = rid2

    def _goodwill(self, st: _Story, truth: dict) -> None:
        """The goodwill variant (see :data:`GOODWILL_PROB`) on one order's story."""
        events = [item[2] for item in st.items]
        placed = next((e for e in events if e["event_type"] == "order_placed"), None)
        delivered = next(
            (e for e in events if e["event_type"] == "carrier_scan" and e["scan"] == "delivered"),
            None,
        )
        if placed is None or delivered is None:
            return
        t_delivered = _seconds(delivered["occurred_at"])
        late_h = (t_delivered - _seconds(placed["promised_delivery_at"])) / HOUR
        rng = self.goodwill_rng
        if late_h <= GOODWILL_LATE_HOURS or rng.random() >= GOODWILL_PROB:
            return
        t = t_delivered + int(rng.uniform(*GOODWILL_AFTER_HOURS) * HOUR)
        ends = ("return_requested", "chargeback_filed", "order_cancelled", *_SETTLEMENTS)
        if any(_seconds(e["occurred_at"]) <= t for e in events if e["event_type"] in ends):
            return
        value = round(sum(ln["qty"] * ln["unit_price"] for ln in placed["lines"]), 2)
        amount = round(value * rng.uniform(*GOODWILL_SHARE), 2)
        kind = "refund_issued" if rng.random() < 0.5 else "store_credit_issued"
        st.add(t, kind, {"amount": amount, "currency": placed["currency"]})
        truth["goodwill"] = {"kind": kind, "amount": amount}

    def _split_refunds(self, st: _Story, truth: dict) -> None:
        """The split-refunds variant (see :data:`SPLIT_REFUND_PROB`) on one order's story."""
        rng = self.refund_rng
        split = []
        for emit, _, e in sorted(st.items, key=lambda item: item[:2]):
            if e["event_type"] != "refund_issued" or "return_id" not in e or e["amount"] < 0.02:
                continue
            if rng.random() >= SPLIT_REFUND_PROB:
                continue
            amount = e["amount"]
            e["amount"] = first = round(amount * rng.uniform(*SPLIT_REFUND_FIRST), 2)
            rest = round(amount - first, 2)
            shift = int(rng.uniform(*SPLIT_REFUND_DELAY_DAYS) * DAY)
            fields = {"return_id": e["return_id"], "amount": rest, "currency": e["currency"]}
            st.add(_seconds(e["occurred_at"]) + shift, "refund_issued", fields, emit + shift)
            split.append({"return_id": e["return_id"], "amounts": [first, rest]})
        if split:
            truth["split_refunds"] = split

    def _foreign_currency(self, st: _Story, truth: dict) -> None:
        """The foreign-currency variant (see :data:`FOREIGN_CURRENCY_PROB`) on one order's
        story."""
        rng = self.currency_rng
        moved = []
        for _, _, e in st.items:
            if e["event_type"] in _MONEY and rng.random() < FOREIGN_CURRENCY_PROB:
                e["currency"] = FOREIGN_CURRENCY
                moved.append({"event_id": e["event_id"], "amount": e["amount"]})
        if moved:
            truth["foreign_currency"] = {"currency": FOREIGN_CURRENCY, "events": moved}

    def _guest_checkout(self, st: _Story, truth: dict) -> None:
        """The guest-checkout variant (see :data:`GUEST_PROB`) on one order's story: the same
        customers check out as guests on every order (a digest of the seed and the customer id
        decides, so no other random stream moves)."""
        cid = truth["customer_id"]
        if zlib.crc32(f"{self.guest_seed}:{cid}".encode()) % 10_000 >= GUEST_PROB * 10_000:
            return
        for _, _, e in st.items:
            if e["event_type"] == "order_placed":
                e["customer_id"] = GUEST_ID
        truth["guest_checkout"] = True

    def _batch_uploads(self, st: _Story) -> None:
        """The batch-uploads variant (see :data:`BATCH_UPLOAD_COURIER`) on one order's story: its
        carrier's scans appear at the next upload (emit time), their ``occurred_at`` as scanned."""
        every = BATCH_UPLOAD_HOURS * HOUR
        items = st.items
        for i, (emit, n, e) in enumerate(items):
            if e["event_type"] == "carrier_scan" and e.get("courier") == BATCH_UPLOAD_COURIER:
                items[i] = ((emit // every + 1) * every, n, e)

    # ------------------------------------------------------------ the merged stream

    def _arrival_gap(self, t: float) -> float:
        hour = int(t // HOUR) % 24
        rate = self.base_rate * DIURNAL[hour]
        if self.launch and self.launch_from <= t < self.launch_to:
            rate *= LAUNCH_RATE_MULT
        return self.rng.expovariate(rate)

    def run(self) -> Iterator[tuple[str, dict]]:
        """Merge the order stories in (time, seq) order.

        One entry per open story, keyed by its next item's (emit time, seq). Entries due in the
        current hour sit in a binary heap; later ones wait in hourly buckets and are heapified
        when their hour comes: the heap stays small (cache friendly) however many orders are
        waiting out their return window. The output order is exactly the global (time, seq) order.
        """
        if self.orders == 0:
            return
        heap: list[tuple[int, int, list, int]] = []
        buckets: dict[int, list[tuple[int, int, list, int]]] = {}
        cur = self.t_start // BUCKET_SECONDS  # every entry with time // BUCKET <= cur is in heap
        limit = (cur + 1) * BUCKET_SECONDS
        seq = 0
        for inc in self.incident_list:
            rec = {
                "type": "lane_incident" if inc.end else "lane_shift",
                "lane": inc.lane,
                "start": _iso(inc.start),
                "end": _iso(inc.end) if inc.end else None,
                "delay_prob": inc.delay_prob,
            }
            if self.silent_scans:
                rec["scans"] = "picked_up+delivered"
            at = inc.end or inc.start  # a shift is stated when it starts
            buckets.setdefault(at // BUCKET_SECONDS, []).append((at, seq, [(at, 0, rec)], 0))
            seq += 1
        push, pop, replace = heapq.heappush, heapq.heappop, heapq.heapreplace
        n_done = 0
        n_orders = self.orders
        t_next = self.t_start + self._arrival_gap(self.t_start)
        while True:
            if n_done < n_orders and t_next < limit and (not heap or t_next <= heap[0][0]):
                n_done += 1
                items = self.order(n_done, int(t_next)).items
                push(heap, (items[0][0], seq, items, 0))
                seq += 1
                t_next += self._arrival_gap(t_next)
                self.placed = n_done
                continue
            if not heap:  # nothing left this hour: open the next bucket
                if not buckets and n_done >= n_orders:
                    return
                cur += 1
                limit += BUCKET_SECONDS
                due = buckets.pop(cur, None)
                if due:
                    heap = due
                    heapq.heapify(heap)
                continue
            _, _, items, i = heap[0]
            obj = items[i][2]
            items[i] = None  # type: ignore[call-overload]  # emitted: free it
            i += 1
            if i < len(items):
                t = items[i][0]
                if t < limit:  # the story's next item replaces it (one sift, not two)
                    replace(heap, (t, seq, items, i))
                else:
                    pop(heap)
                    entry = (t, seq, items, i)
                    b = t // BUCKET_SECONDS
                    bucket = buckets.get(b)
                    if bucket is None:
                        buckets[b] = [entry]
                    else:
                        bucket.append(entry)
                seq += 1
            else:
                pop(heap)
            yield ("truth", obj) if "type" in obj else ("event", obj)


# ---------------------------------------------------------------- public API


def generate(
    scenario: str,
    orders: int,
    seed: int,
    start: datetime | None = None,
    orders_per_day: float = ORDERS_PER_DAY,
    variants: Iterable[str] = (),
) -> Iterator[tuple[str, dict]]:
    """Yield ``("event", event)`` in non-decreasing ``occurred_at`` order (ties broken
    deterministically; late-recorded carrier scans excepted, see ``LATE_SCAN_PROB``), interleaved
    with ``("truth", record)`` records. Memory is bounded by the orders in flight. ``variants``:
    any of :data:`VARIANTS` (bracketing that grading never flags; real-style support text)."""
    return _World(scenario, orders, seed, start, orders_per_day, variants).run()


def lane_profiles(scenario: str, seed: int) -> list[dict]:
    """The lanes' hidden baselines for (scenario, seed): ``lane``, ``transit_days``, ``delay_prob``
    (outside incidents) and ``slow`` (one of the ~2% systematically slower lanes). For evaluating
    lane monitors; the log itself never states them."""
    world = _World(scenario, 0, seed, None)
    return [
        {
            "lane": lane.key,
            "transit_days": lane.transit_days,
            "delay_prob": round(lane.delay_p, 4),
            "slow": lane.slow,
        }
        for lane in world.lanes.values()
    ]


def write_log(
    scenario: str,
    orders: int,
    seed: int,
    out: Path,
    truth: Path | None = None,
    start: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    orders_per_day: float = ORDERS_PER_DAY,
    variants: Iterable[str] = (),
) -> dict[str, int]:
    """Write the events as JSON lines to ``out`` (truth records to ``truth`` if given).

    Returns counts per ``event_type`` plus ``"events"`` (the total). ``progress`` is called with
    the number of orders placed so far every 10,000 orders and once at the end. Same arguments,
    same bytes."""
    world = _World(scenario, orders, seed, start, orders_per_day, variants)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    total = 0
    next_report = 10_000
    buf: list[str] = []
    tbuf: list[str] = []
    encode = _ENCODE
    tf = None
    if truth is not None:
        truth = Path(truth)
        truth.parent.mkdir(parents=True, exist_ok=True)
        tf = truth.open("w", encoding="utf-8", newline="\n")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the log's objects hold no cycles; a full GC pass costs ~20%
    try:
        with out.open("w", encoding="utf-8", newline="\n") as f:
            for kind, obj in world.run():
                if kind == "event":
                    et = obj["event_type"]
                    counts[et] = counts.get(et, 0) + 1
                    total += 1
                    buf.append(encode(obj))
                    if len(buf) >= 8192:
                        buf.append("")
                        f.write("\n".join(buf))
                        buf.clear()
                elif tf is not None:
                    tbuf.append(encode(obj))
                    if len(tbuf) >= 8192:
                        tbuf.append("")
                        tf.write("\n".join(tbuf))
                        tbuf.clear()
                if progress is not None and world.placed >= next_report:
                    progress(world.placed)
                    next_report += 10_000
            if buf:
                buf.append("")
                f.write("\n".join(buf))
        if tf is not None and tbuf:
            tbuf.append("")
            tf.write("\n".join(tbuf))
    finally:
        if gc_was_enabled:
            gc.enable()
        if tf is not None:
            tf.close()
    if progress is not None:
        progress(world.placed)
    counts = dict(sorted(counts.items()))
    counts["events"] = total
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a simulated Salvage event log (JSONL).")
    parser.add_argument("--scenario", choices=SCENARIOS, default="steady-state")
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--truth", type=Path, default=None)
    parser.add_argument("--start", type=datetime.fromisoformat, default=None)
    parser.add_argument("--variant", choices=VARIANTS, action="append", default=[])
    args = parser.parse_args(argv)
    counts = write_log(
        args.scenario,
        args.orders,
        args.seed,
        args.out,
        args.truth,
        args.start,
        variants=args.variant,
    )
    print(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
