"""Explicit stage state (flows/state.py): codecs, touched keys, journaled snapshots and resumes.

The pipeline tests drive every stage of the flow with the plain loop (``salvage.flows.plain``:
the flow's stage graph and routing without Bytewax), snapshot every shard into its
epoch journal after each batch, rebuild the stages from the *current* config at a cut point, load
the journal into them and go on: the outputs must equal an uninterrupted run's, byte for byte."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.config import Settings
from salvage.connectors.parse import RawRecord
from salvage.features.eventtime import BEGIN, DAY_US, END
from salvage.flows.journal import EpochJournal
from salvage.flows.messages import Event, Tick
from salvage.flows.plain import PlainLoop
from salvage.flows.sources import _Parser, file_part_id
from salvage.flows.stages import CaseStage, IntentStage, ModelStage, StageConfig
from salvage.flows.stages.base import case_key, model_key
from salvage.flows.state import (
    CODEC_VERSION,
    StageState,
    StateError,
    TrackedDict,
    pack,
    unpack,
)
from salvage.flows.topology import stage_config
from tests.flowkit import sim_log


class Recording:
    """The stage graph in a plain loop (:class:`salvage.flows.plain.PlainLoop`) fed by the file
    source's parser, keeping every output item (serialised) in order."""

    def __init__(self, log: Path, shards: int) -> None:
        s = Settings(redis_url="", shards=shards, metrics_port=0)
        part = file_part_id(0, log)
        self.cfg = stage_config(s, (part,), case_records=True, score_log=True)
        self.parser = _Parser(
            part,
            int(s.dataflow.reorder_tolerance_seconds * 1e6),
            int(s.dataflow.max_lateness_seconds * 1e6),
            -(2**62),
        )
        self.outputs: list[str] = []
        self.loop = PlainLoop(self.cfg, self._keep, self._keep)
        self.stages = self.loop.stages
        self.source = str(log)

    def _keep(self, kind: Any, payload: Any) -> None:
        if hasattr(payload, "model_dump_json"):
            self.outputs.append(f"{kind} {payload.model_dump_json()}")
        else:
            self.outputs.append(f"{kind} {json.dumps(payload, sort_keys=True, default=str)}")

    def feed(self, lines: list[bytes], line_no: int, final: bool) -> None:
        items: list = []
        for i, line in enumerate(lines):
            if line.strip():
                self.parser.handle(RawRecord(self.source, 0, line_no + i + 1, line.rstrip()), items)
        self.parser.tick(items, END if final else None)
        self.loop.feed(items)


def _batches(log: Path, size: int = 400) -> list[list[bytes]]:
    lines = log.read_bytes().splitlines(keepends=True)
    return [lines[i : i + size] for i in range(0, len(lines), size)]


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> tuple[Path, list[list[bytes]], list[str]]:
    log = sim_log(tmp_path_factory.mktemp("state"), "launch-week-backlog", 500, 11)
    batches = _batches(log)
    ref = Recording(log, shards=3)
    fed = 0
    for i, lines in enumerate(batches):
        ref.feed(lines, fed, final=i == len(batches) - 1)
        fed += len(lines)
    assert len(ref.outputs) > 100
    return log, batches, ref.outputs


def _journals(pipe: Recording, root: Path, **kw) -> dict[tuple[str, str], EpochJournal]:
    return {
        (name, key): EpochJournal(root, f"{name}/{key}", **kw)
        for name, stages in pipe.stages.items()
        for key in stages
    }


@pytest.mark.parametrize("cut", [2, 9])
def test_snapshot_load_and_go_on_equals_the_uninterrupted_run(story, tmp_path, cut):
    log, batches, expected = story
    pipe = Recording(log, shards=3)
    states = {
        (name, key): StageState(stage).track()
        for name, stages in pipe.stages.items()
        for key, stage in stages.items()
    }
    journals = _journals(pipe, tmp_path, compact_ratio=0.3, min_segments=2)
    fed = 0
    for n, lines in enumerate(batches[:cut], start=1):
        pipe.feed(lines, fed, final=False)
        fed += len(lines)
        for ident, state in states.items():  # what _StageLogic.snapshot does at an epoch's end
            journal = journals[ident]
            header, changed, deleted = state.delta()
            full = state.entries() if journal.compaction_due() else None
            journal.write(n, header, changed, deleted, full)
    bases = [p for p in tmp_path.rglob("base-*") if not p.name.endswith("-000000000001")]
    if cut > 4:
        assert bases, "compaction rewrote a base along the way"
    # a "crash" after snapshot `cut`: fresh stages from the config, loaded from the journals
    fresh = Recording(log, shards=3)
    for (name, key), _state in states.items():
        stage = fresh.stages[name][key]
        header, entries = EpochJournal(tmp_path, f"{name}/{key}").load(cut)
        StageState(stage).load(header, entries, fresh.cfg)
        pipe.stages[name][key] = stage  # the source (its parser and clock) goes on
    for i, lines in enumerate(batches[cut:], start=cut):
        pipe.feed(lines, fed, final=i == len(batches) - 1)
        fed += len(lines)
    assert pipe.outputs == expected


def _check_timers(pipe: Recording) -> tuple[int, int]:
    """Every open case with a deadline has its entry in its shard's timer heap, under
    ``case.timer``; returns (heap entries, open cases) over the case shards."""
    entries = cases = 0
    for name, stages in pipe.stages.items():
        if not name.startswith("case"):
            continue
        for stage in stages.values():
            heap = set(stage.timers)
            for oid, case in stage.cases.items():
                due = case.next_deadline(
                    pipe.cfg.return_window_us, stage.journey, pipe.cfg.promise_rechecks_us
                )
                assert case.timer == due, oid
                assert not due or (due, oid) in heap, oid
            entries += len(stage.timers)
            cases += len(stage.cases)
    return entries, cases


def test_an_update_that_keeps_the_deadline_schedules_nothing(story, tmp_path):
    """A case's timer entry is pushed when its next deadline moves, not on every update (the heap
    held ~3.7 entries per open case when every update pushed one); after a resume the entries
    are rebuilt from the cases (the heaps are not state)."""
    log, batches, expected = story
    pipe = Recording(log, shards=3)
    fed = 0
    ratios = []
    for i, lines in enumerate(batches):
        pipe.feed(lines, fed, final=i == len(batches) - 1)
        fed += len(lines)
        entries, cases = _check_timers(pipe)
        if cases > 100:
            ratios.append(entries / cases)
        if i == len(batches) // 2:  # a resume halfway: fresh stages loaded from a snapshot
            fresh = Recording(log, shards=3)
            for name, stages in pipe.stages.items():
                for key, stage in stages.items():
                    state = StageState(stage)
                    header, entries_ = state._header(), state.entries()
                    loaded = fresh.stages[name][key]
                    StageState(loaded).load(header, entries_, fresh.cfg)
                    stages[key] = loaded
            _check_timers(pipe)
    assert pipe.outputs == expected
    assert ratios and max(ratios) < 2.0, max(ratios)


def test_a_snapshot_writes_only_what_changed(story, tmp_path):
    log, batches, _ = story
    pipe = Recording(log, shards=1)
    fed = 0
    for lines in batches[:6]:
        pipe.feed(lines, fed, final=False)
        fed += len(lines)
    stage = pipe.stages["cases"][case_key(0)]
    state = StageState(stage).track()
    _header, entries = state.full()
    assert len(stage.cases) > 50 and sum(k.startswith("c:") for k in entries) == len(stage.cases)
    _header, changed, deleted = state.delta()
    assert changed == {} and deleted == []  # nothing touched since
    order_id = sorted(stage.cases)[0]
    stage.cases[order_id].contacts_total += 1  # through [] : touched
    _h, changed, deleted = state.delta()
    assert list(changed) == [f"c:{order_id}"] and deleted == []
    assert unpack(changed[f"c:{order_id}"])[[*stage.cases[order_id].__slots__].index("order_id")]
    del stage.cases[order_id]
    _h, changed, deleted = state.delta()
    assert changed == {} and deleted == [f"c:{order_id}"]
    # the model shard's River models are rewritten only when they learned
    models = StageState(pipe.stages["models"][model_key(0)]).track()
    _h, entries = models.full()
    assert {"m:recoverability", "m:abuse"} <= set(entries)
    _h, changed, _d = models.delta()
    assert not any(k.startswith("m:") for k in changed)
    pipe.stages["models"][model_key(0)].models.abuse.labels += 1
    _h, changed, _d = models.delta()
    assert [k for k in changed if k.startswith("m:")] == ["m:abuse"]


def _cfg(**kw) -> StageConfig:
    return StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("t#0",), **kw)


def test_a_resume_builds_from_the_new_config_and_keeps_the_state():
    """Timers follow the new return window; a new input partition is waited for; the learned
    intent classifier stays while its threshold is this run's."""
    from tests.helpers import event, line, order_placed

    before = _cfg(return_window_us=30 * DAY_US, infer_intents=False)
    stage = CaseStage(0, before)
    state = StageState(stage).track()
    parser = _Parser("t#0", 0, 7 * DAY_US, BEGIN)
    items: list = []
    at = "2026-03-04T10:00:00Z"
    scan = event("s1", "carrier_scan", "o1", at, scan="delivered", courier="dhl")
    for n, doc in enumerate((order_placed("o1", "2026-03-02T10:00:00Z"), scan)):
        parser.handle(RawRecord("t", 0, n, line(doc)), items)
    delivered = items[-1].t
    day = delivered + DAY_US
    stage.on_batch([*items, Tick("t#0", day, day)])
    header, entries = state.full()
    after = replace(before, return_window_us=14 * DAY_US, sources=("t#0", "t#1"))
    resumed = CaseStage(0, after)
    StageState(resumed).load(header, entries, after)
    assert resumed.reorderer.upstream == {"t#0": day, "t#1": BEGIN}
    t = delivered + 15 * DAY_US
    resumed.on_batch([Tick("t#0", t, t), Tick("t#1", t, t)])
    assert "o1" not in resumed.cases and "o1" in resumed.tombstones  # closed at the new window

    clf = IntentStage(_cfg(intent_threshold=0.6))
    clf.intents.examples = 40
    clf.recent.update({7: None, 3: None, 5: None})
    header, entries = StageState(clf).full()
    back = IntentStage(_cfg(intent_threshold=0.8))
    StageState(back).load(header, entries, _cfg(intent_threshold=0.8))
    assert back.intents.examples == 40 and back.intents.threshold == 0.8
    assert list(back.recent) == [7, 3, 5]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 30)),
            st.tuples(st.just("evict"), st.just(0)),
            st.tuples(st.just("snap"), st.just(0)),
        ),
        max_size=60,
    )
)
def test_an_insertion_ordered_map_loads_back_in_its_order(ops):
    """The intent stage's recent event ids evict the oldest first: any history of inserts,
    evictions and snapshots loads back with the same order."""
    import tempfile

    stage = IntentStage(_cfg())
    state = StageState(stage).track()
    with tempfile.TemporaryDirectory() as tmp:
        journal = EpochJournal(Path(tmp), "intent", min_segments=2, compact_ratio=0.2)
        n = 0
        for op, value in [*ops, ("snap", 0)]:
            recent = stage.recent
            if op == "add" and value not in recent:
                recent[value] = None
            elif op == "evict" and recent:
                del recent[next(iter(recent))]
            elif op == "snap":
                n += 1
                header, changed, deleted = state.delta()
                full = state.entries() if journal.compaction_due() else None
                journal.write(n, header, changed, deleted, full)
        header, entries = journal.load(n)
        back = IntentStage(_cfg())
        StageState(back).load(header, entries, _cfg())
        assert list(back.recent) == list(stage.recent)


def test_state_of_another_codec_or_stage_is_refused():
    stage = ModelStage(0, _cfg())
    header, entries = StageState(stage).full()
    doc = unpack(header)
    with pytest.raises(StateError, match="not a CaseStage"):
        StageState(CaseStage(0, _cfg())).load(header, entries, _cfg())
    doc["codec"] = CODEC_VERSION + 1
    with pytest.raises(StateError, match="codec"):
        StageState(ModelStage(0, _cfg())).load(pack(doc), entries, _cfg())


def test_tracked_dict_records_reads_for_update_writes_and_deletes():
    d = TrackedDict({"a": [1], "b": [2]})
    assert "a" in d and list(d) == ["a", "b"] and d.touched == set()
    d.get("a").append(3)
    d["c"] = [4]
    d.pop("b")
    d.setdefault("e", [])
    assert d.touched == {"a", "b", "c", "e"}
    import pickle

    assert type(pickle.loads(pickle.dumps(d))) is dict  # stage pickles stay plain


@pytest.mark.parametrize("mode", ["journal", "inline"])
def test_the_bytewax_logic_resumes_from_what_its_snapshot_returned(tmp_path, mode):
    """``_StageLogic.snapshot`` returns a tiny JournalRef (journal) or the whole state (inline);
    a logic built from it goes on exactly like the original; without a store nothing is paid."""
    from salvage.flows.journal import JournalRef
    from salvage.flows.recovery import InlineState, StateStore, _StageLogic
    from tests.helpers import event, line, order_placed

    cfg = _cfg(infer_intents=False)
    store = StateStore(tmp_path / "journal" if mode == "journal" else None, inline=True)
    parser = _Parser("t#0", 0, 7 * DAY_US, BEGIN)
    items: list = []
    docs = [order_placed(f"o{i}", f"2026-03-0{2 + i % 3}T10:00:00Z") for i in range(6)]
    at = "2026-03-06T10:00:00Z"
    docs.append(event("s1", "carrier_scan", "o1", at, scan="delivered", courier="dhl"))
    for n, doc in enumerate(docs):
        parser.handle(RawRecord("t", 0, n, line(doc)), items)
    assert all(type(x) is Event for x in items), items
    first, second = items[:4], items[4:]
    late = second[-1].t + 40 * DAY_US

    def make(key: str) -> CaseStage:
        return CaseStage(int(key.rsplit("-", 1)[1]), cfg)

    logic = _StageLogic(make, None, cfg, store, "cases")
    logic.on_batch([("case-0000", x) for x in [*first, Tick("t#0", first[-1].t, 0)]])
    snap = logic.snapshot()
    assert isinstance(snap, JournalRef if mode == "journal" else InlineState)
    resumed = _StageLogic(make, snap, cfg, store, "cases")
    rest = [("case-0000", x) for x in [*second, Tick("t#0", late, late)]]
    want, _ = logic.on_batch(rest)
    got, _ = resumed.on_batch(rest)
    assert [(r, str(p)) for r, p in got] == [(r, str(p)) for r, p in want] and len(want) >= 3
    if mode == "journal":  # the next snapshot is a segment of the same journal
        assert resumed.snapshot() == JournalRef("cases/case-0000", 2)
    off = _StageLogic(make, None, cfg, StateStore(), "cases")
    off.on_batch(rest)
    assert off.snapshot() is None
