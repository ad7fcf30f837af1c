"""Bytewax sources: an event-log file and Kafka topics. Both parse, clock and tick.

Each source partition turns raw bytes into validated events (or dead letters), applies its
:class:`~salvage.features.eventtime.PartitionClock` (late events get a deterministic effective
time) and
ends every batch with a watermark tick. Items:

* :class:`~salvage.flows.messages.Event` ``(effective_time_us, tiebreak, event)``
* :class:`~salvage.connectors.outputs.DeadLetter`
* :class:`~salvage.flows.messages.Tick` ``(partition_id, watermark_us, latest_event_time_us)``

**Draining.** :func:`request_stop` (what ``salvage run`` calls on SIGTERM/SIGINT) makes every
partition finish at its next batch boundary *without* the end-of-input tick: what is buffered in
the stages stays in their state, the dataflow completes normally (sinks flushed and closed, final
Bytewax snapshot written), and a restart with the same ``--recovery-dir`` resumes exactly there.
"""

from __future__ import annotations

import bisect
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from salvage.connectors.events import STREAM_OF, Stream
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetter, DeadLetterKind
from salvage.connectors.parse import (
    DIGEST_ENCODE,
    MAX_EVENT_BYTES,
    RawRecord,
    dead_letter,
    event_tie,
    parse,
)
from salvage.connectors.partitioning import partition_of
from salvage.features.eventtime import BEGIN, END, IDLE, PartitionClock, to_us
from salvage.flows.items import Overdue
from salvage.flows.messages import Event, Tick
from salvage.sinks import metrics

if TYPE_CHECKING:
    from salvage.config import Settings

Item = Event | Tick | DeadLetter  # what a source partition emits

# event type -> its stream's name (``STREAM_OF[...].value`` without the enum property per event)
_STREAM_VALUE: dict[str, str] = {k: v.value for k, v in STREAM_OF.items()}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_crc32 = zlib.crc32
_new_event = tuple.__new__  # Event(...) without NamedTuple's Python-level __new__

_STOP = threading.Event()
# an empty Kafka partition is polled again after 5 ms, then every 10 ms while it stays empty (an
# idle pipeline does not spin: 3.9% of a core, 2.8% with a 40 ms cap; a sparse partition's next
# event waits at most 10 ms: 10,000 events/s p99 216-222 ms in 3 runs, 195-283 ms with 40 ms)
POLL_BACKOFF_MIN_S = 0.005
POLL_BACKOFF_MAX_S = 0.010
# an event more than max_jump ahead of its partition's clock is held; with this many held, the
# earliest is applied (confirmed by the others: see _Parser)
JUMP_CONFIRM = 3
# a partition waking from idle holds the watermark until every idle partition has checked its end
# offset afresh at least this long after the wake (what a producer sends together arrives within
# it; the checks find what is already at the broker, whatever the fetch delays); each such check
# waits at most WAKE_CHECK_TIMEOUT_S for the broker (no answer: that partition counts as behind)
WAKE_SETTLE_S = 0.1
WAKE_CHECK_TIMEOUT_S = 2.0
# checked clocks (_KafkaPartition._advance): a partition with nothing unread takes the highest
# event time this process had read CLOCK_SETTLE_S before its fresh end-offset check was sent (how
# far a producer's appends to different partitions may trail one another); it asks at most every
# CLOCK_CHECK_EVERY_S
CLOCK_SETTLE_S = 0.03
CLOCK_CHECK_EVERY_S = 0.01
# time-bounded Kafka reads (_Pace): the fewest messages a read may be limited to, and the share of
# its CPU and message sums a worker keeps at each read (a moving ratio over the last rounds)
MIN_PACED_READ = 32
PACE_KEEP = 0.98


def request_stop() -> None:
    """Ask every source partition of this process to stop at its next batch boundary (drain)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a previous stop request (before starting another run in the same process)."""
    _STOP.clear()


class _Parser:
    """Parse + clock for one partition; shared by the file and Kafka partitions.

    **Clock bound** (``max_jump_us``, DESIGN §11): one event may move its partition's clock only
    by that much, so that one event with a broken clock cannot move the watermark (every later
    event would be late, or ``too_late``). An event further ahead of the partition's latest event
    time is *held* (not applied, the clock does not move) and then (:meth:`_settle`)

    * applied, in the order read, once the clock comes within the bound of it (the stream caught
      up with it: ``delivered`` at 22:00 held seven hours after ``in_transit`` at 15:00, then
      ``out_for_delivery`` at 19:00 uploaded late by the carrier; a refund export 8 h ahead of a
      partition whose other source lags), whatever stragglers came in between;
    * confirmed when :data:`JUMP_CONFIRM` are held (in a row or not): the earliest of them is
      applied (the partition really moved on, a quiet night, a weekend; the others are at least
      as far ahead) and the rest held afresh from there; one read before it, more than twice
      the bound ahead of it, that no event read after it reaches (nothing supports it: a
      future-dated event on a sparse partition) is ``bad_timestamp`` there;
    * ``bad_timestamp`` only when the stream moved on by a whole bound without reaching it: the
      events read after it, applied as they came, moved the clock ``max_jump`` (held events
      caught up with or confirmed do not count: on a sparse partition every event is a jump) and
      it is still beyond the bound; so an event up to twice the bound ahead of its partition's
      clock is never rejected. Or at a confirmation, as above. (Until session 26 the first event
      that moved the clock on without bringing it within the bound rejected it: a straggler
      from a batched source, an hour on, made a valid refund 7 h ahead a dead letter.) Late,
      straggling or re-published events that do not move the clock decide nothing.

    At the end of input (file mode, ``--to-end``) what is still held is applied: nothing after it
    can be made late by it, and a log's sparse tail is normal. In Kafka mode the same holds once
    the partition is caught up (a fresh end-offset check) and its process quiet (``idle_s``):
    that is where a following run's input ends for now.

    **First event.** A partition's first event has no clock to be judged by; it is *pending*
    until the next one: applied first if that one is not more than the bound behind it (any
    normal start), else (the first was far ahead: a future-dated first event in a history replay
    made every later event of its partition ``too_late``) the next one starts the clock and the
    first is a held jump like any other. File mode's floor counts a pending partition as started
    at its first event (as Kafka mode, which waits for every partition, has it).

    While events are held, a Kafka partition's resume position (its snapshot) stays at the first
    held one, so a restart re-reads them (file mode keeps them in its snapshot instead); at most
    :data:`JUMP_CONFIRM` ``- 1`` are held after any event, so that position trails by a few
    events of the partition.
    """

    def __init__(
        self,
        part_id: str,
        tolerance_us: int,
        max_lateness_us: int,
        max_t: int,
        max_future_us: int = 0,
        max_jump_us: int = 0,
    ) -> None:
        self.part_id = part_id
        self.clock = PartitionClock(tolerance_us, max_lateness_us, max_t)
        self.last_tick: int | None = None
        self.max_future_us = max_future_us  # 0: no check
        self.max_jump_us = max_jump_us  # 0: no bound
        # held events (raw, event, time, resume mark, ``moved`` when held), in the order read;
        # see the class docstring
        self.held: list[tuple[RawRecord, Any, int, Any, int]] = []
        # how far events applied as they were read (not held ones caught up with or confirmed)
        # moved the clock while something was held: the stream moving on (see _settle)
        self.moved = 0
        # no event leaves before this time (file mode: what the file's tick already promised,
        # see _KafkaLayout); BEGIN: the clock's own watermark is the only bound
        self.floor = BEGIN

    def _from_future(self, raw: RawRecord, event, t: int) -> DeadLetter | None:
        """An event time past the wall clock by more than the allowance is a broken clock, not an
        event: accepted, it would move the partition's watermark years ahead and make every later
        event on the partition ``too_late`` (and the watermark is in the recovery snapshot)."""
        ahead = t - time.time_ns() // 1000
        if ahead <= self.max_future_us:
            return None
        return dead_letter(
            raw,
            DeadLetterKind.BAD_TIMESTAMP,
            f"occurred_at is {ahead / 86_400e6:.1f} days ahead of the wall clock "
            f"(allowed: {self.max_future_us / 1e6:.0f}s, SALVAGE_MAX_FUTURE_SECONDS)",
            event_id=event.event_id,
            order_id=event.order_id,
        )

    def handle(self, raw: RawRecord, out: list[Item], mark: Any = None) -> None:
        """Parse one record. ``mark``: where to resume to re-read it (kept while it is held)."""
        result = parse(raw)
        if not hasattr(result, "event_type"):
            metrics.DEAD_LETTERS.labels(result.kind.value).inc()
            out.append(result)
            return
        self.handle_event(raw, result, out, mark)

    def handle_value(
        self,
        source: str,
        partition: int,
        offset: int,
        value: bytes,
        stream: Stream | None,
        out: list[Item],
        mark: Any = None,
    ) -> None:
        """:meth:`handle` of ``RawRecord(source, partition, offset, value, stream)`` (a Kafka
        message), as :meth:`_KafkaLayout.handle_line` does for a file's line: the common case (a
        record the fast parse accepts, of the partition's stream, applied on time or late while
        nothing is held) in :meth:`handle_parsed`, without a record. The record is built only for
        what needs it (a dead letter, a held event, or anything else :meth:`handle` decides:
        then it does)."""
        result = parse_fast(value) if len(value) <= MAX_EVENT_BYTES else None
        if result is None or (stream is not None and STREAM_OF[result.event_type] != stream):
            self.handle(RawRecord(source, partition, offset, value, stream), out, mark)
            return
        self.handle_parsed(source, partition, offset, value, stream, result, out, mark)

    def handle_parsed(
        self,
        source: str,
        partition: int,
        offset: int,
        value: bytes,
        stream: Stream | None,
        result,
        out: list[Item],
        mark: Any = None,
    ) -> None:
        """:meth:`handle_event` of ``RawRecord(source, partition, offset, value, stream)`` and
        ``result`` (what the fast parse made of the value), with an event applied on time or late
        while nothing is held in this frame; :meth:`handle_event` (with the record) for the rest."""
        clock = self.clock
        before = clock.max_t
        t = (result.occurred_at - _EPOCH) // _ONE_US  # to_us, inline
        wm = BEGIN if before == BEGIN else before - clock.tolerance_us  # clock.watermark
        if (
            self.held  # held events: this one may confirm or reject them
            or (self.max_future_us and t - time.time_ns() // 1000 > self.max_future_us)
            or (self.max_jump_us and t - before > self.max_jump_us)  # maybe a jump
            or (t < wm and wm - t > clock.max_lateness_us)  # too late: a dead letter
        ):
            raw = RawRecord(source, partition, offset, value, stream)
            self.handle_event(raw, result, out, mark)
            return
        # _apply, inline, for an event applied here
        # (event_tie, inline: id | content digest of the values as validated, not of the bytes)
        tie = "%s|v%08x" % (  # noqa: UP031 (faster)
            result.event_id,
            _crc32(DIGEST_ENCODE(result.__dict__)),
        )
        if t >= wm:
            eff = t
            if t > before:
                clock.max_t = t
        else:
            eff = wm
        if eff < self.floor:
            eff = self.floor
        if eff != t:
            metrics.LATE.labels(_STREAM_VALUE[result.event_type]).inc()
        out.append(_new_event(Event, (eff, tie, result)))

    def handle_event(self, raw: RawRecord, result, out: list[Item], mark: Any = None) -> None:
        """Clock one parsed event (see :meth:`handle`)."""
        t = to_us(result.occurred_at)
        if (
            self.max_future_us
            and t - time.time_ns() // 1000 > self.max_future_us  # _from_future's test, inline
            and (dl := self._from_future(raw, result, t)) is not None
        ):
            metrics.DEAD_LETTERS.labels(dl.kind.value).inc()
            out.append(dl)
            return
        if not self.max_jump_us:
            self._apply(raw, result, t, out)
            return
        clock = self.clock
        if clock.max_t == BEGIN:  # the partition's first event: pending until the next one
            if not self.held:
                self.held.append((raw, result, t, mark, self.moved))
                return
            f_raw, f_event, f_t, f_mark, _ = self.held.pop()
            if f_t - t > self.max_jump_us:
                # the next event is far behind the first: the first is the suspect one (a
                # future-dated first event would make the partition's valid events too_late);
                # the clock starts here and the first is a held jump like any other
                self._apply(raw, result, t, out)
                self.held.append((f_raw, f_event, f_t, f_mark, self.moved))
                return
            self._apply(f_raw, f_event, f_t, out)  # the first is confirmed: as before
        before = clock.max_t
        if t - before > self.max_jump_us:
            self.held.append((raw, result, t, mark, self.moved))
            if len(self.held) >= JUMP_CONFIRM:
                self._settle(out)
            return
        self._apply(raw, result, t, out)
        # an event that moves the clock on may bring held events within the bound, or show that
        # the stream moved on without them; one not past the clock (late, a straggler within the
        # tolerance, a re-published copy) decides nothing
        if self.held and clock.max_t != before:
            self.moved += clock.max_t - before
            self._settle(out)

    def _settle(self, out: list[Item]) -> None:
        """Decide what the held events can be now the clock moved (or one more was held): apply,
        in their order, those the clock came within the bound of; dead-letter those the stream
        moved on from by a whole bound (the clock advanced ``max_jump`` since they were held)
        without reaching them; with :data:`JUMP_CONFIRM` held, apply the earliest (the others, as
        far or further ahead, confirm the stream is there at least: one bogus time can only be
        confirmed by ``JUMP_CONFIRM - 1`` events even further ahead) and hold the rest afresh
        from there."""
        jump = self.max_jump_us
        clock = self.clock
        held = self.held
        while held:
            c = clock.max_t
            i = next((i for i, h in enumerate(held) if h[2] - c <= jump), -1)
            if i >= 0:
                raw, event, t, _, _ = held.pop(i)
                self._apply(raw, event, t, out)
                continue
            moved = self.moved
            gone = [h for h in held if moved - h[4] >= jump]
            if gone:
                held[:] = [h for h in held if moved - h[4] < jump]
                for raw, event, t, _, since in gone:
                    self._reject(
                        raw,
                        event,
                        t,
                        f"events read after it moved the clock on "
                        f"{(moved - since) / 3_600e6:.1f}h without reaching it",
                        out,
                    )
                continue
            if len(held) >= JUMP_CONFIRM:
                i = min(range(len(held)), key=lambda k: held[k][2])
                raw, event, t, _, _ = held.pop(i)
                self._apply(raw, event, t, out)
                # the others are held afresh, except one read before the confirmed event, more
                # than twice the bound ahead of it, that no event read after it reaches: nothing
                # supports it and the stream moved on without it (a future-dated first event,
                # then a sparse partition whose every event is a jump)
                c = clock.max_t
                keep = []
                for k, h in enumerate(held):
                    if (
                        k < i
                        and h[2] - c > 2 * jump
                        and all(later[2] < h[2] for later in held[k + 1 :])
                    ):
                        self._reject(
                            h[0],
                            h[1],
                            h[2],
                            "the stream confirmed a jump to an "
                            "earlier time, and no event read after it reaches it",
                            out,
                        )
                    else:
                        keep.append((*h[:4], self.moved))
                held[:] = keep
                continue
            break

    def release_held(self, out: list[Item], everything: bool = False) -> None:
        """End of input (``everything``): apply every held event, in order (see the class
        docstring); otherwise what :meth:`_settle` decides."""
        if not everything:
            self._settle(out)
            return
        held, self.held = self.held, []
        for raw, event, t, _, _ in held:
            self._apply(raw, event, t, out)

    def _reject(self, raw: RawRecord, event, t: int, why: str, out: list[Item]) -> None:
        """Dead-letter a held event the stream moved on from without reaching it."""
        c = self.clock.max_t
        dl = dead_letter(
            raw,
            DeadLetterKind.BAD_TIMESTAMP,
            f"occurred_at is {(t - c) / 3_600e6:.1f}h ahead of its partition's latest event; "
            f"{why} (allowed: {self.max_jump_us / 1e6:.0f}s, SALVAGE_MAX_CLOCK_JUMP_SECONDS)",
            event_id=event.event_id,
            order_id=event.order_id,
        )
        metrics.DEAD_LETTERS.labels(dl.kind.value).inc()
        out.append(dl)

    def pending_wm(self) -> int | None:
        """The watermark a partition whose first event is pending stands for (file mode's floor
        counts it as started there), else None."""
        if self.clock.max_t == BEGIN and self.held:
            return self.held[0][2] - self.clock.tolerance_us
        return None

    def start_wm(self) -> int | None:
        """The watermark of a started partition, or :meth:`pending_wm`."""
        return self.clock.watermark if self.clock.max_t != BEGIN else self.pending_wm()

    def resume_mark(self) -> Any:
        """The mark of the first held event, or None when nothing is held."""
        return self.held[0][3] if self.held else None

    def _apply(self, raw: RawRecord, result, t: int, out: list[Item]) -> None:
        # Tiebreak: event id, then a digest of the event's content (its values as validated, so
        # a re-serialised copy has the same): even conflicting duplicates order stably, and the
        # digest is the one the case stage compares duplicates by.
        tie = event_tie(result)
        eff = self.clock.observe(t)
        if eff is None:
            wm = max(self.clock.watermark, self.floor)
            dl = dead_letter(
                raw,
                DeadLetterKind.TOO_LATE,
                f"{(self.clock.watermark - t) / 1e6:.0f}s behind its partition watermark",
                event_id=result.event_id,
                order_id=result.order_id,
            )
            # to its case shard first: a redelivered duplicate is recognised before lateness
            out.append(Event(wm, tie, Overdue(result, dl)))
            return
        if eff < self.floor:
            eff = self.floor
        if eff != t:
            metrics.LATE.labels(_STREAM_VALUE[result.event_type]).inc()
        out.append(Event(eff, tie, result))

    def tick(self, out: list[Item], wm: int | None = None) -> None:
        wm = self.clock.watermark if wm is None else wm
        if wm != self.last_tick or wm == END:
            self.last_tick = wm
            out.append(Tick(self.part_id, wm, self.clock.max_t))


# ------------------------------------------------------------------------ files


def file_part_id(index: int, path: Path) -> str:
    return f"file{index}:{path.name}"


def clock_settings(settings: Settings) -> tuple[int, int, int, int]:
    """(reorder tolerance, max lateness, max future, max clock jump) in µs, as every source
    partition of a flow built from ``settings`` judges event time."""
    d = settings.dataflow
    return (
        int(d.reorder_tolerance_seconds * 1e6),
        int(d.max_lateness_seconds * 1e6),
        int(d.max_future_seconds * 1e6),
        int(d.max_clock_jump_seconds * 1e6),
    )


def file_layout(part_id: str, settings: Settings) -> _KafkaLayout:
    """Parse + clocks of one event log exactly as file mode's source has them (for drivers of
    the stages without Bytewax: feed it with ``handle_line`` (or ``handle``), ``release_held`` at
    the end, ``tick``)."""
    tol, late, future, jump = clock_settings(settings)
    return _KafkaLayout(part_id, (tol, late, BEGIN, future, jump), settings.topics.partitions)


class _KafkaLayout:
    """File mode: the log laid out as Kafka would hold it, one clock per (stream, partition).

    ``salvage replay`` sends each event to its stream's topic keyed by ``order_id``
    (``murmur2_random``, :mod:`salvage.connectors.partitioning`), and in Kafka mode lateness is
    judged per partition: an event is late when it is behind its *partition's* watermark. One
    clock over a whole file judged it against every stream at once, so a carrier scan 10 minutes
    behind the file (but not behind the other scans of its partition) was late in file mode and on
    time in Kafka mode, and ``decided_at`` differed. Here each ``(stream, partition_of(order_id,
    partitions))`` has its own :class:`_Parser` (clock, clock bound, held events), fed in the
    file's order, which is the order each partition holds after a replay: the same effective time
    for every event as Kafka mode with ``partitions`` partitions per topic.

    The file's tick is the *floor*: the highest value so far of the minimum over the started
    partitions' watermarks (a function of the content read, not of batch boundaries). No event
    leaves below it: an event of a partition that starts (or restarts) behind the others by more
    than the tolerance is applied at the floor, where Kafka mode, which waits for every partition,
    would apply it at its own time (README "Event time and determinism").
    """

    def __init__(self, part_id: str, parser_args: tuple, partitions: int, state=None) -> None:
        tol, late, _, future, jump = parser_args
        self.part_id = part_id
        self._args = (tol, late, future, jump)
        self._partitions = partitions
        self.parts: dict[tuple[str, int], _Parser] = {}
        self.floor = BEGIN
        self.last_tick: int | None = None
        self._slot: dict[str, int] = {}  # order_id -> partition (bounded cache)
        # event type -> its stream's parser of each partition, as started (handle_line's index)
        self._rows: dict[str, list[_Parser | None]] = {}
        # the minimum watermark over the started partitions as of the last floor update (None:
        # unknown, recompute): see handle
        self._low: int | None = None
        if state is not None:
            self.floor, parts = state
            for key, (max_t, held) in parts.items():
                # (a snapshot from before the clock bound kept when each was held: now)
                self._new(key, max_t).held = [h if len(h) == 5 else (*h, 0) for h in held]

    def _new(self, key: tuple[str, int], max_t: int = BEGIN) -> _Parser:
        tol, late, future, jump = self._args
        parser = _Parser(f"{self.part_id}|{key[0]}#{key[1]}", tol, late, max_t, future, jump)
        parser.floor = self.floor
        self.parts[key] = parser
        return parser

    def state(self) -> tuple:
        # a held event's mark relative to its parser's ``moved`` (which starts at 0 on a resume)
        parts = {
            k: (p.clock.max_t, [(*h[:4], h[4] - p.moved) for h in p.held])
            for k, p in self.parts.items()
        }
        return (self.floor, parts)

    def handle(self, raw: RawRecord, out: list[Item], mark: Any = None) -> None:
        result = parse(raw)
        if not hasattr(result, "event_type"):
            metrics.DEAD_LETTERS.labels(result.kind.value).inc()
            out.append(result)
            return
        slot = self._slot.get(result.order_id)
        if slot is None:
            if len(self._slot) >= 100_000:
                self._slot.clear()
            slot = self._slot[result.order_id] = partition_of(result.order_id, self._partitions)
        key = (_STREAM_VALUE[result.event_type], slot)
        parser = self.parts.get(key) or self._new(key)
        clock = parser.clock
        before = clock.max_t
        pending = parser.pending_wm() if before == BEGIN else None
        parser.handle_event(raw, result, out)
        if clock.max_t != before:
            self._moved(clock, before, pending)
        elif before == BEGIN:
            self._pending(parser)

    def _moved(self, clock: PartitionClock, before: int, pending: int | None = None) -> None:
        """A partition's clock moved on from ``before`` (``pending``: the watermark its pending
        first event stood for, see :meth:`_pending`): update the floor."""
        # The floor is max(floor, min over the started partitions' watermarks), and only this
        # partition's clock moved (forward). Kept incrementally (the same values as
        # _raise_floor on every move): a partition that starts can only lower the minimum
        # (and the floor is already >= it); one that was above the minimum leaves it as is;
        # only one that held it (maybe tied) makes the minimum, and maybe the floor, move.
        low = self._low
        if low is None:
            self._raise_floor()
        elif before == BEGIN:
            if pending is not None and pending <= low:  # it held the minimum, pending
                self._raise_floor()
                return
            wm = clock.watermark
            if wm < low:
                self._low = wm
        elif before - clock.tolerance_us <= low:
            self._raise_floor()

    def handle_line(self, source: str, line_no: int, value: bytes, out: list[Item]) -> None:
        """:meth:`handle` of ``RawRecord(source, 0, line_no, value)`` (a line of an event log),
        with the common case in two frames (this and :meth:`_Parser.handle_parsed`): a record
        the fast parse accepts, applied on time or late on a partition that holds nothing. The
        record is built only for what needs it (a dead letter, a held event, or anything else
        :meth:`handle` decides: then it does)."""
        result = parse_fast(value) if len(value) <= MAX_EVENT_BYTES else None
        if result is None:  # pydantic decides (a dead letter, or a record only it accepts)
            self.handle(RawRecord(source, 0, line_no, value), out)
            return
        order_id = result.order_id
        slot = self._slot.get(order_id)
        if slot is None:
            if len(self._slot) >= 100_000:
                self._slot.clear()
            slot = self._slot[order_id] = partition_of(order_id, self._partitions)
        row = self._rows.get(result.event_type)
        if row is None:
            row = self._rows[result.event_type] = [None] * self._partitions
        parser = row[slot]
        if parser is None:
            key = (_STREAM_VALUE[result.event_type], slot)
            parser = row[slot] = self.parts.get(key) or self._new(key)
        clock = parser.clock
        before = clock.max_t
        pending = parser.pending_wm() if before == BEGIN else None
        parser.handle_parsed(source, 0, line_no, value, None, result, out)
        if clock.max_t != before and (  # else _moved has nothing to do: checked here
            before == BEGIN or self._low is None or before - clock.tolerance_us <= self._low
        ):
            self._moved(clock, before, pending)
        elif before == BEGIN and clock.max_t == BEGIN:
            self._pending(parser)

    def _pending(self, parser: _Parser) -> None:
        """A partition's first event is pending (see :class:`_Parser`): the floor counts the
        partition as started at it, as when it was applied at once (and as Kafka mode, which
        waits for every partition, has it)."""
        wm = parser.pending_wm()
        if wm is not None and self._low is not None and wm < self._low:
            self._low = wm

    def _raise_floor(self) -> None:
        # the started partitions' watermarks, and a pending first event's (see _pending)
        low = min(w for p in self.parts.values() if (w := p.start_wm()) is not None)
        self._low = low
        if low > self.floor:
            self.floor = low
            for p in self.parts.values():
                p.floor = low

    def release_held(self, out: list[Item]) -> None:
        """End of input: apply every held event (see :class:`_Parser`)."""
        for key in sorted(self.parts):
            self.parts[key].release_held(out, everything=True)
        self._low = None  # clocks moved without a floor update (as before): recompute next time

    def tick(self, out: list[Item], wm: int | None = None) -> None:
        wm = self.floor if wm is None else wm
        if wm != self.last_tick or wm == END:
            self.last_tick = wm
            latest = max((p.clock.max_t for p in self.parts.values()), default=BEGIN)
            out.append(Tick(self.part_id, wm, latest))


class _FilePartition(StatefulSourcePartition[Item, tuple]):
    def __init__(
        self, path: Path, part_id: str, parser_args: tuple, partitions: int, batch_size: int, resume
    ):
        offset, line_no, done, layout = resume or (0, 0, False, None)
        self._path = path
        self._f = open(path, "rb")
        self._f.seek(offset)
        self._pos = offset
        self._line = line_no
        self._done = done
        self._layout = _KafkaLayout(part_id, parser_args, partitions, layout)
        self._batch = batch_size

    def next_batch(self) -> list[Item]:
        if self._done or _STOP.is_set():
            raise StopIteration()
        out: list[Item] = []
        readline = self._f.readline
        source = str(self._path)
        handle = self._layout.handle_line
        for _ in range(self._batch):
            line = readline()
            if not line:
                self._done = True
                break
            self._pos += len(line)
            self._line += 1
            value = line.rstrip(b"\r\n")
            if not value or value.isspace():  # value.strip() is empty, without a copy
                continue  # blank line: no record
            handle(source, self._line, value, out)
        if self._done:
            self._layout.release_held(out)
        self._layout.tick(out, END if self._done else None)
        return out

    def snapshot(self) -> tuple:
        # held events (clock bound) travel in the snapshot: a resume goes on after them
        return (self._pos, self._line, self._done, self._layout.state())

    def close(self) -> None:
        self._f.close()


def check_event_log(path: Path) -> None:
    """Raise (FileNotFoundError, ValueError) with a clear message unless ``path`` is a file that
    file mode can read: plain JSONL, one event per line."""
    if not path.is_file():
        raise FileNotFoundError(f"no such event log: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b" or head == b"PAR1":
        kind = "gzip" if head[:2] == b"\x1f\x8b" else "Parquet"
        raise ValueError(
            f"{path} is {kind}; file mode reads plain JSONL (one event per line). Publish it "
            f"with `salvage replay` and run in Kafka mode, or decompress/convert it first"
        )


class EventLogSource(FixedPartitionedSource[Item, tuple]):
    """One partition per JSONL event-log file (raw bytes, one event per line)."""

    def __init__(
        self,
        paths: list[Path],
        tolerance_us: int,
        max_lateness_us: int,
        batch_size: int = 2000,
        max_future_us: int = 0,
        max_jump_us: int = 0,
        partitions: int = 4,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            check_event_log(p)
        self._args = (tolerance_us, max_lateness_us, -(2**62), max_future_us, max_jump_us)
        self._batch = batch_size
        self._partitions = partitions  # each file is laid out as Kafka topics of this many

    def part_ids(self) -> list[str]:
        return [file_part_id(i, p) for i, p in enumerate(self.paths)]

    def list_parts(self) -> list[str]:
        return self.part_ids()

    def build_part(self, step_id: str, for_part: str, resume_state):
        index = self.part_ids().index(for_part)
        return _FilePartition(
            self.paths[index], for_part, self._args, self._partitions, self._batch, resume_state
        )


# ------------------------------------------------------------------------ kafka


def kafka_part_id(topic: str, partition: int) -> str:
    return f"{topic}#{partition}"


class _Wakes:
    """Wake-ups of one process's Kafka partitions, settled by offsets (README "Reliability").

    A partition that is caught up (position = high watermark) when its whole process has read
    nothing for ``idle_s`` is *idle*: it does not hold the watermark back (within a flowing
    stream a sparse partition is not idle; its clock follows the stream by checks,
    :meth:`_KafkaPartition._advance`). When one of them *wakes* (new data, or the broker shows
    data it has not read), the others that look idle may only not have seen theirs yet: a replay
    burst reaches every topic at once, but each partition learns of it from its own fetch, which
    on a loaded machine can come a second later. So the waking partition keeps its old watermark
    (holds) until every partition that is idle has asked the broker for its end offset afresh
    (``ListOffsets``, at least :data:`WAKE_SETTLE_S` after the wake: what a producer batches
    together) and found nothing unread. One that finds unread data is no longer idle at once: it
    holds the watermark from its own clock and wakes in turn.

    A fresh end offset may lag the true one (the embedded broker answers with the last batch's
    base offset + 1) but an end offset past the position is exact evidence of unread data, on it
    and on Kafka; the end offset librdkafka caches from fetch responses is exact.

    Partitions of other processes (a multi-process cluster) are not asked: there the hold also
    lasts ``idle_s`` of wall time, as before. Thread-safe (one process's workers share it).
    """

    def __init__(self, parts: list[str]) -> None:
        self._lock = threading.Lock()
        self._expected = set(parts)
        self._local: set[str] = set()
        self._idle: dict[str, float] = {}  # idle partition -> time of its last fresh check
        self._pending: dict[str, float] = {}  # holding partition -> its wake + settle

    def register(self, part: str) -> None:
        with self._lock:
            self._local.add(part)

    def forget(self, part: str) -> None:
        with self._lock:
            self._local.discard(part)
            self._idle.pop(part, None)
            self._pending.pop(part, None)

    @property
    def remote(self) -> bool:
        """Some input partitions are read by another process (not asked on a wake)."""
        return self._local != self._expected

    def idle(self, part: str) -> None:
        with self._lock:
            self._pending.pop(part, None)
            self._idle[part] = float("-inf")  # not checked for a wake yet

    def wake(self, part: str, not_before: float) -> None:
        with self._lock:
            self._idle.pop(part, None)
            self._pending[part] = not_before

    def must_check(self, part: str, now: float) -> float | None:
        """A wake wants this (idle or going idle) partition to check its offsets afresh: the
        time the check must be sent at or after (the latest such wake's), else ``None``."""
        with self._lock:
            checked = self._idle.get(part, float("-inf"))
            due = [nb for p, nb in self._pending.items() if p != part and checked < nb <= now]
            return max(due) if due else None

    def checked(self, part: str, now: float) -> None:
        with self._lock:
            if part in self._idle:
                self._idle[part] = now

    def settled(self, part: str) -> bool:
        """Every idle partition has checked since ``part``'s wake (+ settle): its hold may end."""
        with self._lock:
            nb = self._pending.get(part)
            if nb is None:
                return True
            if any(t < nb for t in self._idle.values()):
                return False
            del self._pending[part]
            return True


class _Seen:
    """The highest event time read by this process's Kafka partitions, as it was at each moment
    (monotonic time) of the last :attr:`KEEP_S` seconds, and when the process last read anything.

    ``at(t)`` answers "the highest event time read before ``t``" conservatively: samples are
    taken at most every 2 ms, and a sample merged into the previous one moves that one's time
    forward, never back. Thread-safe (one process's workers share it).

    >>> seen = _Seen()
    >>> seen.note(10.0, 500); seen.note(10.5, 400); seen.note(11.0, 900)
    >>> seen.at(9.9) == BEGIN, seen.at(10.0), seen.at(10.9), seen.at(11.2), seen.last_read
    (True, 500, 500, 900, 11.0)
    """

    KEEP_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._values: list[int] = []  # increasing: the last one is the highest yet
        self.last_read = float("-inf")

    def note(self, now: float, max_t: int) -> None:
        with self._lock:
            if now > self.last_read:
                self.last_read = now
            times, values = self._times, self._values
            if values and max_t <= values[-1]:
                return
            if times and now - times[-1] < 0.002:
                times[-1], values[-1] = now, max_t
            else:
                times.append(now)
                values.append(max_t)
                if now - times[0] > 2 * self.KEEP_S:
                    cut = bisect.bisect_left(times, now - self.KEEP_S) - 1
                    if cut > 0:
                        del times[:cut], values[:cut]

    def at(self, t: float) -> int:
        """The highest event time read before monotonic time ``t``."""
        with self._lock:
            i = bisect.bisect_right(self._times, t)
            return self._values[i - 1] if i else BEGIN


class _EndOffsets:
    """Fresh end offsets (``ListOffsets``) asked by a background thread of the process, so that
    the checks a wake-up needs (see :class:`_Wakes`) never block the worker that asks.

    A partition asks (:meth:`ask`); the thread queries the broker for every partition asked
    since its last query at once (its own consumer handle; ``ListOffsets`` for the earliest and
    the latest offsets, one batched request each, at most :data:`WAKE_CHECK_TIMEOUT_S`) and keeps
    ``(sent, offsets)``: the monotonic time the query was sent and the (low, high) offsets
    (``None``: the broker did not answer). :meth:`answer` gives the newest one if it was sent at
    or after a given time, else ``None`` (ask again). At 2,000 events/s on 16 partitions the
    synchronous checks held the worker 28% of its time (docs/issue-15-passes.md, third pass).
    The thread starts with the first question and ends when the last partition of the process
    closes."""

    def __init__(self, conf: dict) -> None:
        self._conf = conf
        self._cv = threading.Condition()
        self._asked: dict[str, TopicPartition] = {}
        self._answers: dict[str, tuple[float, tuple[int, int] | None]] = {}
        self._users = 0
        self._thread: threading.Thread | None = None

    def join(self) -> None:
        with self._cv:
            self._users += 1

    def leave(self) -> None:
        with self._cv:
            self._users -= 1
            self._cv.notify_all()
            ending = self._thread if self._users <= 0 else None
        if ending is not None:  # the last user: wait for the thread (it clears _thread itself)
            ending.join(timeout=2 * WAKE_CHECK_TIMEOUT_S)

    def ask(self, part: str, tp: TopicPartition) -> None:
        with self._cv:
            self._asked[part] = tp
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="salvage-end-offsets", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()

    def answer(self, part: str, since: float) -> tuple[float, tuple[int, int] | None] | None:
        with self._cv:
            got = self._answers.get(part)
        return got if got is not None and got[0] >= since else None

    def _run(self) -> None:
        try:
            consumer = Consumer(self._conf)
        except KafkaException:  # no handle, no answer: each asking partition counts as behind
            with self._cv:
                now = time.monotonic()
                self._answers.update(dict.fromkeys(self._asked, (now, None)))
                self._asked, self._thread = {}, None
            return
        try:
            while True:
                with self._cv:
                    while not self._asked and self._users > 0 and not _STOP.is_set():
                        self._cv.wait(0.2)
                    if self._users <= 0 or _STOP.is_set():
                        return
                    asked, self._asked = self._asked, {}
                parts = list(asked)
                sent = time.monotonic()
                try:
                    lows, highs = (
                        consumer.offsets_for_times(
                            [TopicPartition(asked[p].topic, asked[p].partition, w) for p in parts],
                            timeout=WAKE_CHECK_TIMEOUT_S,
                        )
                        for w in (-2, -1)
                    )
                    res = {
                        p: (
                            (lo.offset, hi.offset)
                            if lo.error is None and hi.error is None and hi.offset >= 0
                            else None
                        )
                        for p, lo, hi in zip(parts, lows, highs, strict=True)
                    }
                except KafkaException:
                    res = dict.fromkeys(parts)
                with self._cv:
                    for p in parts:
                        self._answers[p] = (sent, res[p])
        finally:
            with self._cv:
                self._thread = None
            consumer.close()


class _Pace:
    """Time-bounded reads: one ``next_batch`` of a Kafka partition takes at most the messages its
    worker handles in about ``budget_s`` (and at most ``max_batch``).

    A Bytewax worker polls its source partitions, then runs the whole dataflow on what they
    returned before it polls again: an event read together with 2,000 others waits for all of
    them to pass every stage (~0.3 s at ~150 µs each) before its trigger can leave, and a stop
    request or a snapshot waits for the round too. Each worker thread measures what a message
    costs it: its CPU time (waiting for data costs nothing) between successive reads over the
    messages read, both as moving sums that keep :data:`PACE_KEEP` of their value at each read
    (a ratio over the last rounds: the parse, every stage and the sinks). A read then takes at
    most ``budget_s / cost`` messages (at least :data:`MIN_PACED_READ`), so a backlog is worked
    off in batches of about ``budget_s`` each. ``budget_s`` 0: no time bound.

    Measured (docs/issue-15-passes.md, first pass): no difference at 2,000 or 10,000 events/s
    within the noise of a shared machine (batches there are small, or the worker is saturated
    either way). A variant that shared the budget among the partitions with data (a whole round
    in ``budget_s``) cut what one worker kept up with at 10,000 events/s from ~6,250 to ~4,500
    events/s: per-round costs (a tick per partition through every stage) grow with the rounds."""

    def __init__(self, budget_s: float, max_batch: int, clock=time.thread_time) -> None:
        self.budget_s, self.max_batch = budget_s, max_batch
        self._clock = clock  # this thread's CPU seconds
        # per worker thread: [CPU at its last read, CPU sum, messages sum, messages since]
        self._threads: dict[int, list[float]] = {}

    def limit(self) -> int:
        """How many messages a read of this thread may take now."""
        if self.budget_s <= 0:
            return self.max_batch
        tid = threading.get_ident()
        now = self._clock()
        acc = self._threads.get(tid)
        if acc is None:
            self._threads[tid] = [now, 0.0, 0.0, 0.0]
            return self.max_batch
        acc[1] = acc[1] * PACE_KEEP + (now - acc[0])
        acc[2] = acc[2] * PACE_KEEP + acc[3]
        acc[0], acc[3] = now, 0.0
        if acc[2] <= 0 or acc[1] <= 0:
            return self.max_batch
        cost = acc[1] / acc[2]
        return min(self.max_batch, max(MIN_PACED_READ, int(self.budget_s / cost)))

    def done(self, n: int) -> None:
        """A read of this thread took ``n`` messages (right after its ``limit``)."""
        acc = self._threads.get(threading.get_ident())
        if acc is not None:
            acc[3] += n


class _KafkaPartition(StatefulSourcePartition[Item, tuple]):
    def __init__(
        self,
        conf: dict,
        topic: str,
        stream: Stream,
        partition: int,
        parser_args: tuple,
        batch_size: int,
        to_end: bool,
        idle_s: float,
        resume,
        lag_interval_s: float = 1.0,
        committed: bool = False,
        wakes: _Wakes | None = None,
        pace: _Pace | None = None,
        probe: _EndOffsets | None = None,
        seen: _Seen | None = None,
    ) -> None:
        offset, max_t = resume or (OFFSET_BEGINNING, parser_args[2])
        self._consumer = Consumer(conf)
        if resume is None and committed:  # no snapshot: where this group's last clean stop was
            offset = _committed_offset(self._consumer, topic, partition, offset)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic, self._stream, self._partition = topic, stream, partition
        self._part = kafka_part_id(topic, partition)
        self._offset = offset
        tol, late, _, future, jump = parser_args
        self._parser = _Parser(kafka_part_id(topic, partition), tol, late, max_t, future, jump)
        self._batch = batch_size
        self._pace = pace if pace is not None else _Pace(0.0, batch_size)
        self._to_end = to_end
        self._idle_s = idle_s
        self._eof = False
        self._done = False
        self._last_data = time.monotonic()
        self._idle = False
        # consumer lag: high watermark (librdkafka caches it from every fetch response: no request
        # of its own) minus the next offset to read, at most once per lag_interval_s
        self._wm_tp = TopicPartition(topic, partition)
        self._lag: Any = None  # the series appears with the first known value, not as a 0
        self._lag_interval_s = lag_interval_s
        self._lag_at = float("-inf")
        self._awake: datetime | None = None
        self._backoff_s = 0.0
        # after waking from idle, the watermark stays where it was until every idle partition of
        # this process has checked its end offset afresh (see _Wakes); with partitions in other
        # processes, also for idle_s
        self._wakes = wakes if wakes is not None else _Wakes([self._part])
        self._wakes.register(self._part)
        self._holding = False
        self._hold_until = 0.0
        self._hold_wm = 0
        self._known_high = -1  # an end offset a fresh check found (position < it: not caught up)
        # fresh end-offset checks, asked of a background thread (see _EndOffsets)
        self._probe = probe if probe is not None else _EndOffsets(conf)
        self._probe.join()
        # checked clocks (see _advance): the stream's highest event time read in this process,
        # when this partition last asked for a check, the send time of the last answer it used
        self._seen = seen if seen is not None else _Seen()
        self._adv_asked = float("-inf")
        self._adv_used = float("-inf")

    def next_batch(self) -> list[Item]:
        if self._done or _STOP.is_set():
            raise StopIteration()
        out: list[Item] = []
        # Non-blocking: consume(n, timeout) would wait for n messages or the whole timeout on
        # every call, and a worker polls its partitions in turn. When nothing is there, Bytewax
        # is asked to come back a little later instead (next_awake), so the worker serves its
        # other partitions and stages meanwhile and an idle partition costs no CPU spin.
        msgs = self._consumer.consume(self._pace.limit(), 0)
        self._pace.done(len(msgs))
        if msgs:
            self._backoff_s, self._awake = 0.0, None
        else:
            self._backoff_s = min(POLL_BACKOFF_MAX_S, max(POLL_BACKOFF_MIN_S, 2 * self._backoff_s))
            self._awake = datetime.now(UTC) + timedelta(seconds=self._backoff_s)
        got_data = False
        wm_before = self._parser.clock.watermark
        handle = self._parser.handle_value  # handle(RawRecord(...), out, offset), inlined
        topic, partition, stream = self._topic, self._partition, self._stream
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    continue
                raise RuntimeError(f"error consuming {self._topic}[{self._partition}]: {err}")
            got_data = True
            self._eof = False
            offset = int(msg.offset() or 0)  # a message (not an error) always has one
            self._offset = offset + 1
            handle(topic, partition, offset, msg.value() or b"", stream, out, offset)
        now = time.monotonic()
        if got_data:
            self._seen.note(now, self._parser.clock.max_t)
            self._last_data = now
            if self._idle:
                self._wake(now, wm_before)
        if self._eof and self._to_end and not got_data:
            self._done = True
            self._parser.release_held(out, everything=True)
            self._parser.tick(out, END)
            self._report_lag(now, force=True)
            return out
        if (
            self._eof
            and not got_data
            # quiet: this process has read nothing for idle_s (a partition merely sparse
            # within a flowing stream keeps its clock moving by checks instead, _advance)
            and (self._idle or now - max(self._last_data, self._seen.last_read) >= self._idle_s)
            and self._caught_up()
            # a waking partition stays awake (holding) until the idle ones have checked
            and (not self._holding or self._wakes.settled(self._part))
        ):
            since = self._wakes.must_check(self._part, now)
            check = (now, False) if since is None else self._behind(now, since)
            if check is None:  # the fresh check is on its way: come back for it soon
                self._awake = datetime.now(UTC) + timedelta(seconds=POLL_BACKOFF_MIN_S)
            elif check[1]:
                self._wake(now, self._parser.clock.watermark)  # data waits: hold from its clock
            else:
                self._wakes.checked(self._part, check[0])
                # caught up and quiet: the partition's input ends here for now; what it holds
                # is its tail (applied, as at the end of a file)
                self._parser.release_held(out, everything=True)
                if not self._idle:
                    self._idle = True
                    self._holding = False
                    self._wakes.idle(self._part)
                    self._wakes.checked(self._part, now)
                    self._parser.tick(out, IDLE)
        elif self._idle:  # the cached end offset shows unread data (its fetch is on the way)
            self._wake(now, self._parser.clock.watermark)
        if not self._idle:
            if not got_data and not self._holding and not self._parser.held:
                self._advance(now)
            if (
                self._holding
                and self._wakes.settled(self._part)
                and (now >= self._hold_until or not self._wakes.remote)
            ):
                self._holding = False
            if self._holding:
                self._parser.tick(out, min(self._hold_wm, self._parser.clock.watermark))
            else:
                self._parser.tick(out)
        self._report_lag(now)  # throttled; cached watermarks: no broker round trip
        return out

    def _advance(self, now: float) -> None:
        """A *checked clock*: a partition that has nothing unread moves its clock up to what the
        rest of the stream had reached, instead of holding the watermark until its next event.

        Read in order, a sparse partition (a returns topic's 7% of the events over 4 partitions)
        holds the watermark at its last event's time until it gets another one, or until the
        process goes quiet (``idle_s``). But a fresh end-offset check (``ListOffsets``, sent at
        ``sent``) that finds nothing unread proves that whatever the partition gets next was
        appended after ``sent``; a producer that publishes in event-time order (a replay; live
        sources, within the reorder tolerance) appends nothing after ``sent`` that is older than
        what this process had already *read* from its other partitions :data:`CLOCK_SETTLE_S`
        before ``sent`` (the margin: how far one producer's appends to different partitions may
        trail one another). So the clock may move to that event time (:class:`_Seen`), as if the
        partition had read an event at it; an event that does come older than that is late, as
        after any clock, and handled by the tolerance and the lateness rule. The checks go to
        the process's :class:`_EndOffsets` thread (one batched request for every partition that
        asks), at most every :data:`CLOCK_CHECK_EVERY_S` per partition, and only while the
        stream's highest event time is ahead of this partition's clock."""
        clock = self._parser.clock
        target = self._seen.at(now - CLOCK_SETTLE_S)
        if target <= clock.max_t:
            return
        got = self._probe.answer(self._part, self._adv_used)
        if got is not None:
            sent, offsets = got
            self._adv_used = sent + 1e-9  # the next answer must be a newer one
            if offsets is not None:
                low, high = offsets
                if 0 <= high <= self._position(low) and self._caught_up():
                    v = self._seen.at(sent - CLOCK_SETTLE_S)
                    if v > clock.max_t:
                        clock.max_t = v
            if target <= clock.max_t:
                return
        if now - self._adv_asked >= CLOCK_CHECK_EVERY_S:
            self._adv_asked = now
            self._probe.ask(self._part, self._wm_tp)
        soon = datetime.now(UTC) + timedelta(seconds=POLL_BACKOFF_MIN_S)
        if self._awake is None or soon < self._awake:
            self._awake = soon

    def _wake(self, now: float, hold_wm: int) -> None:
        """No longer idle: announce the real watermark, held at ``hold_wm`` until the other idle
        partitions have checked their offsets (see :class:`_Wakes`)."""
        self._idle = False
        self._parser.last_tick = None  # re-announce the real watermark
        self._holding, self._hold_wm = True, hold_wm
        self._hold_until = now + self._idle_s
        self._wakes.wake(self._part, now + min(self._idle_s, WAKE_SETTLE_S))

    def _behind(self, now: float, since: float) -> tuple[float, bool] | None:
        """The end offset from the broker afresh (a ``ListOffsets`` query sent at or after
        ``since``, by the process's :class:`_EndOffsets` thread): ``(when the query was sent,
        behind)``, behind when the end offset is past the position (unread data) or when the
        broker did not answer (then the partition holds the watermark until it is caught up and
        quiet again, by the cache); ``None`` while the answer is not there yet (asked: the
        worker goes on meanwhile)."""
        got = self._probe.answer(self._part, since)
        if got is None:
            self._probe.ask(self._part, self._wm_tp)
            return None
        sent, offsets = got
        if offsets is None:
            self._last_data = now
            return sent, True
        low, high = offsets
        if high > self._position(low):
            self._known_high = high
            self._last_data = now
            return sent, True
        return sent, False

    def _position(self, low: int) -> int:
        """The next offset to read; ``low`` (the partition's first offset) before anything was
        read: from the start."""
        return self._offset if self._offset >= 0 else low

    def _caught_up(self) -> bool:
        """Position >= high watermark, from the watermark librdkafka caches from every fetch
        response (no broker round trip). Unknown (no fetch answered yet): not caught up."""
        try:
            low, high = self._consumer.get_watermark_offsets(self._wm_tp, cached=True)
        except KafkaException:
            return False
        position = self._position(low)
        return high >= 0 and position >= max(high, self._known_high)

    def _report_lag(self, now: float, force: bool = False) -> None:
        """Set ``salvage_kafka_consumer_lag`` from the cached watermarks (no broker round trip);
        unknown until the first fetch response has arrived."""
        if not force and now - self._lag_at < self._lag_interval_s:
            return
        try:
            low, high = self._consumer.get_watermark_offsets(self._wm_tp, cached=True)
        except KafkaException:
            return
        position = self._position(low)
        if high < 0 or position < 0:
            return
        self._lag_at = now
        if self._lag is None:
            self._lag = metrics.KAFKA_CONSUMER_LAG.labels(self._topic, str(self._partition))
        self._lag.set(max(0, high - position))

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple:
        mark = self._parser.resume_mark()  # re-read the held events on a resume
        return (self._offset if mark is None else mark, self._parser.clock.max_t)

    def close(self) -> None:
        self._wakes.forget(self._part)
        self._probe.leave()
        position = self.snapshot()[0]
        if position >= 0:  # something was read: where a restart without a snapshot goes on
            FINAL_POSITIONS[(self._topic, self._partition)] = position
        self._consumer.close()


FINAL_POSITIONS: dict[tuple[str, int], int] = {}
"""(topic, partition) -> the next offset to read, of every input partition this process closed
(set at a clean stop; the held events of the clock bound are re-read). The runner commits them to
the consumer group once the run's outputs are flushed (:func:`commit_positions`)."""


def _committed_offset(consumer: Consumer, topic: str, partition: int, default: int) -> int:
    """The group's committed offset for the partition, else ``default``."""
    try:
        (tp,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
    except KafkaException as exc:
        raise RuntimeError(f"reading committed offsets of {topic}[{partition}]: {exc}") from exc
    return tp.offset if tp.offset >= 0 else default


def commit_positions(conf: dict, group_id: str) -> int:
    """Commit :data:`FINAL_POSITIONS` to ``group_id`` (synchronously) and forget them; returns
    how many partitions were committed. Called after a run that ended cleanly, so every event
    before a committed offset has had its outputs acknowledged (at-least-once)."""
    if not FINAL_POSITIONS:
        return 0
    offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(FINAL_POSITIONS.items())]
    consumer = Consumer({**conf, "group.id": group_id, "enable.auto.commit": "false"})
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()
    FINAL_POSITIONS.clear()
    return len(offsets)


class KafkaEventSource(FixedPartitionedSource[Item, tuple]):
    """Every partition of the four input topics, assigned directly (no consumer group).

    Offsets live in Bytewax recovery snapshots, as with Bytewax's own KafkaSource.
    ``to_end``: stop each partition when it reaches the end of what is in the topic.
    Each partition exports ``salvage_kafka_consumer_lag{topic,partition}`` (high watermark minus
    the next offset to read), refreshed at most every ``lag_interval_s`` and when it finishes.
    """

    def __init__(
        self,
        client_conf: dict,
        topics: dict[str, str],
        partitions: dict[str, int],
        tolerance_us: int,
        max_lateness_us: int,
        to_end: bool,
        idle_s: float = 0.5,
        batch_size: int = 2000,
        lag_interval_s: float = 1.0,
        fetch_wait_ms: int = 100,
        max_future_us: int = 0,
        max_jump_us: int = 0,
        group_id: str | None = None,
        from_beginning: bool = False,
        batch_ms: float = 0.0,
    ) -> None:
        # a group: a partition with no snapshot starts at the group's committed offset (the
        # last clean stop), unless from_beginning; reads still use assign(), not the group
        self._committed = group_id is not None and not from_beginning
        self._conf = {
            **client_conf,
            # how long the broker may hold a fetch that has no data yet (librdkafka's default,
            # 500 ms, is added to the latency of every event that arrives on a quiet partition)
            "fetch.wait.max.ms": fetch_wait_ms,
            "group.id": group_id or "salvage-unused",  # assign(): offsets only, no rebalancing
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "earliest",
        }
        self._topics = topics  # stream -> topic
        self._partitions = partitions  # topic -> partition count
        self._args = (tolerance_us, max_lateness_us, -(2**62), max_future_us, max_jump_us)
        self._to_end = to_end
        self._idle_s = idle_s
        self._batch = batch_size
        self._lag_interval_s = lag_interval_s
        self._wakes = _Wakes(self.part_ids())  # wake-ups settled by offsets, in this process
        self._pace = _Pace(batch_ms / 1000, batch_size)  # time-bounded reads, in this process
        self._probe = _EndOffsets(self._conf)  # fresh end-offset checks, in this process
        self._seen = _Seen()  # the highest event time read in this process (checked clocks)

    def part_ids(self) -> list[str]:
        return [
            kafka_part_id(topic, p)
            for topic in self._topics.values()
            for p in range(self._partitions[topic])
        ]

    def list_parts(self) -> list[str]:
        return self.part_ids()

    def build_part(self, step_id: str, for_part: str, resume_state):
        topic, _, p = for_part.rpartition("#")
        stream = next(Stream(s) for s, t in self._topics.items() if t == topic)
        return _KafkaPartition(
            dict(self._conf),
            topic,
            stream,
            int(p),
            self._args,
            self._batch,
            self._to_end,
            self._idle_s,
            resume_state,
            self._lag_interval_s,
            self._committed,
            self._wakes,
            self._pace,
            self._probe,
            self._seen,
        )
