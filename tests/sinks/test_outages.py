"""Outages over real servers: Redis stopped and restarted on a spare port while the flow runs.

(Kafka produce failures stopping the flow loudly: ``tests/connectors/test_broker_io.py``.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from bytewax.testing import cluster_main
from prometheus_client import REGISTRY

from salvage.config import Settings
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.sinks.redis_store import RedisCaseSink
from tests.flowkit import run_file_flow, sim_log
from tests.helpers import metric_total

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return sim_log(tmp_path_factory.mktemp("outage"), orders=500, seed=31)


def _backlog() -> float:
    return metric_total("salvage_case_store_backlog")


def _failures() -> float:
    return REGISTRY.get_sample_value("salvage_case_store_write_failures_total") or 0.0


def _dump(url: str) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(url)
    try:
        return {k: client.hgetall(k) for k in client.scan_iter(match="salvage:case:*", count=1000)}
    finally:
        client.close()


def _chain(exc: BaseException | None) -> str:
    """Bytewax wraps a step's exception; the cause chain carries ours."""
    parts: list[str] = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _run(log: Path, out: Path, sink: RedisCaseSink) -> None:
    spec = FlowSpec(  # the file layout of run_file_flow's reference (lateness per partition)
        Settings(redis_url="", shards=4, topic_partitions=3),
        inputs=[log],
        out_dir=out,
        extra_sinks={"cases": sink},
    )
    cluster_main(build_flow(spec), [], 0)


def test_redis_outage_buffers_exposes_backlog_and_catches_up(log, tmp_path, redis_server_factory):
    ref, cut = redis_server_factory(), redis_server_factory()
    reference = run_file_flow([log], tmp_path / "ref", redis_url=ref.url)
    want = _dump(ref.url)
    assert len(want) > 400

    cut.stop()  # Redis is down when the flow starts ...
    seen = {"max_backlog": 0.0}
    failures_before = _failures()

    def bring_back() -> None:  # ... and comes back once writes have piled up
        deadline = time.monotonic() + 30
        while _backlog() < 300 and time.monotonic() < deadline:
            time.sleep(0.005)
        seen["max_backlog"] = _backlog()
        cut.start()

    thread = threading.Thread(target=bring_back)
    thread.start()
    sink = RedisCaseSink(cut.url, retry_interval_seconds=0.05, connect_timeout=0.5)
    _run(log, tmp_path / "out", sink)
    thread.join(timeout=30)
    # the flow kept processing: its triggers are those of the run without an outage
    assert (tmp_path / "out" / "interventions.jsonl").read_bytes() == reference["interventions"]
    assert seen["max_backlog"] >= 300  # the backlog was visible as a metric
    assert _failures() > failures_before
    assert _backlog() == 0  # caught up
    assert _dump(cut.url) == want  # and the store is exactly what it would have been


def test_a_backlog_past_its_bound_stops_the_flow_loudly(log, tmp_path, redis_server_factory):
    server = redis_server_factory()
    server.stop()
    sink = RedisCaseSink(
        server.url, max_backlog=50, retry_interval_seconds=0.05, connect_timeout=0.5
    )
    with pytest.raises(Exception) as info:
        _run(log, tmp_path / "out", sink)
    assert "CaseStoreUnavailable" in _chain(info.value)
    assert "backlog passed its bound" in _chain(info.value)


def test_an_outage_outlasting_the_final_flush_budget_fails_the_run(tmp_path, redis_server_factory):
    server = redis_server_factory()
    server.stop()
    small = sim_log(tmp_path, orders=30, seed=2)
    sink = RedisCaseSink(
        server.url, retry_interval_seconds=0.05, connect_timeout=0.2, retry_budget_seconds=0.5
    )
    with pytest.raises(Exception) as info:
        _run(small, tmp_path / "out", sink)
    assert "Redis write cases failed" in _chain(info.value)
