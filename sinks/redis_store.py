"""Redis case store: the latest state of each order case, written idempotently.

Each case is a hash at ``salvage:case:{order_id}`` with fields ``v`` (the case version, an integer
that grows with every update of the case) and ``doc`` (the case as JSON), and a TTL. A batch is
written as its latest record per order; a record may come as JSON (dispatch serialises with
orjson, see :mod:`salvage.sinks.case_doc`) or as a dict, serialised then, for that one only.
A write only applies if its version is >= the stored one (a Lua script, atomic per key), so:

- replaying older states after a restart (Bytewax resumes from the last snapshot, so the sink sees
  some updates again) never regresses the store;
- writing the same record twice leaves the same state (equal versions overwrite; the TTL restarts).

Transient outages (connection refused/reset, timeouts, a server still loading, a replica that just
lost its primary): :meth:`CaseStore.write_many` retries with capped exponential backoff for a
bounded time, then raises :class:`CaseStoreUnavailable`.

Outages in the dataflow (:class:`RedisCaseSink`): the flow keeps processing. Each worker keeps a
**backlog** of the latest record per order that Redis has not acknowledged (so its size is bounded
by the number of distinct orders touched during the outage, and by ``max_backlog``), exposed as the
gauge ``salvage_case_store_backlog``. While Redis is down a write attempt is made at most every
``retry_interval_seconds`` (doubling up to 10 s); when one succeeds the whole backlog is written
and the flow has caught up. Past ``max_backlog`` records the sink raises
:class:`CaseStoreUnavailable` and the dataflow stops loudly; at the end of the flow the backlog is
flushed with the full retry budget, and a failure then also stops it loudly. Never silently
dropped: with ``--recovery-dir`` a restart rewrites everything after the last snapshot, and the
version guard makes re-writes safe. (The backlog itself lives in memory: a SIGKILL *during* an
outage loses the part of it older than the last snapshot; see the README's recovery section.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, ReadOnlyError
from redis.retry import Retry

from salvage.sinks.case_doc import CaseDoc, case_json

if TYPE_CHECKING:
    from salvage.config import Settings

__all__ = [
    "CASE_KEY_PREFIX",
    "CaseRecord",
    "CaseStore",
    "CaseStoreUnavailable",
    "RedisCaseSink",
    "redact_url",
    "redis_available",
    "redis_problem",
]

log = logging.getLogger(__name__)

CASE_KEY_PREFIX = "salvage:case:"
DEFAULT_TTL_SECONDS = 45 * 24 * 3600

CaseRecord = tuple[str, int, CaseDoc]
"""``(order_id, version, doc)``."""

T = TypeVar("T")

# Versions go through Lua numbers (doubles): integers are exact up to 2**53.
_MAX_VERSION = 2**53

# KEYS[1] case key; ARGV: version, doc json, ttl seconds. Returns 1 if written, 0 if stale.
_WRITE_IF_NOT_OLDER = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'doc', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_TRANSIENT: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,
)
_NOT_TRANSIENT: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError)


BACKLOG = Gauge(
    "salvage_case_store_backlog",
    "Case records waiting for Redis (latest per order), per sink worker",
    ["worker"],
)
WRITE_FAILURES = Counter(
    "salvage_case_store_write_failures_total",
    "Case-store write attempts that failed with a transient Redis error",
)
DEFAULT_MAX_BACKLOG = 200_000


class CaseStoreUnavailable(RuntimeError):
    """Redis stayed unreachable for the whole retry budget."""


def latest_per_order(records: Iterable[CaseRecord]) -> dict[str, tuple[int, Any]]:
    """The highest version of each order's records (the last one among equals), exactly as if
    the records were written one by one."""
    latest: dict[str, tuple[int, Any]] = {}
    for order_id, version, doc in records:
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"case version must be an int, got {version!r}")
        if not -_MAX_VERSION < version < _MAX_VERSION:
            raise ValueError(f"case version {version} out of range (|v| < 2**53)")
        prev = latest.get(order_id)
        if prev is None or version >= prev[0]:
            latest[order_id] = (version, doc)
    return latest


def _client(
    url: str, password: str | None, socket_timeout: float, connect_timeout: float
) -> redis.Redis:
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        # No hidden retries inside redis-py: CaseStore's own loop owns the time budget.
        "retry": Retry(NoBackoff(), 0),
    }
    if password is not None:
        kwargs["password"] = password
    return redis.Redis.from_url(url, **kwargs)


def redact_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0`` (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_available(url: str, password: str | None = None, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout`` seconds."""
    try:
        client = _client(url, password, timeout, timeout)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_problem(url: str, password: str | None = None, timeout: float = 1.0) -> str | None:
    """Why Redis at ``url`` cannot serve as the case store (``None``: it answers PING).

    Distinguishes a refused password from a server that is down, for start-up messages."""
    try:
        client = _client(url, password, timeout, timeout)
    except ValueError as exc:
        return f"unusable Redis URL {redact_url(url)!r}: {exc}"
    try:
        client.ping()
    except _NOT_TRANSIENT as exc:
        return f"Redis at {redact_url(url)} refused the credentials ({exc})"
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            return f"Redis at {redact_url(url)} refused the credentials ({exc})"
        return f"Redis at {redact_url(url)} answered with an error ({exc})"
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {redact_url(url)} is not answering ({type(exc).__name__}: {exc})"
    finally:
        client.close()
    return None


class _UntilDeadline(ExponentialBackoff):
    """redis-py's capped exponential backoff (``base``, ``2 base``, ``4 base``, ... up to
    ``cap``) that never sleeps past ``deadline`` (``time.monotonic()``)."""

    def __init__(self, cap: float, base: float, deadline: float) -> None:
        super().__init__(cap=cap, base=base)
        self.deadline = deadline

    def compute(self, failures: int) -> float:
        remaining = self.deadline - time.monotonic()
        return max(0.0, min(super().compute(max(failures - 1, 0)), remaining))


def retry_within(
    fn: Callable[[], T],
    budget_seconds: float,
    backoff_initial: float,
    backoff_max: float,
    *,
    on_retry: Callable[[Exception, int, float], None] | None = None,
    give_up: Callable[[Exception, int], Exception],
) -> T:
    """``fn()``, retried through transient Redis errors (connection, timeout, read-only replica)
    with redis-py's :class:`~redis.retry.Retry` and a capped exponential backoff until
    ``budget_seconds`` have passed; then raises ``give_up(last error, failures)`` from it. A
    refused password is a configuration error: raised at once. ``on_retry(error, failures,
    delay)`` runs before each wait."""
    deadline = time.monotonic() + budget_seconds
    backoff = _UntilDeadline(backoff_max, backoff_initial, deadline)
    failures = 0

    def failed(exc: Exception) -> None:
        nonlocal failures
        if isinstance(exc, _NOT_TRANSIENT):  # AuthenticationError is a ConnectionError
            raise exc
        failures += 1
        if deadline - time.monotonic() <= 0:
            raise give_up(exc, failures) from exc
        if on_retry is not None:
            on_retry(exc, failures, backoff.compute(failures))

    return Retry(backoff, -1, supported_errors=_TRANSIENT).call_with_retry(fn, failed)


class CaseStore:
    """Latest case documents in Redis, guarded by version, with a TTL.

    :param url: ``redis://[user:pass@]host:port/db`` (``rediss://`` for TLS).
    :param password: Used when the URL carries none.
    :param ttl_seconds: Expiry of a case key, restarted on every accepted write.
    :param key_prefix: Keys are ``{key_prefix}{order_id}``.
    :param retry_budget_seconds: How long :meth:`write_many` retries a batch through transient
        errors before raising :class:`CaseStoreUnavailable`. The total can exceed it by one
        ``socket_timeout``.
    :param chunk_size: Records per pipeline round trip.
    """

    def __init__(
        self,
        url: str,
        password: str | None = None,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        key_prefix: str = CASE_KEY_PREFIX,
        retry_budget_seconds: float = 30.0,
        backoff_initial_seconds: float = 0.05,
        backoff_max_seconds: float = 2.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        chunk_size: int = 500,
    ) -> None:
        if ttl_seconds < 1:
            raise ValueError("ttl_seconds must be >= 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.ttl_seconds = int(ttl_seconds)
        self.key_prefix = key_prefix
        self.retry_budget_seconds = retry_budget_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._chunk_size = chunk_size
        self._redis = _client(url, password, socket_timeout, connect_timeout)
        self._script = self._redis.register_script(_WRITE_IF_NOT_OLDER)
        self.retries = 0
        """Failed attempts that were retried, over this store's life."""

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Self:
        password = settings.redis.password_value()
        kwargs.setdefault("ttl_seconds", settings.redis.case_ttl_seconds)
        return cls(settings.redis.url, password, **kwargs)

    @property
    def redis(self) -> redis.Redis:
        """The underlying client (bytes responses)."""
        return self._redis

    def key(self, order_id: str) -> str:
        return f"{self.key_prefix}{order_id}"

    # ------------------------------------------------------------------ writes
    def write_many(self, records: Iterable[CaseRecord]) -> int:
        """Write each ``(order_id, version, doc)`` unless the store holds a newer version.

        Within the batch, the highest version of an order wins (the last one among equals), exactly
        as if the records were written one by one; only that one is serialised
        (:func:`case_json`).

        :returns: How many keys were written (stale records are skipped, not counted).
        :raises CaseStoreUnavailable: transient errors outlasted the retry budget.
        """
        items = [(o, (v, case_json(d))) for o, (v, d) in latest_per_order(records).items()]
        written = 0
        for start in range(0, len(items), self._chunk_size):
            chunk = items[start : start + self._chunk_size]
            written += self._with_retry(partial(self._write_chunk, chunk), "write cases")
        return written

    def write_many_once(self, records: Iterable[CaseRecord]) -> int:
        """:meth:`write_many` without retries: one attempt, transient errors raised as they are."""
        budget, self.retry_budget_seconds = self.retry_budget_seconds, -1.0
        try:
            return self.write_many(records)
        except CaseStoreUnavailable as exc:
            raise exc.__cause__ or exc from None
        finally:
            self.retry_budget_seconds = budget

    def _write_chunk(self, chunk: list[tuple[str, tuple[int, str | bytes]]]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for order_id, (version, doc) in chunk:
            self._script(
                keys=[self.key(order_id)], args=[version, doc, self.ttl_seconds], client=pipe
            )
        return sum(int(r) for r in pipe.execute())

    def _with_retry(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``; on transient errors retry with capped exponential backoff within budget
        (redis-py's :class:`~redis.retry.Retry`, see :func:`retry_within`).

        The single place that decides what happens during an outage (a later buffering mode hooks
        in here / around the :class:`CaseStoreUnavailable` it raises).
        """
        budget = self.retry_budget_seconds

        def retried(exc: Exception, failures: int, delay: float) -> None:
            self.retries += 1
            log.warning(
                "Redis %s failed (%s: %s); retry %d in %.2fs",
                what,
                type(exc).__name__,
                exc,
                failures,
                delay,
            )

        def gave_up(exc: Exception, failures: int) -> Exception:
            return CaseStoreUnavailable(
                f"Redis {what} failed {failures} times over {budget:.1f}s: {exc}"
            )

        return retry_within(
            fn, budget, self._backoff_initial, self._backoff_max, on_retry=retried, give_up=gave_up
        )

    # ------------------------------------------------------------------ reads & admin
    def get(self, order_id: str) -> dict[str, Any] | None:
        """``{"order_id", "version", "doc"}`` (``doc`` parsed from JSON), or ``None`` if absent."""
        version, doc = self._redis.hmget(self.key(order_id), ["v", "doc"])
        if version is None or doc is None:
            return None
        return {"order_id": order_id, "version": int(version), "doc": json.loads(doc)}

    def delete(self, order_id: str) -> bool:
        """Remove a case; ``True`` if it existed."""
        return bool(self._redis.delete(self.key(order_id)))

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OutageBacklog(Generic[T]):
    """What a Redis sink could not write yet, one value per key, with the retry schedule: an
    attempt at most every ``retry_interval`` seconds, doubling while Redis stays down (capped at
    10 s), reset when it comes back. Past ``max_items`` keys it raises ``unavailable`` (stopping
    the flow rather than dropping); ``failed`` then tells ``close`` not to raise again. Shared by
    the case-store and review-queue sinks: ``what`` names the sink and its items in the logs."""

    def __init__(
        self,
        what: tuple[str, str],  # ("Redis case store", "case writes")
        gauge: Gauge,
        failures: Counter,
        unavailable: type[Exception],
        max_items: int,
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.items: dict[str, T] = {}
        self.failed = False
        self._what, self._gauge, self._failures = what, gauge, failures
        self._unavailable = unavailable
        self._max = max_items
        self.retry_interval = retry_interval
        # the interval after the n-th failure in a row: retry_interval * 2**(n-1), capped at 10 s
        self._schedule = ExponentialBackoff(cap=max(10.0, retry_interval), base=retry_interval)
        self._failed_in_row = 0
        self._next_try = 0.0
        self._clock = clock
        gauge.set(0)

    def __len__(self) -> int:
        return len(self.items)

    def bounded(self) -> None:
        """Export the size; raise past the bound."""
        self._gauge.set(len(self.items))
        if len(self.items) > self._max:
            self.failed = True  # close() must not raise again while the flow unwinds
            raise self._unavailable(
                f"{self._what[0]} down and the backlog passed its bound ({len(self.items)} > "
                f"{self._max} {self._what[1]}); stopping rather than dropping"
            )

    def due(self) -> bool:
        return self._clock() >= self._next_try

    def attempt(self, write: Callable[[], object]) -> bool:
        """Call ``write`` (which writes ``items``); on success the backlog is empty. A wrong
        password (AuthenticationError, a ConnectionError) is a configuration error: it raises."""
        try:
            write()
        except _NOT_TRANSIENT:
            raise
        except _TRANSIENT as exc:
            self._failures.inc()
            self._failed_in_row += 1
            self.retry_interval = self._schedule.compute(self._failed_in_row - 1)
            if self._failed_in_row == 1:
                log.warning(
                    "%s unavailable (%s: %s); buffering %s",
                    self._what[0],
                    type(exc).__name__,
                    exc,
                    self._what[1],
                )
            self._next_try = self._clock() + self.retry_interval
            return False
        if self._failed_in_row and self.items:
            log.warning("%s back: wrote a backlog of %d", self._what[0], len(self.items))
        self._failed_in_row = 0
        self._next_try = 0.0
        self.clear()
        return True

    def drain(
        self, write: Callable[[], object], budget_seconds: float, done: str = "written"
    ) -> None:
        """At the end of the flow: ``write`` (which writes ``items``) until it succeeds, on this
        backlog's schedule (:func:`retry_within`), for up to ``budget_seconds``; then raises
        ``unavailable``. Empty afterwards."""

        def gave_up(exc: Exception, failures: int) -> Exception:
            self._failures.inc()
            return self._unavailable(
                f"{self._what[0]} down at the end of the flow: {len(self.items)} "
                f"{self._what[1]} not {done} after retrying for {budget_seconds:g}s ({exc})"
            )

        retry_within(
            write,
            budget_seconds,
            self.retry_interval,
            max(10.0, self.retry_interval),
            on_retry=lambda *_: self._failures.inc(),
            give_up=gave_up,
        )
        self._failed_in_row = 0
        self.clear()

    def clear(self) -> None:
        """Everything was written."""
        self.items.clear()
        self._gauge.set(0)


class _CasePartition(StatelessSinkPartition[CaseRecord]):
    """Writes batches; during an outage buffers the latest record per order (see module doc)."""

    def __init__(
        self,
        store: CaseStore,
        worker: str,
        max_backlog: int,
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pending: OutageBacklog[tuple[int, str | bytes]] = OutageBacklog(
            ("Redis case store", "case writes"),
            BACKLOG.labels(worker),
            WRITE_FAILURES,
            CaseStoreUnavailable,
            max_backlog,
            retry_interval,
            clock,
        )

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def _records(self) -> list[CaseRecord]:
        return [(o, v, d) for o, (v, d) in self._pending.items.items()]

    def write_batch(self, items: list[CaseRecord]) -> None:
        pending = self._pending
        if not pending.items and pending.attempt(lambda: self._store.write_many_once(items)):
            return
        # keep the latest record per order, as JSON (smaller than the dict while Redis is down)
        for order_id, (version, doc) in latest_per_order(items).items():
            prev = pending.items.get(order_id)
            if prev is None or version >= prev[0]:
                pending.items[order_id] = (version, case_json(doc))
        pending.bounded()
        if pending.due():
            pending.attempt(lambda: self._store.write_many_once(self._records()))

    def close(self) -> None:
        pending = self._pending
        try:
            if pending.items and pending.failed:
                log.error("%d case writes not stored (Redis unavailable)", len(pending))
            elif pending.items:
                self._store.write_many(self._records())  # full retry budget, then loud
                pending.clear()
        finally:
            self._store.close()


class RedisCaseSink(DynamicSink[CaseRecord]):
    """Bytewax sink of ``(order_id, version, doc)`` items into a :class:`CaseStore`.

    Each worker writes its batches through its own store; the version guard makes concurrent and
    replayed writes converge. During an outage each worker buffers up to ``max_backlog`` records
    and retries every ``retry_interval_seconds`` (see the module docstring). Other keyword
    arguments go to :class:`CaseStore`.
    """

    def __init__(
        self,
        url: str,
        password: str | None = None,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        retry_interval_seconds: float = 0.5,
        **store_kwargs: Any,
    ) -> None:
        if max_backlog < 1:
            raise ValueError("max_backlog must be >= 1")
        self._url = url
        self._password = password
        self._max_backlog = max_backlog
        self._retry_interval = retry_interval_seconds
        self._store_kwargs = store_kwargs
        # Fail at flow-build time on bad arguments, not inside a worker.
        CaseStore(url, password, **store_kwargs).close()

    @classmethod
    def from_settings(cls, settings: Settings, **store_kwargs: Any) -> Self:
        password = settings.redis.password_value()
        store_kwargs.setdefault("ttl_seconds", settings.redis.case_ttl_seconds)
        return cls(settings.redis.url, password, **store_kwargs)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[CaseRecord]:
        store = CaseStore(self._url, self._password, **self._store_kwargs)
        return _CasePartition(store, str(worker_index), self._max_backlog, self._retry_interval)
