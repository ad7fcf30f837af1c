"""Human review queue on a Redis Stream with a consumer group.

* The dataflow enqueues every ``human_review`` trigger (``enqueue_many``). Enqueueing is idempotent
  on ``trigger_id`` (a Lua script checks a set before ``XADD``), so replays and restarts never
  queue a case twice.
* Reviewers ``claim`` entries through the consumer group ``reviewers`` (``XREADGROUP``; an entry
  claimed by nobody stays new; one claimed and abandoned can be re-claimed after a timeout with
  ``XAUTOCLAIM``), and ``resolve`` them with a verdict: approve, deny or abuse_confirmed. Resolving
  checks the entry is still claimed (pending), hands the ``review_resolved`` event to a
  ``publish`` callable (the CLI produces it to the returns topic and flushes, so the case and the
  abuse model learn from it) and acknowledges the entry (``XACK``) only once that returned: a
  failed publish leaves the review claimed, and resolving it again is safe (the event id is
  deterministic, ``review-<trigger_id>``, and the pipeline drops repeated event ids).
* ``depth`` tells, with three cheap Redis calls (``XINFO GROUPS``, the ``XPENDING`` summary and
  one ``XRANGE ... COUNT 1``, whatever the stream's length), how many reviews are unclaimed (after
  the group's last-delivered id), how many are claimed (pending: delivered, not acknowledged) and
  the age of the oldest unresolved one; ``stats`` adds how many waited past a deadline.
* The sink exports those as ``salvage_review_queue_depth{state}`` and
  ``salvage_review_queue_oldest_age_seconds`` after every write batch, on a low-frequency timer
  (reviewers claim and resolve from other processes) and when it closes.

Outages in the dataflow (:class:`RedisReviewSink`) are handled as the case store handles them
(``salvage.sinks.redis_store``, same transient errors): the flow keeps processing, and each worker
keeps
a **backlog** of the triggers Redis has not accepted (one per ``trigger_id``; gauge
``salvage_review_queue_backlog``, failed attempts ``salvage_review_queue_write_failures_total``),
retried at most every ``retry_interval_seconds`` (doubling up to 10 s); the first success enqueues
it all (and re-creates the consumer group if the Redis came back empty). Past ``max_backlog``
triggers the sink raises :class:`ReviewQueueUnavailable` and the dataflow stops loudly; at the end
of the flow the backlog is flushed for up to ``flush_budget_seconds``, and a failure then stops it
loudly too. Never silently dropped; as for the case store, the backlog lives in memory (a SIGKILL
during an outage loses what is older than the last snapshot, see the README's recovery section).
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge

from salvage.connectors.events import REVIEWER_ID_PATTERN, Stream
from salvage.connectors.outputs import DeadLetter
from salvage.connectors.parse import RawRecord, parse
from salvage.sinks import metrics

# the case store's outage handling: a bounded backlog retried with backoff (a wrong password is a
# configuration error, not an outage)
from salvage.sinks.redis_store import OutageBacklog

log = logging.getLogger(__name__)

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

VERDICTS = ("approve", "deny", "abuse_confirmed")
_ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")

BACKLOG = Gauge(
    "salvage_review_queue_backlog",
    "Review triggers waiting for Redis (not yet enqueued), per sink worker",
    ["worker"],
)
WRITE_FAILURES = Counter(
    "salvage_review_queue_write_failures",
    "Review-queue enqueue attempts that failed with a transient Redis error",
)
DEFAULT_MAX_BACKLOG = 100_000


class ReviewError(ValueError):
    """A review cannot be resolved: bad verdict or entry id, no such review, not claimed."""


class ReviewQueueUnavailable(RuntimeError):
    """Redis stayed down past the sink's backlog bound or its final flush budget."""


@dataclass(frozen=True)
class Review:
    entry_id: str
    trigger_id: str
    order_id: str
    doc: dict[str, Any]
    enqueued_at: float  # wall-clock seconds (from the stream id)

    def age_seconds(self, now: float | None = None) -> float:
        return (now or time.time()) - self.enqueued_at


@dataclass(frozen=True)
class QueueDepth:
    """Unresolved reviews: ``unclaimed`` (never delivered to a reviewer), ``claimed`` (delivered,
    not resolved), the oldest one's entry id and wall-clock age (0 when there is none)."""

    unclaimed: int
    claimed: int
    oldest_id: str | None
    oldest_age_seconds: float
    last_delivered_id: str = "0-0"

    @property
    def depth(self) -> int:
        return self.unclaimed + self.claimed


SOCKET_TIMEOUT_S = 5.0


def check_reviewer(reviewer: str) -> None:
    """A reviewer is an internal id (the ``review_resolved`` contract's pattern), never a name."""
    if not isinstance(reviewer, str) or not re.fullmatch(REVIEWER_ID_PATTERN, reviewer):
        raise ReviewError(
            f"reviewer must be an id matching {REVIEWER_ID_PATTERN} (letters, digits, . _ -; "
            f"not a name or an email), not {reviewer!r}"
        )


def validate_event(event: dict[str, Any]) -> str | None:
    """Parse ``event`` exactly as the pipeline parses the returns topic: ``None`` if accepted,
    else the dead letter's kind and message."""
    raw = RawRecord("review", 0, 0, json.dumps(event).encode(), Stream.RETURNS)
    got = parse(raw)
    if isinstance(got, DeadLetter):
        return f"{got.kind.value}: {got.message}"
    return None


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ReviewQueue:
    def __init__(
        self,
        url: str,
        password: str | None = None,
        stream: str = STREAM,
        group: str = GROUP,
        *,
        create_group: bool = True,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> None:
        # bounded: the gauges are refreshed from a timer thread, which must never hang on Redis
        # Any: redis-py types every reply as its sync/async union
        self.redis: Any = redis.Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
        self.stream, self.group, self.seen = stream, group, f"{stream}:seen"
        self._enqueue = self.redis.register_script(_ENQUEUE)
        if create_group:  # the sink creates it on its first write instead (Redis may be down)
            self.ensure_group()

    def ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist."""
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
        """Every queued review not yet resolved (claimed or not), oldest first: the group's
        pending entries and the entries after its last-delivered id (never the whole stream)."""
        info = self._group_info()
        last = info.get("last-delivered-id") or "0-0"
        pending = self.redis.xpending_range(self.stream, self.group, "-", "+", count)
        pipe = self.redis.pipeline(transaction=False)
        for p in pending:
            pipe.xrange(self.stream, min=p["message_id"], max=p["message_id"])
        claimed = [e for found in (pipe.execute() if pending else []) for e in found]
        new = self.redis.xrange(self.stream, min=f"({last}", max="+", count=count)
        entries = sorted(claimed + list(new), key=lambda e: _id_key(e[0]))[:count]
        return [self._review(i, f) for i, f in entries]

    def _group_info(self) -> dict[str, Any]:
        for g in self.redis.xinfo_groups(self.stream):
            if g["name"] == self.group:
                return g
        return {}

    def claim(
        self, reviewer: str, count: int = 1, reclaim_after_s: float = 3600
    ) -> builtins.list[Review]:
        """Give ``reviewer`` the oldest abandoned reviews (claimed > reclaim_after_s ago and not
        resolved), else new ones."""
        check_reviewer(reviewer)
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
        self,
        entry_id: str,
        verdict: str,
        reviewer: str,
        *,
        publish: Callable[[dict[str, Any]], object],
        now: datetime | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Resolve a claimed review: ``publish`` its ``review_resolved`` event, then acknowledge it.

        ``publish`` must return only once the event is delivered (produced and flushed) and raise
        otherwise: the entry is acknowledged (``XACK``) after it returned, so a failed publish
        leaves the review claimed for a retry. Returns the event.

        Only the reviewer who claimed it resolves it (``force`` overrides). The event is
        validated with the pipeline's own parser before anything is published or acknowledged.

        :raises ReviewError: bad verdict, reviewer id or entry id, no such review, not claimed
            (never claimed, or already resolved), claimed by another reviewer, or an event the
            pipeline would dead-letter; also when someone else resolved it while ``publish``
            ran (both events carry the same event id: the pipeline keeps the first).
        """
        if verdict not in VERDICTS:
            raise ReviewError(f"verdict must be approve, deny or abuse_confirmed, not {verdict!r}")
        check_reviewer(reviewer)
        if not _ENTRY_ID.fullmatch(entry_id):
            raise ReviewError(
                f"{entry_id!r} is not a review entry id (like 1712345678901-0, from `claim`)"
            )
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(self.stream, min=entry_id, max=entry_id)
        pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        try:
            entries, pending = pipe.execute()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            raise ReviewError(f"no review {entry_id} (the review stream has no group)") from exc
        if not entries:
            raise ReviewError(f"no review {entry_id}")
        if not pending:
            raise ReviewError(f"review {entry_id} is not claimed (claim it first) or already done")
        claimant = pending[0].get("consumer")
        claimant = claimant.decode() if isinstance(claimant, bytes) else claimant
        if claimant != reviewer and not force:
            raise ReviewError(
                f"review {entry_id} is claimed by {claimant}, not {reviewer}: only the claimant "
                f"resolves it (--force overrides)"
            )
        review = self._review(*entries[0])
        at = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        event = {
            "event_id": f"review-{review.trigger_id}",
            "event_type": "review_resolved",
            "order_id": review.order_id,
            "occurred_at": at,
            "schema_version": 1,
            "review_id": review.trigger_id,
            "verdict": verdict,
            "reviewer": reviewer,
        }
        rejected = validate_event(event)
        if rejected is not None:
            raise ReviewError(f"the pipeline would reject this verdict event: {rejected}")
        publish(event)
        if not self.redis.xack(self.stream, self.group, entry_id):
            raise ReviewError(
                f"review {entry_id} was resolved by someone else meanwhile; this verdict was "
                f"published too, with the same event id {event['event_id']} (the first one counts)"
            )
        return event

    def depth(self, now: float | None = None) -> QueueDepth:
        """Unclaimed / claimed counts and the oldest unresolved review, in O(1) Redis work.

        Entries are delivered in id order, so the unclaimed ones are exactly those after the
        group's last-delivered id (``XINFO GROUPS`` counts them as the group's ``lag``); claimed
        ones are the group's pending entries (the ``XPENDING`` summary gives their count and
        smallest id). The oldest unresolved review is the older of the smallest pending id and
        the first entry after the last-delivered id."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.xpending(self.stream, self.group)
        try:
            groups, pending = pipe.execute()
        except redis.ResponseError:  # the stream or the group is gone (deleted): nothing queued
            return QueueDepth(0, 0, None, 0.0)
        info = next((g for g in groups if g["name"] == self.group), None)
        if info is None:
            return QueueDepth(0, 0, None, 0.0)
        last = info.get("last-delivered-id") or "0-0"
        lag = info.get("lag")
        if lag is None:  # Redis cannot tell (entries deleted from the middle): count them
            lag = len(self.redis.xrange(self.stream, min=f"({last}", max="+"))
        unclaimed, claimed = int(lag), int(pending.get("pending") or 0)
        candidates = [pending["min"]] if claimed and pending.get("min") else []
        if unclaimed:
            first = self.redis.xrange(self.stream, min=f"({last}", max="+", count=1)
            if first:
                candidates.append(first[0][0])
        oldest = min(candidates, key=_id_key) if candidates else None
        age = max(0.0, now - _id_key(oldest)[0] / 1000) if oldest else 0.0
        return QueueDepth(unclaimed, claimed, oldest, age, last)

    def stats(self, deadline_s: float, now: float | None = None) -> dict[str, float]:
        """Depth (unresolved), unclaimed, claimed, overdue (unclaimed past the deadline), oldest
        age. Cheap (see :meth:`depth`) but for ``overdue``, which reads the overdue entries."""
        now = time.time() if now is None else now
        d = self.depth(now)
        overdue = 0
        if d.unclaimed:
            cutoff_ms = math.ceil((now - deadline_s) * 1000)  # enqueued before: age > deadline
            overdue = len(
                self.redis.xrange(self.stream, min=f"({d.last_delivered_id}", max=f"({cutoff_ms}-0")
            )
        return {
            "depth": float(d.depth),
            "unclaimed": float(d.unclaimed),
            "claimed": float(d.claimed),
            "overdue": float(overdue),
            "oldest_age_seconds": d.oldest_age_seconds,
        }

    def export_gauges(self, now: float | None = None) -> QueueDepth:
        """Set ``salvage_review_queue_depth{state}`` and ``..._oldest_age_seconds``."""
        d = self.depth(now)
        metrics.REVIEW_QUEUE_DEPTH.labels("unclaimed").set(d.unclaimed)
        metrics.REVIEW_QUEUE_DEPTH.labels("claimed").set(d.claimed)
        metrics.REVIEW_QUEUE_OLDEST_AGE.set(d.oldest_age_seconds)
        return d


class _ReviewPartition(StatelessSinkPartition[dict]):
    """Enqueues, then refreshes the queue gauges; a daemon thread refreshes them every
    ``refresh_s`` too (age grows, reviewers claim and resolve from other processes). During a
    Redis outage, buffers the triggers and retries (see the module docstring)."""

    def __init__(
        self,
        queue: ReviewQueue,
        refresh_s: float,
        worker: str = "0",
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        retry_interval: float = 0.5,
        flush_budget: float = 30.0,
    ) -> None:
        self.queue = queue
        self._warned = False
        # trigger_id -> trigger, not yet accepted by Redis
        self._pending: OutageBacklog[dict] = OutageBacklog(
            ("Redis review queue", "review triggers"),
            BACKLOG.labels(worker),
            WRITE_FAILURES,
            ReviewQueueUnavailable,
            max_backlog,
            retry_interval,
        )
        self._flush_budget = flush_budget
        self._group_ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()
        if refresh_s > 0:
            self._thread = threading.Thread(
                target=self._every, args=(refresh_s,), name="salvage-review-gauges", daemon=True
            )
            self._thread.start()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def refresh(self) -> None:
        try:
            self.queue.export_gauges()
            self._warned = False
        except redis.RedisError as exc:  # gauges only: never fail the flow for them
            if not self._warned:  # once per outage
                self._warned = True
                log.warning("review queue gauges not refreshed (Redis: %s)", exc)

    def _every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.refresh()

    def write_batch(self, items: list[dict]) -> None:
        pending = self._pending
        for trig in items:  # enqueueing is idempotent on trigger_id: one copy is enough
            pending.items[trig["trigger_id"]] = trig
        if pending.due():
            self._flush()
        pending.bounded()

    def _enqueue(self) -> None:
        try:
            if not self._group_ready:  # first write, or Redis is back (possibly empty)
                self.queue.ensure_group()
                self._group_ready = True
            self.queue.enqueue_many(self._pending.items.values())
        except redis.RedisError:
            self._group_ready = False
            raise

    def _flush(self) -> bool:
        """One attempt to enqueue the whole backlog; whether it is now empty."""
        if not self._pending.attempt(self._enqueue):
            return False
        self.refresh()
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        pending = self._pending
        try:
            if pending.items and pending.failed:
                log.error("%d review triggers not queued (Redis unavailable)", len(pending))
            elif pending.items:
                self._flush_before_close()  # then loud if Redis stays down
            else:
                self.refresh()
        finally:
            self.queue.redis.close()

    def _flush_before_close(self) -> None:
        self._pending.drain(self._enqueue, self._flush_budget, "queued")
        self.refresh()


class RedisReviewSink(DynamicSink[dict]):
    """Bytewax sink: human_review triggers (as dicts) into the review stream; exports the queue's
    depth and oldest age (``refresh_s``: the timer; 0 refreshes only after writes and at close).
    During an outage each worker buffers up to ``max_backlog`` triggers, retries every
    ``retry_interval_seconds`` and, when the flow ends, for up to ``flush_budget_seconds``."""

    def __init__(
        self,
        url: str,
        password: str | None = None,
        stream: str = STREAM,
        refresh_s: float = 15.0,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        retry_interval_seconds: float = 0.5,
        flush_budget_seconds: float = 30.0,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> None:
        if max_backlog < 1:
            raise ValueError("max_backlog must be >= 1")
        self.url, self.password, self.stream = url, password, stream
        self.socket_timeout = socket_timeout
        self.refresh_s = refresh_s
        self.max_backlog = max_backlog
        self.retry_interval_seconds = retry_interval_seconds
        self.flush_budget_seconds = flush_budget_seconds
        # fail at flow-build time on a bad URL, not inside a worker (no Redis call)
        ReviewQueue(url, password, stream=stream, create_group=False).redis.close()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ReviewPartition:
        # no Redis call here: the flow starts (and buffers) even while Redis is down
        queue = ReviewQueue(
            self.url,
            self.password,
            stream=self.stream,
            create_group=False,
            socket_timeout=self.socket_timeout,
        )
        return _ReviewPartition(
            queue,
            # one timer per process is enough (the gauges are process-wide): worker 0 runs it
            self.refresh_s if worker_index == 0 else 0.0,
            worker=str(worker_index),
            max_backlog=self.max_backlog,
            retry_interval=self.retry_interval_seconds,
            flush_budget=self.flush_budget_seconds,
        )
