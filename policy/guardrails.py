"""The guardrails that need memory: once per order, contact caps, daily budgets.

Pure functions over what the dispatch stage remembers (the stage owns the state and its
snapshots; this module owns the rules). The stateless guardrails (abuse block, review routing,
goodwill cap) are part of :func:`salvage.policy.engine.decide`.

>>> from salvage.policy.config import load_policy
>>> from salvage.connectors.outputs import Action
>>> policy = load_policy()
>>> day = 86_400_000_000
>>> reassure = Action.PROACTIVE_REASSURANCE
>>> check(policy, reassure, 0.1, 10 * day, sent=(), contacts=(), spent_today=0.0, shards=1)
''
>>> check(policy, reassure, 0.1, 10 * day, sent=("proactive_reassurance",), contacts=(),
...       spent_today=0.0, shards=1)
'once_per_order'
>>> cap = policy.guardrails.contact_cap_24h
>>> check(policy, reassure, 0.1, 10 * day, sent=(), contacts=[10 * day - 1] * cap,
...       spent_today=0.0, shards=1)
'contact_cap_24h'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from salvage.connectors.outputs import Action
from salvage.features.eventtime import DAY_US
from salvage.policy.config import Policy
from salvage.policy.engine import CUSTOMER_FACING

CONTACT_CAP_30D_US = 30 * DAY_US


def contacts_within(contacts: Iterable[int], t: int, window_us: int) -> int:
    """How many of our outbound contacts fell in ``(t - window_us, t]``."""
    return sum(1 for c in contacts if t - window_us < c <= t)


def check(
    policy: Policy,
    action: Action,
    cost: float,
    t: int,
    *,
    sent: Iterable[str],
    contacts: Sequence[int],
    spent_today: float,
    shards: int,
    forced: bool = False,
) -> str:
    """The stateful guardrails, in order; returns the one that suppresses ``action`` at ``t``,
    or ''. ``sent``: actions already triggered for the order; ``contacts``: the customer's
    outbound contact times; ``spent_today``: this shard's spend on ``action`` on t's event-time
    day. ``forced``: a forced review, which no daily budget suppresses (once per order still
    applies). The daily budget is split evenly over the ``shards`` dispatch shards
    (deterministic whatever the interleaving)."""
    g = policy.guardrails
    if action.value in sent:
        return "once_per_order"
    if action in CUSTOMER_FACING:
        if contacts_within(contacts, t, DAY_US) >= g.contact_cap_24h:
            return "contact_cap_24h"
        if contacts_within(contacts, t, CONTACT_CAP_30D_US) >= g.contact_cap_30d:
            return "contact_cap_30d"
    budget = policy.actions[action].budget_per_day
    if budget is not None and not forced and spent_today + cost > budget / shards:
        return "daily_budget"
    return ""
