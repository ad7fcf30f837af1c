"""Shard keys and Bytewax's routing (flows/stages/base.py ``worker_of``, ``balanced_key``): the
worker a key goes to is computed as Bytewax computes it, checked against Bytewax itself, and each
stage's shard keys spread evenly over the workers."""

from __future__ import annotations

from collections import Counter

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, cluster_main

from salvage.config import Settings
from salvage.flows.stages.base import balanced_key, worker_of
from salvage.flows.topology import graph, shard_no, stage_config


def _routed(keys: list[str], workers: int) -> dict[str, int]:
    """Where a Bytewax stateful step (``workers`` workers) puts each key: the index of the
    worker whose (non-exchanging) dynamic sink partition receives it."""
    seen: dict[str, int] = {}

    class Part(StatelessSinkPartition):
        def __init__(self, worker: int) -> None:
            self.worker = worker

        def write_batch(self, items) -> None:
            for key, _ in items:
                seen[key] = self.worker

    class Sink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return Part(worker_index)

    flow = Dataflow("routing")
    keyed = op.input("in", flow, TestingSource([(k, 1) for k in keys]))
    op.output("out", op.stateful_map("state", keyed, lambda s, v: (s, v)), Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


def _stage_keys(shards: int, model_shards: int) -> dict[str, list[str]]:
    cfg = stage_config(
        Settings(redis_url="", shards=shards, model_shards=model_shards),
        ("p0", "p1"),
        case_records=False,
    )
    return {spec.name: list(spec.keys) for spec in graph(cfg)}


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_the_worker_of_a_key_is_where_bytewax_routes_it(workers):
    stages = _stage_keys(8, 2)
    keys = [k for ks in stages.values() for k in ks]
    keys += [f"case-{i:04d}" for i in range(16)] + ["x", "exactly8", "a longer key, 23 bytes"]
    routed = _routed(keys, workers)
    assert {k: worker_of(k, workers) for k in keys} == routed


@pytest.mark.parametrize(("shards", "workers"), [(8, 2), (8, 4), (16, 2), (6, 3), (12, 4)])
def test_every_stage_spreads_its_shards_evenly(shards, workers):
    for name, keys in _stage_keys(shards, workers).items():
        load = Counter(worker_of(k, workers) for k in keys)
        assert max(load.values()) - min(load.get(w, 0) for w in range(workers)) <= 1, name
        if len(keys) > 1:  # the single-key stages have no shard number to read
            assert [shard_no(k) for k in keys] == list(range(len(keys))), name


def test_the_single_key_stages_are_apart_from_the_first_model_shard():
    stages = _stage_keys(8, 1)
    (model,), (out,), (intent,) = stages["models"], stages["output"], stages["intents"]
    assert worker_of(model, 2) != worker_of(out, 2) == worker_of(intent, 2)
    assert len({worker_of(k, 4) for k in (model, out, intent)}) == 3
    # state is keyed by these names: a change of them (or of the routing) needs a STATE_VERSION
    assert [balanced_key("case", i) for i in range(3)] == [
        "case-0000~127",
        "case-0001~23",
        "case-0002~18",
    ]
