"""Kafka mode publishes triggers from their dispatch shard (``StageConfig.direct_triggers``),
not through the total-order output stage: the same triggers, each customer's in the same order,
and every other output unchanged. File mode keeps the total order (byte-identical files)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from salvage.config import Settings
from salvage.connectors.simulator import write_log
from salvage.flows.messages import Route
from salvage.flows.plain import PlainLoop
from salvage.flows.sources import file_part_id
from salvage.flows.topology import stage_config
from tests.flowkit import feed_log


def _run(log: Path, direct: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(what the output stage emitted, what the taps received), serialised, in order."""
    s = Settings(redis_url="", shards=3, metrics_port=0)
    part = file_part_id(0, log)
    cfg = replace(stage_config(s, (part,), case_records=False), direct_triggers=direct)
    ordered: list[tuple[str, str]] = []
    tapped: list[tuple[str, str]] = []

    def dump(payload: Any) -> str:
        if hasattr(payload, "model_dump_json"):
            return payload.model_dump_json()
        return json.dumps(payload, sort_keys=True, default=repr)

    loop = PlainLoop(
        cfg,
        lambda kind, p: ordered.append((kind, dump(p))),
        lambda route, p: tapped.append((str(route), dump(p))),
    )
    feed_log(loop, log, s, batch=400)
    return ordered, tapped


def _by_customer(triggers: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for doc in triggers:
        out[json.loads(doc)["customer_id"]].append(doc)
    return dict(out)


@pytest.mark.parametrize("scenario", ["launch-week-backlog", "silent-carrier-incident"])
def test_direct_triggers_are_the_ordered_ones_in_each_customers_order(
    tmp_path: Path, scenario: str
) -> None:
    log = tmp_path / f"{scenario}.jsonl"
    write_log(scenario, 400, 7, log)
    ordered, tapped = _run(log, direct=False)
    d_ordered, d_tapped = _run(log, direct=True)
    triggers = [p for kind, p in ordered if kind == "trigger"]
    assert len(triggers) > 20, "too few triggers: the comparison would prove little"
    assert not any(route == Route.TRIGGER for route, _ in tapped)
    # direct: none through the output stage; all of them from the dispatch shards
    assert not any(kind == "trigger" for kind, _ in d_ordered)
    direct = [p for route, p in d_tapped if route == Route.TRIGGER]
    assert sorted(direct) == sorted(triggers)
    assert _by_customer(direct) == _by_customer(triggers)  # each customer's in event-time order
    # more than one dispatch shard interleaved: the total order itself is not kept
    assert direct != triggers
    # everything else (model events, assignments, alerts, KPI facts ...) exactly as before
    assert d_ordered == [x for x in ordered if x[0] != "trigger"]
    assert [x for x in d_tapped if x[0] != Route.TRIGGER] == tapped
