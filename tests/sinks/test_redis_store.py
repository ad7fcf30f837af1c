"""Redis case store: version guard, TTL, the Bytewax sink, and retries across a real outage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.sinks.redis_store import (
    CaseRecord,
    CaseStore,
    CaseStoreUnavailable,
    RedisCaseSink,
    case_json,
    redis_available,
)

if TYPE_CHECKING:
    from tests.conftest import RedisServer
integration = pytest.mark.integration


def _doc(order_id: str, version: int, **extra: object) -> str:
    return json.dumps({"order_id": order_id, "version": version, **extra}, sort_keys=True)


@pytest.fixture
def store(redis_url: str, redis_key_prefix: str) -> CaseStore:
    return CaseStore(redis_url, key_prefix=redis_key_prefix, ttl_seconds=3600)


@integration
def test_version_guard(store: CaseStore) -> None:
    assert store.write_many([("o1", 2, _doc("o1", 2))]) == 1
    # Newer overwrites.
    assert store.write_many([("o1", 5, _doc("o1", 5, status="delivered"))]) == 1
    assert store.get("o1") == {
        "order_id": "o1",
        "version": 5,
        "doc": {"order_id": "o1", "version": 5, "status": "delivered"},
    }
    # Older is ignored (a replay after a restart).
    assert store.write_many([("o1", 3, _doc("o1", 3)), ("o1", 4, _doc("o1", 4))]) == 0
    assert store.get("o1")["version"] == 5  # type: ignore[index]
    # Equal is idempotent.
    raw_before = store.redis.hgetall(store.key("o1"))
    assert store.write_many([("o1", 5, _doc("o1", 5, status="delivered"))]) == 1
    assert store.redis.hgetall(store.key("o1")) == raw_before
    assert store.redis.hgetall(store.key("o1")) == {
        b"v": b"5",
        b"doc": _doc("o1", 5, status="delivered").encode(),
    }


@integration
def test_batch_keeps_highest_version_per_order(store: CaseStore) -> None:
    records: list[CaseRecord] = [
        ("a", 1, _doc("a", 1)),
        ("b", 7, _doc("b", 7)),
        ("a", 3, _doc("a", 3)),
        ("a", 2, _doc("a", 2)),
        ("b", 7, _doc("b", 7, again=True)),  # equal: the later one wins, as written one by one
    ]
    assert store.write_many(records) == 2
    assert store.get("a")["doc"] == {"order_id": "a", "version": 3}  # type: ignore[index]
    assert store.get("b")["doc"] == {"order_id": "b", "version": 7, "again": True}  # type: ignore[index]


@integration
def test_many_records_across_chunks(redis_url: str, redis_key_prefix: str) -> None:
    store = CaseStore(redis_url, key_prefix=redis_key_prefix, chunk_size=64)
    records = [(f"o{i}", i, _doc(f"o{i}", i)) for i in range(1000)]
    assert store.write_many(records) == 1000
    assert store.write_many(records) == 1000  # replay: same state
    assert store.write_many((o, v - 1, d) for o, v, d in records) == 0
    assert store.get("o999")["version"] == 999  # type: ignore[index]
    assert len(list(store.redis.scan_iter(match=f"{redis_key_prefix}*", count=1000))) == 1000


@integration
def test_ttl_is_set_and_refreshed(redis_url: str, redis_key_prefix: str) -> None:
    store = CaseStore(redis_url, key_prefix=redis_key_prefix, ttl_seconds=120)
    store.write_many([("t", 1, _doc("t", 1))])
    ttl = store.redis.ttl(store.key("t"))
    assert 0 < ttl <= 120
    store.redis.expire(store.key("t"), 10)
    store.write_many([("t", 0, _doc("t", 0))])  # stale: TTL untouched
    assert store.redis.ttl(store.key("t")) <= 10
    store.write_many([("t", 2, _doc("t", 2))])  # accepted: TTL restarts
    assert store.redis.ttl(store.key("t")) > 10


@integration
def test_get_missing_and_delete(store: CaseStore) -> None:
    assert store.get("nope") is None
    store.write_many([("d", 1, _doc("d", 1))])
    assert store.delete("d") is True
    assert store.delete("d") is False
    assert store.get("d") is None
    assert store.ping()


@integration
def test_rejects_bad_versions(store: CaseStore) -> None:
    with pytest.raises(TypeError):
        store.write_many([("x", "3", "{}")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.write_many([("x", True, "{}")])
    with pytest.raises(ValueError):
        store.write_many([("x", 2**60, "{}")])
    assert store.get("x") is None


@integration
def test_redis_case_sink_through_bytewax(redis_url: str, redis_key_prefix: str) -> None:
    items: list[CaseRecord] = [
        ("o1", 1, _doc("o1", 1)),
        ("o2", 1, _doc("o2", 1)),
        ("o1", 3, _doc("o1", 3)),
        ("o1", 2, _doc("o1", 2)),  # arrives late: must not regress o1
        ("o2", 2, _doc("o2", 2)),
    ]
    flow = Dataflow("redis_case_sink_test")
    stream = op.input("inp", flow, TestingSource(items, batch_size=2))
    op.output("cases", stream, RedisCaseSink(redis_url, key_prefix=redis_key_prefix))
    run_main(flow)
    run_main(flow)  # a full replay leaves the same state

    store = CaseStore(redis_url, key_prefix=redis_key_prefix)
    assert store.get("o1")["version"] == 3  # type: ignore[index]
    assert store.get("o2")["doc"] == {"order_id": "o2", "version": 2}  # type: ignore[index]
    assert 0 < store.redis.ttl(store.key("o1"))


def test_redis_available_false_on_closed_port() -> None:
    from salvage.connectors.broker import free_port

    assert not redis_available(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    assert not redis_available("not-a-url")


@integration
def test_write_retries_until_redis_returns(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    server = redis_server_factory()
    store = CaseStore(server.url, retry_budget_seconds=10, backoff_max_seconds=0.2)
    assert store.write_many([("r", 1, _doc("r", 1))]) == 1
    server.stop()
    assert not store.ping()

    restarter = threading.Timer(0.8, server.start)
    restarter.start()
    started = time.monotonic()
    try:
        # The restarted server is empty (no persistence) and its script cache too.
        assert store.write_many([("r", 2, _doc("r", 2))]) == 1
    finally:
        restarter.join()
    elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 5
    assert store.retries >= 2
    assert store.get("r")["version"] == 2  # type: ignore[index]


@integration
def test_write_raises_when_outage_outlasts_budget(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    server = redis_server_factory()
    store = CaseStore(server.url, retry_budget_seconds=0.8, backoff_initial_seconds=0.05)
    store.write_many([("r", 1, _doc("r", 1))])
    server.stop()
    started = time.monotonic()
    with pytest.raises(CaseStoreUnavailable, match=r"failed \d+ times"):
        store.write_many([("r", 2, _doc("r", 2))])
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 3
    assert store.retries >= 3


# case records as the flow emits them: dicts, serialised once per flush by the sink
_case_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _case_values, max_size=8))
def test_case_json_is_the_document_json_dumps_made(doc: dict) -> None:
    assert json.loads(case_json(doc)) == json.loads(json.dumps(doc))
    assert case_json(json.dumps(doc)) == json.dumps(doc)  # text is written as it is


def _record(order_id: str, version: int, **extra: object) -> dict:
    return {"order_id": order_id, "version": version, "features": {"x": 0.1, "é": 2}, **extra}


@integration
def test_dict_documents_are_written_latest_per_order(store: CaseStore) -> None:
    unserialisable = _record("o1", 1, junk=object())  # superseded in its batch: never serialised
    records: list[CaseRecord] = [
        ("o1", 1, unserialisable),
        ("o1", 3, _record("o1", 3, status="delivered")),
        ("o2", 2, _record("o2", 2)),
        ("o1", 3, _record("o1", 3, status="returned")),  # equal: the later one wins
    ]
    assert store.write_many(records) == 2
    assert store.get("o1")["doc"] == json.loads(json.dumps(records[3][2]))  # type: ignore[index]
    assert store.get("o2")["doc"] == _record("o2", 2)  # type: ignore[index]
    with pytest.raises(TypeError):
        store.write_many([("o3", 1, unserialisable)])


@integration
def test_dict_documents_through_the_sink_and_its_backlog(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    from salvage.sinks.redis_store import _CasePartition

    server = redis_server_factory()
    store = CaseStore(server.url, retry_budget_seconds=5, backoff_max_seconds=0.2)
    part = _CasePartition(store, "t", max_backlog=10, retry_interval=0.0)
    part.write_batch([("a", 1, _record("a", 1)), ("a", 2, _record("a", 2))])
    assert CaseStore(server.url).get("a")["doc"] == _record("a", 2)  # type: ignore[index]
    server.stop()
    part.write_batch([("a", 3, _record("a", 3)), ("b", 1, _record("b", 1))])
    assert part.backlog == 2  # buffered as JSON text, the latest per order
    assert all(isinstance(d, bytes) for _, d in part._pending.items.values())
    server.start()
    part.close()  # flushes the backlog
    check = CaseStore(server.url)
    assert check.get("a")["doc"] == _record("a", 3)  # type: ignore[index]
    assert check.get("b")["doc"] == _record("b", 1)  # type: ignore[index]


def test_outage_backlog_schedule_doubles_to_ten_seconds_and_resets_on_success() -> None:
    """The retry schedule (redis-py's ExponentialBackoff): an attempt at most every interval,
    doubling per failure in a row up to 10 s, back to the first interval once Redis answers."""
    import redis
    from prometheus_client import CollectorRegistry, Counter, Gauge

    from salvage.sinks.redis_store import OutageBacklog

    registry = CollectorRegistry()
    now = [100.0]
    backlog: OutageBacklog[int] = OutageBacklog(
        ("Redis test", "writes"),
        Gauge("t_backlog", "t", registry=registry),
        Counter("t_failures", "t", registry=registry),
        RuntimeError,
        max_items=10,
        retry_interval=0.5,
        clock=lambda: now[0],
    )

    def down() -> None:
        raise redis.ConnectionError("refused")

    intervals = []
    for _ in range(7):
        assert backlog.attempt(down) is False
        intervals.append(backlog.retry_interval)
        assert not backlog.due()
        now[0] += backlog.retry_interval
        assert backlog.due()
    assert intervals == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backlog.items["k"] = 1
    assert backlog.attempt(lambda: None) is True and not backlog.items
    assert backlog.attempt(down) is False and backlog.retry_interval == 0.5


def test_retry_within_gives_up_after_its_budget_and_never_retries_a_refused_password() -> None:
    import redis
    from redis.exceptions import AuthenticationError

    from salvage.sinks.redis_store import retry_within

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.TimeoutError("slow")
        return "ok"

    seen: list[int] = []
    result = retry_within(
        flaky, 5.0, 0.001, 0.01, on_retry=lambda e, n, d: seen.append(n), give_up=RuntimeError
    )
    assert result == "ok"
    assert seen == [1, 2]

    def refused() -> None:
        calls.append(1)
        raise AuthenticationError("invalid password")

    calls.clear()
    with pytest.raises(AuthenticationError):
        retry_within(refused, 5.0, 0.001, 0.01, give_up=lambda e, n: RuntimeError(n))
    assert len(calls) == 1

    def down() -> None:
        raise redis.ConnectionError("refused")

    with pytest.raises(RuntimeError, match="gave up after") as info:
        retry_within(
            down, 0.05, 0.01, 0.02, give_up=lambda e, n: RuntimeError(f"gave up after {n}")
        )
    assert isinstance(info.value.__cause__, redis.ConnectionError)
