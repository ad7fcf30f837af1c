"""Item payloads shared by the sources and the stages (plain Python, no Bytewax)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from salvage.connectors.outputs import DeadLetter
from salvage.fastpickle import fast_pickle


@fast_pickle
@dataclass(frozen=True, slots=True)
class Overdue:
    """An event more than ``max_lateness`` behind its partition's watermark.

    The source does not dead-letter it on the spot: it travels to its case shard at the
    partition's watermark so that a redelivery of an event already applied is recognised as a
    duplicate first (a re-published log is deduplicated, not ``too_late``). Anything else
    becomes ``letter`` (kind ``too_late``) there."""

    event: Any
    letter: DeadLetter

    @property
    def order_id(self) -> str:
        return self.event.order_id

    @property
    def event_id(self) -> str:
        return self.event.event_id
