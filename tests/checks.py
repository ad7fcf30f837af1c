"""River-style checks for every keyed stage (cf. ``river/checks/``): properties any stage must
have, written once and applied to each stage of the graph (``tests/flows/test_stage_checks.py``).

Inputs are real: a simulator log runs through the stage graph in a plain loop
(:class:`salvage.flows.plain.PlainLoop`) and every call of every stage shard is recorded. A check
then replays one shard's recorded calls into fresh stage objects:

* :func:`check_snapshot_round_trip`: snapshot half-way through the Bytewax wrapper's path
  (``_StageLogic.snapshot``), restore, feed the rest to both: identical emissions.
* :func:`check_resume_with_new_config`: restore under another configuration; the stage runs on
  the new one (what a config change between runs promises), and the same inputs still produce
  output at the same pace.
* :func:`check_order_independence`: shuffle the items inside each call (the same items in another
  arrival order within a batch): identical emissions.
* :func:`check_batching_independence`: the same items in coarser calls (pairs of calls merged,
  fewer watermark ticks): the same data items, in the same event-time order, per destination.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from salvage.config import Settings
from salvage.flows.messages import Batch, Event, Route
from salvage.flows.plain import PlainLoop
from salvage.flows.recovery import _StageLogic
from salvage.flows.sources import file_part_id
from salvage.flows.stages import StageConfig
from salvage.flows.topology import StageSpec, graph, stage_config
from salvage.policy.config import load_policy
from salvage.sinks.redis_store import latest_per_order
from tests.flowkit import feed_log

Calls = list[list[Any]]  # the item lists of one shard's successive on_batch calls


class Recording:
    """Every stage call of a plain-loop run over ``log``: ``calls[stage][key]``."""

    def __init__(self, log: Path, shards: int = 2, batch: int = 250) -> None:
        s = Settings(redis_url="", shards=shards, metrics_port=0)
        part = file_part_id(0, log)
        self.cfg = stage_config(s, (part,), case_records=True, score_log=True)
        self.calls: dict[str, dict[str, Calls]] = {}
        self.outputs: list[tuple[str, Any]] = []

        def inspect(name: str, key: str, items: list) -> None:
            self.calls.setdefault(name, {}).setdefault(key, []).append(list(items))

        loop = PlainLoop(self.cfg, lambda k, p: self.outputs.append((k, p)), None, inspect)
        feed_log(loop, log, s, batch)  # the file source's own parse + clocks

    def spec(self, name: str) -> StageSpec:
        return next(st for st in graph(self.cfg) if st.name == name)

    def busiest(self, name: str) -> tuple[str, Calls]:
        """The shard of ``name`` with the most data items, and its calls."""
        shards = self.calls[name]
        key = max(sorted(shards), key=lambda k: sum(_data_items(c) for c in shards[k]))
        return key, shards[key]


def _data_items(call: list) -> int:
    return sum(len(i.items) if type(i) is Batch else type(i) is Event for i in call)


def canon(emitted: list) -> list[str]:
    """Emissions as comparable text: data items one by one, ticks as they are."""
    out = []
    for route, payload in emitted:
        if route in (Route.TICK,) or not isinstance(route, Route):
            out.append(f"{route}|{payload!r}")
            continue
        if isinstance(payload, tuple) and len(payload) == 2 and type(payload[1]) is Batch:
            dest, batch = payload
            out += [f"{route}|{dest}|{t}|{tie}|{p!r}" for t, tie, p in batch.items]
        elif isinstance(payload, tuple) and len(payload) == 2 and type(payload[1]) is Event:
            dest, ev = payload
            out.append(f"{route}|{dest}|{ev.t}|{ev.tie}|{ev.payload!r}")
        else:
            out.append(f"{route}|{payload!r}")
    return out


def per_destination(lines: list[str]) -> dict[str, list[str]]:
    """Data lines grouped by route and destination (order kept inside each group); no ticks."""
    groups: dict[str, list[str]] = {}
    for line in lines:
        route, _, rest = line.partition("|")
        if route == Route.TICK.value:
            continue
        dest = rest.partition("|")[0] if route in _DATA_ROUTES else ""
        groups.setdefault(f"{route}|{dest}", []).append(line)
    return groups


_DATA_ROUTES = {r.value for r in (Route.CASES, Route.CONTEXT, Route.MODELS, Route.DISPATCH)} | {
    Route.LANES.value,
    Route.OUTPUT.value,
}


class _Driver:
    """A stage behind the Bytewax wrapper, fed ``(key, item)`` values as the flow feeds it."""

    def __init__(self, spec: StageSpec, key: str, cfg: StageConfig, state: Any = None) -> None:
        self.key = key
        self.logic = _StageLogic(spec.make, state, cfg)

    def feed(self, call: list) -> list:
        emitted, _ = self.logic.on_batch([(self.key, item) for item in call])
        return emitted

    def snapshot(self) -> Any:
        return self.logic.snapshot()

    @property
    def stage(self) -> Any:
        return self.logic.stage


def _run(driver: _Driver, calls: Calls, stored: list[dict] | None = None) -> list[str]:
    """The canonical emissions of ``calls``. ``stored``: gets the case store's contents after
    each call (case-store records are not in the lines then)."""
    out: list[str] = []
    store: dict[str, tuple[int, Any]] = {}
    for call in calls:
        emitted = driver.feed(call)
        if stored is not None:
            records = [p for r, p in emitted if r is Route.CASE_RECORD]
            emitted = [(r, p) for r, p in emitted if r is not Route.CASE_RECORD]
            # the store after the Redis sink wrote this batch: the version guard (a write
            # applies over a lower or equal version) is latest_per_order over what it held
            held = [(order_id, version, doc) for order_id, (version, doc) in store.items()]
            store = latest_per_order(held + records)
            stored.append(store)
        out += canon(emitted)
    return out


def check_snapshot_round_trip(rec: Recording, name: str) -> None:
    spec = rec.spec(name)
    key, calls = rec.busiest(name)
    half = len(calls) // 2
    original = _Driver(spec, key, rec.cfg)
    _run(original, calls[:half])
    restored = _Driver(spec, key, rec.cfg, original.snapshot())
    assert _run(restored, calls[half:]) == _run(original, calls[half:]), name


def other_config(cfg: StageConfig) -> StageConfig:
    """The same keys and inputs, another policy version and thresholds."""
    policy = load_policy()
    policy = policy.model_copy(update={"version": policy.version + "-resumed"})
    return replace(cfg, policy=policy, intent_threshold=0.75, orphan_wait_us=cfg.orphan_wait_us * 2)


def check_resume_with_new_config(rec: Recording, name: str) -> None:
    spec = rec.spec(name)
    key, calls = rec.busiest(name)
    half = len(calls) // 2
    original = _Driver(spec, key, rec.cfg)
    _run(original, calls[:half])
    new_cfg = other_config(rec.cfg)
    resumed = _Driver(spec, key, new_cfg, original.snapshot())
    if hasattr(resumed.stage, "cfg"):
        assert resumed.stage.cfg is new_cfg, f"{name}: the resumed stage kept the old config"
    after = _run(resumed, calls[half:])
    before = _run(original, calls[half:])
    ticks = [line for line in after if line.startswith("tick|")]
    assert ticks == [line for line in before if line.startswith("tick|")], name
    if name == "dispatch":  # the stage that decides: its triggers carry the new policy
        triggers = [line for line in after if "Trigger(" in line]
        assert triggers, "the recording has no trigger after the resume point"
        assert all(f"policy_version='{new_cfg.policy.version}'" in t for t in triggers)


def check_order_independence(rec: Recording, name: str, seed: int = 7) -> None:
    spec = rec.spec(name)
    key, calls = rec.busiest(name)
    rng = random.Random(seed)
    shuffled: Calls = []
    for call in calls:
        items = [Batch(rng.sample(i.items, len(i.items))) if type(i) is Batch else i for i in call]
        shuffled.append(rng.sample(items, len(items)))
    want = _run(_Driver(spec, key, rec.cfg), calls)
    assert _run(_Driver(spec, key, rec.cfg), shuffled) == want, name


def check_batching_independence(rec: Recording, name: str) -> None:
    """Fewer, larger calls emit the same items to every destination; the case store (dispatch
    writes one document per order and call, its latest) holds the same after each larger call."""
    spec = rec.spec(name)
    key, calls = rec.busiest(name)
    coarse = [calls[i] + calls[i + 1] for i in range(0, len(calls) - 1, 2)]
    if len(calls) % 2:
        coarse.append(calls[-1])
    fine_store: list[dict] = []
    coarse_store: list[dict] = []
    want = per_destination(_run(_Driver(spec, key, rec.cfg), calls, fine_store))
    got = per_destination(_run(_Driver(spec, key, rec.cfg), coarse, coarse_store))
    assert got.keys() == want.keys(), name
    for dest in want:
        assert got[dest] == want[dest], f"{name} -> {dest}"
    # the fine run's store at the end of each pair of calls (and of the odd last one)
    at_coarse = fine_store[1::2] + (fine_store[-1:] if len(calls) % 2 else [])
    assert coarse_store == at_coarse, f"{name}: case store"
    if name == "dispatch":
        assert coarse_store[-1], "the recording has no case-store record"


CHECKS: tuple[Callable[[Recording, str], None], ...] = (
    check_snapshot_round_trip,
    check_resume_with_new_config,
    check_order_independence,
    check_batching_independence,
)
