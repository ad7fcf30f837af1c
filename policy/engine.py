"""Decide the best intervention for a case update under a :class:`~salvage.policy.config.Policy`.

For every enabled action whose rule holds, the expected value is

    EV = lift x P(lost) x value at risk - (message + goodwill + label cost)

where P(lost) = 1 - recoverability and the value at risk is the order (or returned share) value plus
the margin behind it. Human review is valued differently: it protects the amount at stake from
abuse (abuse x amount) and gives a small chance to save an ambiguous case. The best positive EV
wins; every candidate and every guardrail that shaped the decision is recorded for the audit trail.

Review routing overrides EV: an open claim (return or "not received" after delivery) at or above the
abuse threshold, or worth at least ``review_value`` with ambiguous recoverability, always goes to
human review, even when a customer-facing action would score higher or the review's own EV is not
positive (a small likely-abuse claim must never pass unrecorded). The recorded cost is the one the
EV used (goodwill after its cap), so downstream budgets count what is actually spent.

Stateless guardrails live here (abuse block, review routing, goodwill cap); the ones that need
memory (contact caps, once per order, daily budgets, holdout) are applied by the dispatch stage.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from salvage.connectors.outputs import Action, Priority
from salvage.policy.config import _OPS, MONEY_FEATURES, Policy, holds

CUSTOMER_FACING = frozenset(a for a in Action if a is not Action.HUMAN_REVIEW)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision and its audit trail: every candidate ``(action, EV, note)`` considered and
    the stateless guardrails that shaped it.

    A "never arrived" claim on a delivered parcel with a high abuse score goes to human review,
    routed by the guardrail (no eligibility rule of its own needed):

    >>> from salvage.features.customer import CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> from salvage.policy.config import load_policy
    >>> from salvage.scoring.baseline import ScoreResult
    >>> f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    >>> f |= {"order_value": 80.0, "margin": 50.0, "margin_rate": 0.625, "delivered": 1.0,
    ...       "return_requested": 1.0, "return_share": 1.0, "reason_not_received": 1.0}
    >>> d = decide(load_policy(), f, ScoreResult(0.5, 0.7, "rules-v1"), resolved=False)
    >>> d.action.value, d.priority.value, d.expected_value, d.cost
    ('human_review', 'high', 53.25, 6.0)
    >>> d.candidates, d.guardrails
    ((('human_review', 53.25, 'routed by guardrail'),), ('review_routing',))
    >>> d.reason_codes
    ('return_open', 'reason_not_received', 'abuse_risk_high', 'recoverability_ambiguous')
    """

    action: Action
    expected_value: float
    cost: float
    priority: Priority
    reason_codes: tuple[str, ...]
    ttl_hours: int
    candidates: tuple[tuple[str, float, str], ...]  # (action, EV, note)
    guardrails: tuple[str, ...]  # stateless guardrails that shaped this decision
    # an order in another currency than the policy's: (its currency, the policy's rate for it;
    # None: no rate, nothing priced); None: the order is in the policy currency
    fx: tuple[str, float | None] | None = None


def holdout_unit(order_id: str, policy_version: str) -> float:
    """Deterministic uniform [0, 1) per (order, policy version): the holdout draw.

    >>> u = holdout_unit("o-1", "v1")
    >>> 0 <= u < 1 and u == holdout_unit("o-1", "v1") and u != holdout_unit("o-1", "v2")
    True
    """
    digest = hashlib.sha256(f"{policy_version}|{order_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _abuse_history(f: dict[str, float], g) -> bool:
    """An open claim of a customer with earlier abuse flags (the ``abuse_history_block``
    guardrail): likely abuse whatever the score, so never rewarded automatically."""
    n = g.abuse_history_block
    return bool(
        n
        and (f["return_requested"] or f["wismo_after_delivered"])
        and f["customer_abuse_flags"] >= n
    )


def reasons(f: dict[str, float], abuse: float, recoverability: float, policy: Policy) -> list[str]:
    g = policy.guardrails
    r: list[str] = []
    slip = f["slippage_hours"]
    if slip >= 48:
        r.append("slippage_48h")
    elif slip >= 24:
        r.append("slippage_24h")
    elif slip >= 6:
        r.append("slippage_6h")
    for feature, code in (
        ("delayed_scans", "carrier_delay_scan"),
        ("exception_count", "carrier_exception"),
        ("lost", "parcel_lost"),
        ("wismo_7d", "wismo_contact"),
        ("refund_intent_7d", "refund_intent"),
        ("fit_intent_7d", "fit_question"),
    ):
        if f[feature]:
            r.append(code)
    if f["return_requested"]:
        r.append("return_open")
        for feature, code in (
            ("reason_fit", "reason_fit"),
            ("reason_damaged", "reason_damaged"),
            ("reason_late", "reason_late"),
            ("reason_not_received", "reason_not_received"),
            ("prefers_exchange", "prefers_exchange"),
        ):
            if f[feature]:
                r.append(code)
    if f["wismo_after_delivered"]:
        r.append("wismo_after_delivered")
    if abuse >= g.abuse_block:
        r.append("abuse_risk_high")
    if _abuse_history(f, g):
        r.append("abuse_history")
    if g.ambiguity_band[0] <= recoverability <= g.ambiguity_band[1]:
        r.append("recoverability_ambiguous")
    if f["order_value"] >= g.review_value:
        r.append("high_value")
    return r


_SYMBOL = {fn: sym for sym, fn in _OPS.items()}
_SCORES = {"recoverability": "rec", "abuse": "abuse"}  # rule names of the scores: gate arguments

Gate = Callable[[dict[str, float], float, float], bool]


def _cond_source(name: str, op, value: float) -> str:
    operand = _SCORES.get(name) or f"f[{name!r}]"
    return f"{operand} {_SYMBOL[op]} {float(value)!r}"


def _rule_source(compiled: tuple[list, list]) -> str:
    """A compiled rule as one Python expression over ``f``, ``rec`` and ``abuse`` that is true
    exactly when :func:`~salvage.policy.config.holds` is. Conditions false on a zero feature
    (``>= 1``, ``== 1``: most updates have none of what a rule asks for) come first, then the
    ``any`` group, then the rest, so a failing rule usually stops at its first comparison."""
    conds, anys = compiled
    fails_at_zero = [c for c in conds if not c[1](0.0, c[2])]
    rest = [c for c in conds if c[1](0.0, c[2])]
    parts = [_cond_source(*c) for c in fails_at_zero]
    if anys:
        parts.append("(" + " or ".join(_rule_source(sub) for sub in anys) + ")")
    parts += [_cond_source(*c) for c in rest]
    return "(" + " and ".join(parts) + ")" if parts else "True"


def gate_source(policy: Policy) -> str:
    """The source of :func:`could_decide`'s test for ``policy``: the review-routing guardrail,
    then each enabled action's eligibility rule, joined by ``or``.

    >>> from salvage.policy.config import load_policy
    >>> print(gate_source(load_policy()))  # doctest: +ELLIPSIS
    def gate(f, rec, abuse):
        return (
            ((f['return_requested'] or f['wismo_after_delivered']) and (abuse >= 0.5 or ...)))
            or (((f['slippage_hours'] >= 6.0) or (f['delayed_scans'] >= 1.0) or ...) and ...)
    ...
    """
    g = policy.guardrails
    lo, hi = g.ambiguity_band
    history = (
        f"f['customer_abuse_flags'] >= {float(g.abuse_history_block)!r} or "
        if g.abuse_history_block
        else ""
    )
    review = (
        "((f['return_requested'] or f['wismo_after_delivered']) and "
        f"(abuse >= {float(g.abuse_block)!r} or {history}"
        f"(f['order_value'] >= {float(g.review_value)!r} and "
        f"{float(lo)!r} <= rec <= {float(hi)!r})))"
    )
    rules = policy.compiled_rules()
    terms = [review] + [_rule_source(rules[a]) for a, ap in policy.actions.items() if ap.enabled]
    body = "\n        or ".join(terms)
    return f"def gate(f, rec, abuse):\n    return (\n        {body}\n    )"


_GATES: dict[str, Gate] = {}  # gate source -> its compiled function


def decision_gate(policy: Policy) -> Gate:
    """:func:`gate_source` compiled, once per distinct source (the names and numbers in it come
    from the validated policy: known feature names, numbers parsed by the rule grammar). The
    policy keeps the source, not the function, so it still pickles (stage snapshots)."""
    source = _source_of(policy)
    gate = _GATES.get(source)
    if gate is None:
        gate = _GATES[source] = _compile_gate(source, f"<policy {policy.version} gate>")
    return gate


CaseGate = Callable[[tuple[float, ...]], bool]
_CASE_GATES: dict[tuple[str, tuple[str, ...]], CaseGate] = {}


class _OpenAtoms(ast.NodeTransformer):
    """Takes every comparison or truth test in a gate's source that reads a score (``rec``,
    ``abuse``) or a feature outside ``known`` as true (see :func:`case_gate`)."""

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known

    def _reads_outside(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in ("rec", "abuse"):
                return True
            if (
                isinstance(sub, ast.Subscript)
                and isinstance(sub.slice, ast.Constant)
                and sub.slice.value not in self.known
            ):
                return True
        return False

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Compare | ast.Subscript | ast.Name):  # an atom
            if self._reads_outside(node):
                return ast.copy_location(ast.Constant(True), node)
            return node
        if isinstance(node, ast.UnaryOp | ast.IfExp | ast.Lambda):  # (the grammar has none)
            raise ValueError("the policy's gate is not and/or over comparisons: no case gate")
        return super().generic_visit(node)


def case_gate(policy: Policy, names: tuple[str, ...]) -> CaseGate:
    """An over-approximation of :func:`row_gate` that reads only the features in ``names`` (a
    prefix of the row: a case's own values, :data:`~salvage.features.order_case.CASE_FEATURES`)
    and no score: every comparison or test in the gate that reads a score or another feature is
    taken as true. The gate is ``and`` / ``or`` over such atoms (no negation), so where this
    says False the real gate says False for any scores and any customer: the case stage need not
    send the update on (README "Decision points").

    >>> from salvage.features.order_case import CASE_FEATURES, OrderCase
    >>> from salvage.policy.config import load_policy
    >>> gate, quiet = case_gate(load_policy(), CASE_FEATURES), OrderCase("o1").values(0)
    >>> gate(quiet), gate(quiet[:5] + (30.0,) + quiet[6:])  # slippage_hours 30: reassurance
    (False, True)
    """
    source = _source_of(policy)
    gate = _CASE_GATES.get((source, names))
    if gate is None:
        index = {name: i for i, name in enumerate(names)}
        tree = ast.fix_missing_locations(_OpenAtoms(index).visit(ast.parse(source)))
        text = _FEATURE_REF.sub(lambda m: f"f[{index[m[1]]}]", ast.unparse(tree))
        text = text.replace("def gate(f, rec, abuse):", "def gate(f):", 1)
        gate = _compile_gate(text, f"<policy {policy.version} case gate>")
        _CASE_GATES[(source, names)] = gate
    return gate


def _source_of(policy: Policy) -> str:
    """The policy's :func:`gate_source`, made once and kept on the policy."""
    source = policy._gate
    if source is None:
        source = policy._gate = gate_source(policy)
    return source


def _compile_gate(source: str, filename: str) -> Any:
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["gate"]


RowGate = Callable[[tuple[float, ...], float, float], bool]
_ROW_GATES: dict[tuple[str, tuple[str, ...]], RowGate] = {}
_FEATURE_REF = re.compile(r"f\['([a-z0-9_]+)'\]")


def row_gate(policy: Policy, names: tuple[str, ...]) -> RowGate:
    """:func:`decision_gate` on a tuple of feature values in ``names`` order instead of a dict
    (each ``f['name']`` of :func:`gate_source` read as ``f[i]``): the same test, for a stage
    that gets each update's values as a tuple. A policy reads only known features
    (:func:`~salvage.policy.config.known_features`); one that ``names`` lacks is a ValueError.

    >>> from salvage.features.customer import JOINED_FEATURES, CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> from salvage.policy.config import load_policy
    >>> policy = load_policy()
    >>> case, customer = OrderCase("o1"), CustomerContext("c1")
    >>> late = case.values(0)[:5] + (30.0,) + case.values(0)[6:] + customer.values(0)
    >>> JOINED_FEATURES[5], row_gate(policy, JOINED_FEATURES)(late, 0.4, 0.02)
    ('slippage_hours', True)
    >>> row_gate(policy, ("order_value",))
    Traceback (most recent call last):
    ...
    ValueError: the policy's gate reads features not in names: ['customer_abuse_flags', ...]
    """
    source = _source_of(policy)
    gate = _ROW_GATES.get((source, names))
    if gate is None:
        index = {name: i for i, name in enumerate(names)}
        missing = sorted({m[1] for m in _FEATURE_REF.finditer(source)} - index.keys())
        if missing or 'f["' in source:  # (the rule grammar's names never need double quotes)
            raise ValueError(f"the policy's gate reads features not in names: {missing}")
        row_source = _FEATURE_REF.sub(lambda m: f"f[{index[m[1]]}]", source)
        gate = _compile_gate(row_source, f"<policy {policy.version} row gate>")
        _ROW_GATES[(source, names)] = gate
    return gate


def could_decide(policy: Policy, f: dict[str, float], scores) -> bool:
    """A necessary condition for :func:`decide` to return a decision, cheap enough to test on
    every update before deciding: False means no enabled action's rule holds and no guardrail
    routes the case to review, so ``decide`` would return None (whatever ``resolved`` is).

    It is the eligibility half of ``decide`` alone: the rules, compiled into one Python
    expression per policy (:func:`gate_source`), evaluated on the features and the two scores
    directly, without the merged feature dict, the expected values or the audit trail. Most
    updates (85-88% on the simulator's logs) end here.

    >>> from salvage.features.customer import CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> from salvage.policy.config import load_policy
    >>> from salvage.scoring.baseline import ScoreResult
    >>> f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    >>> policy = load_policy()
    >>> could_decide(policy, f, ScoreResult(0.4, 0.02, "rules-v1"))  # nothing asks for action
    False
    >>> could_decide(policy, f | {"slippage_hours": 30.0}, ScoreResult(0.4, 0.02, "rules-v1"))
    True
    """
    return bool(gate_of(policy)(f, scores.recoverability, scores.abuse))


def gate_of(policy: Policy) -> Gate:
    """The compiled test :func:`could_decide` runs: ``could_decide(policy, f, scores)`` is
    ``bool(gate_of(policy)(f, scores.recoverability, scores.abuse))`` (for a caller that tests
    many updates against one policy)."""
    return _compiled(policy)[2]


def _compiled(policy: Policy) -> tuple[Policy, dict, Gate]:
    """``(policy, policy.compiled_rules(), decision_gate(policy))``, looked up by the policy's
    id: its private attributes (``_compiled``, ``_gate``) are slow pydantic attributes to read
    (``compiled_rules()`` costs ~3.5 µs a call), and could_decide and decide ask on every update
    that reaches them."""
    hit = _COMPILED_OF.get(id(policy))
    if hit is None or hit[0] is not policy:
        if len(_COMPILED_OF) >= 64:
            _COMPILED_OF.clear()
        hit = _COMPILED_OF[id(policy)] = (policy, policy.compiled_rules(), decision_gate(policy))
    return hit


# id(policy) -> (that policy, its rules, its gate): the policy is held, so its id is not reused
# meanwhile
_COMPILED_OF: dict[int, tuple[Policy, dict, Gate]] = {}


def in_policy_currency(f: dict[str, float], rate: float) -> dict[str, float]:
    """The features with the order's money (:data:`~salvage.policy.config.MONEY_FEATURES`:
    value and margin, in the order's currency) converted to the policy currency at ``rate``
    (policy currency per unit of the order's), rounded to cents as the order's own are.

    >>> in_policy_currency({"order_value": 3000.0, "margin": 1800.0, "margin_rate": 0.6}, 0.0893)
    {'order_value': 267.9, 'margin': 160.74, 'margin_rate': 0.6}
    """
    return {**f, **{name: round(f[name] * rate, 2) for name in MONEY_FEATURES}}


def values_in_policy_currency(
    values: tuple[float, ...], names: tuple[str, ...], rate: float
) -> tuple[float, ...]:
    """:func:`in_policy_currency` on a tuple of feature values in ``names`` order.

    >>> values_in_policy_currency((3000.0, 1800.0, 0.6), ("order_value", "margin", "x"), 0.0893)
    (267.9, 160.74, 0.6)
    """
    money = {names.index(name) for name in MONEY_FEATURES}
    return tuple(round(v * rate, 2) if i in money else v for i, v in enumerate(values))


def decide(
    policy: Policy, f: dict[str, float], scores, *, resolved: bool, currency: str | None = None
) -> Decision | None:
    """The best action for this case update, or None (no forced review and no eligible action with
    positive EV).

    A parcel 30 h late whose customer asked where it is, recoverability 0.4: both delay actions
    are eligible; the value at risk is 80 x (0.5 + 0.5 x 0.625) = 65, so reassurance is worth
    0.08 x 0.6 x 65 - 0.05 = 3.07, the delay intervention 0.2 x 0.6 x 65 - 5.5 = 2.30:

    >>> from salvage.features.customer import CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> from salvage.policy.config import load_policy
    >>> from salvage.scoring.baseline import ScoreResult
    >>> f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    >>> f |= {"order_value": 80.0, "margin": 50.0, "margin_rate": 0.625,
    ...       "slippage_hours": 30.0, "wismo_7d": 1.0}
    >>> policy, scores = load_policy(), ScoreResult(0.4, 0.02, "rules-v1")
    >>> d = decide(policy, f, scores, resolved=False)
    >>> d.action.value, d.expected_value, d.cost, d.priority.value, d.ttl_hours
    ('proactive_reassurance', 3.07, 0.05, 'low', 24)
    >>> d.candidates
    (('proactive_reassurance', 3.07, ''), ('delay_intervention', 2.3, ''))
    >>> decide(policy, f, scores, resolved=True) is None  # the case already has its outcome
    True

    ``currency``: the order's (None: the policy's). Its value and margin are converted to the
    policy currency at the policy's rate (``fx``) before anything is compared with the policy's
    money, so the decision, its EV and its cost are the policy currency's; an order in a currency
    the policy has no rate for is priced by nobody (:func:`_unpriced`).

    >>> sek = f | {"order_value": 80.0 / 0.0893, "margin": 50.0 / 0.0893}  # 80 EUR in SEK
    >>> d = decide(policy, sek, scores, resolved=False, currency="SEK")
    >>> d.action.value, d.expected_value, d.fx
    ('proactive_reassurance', 3.07, ('SEK', 0.0893))
    """
    if resolved:
        return None
    fx: tuple[str, float | None] | None = None
    if currency is not None and currency != policy.currency:
        rate = policy.fx.get(currency)
        if rate is None:
            return _unpriced(policy, f, scores, currency)
        fx = (currency, rate)
        f = in_policy_currency(f, rate)
    g = policy.guardrails
    rec, abuse = scores.recoverability, scores.abuse
    x = {**f, "recoverability": rec, "abuse": abuse}
    p_lost = 1.0 - rec
    at_risk = f["return_share"] * f["order_value"] if f["return_requested"] else f["order_value"]
    value_at_risk = at_risk * (0.5 + 0.5 * max(f["margin_rate"], 0.0))
    rules = _compiled(policy)[1]
    shaped: list[str] = []
    candidates: list[tuple[str, float, str]] = []
    best: tuple[float, Action, float] | None = None
    forced: tuple[float, float] | None = None  # (EV, cost) of a guardrail-forced review
    history = _abuse_history(f, g)  # (a claim is open)
    review_forced = _routed(f, g, rec, abuse, f["order_value"] >= g.review_value)
    if review_forced:
        shaped.append("review_routing")
    for action, ap in policy.actions.items():
        if not ap.enabled:
            continue
        eligible = holds(rules[action], x)
        note = ""
        cost = ap.cost
        if action is Action.HUMAN_REVIEW:
            if not eligible and review_forced:
                eligible, note = True, "routed by guardrail"
            if not eligible:
                continue
            ev = abuse * at_risk + 0.1 * p_lost * value_at_risk - cost
        else:
            if not eligible:
                continue
            if abuse >= g.abuse_block:
                candidates.append((action.value, 0.0, "blocked: abuse risk"))
                shaped.append("abuse_block")
                continue
            if history:
                candidates.append((action.value, 0.0, "blocked: abuse history"))
                shaped.append("abuse_history_block")
                continue
            goodwill = ap.goodwill_credit
            cap = g.max_goodwill_share_of_margin * max(f["margin"], 0.0)
            if goodwill > cap:
                goodwill, note = cap, f"goodwill capped at {cap:.2f}"
                shaped.append("goodwill_cap")
            cost = ap.message_cost + goodwill + ap.label_cost
            ev = ap.lift * p_lost * value_at_risk - cost
        ev = round(ev, 2)
        candidates.append((action.value, ev, note))
        if action is Action.HUMAN_REVIEW and review_forced:
            forced = (ev, cost)
        if ev > 0 and (best is None or ev > best[0]):
            best = (ev, action, cost)
    if forced is not None:
        # the guardrail decides, not the EV ranking (config.py keeps human_review enabled)
        best = (forced[0], Action.HUMAN_REVIEW, forced[1])
    if best is None:
        return None
    ev, action, cost = best
    if action is Action.HUMAN_REVIEW or ev >= 50:
        priority = Priority.HIGH
    elif ev >= 10:
        priority = Priority.NORMAL
    else:
        priority = Priority.LOW
    if f["urgent_contacts_7d"] and priority is not Priority.HIGH:
        priority = Priority.HIGH
    return Decision(
        action=action,
        expected_value=ev,
        cost=round(cost, 2),
        priority=priority,
        reason_codes=tuple(reasons(f, abuse, rec, policy)),
        ttl_hours=policy.actions[action].ttl_hours,
        candidates=tuple(candidates),
        guardrails=tuple(dict.fromkeys(shaped)),
        fx=fx,
    )


def _routed(f: dict[str, float], g, rec: float, abuse: float, high_value: bool) -> bool:
    """Does the review guardrail route this update to human review: an open claim (a return, or
    "where is my order" after delivery) at or above the abuse threshold, from a customer with an
    abuse history, or of high value (``high_value``) with ambiguous recoverability?"""
    if not (f["return_requested"] or f["wismo_after_delivered"]):
        return False
    ambiguous = g.ambiguity_band[0] <= rec <= g.ambiguity_band[1]
    return bool(abuse >= g.abuse_block or _abuse_history(f, g) or (high_value and ambiguous))


def _unpriced(policy: Policy, f: dict[str, float], scores, currency: str) -> Decision | None:
    """The decision for an order in a currency the policy has no rate for: nothing is priced
    (its value is not compared with any threshold, no EV is computed) and nothing is offered
    automatically. What needs no money is decided as usual: a decision is made where
    :func:`decide` could make one on some value of the order (an open claim at or above the
    abuse threshold, with an abuse history, or with ambiguous recoverability, whatever its value
    might be; or an enabled action's rule holding on the features as they are), and it is a
    human review (reason code and guardrail ``no_fx_rate``; every customer-facing candidate
    "blocked: no fx rate"), a forced one (never held out nor budgeted away), EV 0.0: an agent
    prices it. Nothing is decided where no rule holds and no claim could be routed.

    >>> from salvage.features.customer import CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> from salvage.policy.config import load_policy
    >>> from salvage.scoring.baseline import ScoreResult
    >>> f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    >>> f |= {"order_value": 30000.0, "margin": 18000.0, "margin_rate": 0.6,
    ...       "return_requested": 1.0, "return_share": 1.0, "reason_fit": 1.0}
    >>> d = decide(load_policy(), f, ScoreResult(0.7, 0.02, "rules-v1"), resolved=False,
    ...            currency="BRL")
    >>> d.action.value, d.expected_value, d.cost, d.fx, d.guardrails
    ('human_review', 0.0, 6.0, ('BRL', None), ('review_routing', 'no_fx_rate'))
    >>> d.candidates  # doctest: +NORMALIZE_WHITESPACE
    (('exchange_first_offer', 0.0, 'blocked: no fx rate'),
     ('human_review', 0.0, 'routed by guardrail'))
    """
    g = policy.guardrails
    rec, abuse = scores.recoverability, scores.abuse
    x = {**f, "recoverability": rec, "abuse": abuse}
    routed = _routed(f, g, rec, abuse, True)  # (its value is unknown: it could be high)
    rules = _compiled(policy)[1]
    candidates: list[tuple[str, float, str]] = []
    review_rule = False
    for action, ap in policy.actions.items():
        if not ap.enabled or not holds(rules[action], x):
            continue
        if action is Action.HUMAN_REVIEW:
            review_rule = True
        else:
            candidates.append((action.value, 0.0, "blocked: no fx rate"))
    if not (routed or review_rule or candidates):
        return None
    review = policy.actions[Action.HUMAN_REVIEW]
    candidates.append(
        (Action.HUMAN_REVIEW.value, 0.0, "" if review_rule else "routed by guardrail")
    )
    codes = [c for c in reasons(f, abuse, rec, policy) if c != "high_value"]  # value: unknown
    return Decision(
        action=Action.HUMAN_REVIEW,
        expected_value=0.0,
        cost=round(review.cost, 2),
        priority=Priority.HIGH,
        reason_codes=(*codes, "no_fx_rate"),
        ttl_hours=review.ttl_hours,
        candidates=tuple(candidates),
        guardrails=("review_routing", "no_fx_rate"),
        fx=(currency, None),
    )
