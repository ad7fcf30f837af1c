"""``salvage`` with wall-clock stamps at three points of each event's way (``latency.py
--breakdown``): read from Kafka by the source, applied by its case shard (out of the event-time
reorderer: the watermark let it go), its trigger built by the dispatch stage (in Kafka mode
published from there: ``StageConfig.direct_triggers``), and the trigger handed to the
``interventions`` producer.

Run as the ``salvage`` command line (``python benchmarks/_latency_trace.py run --follow``); the
stamps (event id -> wall time, first time seen) are written as JSON to ``$BENCH_TRACE_OUT`` when
the process exits. The product's code is wrapped here, not changed: it has no tracing hooks.
"""

from __future__ import annotations

import atexit
import json
import os
import time

from salvage.cli import main
from salvage.flows import sources
from salvage.flows.messages import Event
from salvage.flows.stages import case, dispatch
from salvage.sinks import kafka

STAMPS: dict[str, dict[str, float]] = {"read": {}, "case": {}, "dispatch": {}, "sink": {}}


def _wrap() -> None:
    read, applied, decided, sunk = (STAMPS[k] for k in ("read", "case", "dispatch", "sink"))
    next_batch = sources._KafkaPartition.next_batch
    build_trigger = dispatch.build_trigger
    apply_event = case.CaseStage._apply_event
    write_batch = kafka._KafkaOutputPartition.write_batch

    def traced_next_batch(self):  # type: ignore[no-untyped-def]
        out = next_batch(self)
        now = time.time()
        for item in out:
            if type(item) is Event:
                eid = getattr(item.payload, "event_id", None)
                if eid is not None:
                    read.setdefault(eid, now)
        return out

    def traced_apply_event(self, case_, t, tie, ev, inferred, out):  # type: ignore[no-untyped-def]
        applied.setdefault(ev.event_id, time.time())
        return apply_event(self, case_, t, tie, ev, inferred, out)

    def traced_build_trigger(decision, **kw):  # type: ignore[no-untyped-def]
        trig = build_trigger(decision, **kw)
        decided.setdefault(trig.source_event_id, time.time())
        return trig

    def traced_write_batch(self, items):  # type: ignore[no-untyped-def]
        if "interventions" in self._topic:
            now = time.time()
            for _key, value in items:
                sunk.setdefault(json.loads(value).get("source_event_id") or "", now)
        return write_batch(self, items)

    sources._KafkaPartition.next_batch = traced_next_batch  # type: ignore[method-assign]
    case.CaseStage._apply_event = traced_apply_event  # type: ignore[method-assign]
    dispatch.build_trigger = traced_build_trigger
    kafka._KafkaOutputPartition.write_batch = traced_write_batch  # type: ignore[method-assign]


def _dump() -> None:
    with open(os.environ["BENCH_TRACE_OUT"], "w") as f:
        json.dump(STAMPS, f)


if __name__ == "__main__":
    _wrap()
    atexit.register(_dump)
    main()
