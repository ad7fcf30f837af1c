"""Anonymous customers (README "Anonymous customers"): customer ids that name nobody, and the
customer id an order placed under one goes by. No imports beyond the standard library: the
settings read the default list at start-up."""

from __future__ import annotations

import hashlib

# customer ids that name nobody in particular: a guest checkout, a marketplace's placeholder, a
# data error (matched case-insensitively; ``SALVAGE_ANONYMOUS_CUSTOMER_IDS`` replaces the list)
ANONYMOUS_CUSTOMER_IDS: tuple[str, ...] = (
    "guest",
    "anonymous",
    "anon",
    "unknown",
    "none",
    "null",
    "nil",
    "n/a",
    "0",
    "-",
)
_MAX_ID = 128  # an id's length in the event and output contracts (connectors.events.Id)


def anonymous_customer(customer_id: str, order_id: str, anonymous: frozenset[str]) -> str:
    """The customer id an order's case goes by: its own, unless it is a placeholder (``anonymous``
    holds them lower-cased), which many strangers share; then one of the order's own, so that no
    stranger inherits another's history (orders, returns, abuse flags, claims, chargebacks), and
    no per-customer cap on contacts counts another's messages (README "Anonymous customers").

    >>> anon = frozenset(ANONYMOUS_CUSTOMER_IDS)
    >>> anonymous_customer("C0042", "O1", anon), anonymous_customer("Guest", "O1", anon)
    ('C0042', 'Guest~O1')
    >>> anonymous_customer("guest", "O" * 128, anon)  # within the contracts' 128 characters
    'guest~1ab864fb06dfd815550c08943af08fdf'
    """
    if customer_id.lower() not in anonymous:
        return customer_id
    key = f"{customer_id}~{order_id}"
    if len(key) > _MAX_ID:  # a long order id: its digest (distinct orders, distinct ids)
        digest = hashlib.blake2b(order_id.encode(), digest_size=16).hexdigest()
        key = f"{customer_id[:16]}~{digest}"
    return key
