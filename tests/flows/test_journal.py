"""The epoch journal (flows/journal.py): incremental snapshots that load back exactly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from salvage.flows.journal import EpochJournal, JournalError

KEYS = st.sampled_from([f"o-{i}" for i in range(12)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.binary(max_size=40)),
        st.tuples(st.just("del"), KEYS, st.just(b"")),
        st.tuples(st.just("snap"), st.just(""), st.binary(max_size=8)),
        st.tuples(st.just("crash"), st.integers(0, 6), st.just(b"")),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
@example([("snap", "", b"")] * 7 + [("crash", 0, b""), ("crash", 0, b"")])  # two crashes in a row
def test_any_history_of_changes_snapshots_and_crashes_loads_back_exactly(ops):
    with tempfile.TemporaryDirectory() as tmp:
        journal = EpochJournal(Path(tmp), "case-0000", compact_ratio=0.5, min_segments=2)
        state: dict[str, bytes] = {}
        changed: dict[str, bytes] = {}
        deleted: set[str] = set()
        history: dict[int, tuple[bytes, dict[str, bytes]]] = {}  # n -> what snapshot n saw
        bases: list[int] = []
        n = 0
        for op, key, value in ops:
            if op == "set":
                state[key] = value
                changed[key] = value
                deleted.discard(key)
            elif op == "del" and key in state:
                del state[key]
                changed.pop(key, None)
                deleted.add(key)
            elif op == "snap":
                n += 1
                full = dict(state) if journal.compaction_due() else None
                if full is not None:
                    bases.append(n)
                journal.write(n, value, changed, sorted(deleted), full=full)
                history[n] = (value, dict(state))
                changed, deleted = {}, set()
            elif op == "crash" and history:
                # resume from a committed snapshot still within retention (>= the previous base)
                oldest = bases[-2] if len(bases) >= 2 else bases[0]
                candidates = [m for m in sorted(history) if m >= oldest]
                m = candidates[key % len(candidates)] if isinstance(key, int) else candidates[-1]
                journal = EpochJournal(Path(tmp), "case-0000", compact_ratio=0.5, min_segments=2)
                header, loaded = journal.load(m)
                assert (header, loaded) == history[m]
                state = dict(loaded)
                history = {k: v for k, v in history.items() if k <= m}
                # the bases left on disk: none older than the retention floor (a second crash
                # must not pick a base the journal had already dropped), none after m
                bases = [b for b in bases if oldest <= b <= m]
                n = m
                changed, deleted = {}, set()
        if history:
            last = max(history)
            fresh = EpochJournal(Path(tmp), "case-0000")
            assert fresh.load(last) == history[last]


def test_a_snapshot_costs_what_changed_not_what_is_open(tmp_path):
    journal = EpochJournal(tmp_path, "case-0001")
    state = {f"o-{i}": bytes(200) + str(i).encode() for i in range(5000)}
    journal.write(1, b"h", state, (), full=state)
    full_bytes = journal.last_write_bytes
    touched = {f"o-{i}": b"x" * 201 for i in range(0, 5000, 100)}  # 1% changed
    state.update(touched)
    journal.write(2, b"h", touched, ["o-1"], full=state if journal.compaction_due() else None)
    assert journal.last_write_bytes < 0.02 * full_bytes
    del state["o-1"]
    assert EpochJournal(tmp_path, "case-0001").load(2) == (b"h", state)


def test_a_torn_write_is_an_uncommitted_snapshot(tmp_path):
    journal = EpochJournal(tmp_path, "lane-0000")
    journal.write(1, b"a", {"k": b"1"}, (), full={"k": b"1"})
    journal.write(2, b"b", {"k": b"2"}, ())
    seg = tmp_path / "lane-0000" / "seg-000000000002"
    seg.write_bytes(seg.read_bytes()[:-3])  # the crash cut the file short
    again = EpochJournal(tmp_path, "lane-0000")
    assert again.load(1) == (b"a", {"k": b"1"})
    with pytest.raises(JournalError, match="torn"):
        again.load(2)
    again.write(2, b"c", {"k": b"3"}, ())  # the resumed run writes snapshot 2 anew
    assert EpochJournal(tmp_path, "lane-0000").load(2) == (b"c", {"k": b"3"})


def test_the_first_snapshot_must_be_whole(tmp_path):
    with pytest.raises(JournalError, match="full state"):
        EpochJournal(tmp_path, "x").write(1, b"", {"k": b"v"}, ())
