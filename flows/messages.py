"""What flows between the sources, the keyed stages and the sinks: typed, immutable items.

Plain Python (no Bytewax). A source partition emits :class:`Event` (one validated event at its
effective event time), :class:`Tick` (its watermark) and :class:`~salvage.connectors.outputs.
DeadLetter` items. A stage receives :class:`Batch` (many data items for one shard), :class:`Event`
and :class:`Tick` items, and emits ``(Route, payload)`` pairs: data routes carry
``(destination key, item)`` to the next stage, the others a payload for a sink.

``Event``, ``Tick`` and ``Batch`` are ``NamedTuple``\\ s: typed and immutable, at a plain tuple's
cost on the hot path (a million of them per second). A data item inside a batch is a plain
``(t, tiebreak, payload)`` triple: it goes straight into the stage's reorder heap.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from salvage.fastpickle import fast_pickle
from salvage.flows.items import Overdue

__all__ = [
    "Batch",
    "CaseView",
    "Emit",
    "Event",
    "InferredContact",
    "Overdue",
    "Route",
    "Tick",
]


class Route(StrEnum):
    """Where a stage's output goes. The first six feed the next keyed stage (payload
    ``(dest_key, item)``); ``TICK`` is a watermark broadcast to every shard of the next stages;
    the rest go to sinks or taps.

    A ``StrEnum``: each route equals its string (what ``Emit`` pairs and tests compare with):

    >>> Route.CASES == "case", Route("dlq") is Route.DEAD_LETTER, f"{Route.TICK}"
    (True, True, 'tick')
    >>> [r.value for r in Route][:6]
    ['case', 'ctx', 'model', 'disp', 'lane', 'out']
    """

    CASES = "case"  # intent stage -> case shards
    CONTEXT = "ctx"  # cases -> customer context
    MODELS = "model"  # context -> model shards
    DISPATCH = "disp"  # models -> dispatch (policy, guardrails)
    LANES = "lane"  # cases -> lane monitors
    OUTPUT = "out"  # dispatch, lanes, cases -> the ordered output stage
    TICK = "tick"  # a stage's low watermark moved
    DEAD_LETTER = "dlq"  # a dead letter (the case stage's)
    CASE_RECORD = "case_record"  # a case-store document (dispatch)
    KPI = "kpi"  # a KPI fact (context, dispatch): Prometheus counters
    SCORE = "score"  # a per-prediction log record (benchmarks)
    MODEL_STATE = "model_state"  # a model shard's checkpoint (flows/model_sink.py)
    TRIGGER = "trigger"  # Kafka mode: a trigger, published from its dispatch shard (direct)


class Event(NamedTuple):
    """One data item: a payload at its effective event time ``t`` (µs), ordered by ``tie``
    among equal times (a source's tie is ``event_id|v<crc32>`` of the event's content).

    >>> ev = Event(t=1_000, tie="e1|12345", payload={"order_id": "o1"})
    >>> ev.t, ev.tie, ev.payload["order_id"]
    (1000, 'e1|12345', 'o1')
    >>> ev == (1_000, "e1|12345", {"order_id": "o1"})  # a plain tuple underneath
    True
    >>> sorted([Event(5, "b", None), Event(5, "a", None), Event(1, "z", None)])[0].tie
    'z'
    >>> ev.t = 0  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    AttributeError: can't set attribute
    """

    t: int
    tie: str
    payload: Any


class Tick(NamedTuple):
    """Upstream ``source`` (an input partition or a stage shard) has passed ``watermark``; the
    latest event time it has seen is ``seen`` (both µs).

    >>> Tick("orders:0", watermark=990, seen=1_000)
    Tick(source='orders:0', watermark=990, seen=1000)
    """

    source: str
    watermark: int
    seen: int


class Batch(NamedTuple):
    """Many data items for one shard: ``(t, tie, payload)`` triples."""

    items: list[tuple[int, str, Any]]


Emit = list[tuple[Route, Any]]


@fast_pickle
@dataclass(frozen=True, slots=True)
class CaseView:
    """What the case stage tells the customer stage about one update of one order."""

    order_id: str
    customer_id: str
    t: int
    source_id: str
    changes: tuple[str, ...]
    # the case's features at t: OrderCase.values (CASE_FEATURES order), or for a settled case's
    # late fact a dict of the few it has
    features: tuple[float, ...] | dict[str, float]
    status: str
    outcome: str | None
    lane: str
    campaign: str
    sku_family: str
    currency: str
    order_value: float
    refunded_amount: float
    returned: bool
    abuse_flags: tuple[str, ...]
    facts: dict | None = None  # the case's scalar facts, on the closing update only
    grade: str = ""
    return_value: float = 0.0
    received_at: int = 0


@fast_pickle
@dataclass(frozen=True, slots=True)
class InferredContact:
    """A support contact on its way from the intent stage to its case shard; ``intent`` is the
    inferred one (None when the contact carries an agent-set intent)."""

    event: Any
    intent: str | None
