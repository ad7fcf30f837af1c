"""Parse cost: the msgspec fast path vs the pydantic path, µs per event, same run, same records.

    .venv/bin/python benchmarks/parse.py --events 50000

Records: the first --events events of each simulator scenario (seed 7, real-style text), as the
log serialises them, plus --bad-share of them mutated into dead letters (a wrong type, a missing
field, a bad enum, a bad timestamp). Checks first that both paths give equal results on every
record (same model class and state, or the same dead letter). Then each path parses each chunk
of --chunk records --repeats times, alternating; the best CPU time (this thread's, so the other
processes of a shared machine count little) of each chunk is summed, with the GC thresholds of
``salvage run``. Last line: ``parse_ratio=R`` (fast / pydantic per event; below 1 is faster).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import time

from _common import machine, say

from salvage.connectors.outputs import DeadLetter
from salvage.connectors.parse import RawRecord, parse
from salvage.connectors.simulator import SCENARIOS, dumps, generate
from salvage.runner import tuned_gc


def records(events: int, bad_share: float, seed: int = 7) -> list[RawRecord]:
    rng = random.Random(seed)
    per = max(1, events // len(SCENARIOS))
    docs: list[dict] = []
    for scenario in SCENARIOS:
        stream = generate(scenario, per, seed, variants=("realistic-text",))
        docs += itertools.islice((doc for kind, doc in stream if kind == "event"), per)
    out = []
    for i, doc in enumerate(docs):
        if rng.random() < bad_share:
            doc = dict(doc)
            match rng.randrange(4):
                case 0:
                    doc["order_id"] = 12345
                case 1:
                    doc.pop("event_id")
                case 2:
                    doc["event_type"] = "teleported"
                case _:
                    doc["occurred_at"] = "yesterday"
        out.append(RawRecord("bench", 0, i, dumps(doc).encode()))
    return out


def same(a: object, b: object) -> bool:
    if isinstance(a, DeadLetter) or isinstance(b, DeadLetter):
        return a == b
    return type(a) is type(b) and a.__getstate__() == b.__getstate__()  # type: ignore[attr-defined]


def timed(recs: list[RawRecord], fast: bool) -> float:
    started = time.thread_time()
    for raw in recs:
        parse(raw, fast)
    return time.thread_time() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--bad-share", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=500)
    args = ap.parse_args()
    say(f"machine: {machine()}")
    recs = records(args.events, args.bad_share)
    bad = sum(isinstance(parse(r, False), DeadLetter) for r in recs)
    differ = sum(not same(parse(r, True), parse(r, False)) for r in recs)
    say(f"{len(recs):,} records ({bad:,} dead letters); fast != pydantic on {differ}")
    if differ:
        raise SystemExit("the fast path disagrees with pydantic")
    # chunks of --chunk records, each timed --repeats times per path, alternating, best of each
    # chunk summed: the other processes on a shared machine cost both paths alike
    chunks = [recs[i : i + args.chunk] for i in range(0, len(recs), args.chunk)]
    best = {True: 0.0, False: 0.0}
    gc.collect()
    gc.freeze()  # the records are long-lived: out of the cyclic GC's way, as a flow's state is
    with tuned_gc():  # salvage run's GC thresholds
        for chunk in chunks:
            for fast in (False, True):
                best[fast] += min(timed(chunk, fast) for _ in range(args.repeats))
    old, new = (best[f] / len(recs) * 1e6 for f in (False, True))
    print(f"pydantic_us={old:.2f} fast_us={new:.2f} events={len(recs)}")
    print(f"parse_ratio={new / old:.3f}")


if __name__ == "__main__":
    main()
