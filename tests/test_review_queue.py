"""The human review queue on a real Redis Stream: flow -> queue -> claim -> resolve -> event."""

from __future__ import annotations

import json

import pytest
import redis
from bytewax.testing import cluster_main

from connectors.events import ReviewResolved
from connectors.parse import RawRecord, parse
from flows.recovery import FlowSpec, build_flow
from salvage.config import Settings
from sinks.review_queue import RedisReviewSink, ReviewQueue
from tests.flowkit import jsonl, sim_log

pytestmark = pytest.mark.integration


@pytest.fixture
def stream(redis_url, unique_name):
    name = unique_name("salvage:reviews")
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, f"{name}:seen")
    client.close()


def test_review_round_trip_from_the_flow_to_a_verdict_event(redis_url, stream, tmp_path):
    log = sim_log(tmp_path, orders=600, seed=3)
    out = tmp_path / "out"
    sink = RedisReviewSink(redis_url, stream=stream)
    spec = FlowSpec(
        Settings(redis_url="", shards=4, reorder_tolerance_seconds=3600),
        inputs=[log],
        out_dir=out,
        extra_sinks={"reviews": sink},
    )
    cluster_main(build_flow(spec), [], 0, worker_count_per_proc=2)
    reviews = [
        t
        for t in jsonl((out / "interventions.jsonl").read_bytes())
        if t["action"] == "human_review"
    ]
    assert reviews
    queue = ReviewQueue(redis_url, stream=stream)
    listed = queue.list()
    assert {r.trigger_id for r in listed} == {t["trigger_id"] for t in reviews}
    # a second identical run queues nothing new (idempotent on trigger_id)
    cluster_main(
        build_flow(
            FlowSpec(
                spec.settings,
                inputs=[log],
                out_dir=tmp_path / "again",
                extra_sinks={"reviews": sink},
            )
        ),
        [],
        0,
    )
    assert len(queue.list()) == len(reviews)

    stats = queue.stats(deadline_s=3600)
    assert stats["depth"] == stats["unclaimed"] == len(reviews)
    assert queue.stats(deadline_s=0, now=listed[-1].enqueued_at + 10)["overdue"] == len(reviews)

    claimed = queue.claim("agent-7", count=1)
    assert len(claimed) == 1 and claimed[0].trigger_id == listed[0].trigger_id
    assert queue.stats(deadline_s=3600)["unclaimed"] == len(reviews) - 1
    event = queue.resolve(claimed[0].entry_id, "abuse_confirmed", "agent-7")
    assert queue.stats(deadline_s=3600)["depth"] == len(reviews) - 1
    with pytest.raises(ValueError, match="not claimed"):
        queue.resolve(claimed[0].entry_id, "approve", "agent-7")  # already done
    # the verdict is a valid input event for the returns stream
    parsed = parse(RawRecord("returns", 0, 0, json.dumps(event).encode()))
    assert isinstance(parsed, ReviewResolved)
    assert parsed.verdict.value == "abuse_confirmed" and parsed.order_id == claimed[0].order_id


def test_abandoned_claims_can_be_reclaimed(redis_url, stream):
    queue = ReviewQueue(redis_url, stream=stream)
    assert queue.enqueue_many([{"trigger_id": "t1", "order_id": "o1", "action": "human_review"}])
    assert queue.enqueue_many([{"trigger_id": "t1", "order_id": "o1"}]) == 0
    first = queue.claim("agent-1")
    assert queue.claim("agent-2") == []  # nothing new, and the claim is fresh
    again = queue.claim("agent-2", reclaim_after_s=0)
    assert [r.entry_id for r in again] == [first[0].entry_id]
    with pytest.raises(ValueError, match="verdict"):
        queue.resolve(first[0].entry_id, "maybe", "agent-2")
