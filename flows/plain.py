"""The stage graph driven by one plain Python loop, without Bytewax.

The same declaration as the Bytewax flow (:mod:`salvage.flows.topology`) and the same stage
objects: a source batch is split over the first stages, then each stage, in topological order,
runs on what its upstreams emitted for it. Used by the throughput and memory benchmarks (the
pure-Python reference path: its triggers are byte-identical to the flow's) and by the per-stage
checks in ``tests/checks.py`` (which record every stage's inputs through it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from salvage.connectors.outputs import DeadLetter
from salvage.flows.messages import Route
from salvage.flows.stages import StageConfig
from salvage.flows.topology import SOURCE, TAPS, fan, graph, route_source

Inspect = Callable[[str, str, list], None]  # (stage name, shard key, the items of one call)


class PlainLoop:
    """Run ``cfg``'s stage graph on source items.

    ``on_output(kind, payload)`` gets what the output stage emits (triggers, alerts, ...);
    ``on_tap(route, payload)`` what leaves the graph elsewhere (dead letters, KPI facts, case
    records, score logs; the sources' dead letters too); ``inspect`` every stage call's input.
    ``seconds`` adds up the time spent per stage and in routing."""

    def __init__(
        self,
        cfg: StageConfig,
        on_output: Callable[[str, Any], None],
        on_tap: Callable[[Route, Any], None] | None = None,
        inspect: Inspect | None = None,
    ) -> None:
        self.cfg = cfg
        self.specs = graph(cfg)
        self.stages: dict[str, dict[str, Any]] = {
            st.name: {k: st.make(k) for k in st.keys} for st in self.specs
        }
        self.on_output = on_output
        self.on_tap = on_tap
        self.inspect = inspect
        self.route_source = route_source(cfg)
        self.first = [st.name for st in self.specs if SOURCE in st.upstreams]
        # producer -> [(consumer, its fan)]: who takes what each stage emits
        self.consumers: dict[str, list[tuple[str, Any]]] = {st.name: [] for st in self.specs}
        for st in self.specs:
            for up in st.upstreams:
                if up != SOURCE:
                    assert st.route is not None
                    self.consumers[up].append((st.name, fan(st.route, st.keys)))
        self.taps = {(stage, route) for stage, route in TAPS}
        self.seconds: dict[str, float] = defaultdict(float)

    def feed(self, items: list) -> None:
        """One source batch: :class:`~salvage.flows.messages.Event`,
        :class:`~salvage.flows.messages.Tick` and dead-letter items."""
        t0 = time.perf_counter()
        levels: dict[str, dict[str, list]] = {n: {} for n in self.stages}
        if self.on_tap is not None:
            for item in items:
                if isinstance(item, DeadLetter):
                    self.on_tap(Route.DEAD_LETTER, item)
        keyed = self.route_source(items)
        for name in self.first:
            mine = self.stages[name]
            box = levels[name]
            for k, item in keyed:
                if k in mine:
                    box.setdefault(k, []).append(item)
        self.seconds["routing, KPIs"] += time.perf_counter() - t0
        for st in self.specs:  # topological order
            if levels[st.name]:
                self._run(st.name, levels[st.name], levels)

    def _run(self, name: str, inbox: dict[str, list], levels: dict[str, dict]) -> None:
        stages = self.stages[name]
        emitted: list = []
        t0 = time.perf_counter()
        for key, items in inbox.items():
            if self.inspect is not None:
                self.inspect(name, key, items)
            emitted.extend(stages[key].on_batch(items))
        self.seconds[name] += time.perf_counter() - t0
        if not self.consumers[name]:  # the output stage: (kind, payload) pairs
            t0 = time.perf_counter()
            for kind, payload in emitted:
                self.on_output(kind, payload)
            self.seconds["serialise outputs"] += time.perf_counter() - t0
            return
        t0 = time.perf_counter()
        consumers = self.consumers[name]
        on_tap = self.on_tap
        for pair in emitted:
            if on_tap is not None and (name, pair[0]) in self.taps:
                on_tap(pair[0], pair[1])
            for consumer, route in consumers:
                box = levels[consumer]
                for dest, item in route(pair):
                    box.setdefault(dest, []).append(item)
        self.seconds["routing, KPIs"] += time.perf_counter() - t0
