"""The stage graph of the recovery dataflow, declared once.

Which keyed stages exist, which route of which upstream feeds each, how its shards are keyed and
built, how a source batch is split over the first stages, and which routes leave the graph for
sinks and taps. :func:`salvage.flows.recovery.build_flow` turns this into Bytewax steps; the
plain-loop benchmark (``benchmarks/throughput.py``) drives the same stages from the same
declaration in one Python loop, so the two cannot drift apart.

>>> cfg = StageConfig(case_shards=2, cust_shards=2, lane_shards=1, sources=("p0",))
>>> [(s.name, s.route.value if s.route else None, s.upstreams) for s in graph(cfg)]
... # doctest: +NORMALIZE_WHITESPACE
[('cases', None, ('source',)), ('context', 'ctx', ('cases',)), ('models', 'model', ('context',)),
 ('dispatch', 'disp', ('models',)), ('lanes', 'lane', ('cases',)),
 ('output', 'out', ('dispatch', 'lanes', 'cases'))]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from salvage.config import Settings
from salvage.connectors.outputs import DeadLetter
from salvage.flows.messages import Batch, Event, Route, Tick
from salvage.flows.stages import (
    INTENT_KEY,
    OUT_KEY,
    CaseStage,
    ContextStage,
    DispatchStage,
    IntentStage,
    LaneStage,
    ModelStage,
    OutputStage,
    StageConfig,
)
from salvage.flows.stages.base import _Stage
from salvage.policy.config import load_policy
from salvage.scoring.models import ModelConfig

SOURCE = "source"

Keyed = tuple[str, Any]  # (shard key, item)

# routes that leave the graph: (producing stage, route) -> sink / tap name
TAPS: dict[tuple[str, Route], str] = {
    ("cases", Route.DEAD_LETTER): "dead_letters",
    ("context", Route.KPI): "kpis",
    ("dispatch", Route.KPI): "kpis",
    ("dispatch", Route.SCORE): "scores",
    ("dispatch", Route.CASE_RECORD): "cases",
    ("models", Route.MODEL_STATE): "model_states",
    ("dispatch", Route.TRIGGER): "triggers",  # StageConfig.direct_triggers (Kafka mode)
}


@dataclass(frozen=True)
class StageSpec:
    """One keyed stage: its step name, the route that feeds it from its upstream stages (None:
    fed by the source routing, :func:`route_source`), its shard keys and its factory."""

    name: str
    route: Route | None
    upstreams: tuple[str, ...]
    keys: tuple[str, ...]
    make: Callable[[str], _Stage]


def stage_config(
    s: Settings, sources: tuple[str, ...], *, case_records: bool, score_log: bool = False
) -> StageConfig:
    """The stages' configuration for a run with these settings and input partitions."""
    return StageConfig(
        case_records=case_records,
        case_shards=s.dataflow.shards,
        cust_shards=s.dataflow.shards,
        lane_shards=max(1, min(s.dataflow.shards, 4)),
        sources=sources,
        return_window_us=int(s.dataflow.return_window_days * 86_400 * 1e6),
        settled_grace_us=int(s.dataflow.settled_grace_days * 86_400 * 1e6),
        lane=s.lanes.config(),
        promise_rechecks_us=tuple(int(h * 3_600_000_000) for h in s.dataflow.promise_recheck_hours),
        model_shards=s.models.shards or 1,  # 0 (one per process): build_flow knows the count
        model=ModelConfig(
            min_labels=s.models.min_labels,
            promote_margin=s.models.promote_margin,
            engine=s.models.engine,
            verdict_wait_us=int(s.dataflow.settled_grace_days * 86_400 * 1e6),
        ),
        infer_intents=s.models.infer_intents,
        intent_stage=s.models.infer_intents,
        intent_threshold=s.models.intent_threshold,
        score_log=score_log,
        policy=load_policy(s.dataflow.policy),
        orphan_wait_us=int(s.dataflow.orphan_wait_seconds * 1e6),
        anonymous_customers=frozenset(x.lower() for x in s.dataflow.anonymous_customer_ids),
    )


def shard_no(key: str) -> int:
    """The shard number in a stage key (``case-0007`` or ``case-0007~3`` -> 7)."""
    return int(key.rsplit("-", 1)[1].split("~", 1)[0])


def graph(cfg: StageConfig) -> tuple[StageSpec, ...]:
    """The stages in topological order (each after all its upstreams)."""
    specs: list[StageSpec] = []
    case_ups: tuple[str, ...] = (SOURCE,)
    if cfg.intent_stage:  # one intent classifier per deployment, in event-time order
        specs.append(
            StageSpec("intents", None, (SOURCE,), (INTENT_KEY,), lambda k: IntentStage(cfg))
        )
        case_ups = (SOURCE, "intents")
    specs += [
        StageSpec(
            "cases",
            Route.CASES if cfg.intent_stage else None,
            case_ups,
            tuple(cfg.case_keys()),
            lambda k: CaseStage(shard_no(k), cfg),
        ),
        StageSpec(
            "context",
            Route.CONTEXT,
            ("cases",),
            tuple(cfg.cust_keys("ctx")),
            lambda k: ContextStage(shard_no(k), cfg),
        ),
        StageSpec(
            "models",
            Route.MODELS,
            ("context",),
            tuple(cfg.model_keys()),
            lambda k: ModelStage(shard_no(k), cfg),
        ),
        StageSpec(
            "dispatch",
            Route.DISPATCH,
            ("models",),
            tuple(cfg.cust_keys("disp")),
            lambda k: DispatchStage(shard_no(k), cfg),
        ),
        StageSpec(
            "lanes",
            Route.LANES,
            ("cases",),
            tuple(cfg.lane_keys()),
            lambda k: LaneStage(shard_no(k), cfg),
        ),
        StageSpec(
            "output",
            Route.OUTPUT,
            ("dispatch", "lanes", "cases"),
            (OUT_KEY,),
            lambda k: OutputStage(cfg),
        ),
    ]
    return tuple(specs)


def route_source(cfg: StageConfig) -> Callable[[list], list[Keyed]]:
    """Split a source batch (:class:`Event` and :class:`Tick` items; dead letters are taken out
    before) over the first stages: one :class:`Batch` per case shard (support contacts with text
    to the intent stage first, when there is one), then every tick to every first-stage shard."""
    n_case = cfg.case_shards
    infer = cfg.intent_stage
    first_keys = [*cfg.case_keys(), INTENT_KEY] if infer else cfg.case_keys()

    case_keys = cfg.case_keys()  # by shard number

    def route(items: list) -> list[Keyed]:
        groups: dict[str, list] = {}
        ticks = []
        for item in items:
            kind = type(item)
            if kind is Event:
                ev = item.payload
                # routes_to_intents(ev), else case_key(shard_of(ev.order_id, n_case)), inline
                if infer and getattr(ev, "event_type", None) == "support_contact" and ev.text:
                    k = INTENT_KEY
                else:
                    k = case_keys[crc32(ev.order_id.encode()) % n_case]
                box = groups.get(k)
                if box is None:
                    box = groups[k] = []
                box.append(tuple(item))
            elif kind is Tick:
                ticks.append(item)
            elif not isinstance(item, DeadLetter):
                raise TypeError(f"not a source item: {item!r:.200}")
        out: list[Keyed] = [(k, Batch(batch)) for k, batch in groups.items()]
        out += [(k, tick) for tick in ticks for k in first_keys]
        return out

    return route


def fan(
    route: Route, keys: tuple[str, ...] | list[str]
) -> Callable[[tuple[Route, Any]], list[Keyed]]:
    """What one emitted ``(route, payload)`` pair of an upstream stage sends to a stage fed by
    ``route`` with shard ``keys``: the data item to its destination shard, a tick to every
    shard, nothing for other routes."""

    def f(emitted: tuple[Route, Any]) -> list[Keyed]:
        r, payload = emitted
        if r is route:
            dest, item = payload
            return [(dest, item)]
        if r is Route.TICK:
            return [(k, payload) for k in keys]
        return []

    return f


def taps_of(stage: str) -> dict[Route, str]:
    """The routes of ``stage`` that leave the graph, and the sink or tap each goes to."""
    return {r: name for (s, r), name in TAPS.items() if s == stage}
