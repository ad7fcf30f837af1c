"""Human review queue on a Redis Stream with a consumer group.

* The dataflow enqueues every ``human_review`` trigger (``enqueue_many``). Enqueueing is idempotent
  on ``trigger_id`` (a Lua script checks a set before ``XADD``), so replays and restarts never
  queue a case twice.
* Reviewers ``claim`` entries through the consumer group ``reviewers`` (``XREADGROUP``; an entry
  claimed by nobody stays new; one claimed and abandoned can be re-claimed after a timeout with
  ``XAUTOCLAIM``), and ``resolve`` them with a verdict: approve, deny or abuse_confirmed. The
  resolution is acknowledged (``XACK``) and returned as a ``review_resolved`` event for the returns
  topic, so the case and the abuse model learn from it.
* ``stats`` tells the depth, how many are unclaimed, and how many waited past the deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

STREAM = "salvage:reviews"
GROUP = "reviewers"
SEEN = "salvage:reviews:seen"

_ENQUEUE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'trigger_id', ARGV[1], 'order_id', ARGV[2], 'doc', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Review:
    entry_id: str
    trigger_id: str
    order_id: str
    doc: dict[str, Any]
    enqueued_at: float  # wall-clock seconds (from the stream id)

    def age_seconds(self, now: float | None = None) -> float:
        return (now or time.time()) - self.enqueued_at


class ReviewQueue:
    def __init__(
        self, url: str, password: str | None = None, stream: str = STREAM, group: str = GROUP
    ) -> None:
        self.redis = redis.Redis.from_url(url, password=password, decode_responses=True)
        self.stream, self.group, self.seen = stream, group, f"{stream}:seen"
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._ensure_group()

    def _ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------- producer side
    def enqueue_many(self, triggers: Iterable[dict[str, Any]]) -> int:
        """Queue review triggers (dicts of the Trigger contract); returns how many were new."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for trig in triggers:
            self._enqueue(
                keys=[self.stream, self.seen],
                args=[trig["trigger_id"], trig["order_id"], json.dumps(trig, sort_keys=True)],
                client=pipe,
            )
            n += 1
        return sum(int(x) for x in pipe.execute()) if n else 0

    # ---------------------------------------------------------------- reviewer side
    @staticmethod
    def _review(entry_id: str, fields: dict[str, str]) -> Review:
        return Review(
            entry_id=entry_id,
            trigger_id=fields["trigger_id"],
            order_id=fields["order_id"],
            doc=json.loads(fields["doc"]),
            enqueued_at=int(entry_id.split("-")[0]) / 1000,
        )

    def list(self, count: int = 100) -> list[Review]:
        """Every queued review not yet resolved (claimed or not), oldest first."""
        resolved = self._acked()
        entries = self.redis.xrange(self.stream, count=count + len(resolved))
        out = [self._review(i, f) for i, f in entries if i not in resolved]
        return out[:count]

    def _acked(self) -> set[str]:
        """Entries delivered and acknowledged: everything delivered minus the pending ones."""
        info = self._group_info()
        last = info.get("last-delivered-id", "0-0")
        pending = {p["message_id"] for p in self._pending()}
        delivered = self.redis.xrange(self.stream, max=last) if last != "0-0" else []
        return {i for i, _ in delivered} - pending

    def _pending(self) -> list[dict]:
        return self.redis.xpending_range(self.stream, self.group, "-", "+", 10_000)

    def _group_info(self) -> dict[str, Any]:
        for g in self.redis.xinfo_groups(self.stream):
            if g["name"] == self.group:
                return g
        return {}

    def claim(self, reviewer: str, count: int = 1, reclaim_after_s: float = 3600) -> list[Review]:
        """Give ``reviewer`` the oldest abandoned reviews (claimed > reclaim_after_s ago and not
        resolved), else new ones."""
        _, stale, _ = self.redis.xautoclaim(
            self.stream, self.group, reviewer, int(reclaim_after_s * 1000), "0-0", count=count
        )
        got = [self._review(i, f) for i, f in stale if f]
        if len(got) < count:
            resp = self.redis.xreadgroup(
                self.group, reviewer, {self.stream: ">"}, count=count - len(got)
            )
            for _, entries in resp or []:
                got += [self._review(i, f) for i, f in entries]
        return got

    def resolve(
        self, entry_id: str, verdict: str, reviewer: str, now: datetime | None = None
    ) -> dict[str, Any]:
        """Acknowledge a claimed review; return the ``review_resolved`` event to publish."""
        if verdict not in ("approve", "deny", "abuse_confirmed"):
            raise ValueError(f"verdict must be approve, deny or abuse_confirmed, not {verdict!r}")
        entries = self.redis.xrange(self.stream, min=entry_id, max=entry_id)
        if not entries:
            raise KeyError(f"no review {entry_id}")
        review = self._review(*entries[0])
        if not self.redis.xack(self.stream, self.group, entry_id):
            raise ValueError(f"review {entry_id} is not claimed (claim it first) or already done")
        at = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        return {
            "event_id": f"review-{review.trigger_id}",
            "event_type": "review_resolved",
            "order_id": review.order_id,
            "occurred_at": at,
            "schema_version": 1,
            "review_id": review.trigger_id,
            "verdict": verdict,
            "reviewer": reviewer,
        }

    def stats(self, deadline_s: float, now: float | None = None) -> dict[str, float]:
        """Depth (unresolved), unclaimed, overdue (unclaimed past the deadline), oldest age."""
        now = now or time.time()
        open_reviews = self.list(count=10_000)
        pending = {p["message_id"] for p in self._pending()}
        unclaimed = [r for r in open_reviews if r.entry_id not in pending]
        return {
            "depth": float(len(open_reviews)),
            "unclaimed": float(len(unclaimed)),
            "overdue": float(sum(1 for r in unclaimed if r.age_seconds(now) > deadline_s)),
            "oldest_age_seconds": max((r.age_seconds(now) for r in open_reviews), default=0.0),
        }


class _ReviewPartition(StatelessSinkPartition[dict]):
    def __init__(self, queue: ReviewQueue) -> None:
        self.queue = queue

    def write_batch(self, items: list[dict]) -> None:
        self.queue.enqueue_many(items)

    def close(self) -> None:
        self.queue.redis.close()


class RedisReviewSink(DynamicSink[dict]):
    """Bytewax sink: human_review triggers (as dicts) into the review stream."""

    def __init__(self, url: str, password: str | None = None, stream: str = STREAM) -> None:
        self.url, self.password, self.stream = url, password, stream

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ReviewPartition:
        return _ReviewPartition(ReviewQueue(self.url, self.password, stream=self.stream))
