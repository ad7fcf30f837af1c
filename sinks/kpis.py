"""Business KPIs from closed cases and placed orders, as Prometheus metrics (bounded labels only).

``observe`` receives fact dicts from ``CustomerStage``:

* ``kind="case"``, once per closed case: ``t`` (event time, µs), ``case``
  (:meth:`salvage.features.order_case.OrderCase.facts`), ``first_recoverability`` (the first score
  the case
  got), ``scores`` (at close), ``triggered`` (actions decided), ``held_out`` (those of them held
  out: the draw is per order, the share per action), ``customer`` (customer-context features at
  close);
* ``kind="settled"``, a late fact of a settled case in its grace period: ``case`` with ``late``
  (the event type), ``amount`` and ``currency`` (the payment's own), the case's ``campaign``,
  ``sku_family``, ``lane`` and ``last_contact_intent`` (its money is counted under them, as money
  paid before the close; absent: ``none``);
* ``kind="goodwill"``, goodwill paid on an open case: ``case`` with ``amount``, ``goodwill_kind``
  (``refund`` or ``store_credit``), ``currency``, ``campaign``, ``sku_family``, ``lane``;
* ``kind="order"``, once per order placed: ``t`` and ``customer``: the customer's
  ``customer_days_since_return`` *before* this order (-1 when the customer never returned
  anything).

Metrics (all counters end in ``_total``; money is in currency units with a ``currency`` label; times
in seconds). Money is never converted nor summed across currencies: a case's refunded value in its
order's currency (``refunded_amount``) and in any other (``refunded_other``, a cross-border refund)
are each counted under their own ``currency``, with the case's one leakage basis; the order's
value (closed, retained) is in the order's. ``D`` = ``campaign, sku_family, lane``:

==========================================  ====================================================
``salvage_cases_resolved_total``            closed cases {outcome, D, support_reason}
``salvage_closed_order_value_total``        order value of closed cases {currency, outcome, D}
``salvage_retained_revenue_total``          order value of *retained* cases, once per triggered
                                            action (``none`` if none) {currency, action, holdout,
                                            D}; a case with two actions counts under both, so
                                            use ``salvage_closed_order_value_total`` for totals
``salvage_cases_by_action_total``           closed cases per triggered action {action, holdout,
                                            retained, D}: retention rate and uplift by action
``salvage_refunded_total``                  value refunded (refunds + chargebacks) {currency, D,
                                            support_reason}
``salvage_refund_leakage_total``            value refunded that could have been saved: delivered,
                                            no abuse evidence, a controllable reason
                                            (:mod:`salvage.sinks.leakage`) {currency, D,
                                            support_reason}
``salvage_refunded_by_basis_total``         value refunded by leakage basis (why it is or is not
                                            leakage; :data:`~salvage.sinks.leakage.BASES`)
                                            {currency, basis}
``salvage_goodwill_total``                  goodwill paid while the order was kept, when paid
                                            (refunds and store credit naming no return, see
                                            ``OrderCase._goodwill``; the refunds are also in
                                            ``salvage_refunded_total``, basis ``goodwill``)
                                            {currency, kind, D}
``salvage_returns_total``                   closed cases with a return request {reason, D,
                                            support_reason}
``salvage_return_cost_total``               fully loaded cost of returns {currency, component,
                                            courier, D} (:mod:`salvage.sinks.cost_model`)
``salvage_returns_graded_total``            graded returns {grade, D}; restock rate = A / all
``salvage_time_to_refund_seconds``          histogram, refund minus return request {D}
``salvage_scored_cases_total``              closed cases by first recoverability decile and
                                            outcome {score_bin, retained} (calibration)
``salvage_orders_placed_total``             orders placed
``salvage_repeat_orders_total``             orders by customers whose last return was at most
                                            ``repeat_window_days`` (90) before: repeat-customer
                                            rate = this / ``salvage_returns_total``
==========================================  ====================================================

Label bounding: every label value goes through a :class:`TopN` bucket per label name, but for
``currency`` (money is never summed across currencies): its label is the ISO 4217 code
(:data:`ISO_4217`, never folded), and its top-N says which currencies keep the breakdown; money in
a later one has ``D``, ``support_reason`` and ``courier`` folded to ``other`` (:func:`_money`).
The first ``N`` distinct values seen by this process claim a slot and keep it; every later value is
reported as ``other``. The placeholder values ``none``, ``unknown`` and ``other`` never take a
slot. ``N`` per label is configurable (:class:`KpiSettings`, env ``SALVAGE_KPI_TOP_N_<LABEL>``, e.g.
``SALVAGE_KPI_TOP_N_LANE=40``); ``preset`` values claim their slots first, so a deployment that
needs stable buckets across restarts lists its important campaigns/lanes there
(``SALVAGE_KPI_PRESET_LANE='["swiftship:central>north"]'``). Slots are per process: two processes
of a cluster may bucket a late newcomer differently (both still bounded).

Label vetting (before a value may take a slot): labels with a closed vocabulary (``action``,
``outcome``, ``grade``, ``reason``, ``support_reason``) only take its values, ``currency`` only
ISO 4217 codes; the free-form ones (``campaign``, ``sku_family``, ``courier``, and each
part of a ``lane``/``lane_monitor`` ``courier:origin>destination``) only take slug-like values
(letters, digits and ``_ . + / & -``, at most four words and 48 characters, no ``@``, ``,`` or
quotes, no run of 6 or more digits). Anything else, an email, a phone or order number, an address
with commas, a sentence, is reported as ``other`` without taking a slot. Presets are trusted as
configured.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Container, Iterable
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from salvage.config import KpiSettings
from salvage.connectors.events import Grade, Intent, ReturnReason
from salvage.connectors.outputs import Action
from salvage.features.order_case import Outcome
from salvage.sinks import leakage
from salvage.sinks.cost_model import CostModel, load_cost_model

OTHER = "other"
PLACEHOLDERS = frozenset({"none", "unknown", OTHER})
RETAINED = frozenset({"kept", "exchange", "store_credit", "return_cancelled"})
US = 1_000_000

# ---------------------------------------------------------------------------------- settings


# KpiSettings (the ``kpis`` group of salvage.config.Settings) is defined with the other groups.


# ---------------------------------------------------------------------------------- buckets


_SLUG = re.compile(r"(?=.{1,48}$)[A-Za-z0-9][A-Za-z0-9_.+/&-]*(?: [A-Za-z0-9_.+/&-]+){0,3}")
_ID_LIKE = re.compile(r"[0-9]{6}")
_LANE = re.compile(r"([^:>]+):([^:>]+)>([^:>]+)")
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN
    BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP
    ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IQD IRR
    ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD
    MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR
    PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL
    THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF
    XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER ZAR ZMW ZWG ZWL
    """.split()
)
"""The ``currency`` label's vocabulary: the ISO 4217 codes (current ones, and the few withdrawn
since 2023 that old data may still carry): a closed set of about 180, so every currency can keep
its own label value (money is never summed across currencies; see :func:`_money`). Without the
two codes ISO reserves for no money at all, "no currency" and "testing": a payment in them is bad
data, labelled ``other``."""


def slug_label(value: str) -> bool:
    """A free-form label value safe to export: short, slug-like, not an id, a name or an email."""
    return _SLUG.fullmatch(value) is not None and _ID_LIKE.search(value) is None


def lane_label(value: str) -> bool:
    m = _LANE.fullmatch(value)
    return m is not None and all(slug_label(part) for part in m.groups())


def _closed(*vocabularies: Iterable[str]) -> Callable[[str], bool]:
    allowed = frozenset(v for vocab in vocabularies for v in vocab)
    return allowed.__contains__


VETTING: dict[str, Callable[[str], bool]] = {
    "campaign": slug_label,
    "sku_family": slug_label,
    "courier": slug_label,
    "lane": lane_label,
    "lane_monitor": lane_label,
    "support_reason": _closed(Intent),
    "action": _closed(Action, ("none",)),
    "outcome": _closed(Outcome),
    "grade": _closed(Grade),
    "reason": _closed(ReturnReason),
    "currency": ISO_4217.__contains__,
}
"""Per label: which values may be exported (others are ``other``); see the module docstring."""


class TopN:
    """First-come top-N bucketing of one label's values; later newcomers become ``other``, and so
    do values ``accept`` refuses (without taking a slot, and without being remembered)."""

    __slots__ = ("_accept", "_lock", "_map", "n", "slots")

    def __init__(
        self,
        n: int,
        preset: Iterable[str] = (),
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        self.n = n
        self.slots = 0
        self._map: dict[str, str] = {p: p for p in PLACEHOLDERS}
        self._lock = threading.Lock()
        self._accept = None  # presets are trusted as configured
        for value in preset:
            self(value)
        self._accept = accept

    def __call__(self, value: Any) -> str:
        key = value if isinstance(value, str) else ("none" if value is None else str(value))
        got = self._map.get(key)
        if got is not None:
            return got
        if not key:
            return "none"
        if self._accept is not None and not self._accept(key):
            return OTHER
        with self._lock:  # a miss: claim a slot (at most N, even with several worker threads)
            got = self._map.get(key)
            if got is None:
                if self.slots < self.n:
                    self.slots += 1
                    got = key
                else:
                    got = OTHER
                self._map[key] = got
            return got


LABELS = (
    "campaign",
    "sku_family",
    "lane",
    "lane_monitor",
    "courier",
    "support_reason",
    "action",
    "outcome",
    "grade",
    "reason",
    "currency",
)

# ---------------------------------------------------------------------------------- metrics

D = ["campaign", "sku_family", "lane"]

CASES_RESOLVED = Counter(
    "salvage_cases_resolved",
    "Closed cases by outcome, campaign, SKU family, lane and support reason",
    ["outcome", *D, "support_reason"],
)
CLOSED_VALUE = Counter(
    "salvage_closed_order_value",
    "Order value of closed cases, by outcome (currency units)",
    ["currency", "outcome", *D],
)
RETAINED_REVENUE = Counter(
    "salvage_retained_revenue",
    "Order value of retained cases, once per triggered action (none: no action)",
    ["currency", "action", "holdout", *D],
)
CASES_BY_ACTION = Counter(
    "salvage_cases_by_action",
    "Closed cases per triggered action (none: no action), treated vs holdout, retained or not",
    ["action", "holdout", "retained", *D],
)
REFUNDED = Counter(
    "salvage_refunded",
    "Value refunded on closed cases, refunds and chargebacks (currency units)",
    ["currency", *D, "support_reason"],
)
LEAKAGE = Counter(
    "salvage_refund_leakage",
    "Value refunded that could have been saved: delivered, no abuse evidence, a controllable "
    "return reason (sinks/leakage.py; currency units)",
    ["currency", *D, "support_reason"],
)
REFUNDED_BY_BASIS = Counter(
    "salvage_refunded_by_basis",
    "Value refunded by leakage basis: why it counts as leakage or not (currency units)",
    ["currency", "basis"],
)
GOODWILL = Counter(
    "salvage_goodwill",
    "Goodwill paid while the order was kept: refunds and store credit naming no return "
    "(currency units)",
    ["currency", "kind", *D],
)
RETURNS = Counter(
    "salvage_returns",
    "Closed cases with a return request, by return reason",
    ["reason", *D, "support_reason"],
)
RETURN_COST = Counter(
    "salvage_return_cost",
    "Fully loaded cost of returns by component (sinks/cost_model.py; currency units)",
    ["currency", "component", "courier", *D],
)
GRADED = Counter(
    "salvage_returns_graded",
    "Returns graded by the warehouse, by grade (restock rate = A / all)",
    ["grade", *D],
)
TIME_TO_REFUND = Histogram(
    "salvage_time_to_refund_seconds",
    "Event time from return request to refund",
    D,
    buckets=tuple(h * 3600.0 for h in (6, 12, 24, 48, 72, 120, 168, 240, 336, 504, 720, 1440)),
)
SCORED = Counter(
    "salvage_scored_cases",
    "Closed cases by first recoverability score decile and whether they were retained",
    ["score_bin", "retained"],
)
ORDERS = Counter("salvage_orders_placed", "Orders placed")
REPEAT_ORDERS = Counter(
    "salvage_repeat_orders",
    "Orders placed by customers whose last return was within the repeat window (90 days)",
)

SCORE_BINS = tuple(f"{i / 10:.1f}" for i in range(10))

# ---------------------------------------------------------------------------------- state


class _Children:
    """``metric.labels(*values)`` memoised per label tuple (the lookup costs more than inc)."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: MetricWrapperBase) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        c = self._cache.get(values)
        if c is None:
            c = self._cache[values] = self._metric.labels(*values)
        return c


class _State:
    def __init__(self, settings: KpiSettings, cost: CostModel) -> None:
        self.settings = settings
        self.cost = cost
        self.repeat_days = settings.repeat_window_days
        self.bucket: dict[str, TopN] = {
            name: TopN(settings.top_n(name), settings.preset(name), VETTING.get(name))
            for name in LABELS
        }
        m = (
            CASES_RESOLVED,
            CLOSED_VALUE,
            RETAINED_REVENUE,
            CASES_BY_ACTION,
            REFUNDED,
            LEAKAGE,
            REFUNDED_BY_BASIS,
            GOODWILL,
            RETURNS,
            RETURN_COST,
            GRADED,
            TIME_TO_REFUND,
            SCORED,
        )
        (
            self.resolved,
            self.closed_value,
            self.retained_revenue,
            self.by_action,
            self.refunded,
            self.leakage,
            self.by_basis,
            self.goodwill,
            self.returns,
            self.return_cost,
            self.graded,
            self.time_to_refund,
            self.scored,
        ) = (_Children(x) for x in m)


_state: _State | None = None
_state_lock = threading.Lock()


def configure(settings: KpiSettings | None = None, cost: CostModel | None = None) -> None:
    """(Re)load settings and cost model; resets the top-N slots (for tests and startup)."""
    with _state_lock:
        _set_state(_State(settings or KpiSettings.from_env(), cost or load_cost_model()))


def _get_state() -> _State:
    if _state is None:
        with _state_lock:  # first use, possibly from several worker threads at once
            if _state is None:
                _set_state(_State(KpiSettings.from_env(), load_cost_model()))
    assert _state is not None
    return _state


def _set_state(state: _State) -> None:
    global _state
    _state = state


def bucket(label: str, value: Any) -> str:
    """The bounded label value ``value`` is reported as (``other`` past the top-N)."""
    return _get_state().bucket[label](value)


def claimed(label: str) -> Container[str]:
    """The values of ``label`` whose bucket is settled: :func:`bucket` on them changes nothing
    (a value missing here may still be one, e.g. a refused value; calling :func:`bucket` on it is
    then harmless). A live view: read it, never change it."""
    return _get_state().bucket[label]._map


FOLDED: tuple[str, str, str] = (OTHER, OTHER, OTHER)
"""``D`` of money in a currency past the currency top-N (see :func:`_money`)."""


def currency_code(value: Any) -> str:
    """The ``currency`` label value of money in ``value``: its ISO 4217 code, never folded
    (``none``: no currency; ``other``: a code outside ISO 4217, bad data)."""
    if not value:
        return "none"
    return value if value in ISO_4217 else OTHER


Dims = tuple[str, str, str]
"""Bounded values of ``D``."""


def _dims(bucket: dict[str, Any], get: Any) -> Dims:
    """``D`` of a case record (``get``: its ``dict.get``): its campaign, SKU family and lane,
    each through its label's bucket."""
    return (
        bucket["campaign"](get("campaign")),
        bucket["sku_family"](get("sku_family")),
        bucket["lane"](get("lane")),
    )


def _money(s: _State, raw: Any, d: Dims) -> tuple[str, Dims, bool]:
    """(currency label, dimensions, broken down) of money in the currency ``raw`` with the
    bounded dimensions ``d``. Every currency keeps its own label (money is never summed across
    currencies); the first ``top_n_currency`` of them (a :class:`TopN`) also keep their
    breakdown, money in a later one is counted with its dimensions (``D``, support reason,
    courier) folded to ``other``: its own totals stay whole, at a few series per currency."""
    code = currency_code(raw)
    if s.bucket["currency"](raw) == code:
        return code, d, True
    return code, FOLDED, False


# ---------------------------------------------------------------------------------- observe


def observe(fact: dict[str, Any]) -> None:
    """Account one KPI fact (see the module docstring); unknown kinds are ignored."""
    kind = fact.get("kind")
    if kind == "case":
        _case(_get_state(), fact)
    elif kind == "order":
        _order(_get_state(), fact)
    elif kind == "settled":
        _settled(_get_state(), fact)
    elif kind == "goodwill":
        _goodwill(_get_state(), fact)


def _goodwill(s: _State, fact: dict[str, Any]) -> None:
    """Goodwill paid while the order is kept (``OrderCase._goodwill``), counted when paid: its
    amount by kind, and a refund's in the refunded value with the basis ``goodwill``, never
    leakage (sinks/leakage.py)."""
    case: dict[str, Any] = fact.get("case") or {}
    amount = float(case.get("amount") or 0.0)
    kind = case.get("goodwill_kind")
    if amount <= 0 or kind not in ("refund", "store_credit"):
        return
    b = s.bucket
    get = case.get
    d = _dims(b, get)
    currency, d, whole = _money(s, get("currency"), d)
    s.goodwill(currency, kind, *d).inc(amount)
    if kind == "refund":
        s.refunded(currency, *d, "none" if whole else OTHER).inc(amount)
        s.by_basis(currency, "goodwill").inc(amount)


def _order(s: _State, fact: dict[str, Any]) -> None:
    ORDERS.inc()
    days = (fact.get("customer") or {}).get("customer_days_since_return", -1.0)
    if days is not None and 0.0 <= days <= s.repeat_days:
        REPEAT_ORDERS.inc()


def _settled(s: _State, fact: dict[str, Any]) -> None:
    """After the case settled: a chargeback (refunded value, never leakage: it disputes a
    decision already taken), the refund of another return of the order (refunded value; its
    leakage basis as a closed case's, from that return's reason, when its request was heard;
    ``late_return``, not leakage, when it was not), or a second payment of the refund the case
    settled with (``basis``: that refund's). See sinks/leakage.py (``late_money``,
    ``settled_basis``: the outcomes stream's ``outcome_amended`` records read the same)."""
    case: dict[str, Any] = fact.get("case") or {}
    amount = leakage.late_money(case)
    if not amount:
        return
    b = s.bucket
    get = case.get
    # the case's dimensions, as at its close (a record from before they were kept: "none")
    d = _dims(b, get)
    currency, d, whole = _money(s, get("currency"), d)
    support = b["support_reason"](get("last_contact_intent")) if whole else OTHER
    s.refunded(currency, *d, support).inc(amount)
    why = leakage.settled_basis(case, fact.get("customer"))
    s.by_basis(currency, why).inc(amount)
    if why in leakage.LEAKED:
        s.leakage(currency, *d, support).inc(amount)


def _case(s: _State, fact: dict[str, Any]) -> None:
    case: dict[str, Any] = fact.get("case") or {}
    b = s.bucket
    get = case.get
    d = _dims(b, get)
    support = b["support_reason"](get("last_contact_intent"))
    raw_outcome = get("outcome") or "unknown"
    outcome = b["outcome"](raw_outcome)
    # money in the order's currency: its dimensions (md), folded past the currency top-N
    currency, md, whole = _money(s, get("currency"), d)
    msupport = support if whole else OTHER
    retained = raw_outcome in RETAINED
    retained_s = "true" if retained else "false"
    held_out = set(
        fact.get("held_out") or ()
    )  # per action: the draw is per order, shares per action
    value = float(get("order_value") or 0.0)

    s.resolved(outcome, *d, support).inc()
    if value:
        s.closed_value(currency, outcome, *md).inc(value)

    actions: Iterable[str] = dict.fromkeys(fact.get("triggered") or ()) or ("none",)
    for a in actions:
        action = b["action"](a)
        holdout = "true" if a in held_out else "false"
        s.by_action(action, holdout, retained_s, *d).inc()
        if retained and value:
            s.retained_revenue(currency, action, holdout, *md).inc(value)

    first = fact.get("first_recoverability")
    refunded = float(get("refunded_amount") or 0.0)
    # money in other currencies than the order's: each counted in its own, never summed
    other: dict[str, float] = get("refunded_other") or {}
    if refunded > 0 or other:
        why = leakage.basis(case, fact.get("customer"))
        leaked = why in leakage.LEAKED
        paid: list[tuple[tuple[str, Dims, str], float]] = [((currency, md, msupport), refunded)]
        for code, amount_in in other.items():
            cur, od, owhole = _money(s, code, d)
            paid.append(((cur, od, support if owhole else OTHER), amount_in))
        for (cur, pd, psupport), amount in paid:
            if amount > 0:
                s.refunded(cur, *pd, psupport).inc(amount)
                s.by_basis(cur, why).inc(amount)
                if leaked:
                    s.leakage(cur, *pd, psupport).inc(amount)
    if first is not None:
        s.scored(SCORE_BINS[min(9, max(0, int(first * 10 + 1e-9)))], retained_s).inc()

    requested = int(get("return_requested_at") or 0)
    if requested:
        s.returns(b["reason"](get("return_reason")), *d, support).inc()
        courier = b["courier"](get("courier"))  # (claims its slot first come, as before)
        courier = courier if whole else OTHER
        for component, amount in s.cost.components(case).items():
            if amount:
                s.return_cost(currency, component, courier, *md).inc(amount)
        refund_at = int(get("refund_at") or 0)
        if refund_at >= requested and refund_at:
            s.time_to_refund(*d).observe((refund_at - requested) / US)
    grade = get("grade")
    if grade:
        s.graded(b["grade"](grade), *d).inc()
