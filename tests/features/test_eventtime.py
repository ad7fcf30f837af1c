import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.features import eventtime
from salvage.features.eventtime import (
    END,
    IDLE,
    PartitionClock,
    Reorderer,
    from_us,
    iso,
    to_us,
)

_FIRST_US = to_us(datetime(1, 1, 1, tzinfo=UTC))
_LAST_US = to_us(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


def test_time_round_trip():
    for us in (0, 1, 1_772_445_600_123_456):
        assert to_us(from_us(us)) == us


def _iso_reference(us: int) -> str:
    """How iso printed a time before its tables (the datetime round trip)."""
    return from_us(us).isoformat().replace("+00:00", "Z")


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.integers(_FIRST_US, _LAST_US),  # anywhere in the datetime range
        st.integers(0, 4_000_000_000_000_000),  # the event times of real logs
        st.integers(0, 4_000_000_000).map(lambda s: s * 1_000_000),  # whole seconds
        st.integers(-50_000, 50_000).map(lambda d: d * eventtime.DAY_US),  # midnights
    )
)
def test_iso_prints_what_the_datetime_round_trip_printed(us: int) -> None:
    assert iso(us) == _iso_reference(us)
    assert iso(us) == _iso_reference(us)  # again, from the day cache


def test_iso_day_cache_is_bounded_and_out_of_range_days_fail_as_before() -> None:
    eventtime._DAY_PREFIX.clear()
    for day in range(5000):
        assert iso(day * eventtime.DAY_US + 1) == _iso_reference(day * eventtime.DAY_US + 1)
    assert 0 < len(eventtime._DAY_PREFIX) <= 4096
    for us in (_LAST_US + 1, _FIRST_US - 1):
        with pytest.raises((ValueError, OverflowError)):
            _iso_reference(us)
        with pytest.raises((ValueError, OverflowError)):
            iso(us)


def test_partition_clock_restamps_late_events_and_rejects_too_late():
    clock = PartitionClock(tolerance_us=10, max_lateness_us=100)
    assert clock.observe(1000) == 1000
    assert clock.watermark == 990
    assert clock.observe(995) == 995  # within tolerance: its own time
    assert clock.observe(950) == 990  # late: applied at the watermark
    assert clock.observe(880) is None  # more than max_lateness behind: too late
    assert clock.watermark == 990


def test_reorderer_releases_in_order_below_the_minimum_watermark():
    r = Reorderer(["a", "b"])
    for t, tie in ((30, "x"), (10, "y"), (20, "z")):
        assert r.push(t, tie, tie)
    r.tick("a", 25)
    assert r.release() == []  # b has said nothing yet
    r.tick("b", 21)
    assert [p for _, _, p in r.release()] == ["y", "z"]
    assert not r.push(5, "late", None)  # below the released watermark
    r.tick("b", IDLE)  # b idle: only a counts
    r.tick("a", END)
    assert [p for _, _, p in r.release()] == ["x"]


def _run_partitions(parts: dict[str, list[tuple[int, str]]], rng: random.Random, tol: int):
    """Feed partitions (each in its own order) in a random interleaving; return release order."""
    clocks = {p: PartitionClock(tol, 10**9) for p in parts}
    r = Reorderer(parts)
    cursors = dict.fromkeys(parts, 0)
    released = []
    live = [p for p in parts if parts[p]]
    for p in parts:
        if not parts[p]:
            r.tick(p, END)
    while live:
        p = rng.choice(live)
        n = rng.randint(1, 3)
        for t, tie in parts[p][cursors[p] : cursors[p] + n]:
            eff = clocks[p].observe(t)
            assert r.push(eff, tie, tie)
        cursors[p] += n
        done = cursors[p] >= len(parts[p])
        r.tick(p, END if done else clocks[p].watermark)
        if done:
            live.remove(p)
        released += [tie for _, tie, _ in r.release()]
    return released


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 500)), min_size=1, max_size=60),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
)
def test_release_order_does_not_depend_on_interleaving(events, seed1, seed2):
    parts: dict[str, list[tuple[int, str]]] = {f"p{i}": [] for i in range(4)}
    for i, (p, t) in enumerate(events):
        parts[f"p{p}"].append((t, f"e{i:03d}"))
    for evs in parts.values():
        evs.sort()
    a = _run_partitions(parts, random.Random(seed1), tol=0)
    b = _run_partitions(parts, random.Random(seed2), tol=0)
    assert a == b
    assert sorted(a) == sorted(tie for evs in parts.values() for _, tie in evs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=50), st.randoms())
def test_shuffling_within_tolerance_gives_the_in_order_result(times, rng):
    tol = 100
    ordered = sorted((t, f"e{i:03d}") for i, t in enumerate(times))
    # displace each event by less than the tolerance: sort by (t + jitter)
    shuffled = sorted(ordered, key=lambda e: e[0] + rng.randint(0, tol - 1))
    expect = _run_partitions({"p": ordered}, random.Random(0), tol)
    got = _run_partitions({"p": shuffled}, random.Random(0), tol)
    assert got == expect


# a batch from one upstream: (t, tiebreak) with repeats (a redelivered event), payloads that
# order (ints) and that do not (dicts)
runs = st.lists(
    st.tuples(
        st.integers(0, 60),
        st.sampled_from(["a", "b", "c"]),
        st.one_of(st.integers(0, 3), st.fixed_dictionaries({"k": st.integers(0, 3)})),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.lists(runs, max_size=4), st.booleans(), st.integers(0, 80), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    sort_some=st.booleans(),
)
def test_release_runs_is_push_many_then_release(calls, sort_some) -> None:
    """Reorderer.release_runs(batches) gives what push_many of each + release() give (the items,
    their order, ties included, the low watermark and the buffer left), whenever it answers;
    when it does not, it changed nothing. A call: its batches (each sorted or not), whether a
    tick came, the tick's watermark, and whether the upstream went idle."""
    fast, ref = Reorderer(["u"]), Reorderer(["u"])
    for batches, ticked, wm, idle in calls:
        if sort_some:
            batches = [sorted(b, key=lambda x: (x[0], x[1])) for b in batches]
        for r in (fast, ref):
            if ticked:
                r.tick("u", IDLE if idle else wm, seen=wm)
        got = fast.release_runs([list(b) for b in batches]) if ticked and batches else None
        if got is None:
            assert (fast.low, fast._heap, fast._seq) == (ref.low, ref._heap, ref._seq)
            for b in batches:
                fast.push_many(b)
            got = fast.release() if ticked else []
        for b in batches:
            ref.push_many(b)
        want = ref.release() if ticked else []
        assert got == want
        assert (fast.low, fast._heap, fast._seq) == (ref.low, ref._heap, ref._seq)


def test_release_runs_answers_when_everything_is_released() -> None:
    """The case it exists for (so the equality test above is not vacuous): the batches of
    several upstreams, all below the tick, come back merged; ties keep their arrival order."""
    r = Reorderer(["u", "v"])
    r.tick("u", 100)
    r.tick("v", 120)
    one = [(10, "x", {"a": 1}), (50, "x", {"a": 2})]
    two = [(10, "x", {"a": 0}), (30, "y", {"a": 3})]
    assert r.release_runs([one, two]) == [one[0], two[0], two[1], one[1]]
    assert r.low == 100 and len(r) == 0
    r.tick("u", 200)
    r.tick("v", 200)
    assert r.release_runs([[(90, "x", 1)]]) is None  # below the watermark: push_many clamps it
    assert r.release_runs([[(150, "x", 1), (250, "x", 2)]]) is None  # 250 stays buffered
