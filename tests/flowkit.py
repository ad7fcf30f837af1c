"""Helpers to run the recovery flow in tests (file mode, bytewax.testing, 1 or 2 workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bytewax.testing import cluster_main

from salvage.config import Settings
from salvage.connectors.parse import RawRecord
from salvage.connectors.simulator import write_log
from salvage.features.eventtime import END
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.flows.sources import file_layout, file_part_id

_LOGS: dict[tuple, Path] = {}

# the deterministic output files every equivalence test compares byte for byte
OUTPUT_FILES = (
    "interventions",
    "lane_alerts",
    "dead_letters",
    "status_updates",
    "journey_alerts",
    "assignments",
    "outcomes",
    "orders",
)


def sim_log(
    tmp_root: Path,
    scenario: str = "launch-week-backlog",
    orders: int = 600,
    seed: int = 3,
    variants: tuple[str, ...] = (),
) -> Path:
    """A simulator log, generated once per (scenario, orders, seed, variants) per session."""
    key = (scenario, orders, seed, variants)
    if key not in _LOGS:
        name = "-".join((scenario, str(orders), str(seed), *variants))
        path = tmp_root / f"{name}.jsonl"
        write_log(scenario, orders, seed, path, tmp_root / f"{name}.truth", variants=variants)
        _LOGS[key] = path
    return _LOGS[key]


def run_file_flow(
    inputs: list[Path],
    out_dir: Path,
    workers: int = 1,
    extra_sinks: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, bytes]:
    """Run file mode to the end; return the output files' bytes (name -> bytes).
    ``extra_sinks``: as :class:`FlowSpec`'s (a case-store sink, say)."""
    # file mode lays the log out as Kafka topics of ``topic_partitions`` partitions (lateness is
    # judged per partition): 3, as the Kafka-mode tests' topics (tests.helpers.kafka_settings)
    base: dict[str, Any] = {"redis_url": "", "shards": 4, "topic_partitions": 3}
    base.update(settings)
    spec = FlowSpec(
        Settings(**base),
        inputs=inputs,
        out_dir=out_dir,
        case_store=bool(base["redis_url"]),
        extra_sinks=extra_sinks or {},
    )
    cluster_main(build_flow(spec), [], 0, worker_count_per_proc=workers)
    return {name: (out_dir / f"{name}.jsonl").read_bytes() for name in OUTPUT_FILES}


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.splitlines()]


def feed_log(loop: Any, log: Path, s: Settings, batch: int = 500) -> None:
    """Feed a log through a :class:`~salvage.flows.plain.PlainLoop` as the file source reads it
    (its layout's parse, clocks and ticks), ``batch`` lines per source batch, to the end."""
    layout = file_layout(file_part_id(0, log), s)
    lines = log.read_bytes().splitlines()
    for start in range(0, len(lines), batch):
        items: list = []
        for n, value in enumerate(lines[start : start + batch], start + 1):
            if value.strip():
                layout.handle(RawRecord(str(log), 0, n, value), items)
        final = start + batch >= len(lines)
        if final:
            layout.release_held(items)
        layout.tick(items, END if final else None)
        loop.feed(items)


def plain_case_run(
    log: Path, partitions: int = 1, **cfg_changes: Any
) -> tuple[Any, list, dict[str, dict]]:
    """Run ``log`` through a :class:`~salvage.flows.plain.PlainLoop` (the file source's layout
    at ``partitions`` partitions per stream, 2 shards, case records on; ``cfg_changes`` replace
    fields of its :class:`~salvage.flows.stages.StageConfig`): (the loop, with its stages' end
    state, the triggers, each order's last case-store document)."""
    from dataclasses import replace

    from salvage.flows.messages import Route
    from salvage.flows.plain import PlainLoop
    from salvage.flows.topology import stage_config

    s = Settings(redis_url="", shards=2, metrics_port=0, topic_partitions=partitions)
    cfg = replace(stage_config(s, (file_part_id(0, log),), case_records=True), **cfg_changes)
    triggers: list = []
    docs: dict[str, dict] = {}

    def tap(route: Route, payload: Any) -> None:
        if route is Route.CASE_RECORD:  # (order id, time, the document's JSON bytes)
            docs[payload[0]] = json.loads(payload[2])

    def output(kind: str, payload: Any) -> None:
        if kind == "trigger":
            triggers.append(payload)

    loop = PlainLoop(cfg, output, tap)
    feed_log(loop, log, s)
    return loop, triggers, docs
