"""Event logs on disk: read (JSONL, gzip'd JSONL, Parquet), pace, and write.

A log is a sequence of raw records (bytes, one event each), in the order they arrived. Readers
never parse more than they must: garbage stays garbage, so a replayed log is dead-lettered by the
pipeline exactly as the original stream was.

* **JSONL** (``.jsonl``, anything not recognised below): one record per line; blank lines skipped.
* **gzip'd JSONL**: recognised by its magic bytes (``1f 8b``), whatever the file name.
* **Parquet**: recognised by its magic bytes (``PAR1``); needs ``pyarrow`` (optional). A table
  with a binary/string column ``raw`` (or ``value``) is read as those raw records; any other table
  is read row by row as events, each row one JSON object with null columns omitted (a column that
  is null for a row is a field that event does not have), timestamps as ISO 8601 UTC.

Event time: :func:`event_time_us` reads ``occurred_at`` from a record (``None`` when it has none or
it does not parse: such a record is kept where it is and never delays pacing).
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "LogFormat",
    "Pacer",
    "detect_format",
    "event_time_us",
    "iter_records",
    "parse_time",
]

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


class LogFormat:
    JSONL = "jsonl"
    GZIP = "jsonl.gz"
    PARQUET = "parquet"


def detect_format(path: Path) -> str:
    with Path(path).open("rb") as f:
        head = f.read(4)
    if head[:2] == GZIP_MAGIC:
        return LogFormat.GZIP
    if head == PARQUET_MAGIC:
        return LogFormat.PARQUET
    return LogFormat.JSONL


@dataclass
class Progress:
    """Where a reader is: ``done`` out of ``total`` units (bytes of the file, or Parquet rows)."""

    done: int = 0
    total: int = 0


def iter_records(path: Path, progress: Progress | None = None) -> Iterator[bytes]:
    """Yield the raw records of a log in file order (see the module docstring for formats)."""
    path = Path(path)
    fmt = detect_format(path)
    prog = progress if progress is not None else Progress()
    if fmt == LogFormat.PARQUET:
        yield from _parquet_records(path, prog)
        return
    prog.total = path.stat().st_size
    with path.open("rb") as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if fmt == LogFormat.GZIP else raw  # type: ignore[assignment]
        for line in stream:
            prog.done = raw.tell()
            value = line.rstrip(b"\r\n")
            if value.strip():
                yield value
    prog.done = prog.total


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            return obj.isoformat()  # as stored: the pipeline dead-letters a naive timestamp
        return obj.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if hasattr(obj, "as_py"):
        return obj.as_py()
    return str(obj)


def _drop_nulls(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_nulls(v) for v in obj]
    return obj


def _parquet_records(path: Path, prog: Progress) -> Iterator[bytes]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"{path} is a Parquet file: install pyarrow to read it (pip install pyarrow)"
        ) from exc
    pf = pq.ParquetFile(path)
    prog.total = pf.metadata.num_rows
    names = set(pf.schema_arrow.names)
    raw_col = "raw" if "raw" in names else "value" if "value" in names and len(names) == 1 else None
    for batch in pf.iter_batches(batch_size=4096):
        if raw_col is not None:
            for v in batch.column(raw_col).to_pylist():
                prog.done += 1
                if v is None:
                    continue
                yield v if isinstance(v, bytes) else str(v).encode()
            continue
        for row in batch.to_pylist():
            prog.done += 1
            yield json.dumps(
                _drop_nulls(row), default=_json_default, separators=(",", ":"), allow_nan=True
            ).encode()


def parse_time(text: str) -> int:
    """ISO 8601 with a timezone -> microseconds since the epoch (CLI ``--from``/``--to``)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a timezone: {text!r} (add Z or +00:00)")
    return _us(dt)


def _us(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_time_us(value: bytes) -> int | None:
    """``occurred_at`` of a record in microseconds, or None (not JSON, no or bad timestamp)."""
    try:
        doc = json.loads(value)
        text = doc["occurred_at"]
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    if dt.tzinfo is None:
        return None
    try:
        return _us(dt)
    except OverflowError:  # pragma: no cover - fromisoformat bounds years already
        return None


class Pacer:
    """Publishing pace: ``speed`` (event time runs ``speed`` times faster than the wall clock;
    ``None``: as fast as possible) and ``rate`` (at most ``rate`` records per wall second).

    Pacing follows the log's *arrival* order: a record is released when the wall clock reaches
    ``(event_time - first_event_time) / speed`` after the start, and never before the record
    before it. A record older than one already released (a late scan) is released at once, and a
    record without an event time never waits for the clock.
    """

    def __init__(
        self,
        speed: float | None = None,
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if speed is not None and not (speed > 0 and math.isfinite(speed)):
            raise ValueError("speed must be a positive number")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number")
        self.speed = speed
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._t0: int | None = None
        self._n = 0

    def wait(self, t_us: int | None) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start
        if self.speed is not None and t_us is not None:
            if self._t0 is None:
                self._t0 = t_us
            due = max(due, self._start + (t_us - self._t0) / 1e6 / self.speed)
        if self.rate is not None:
            due = max(due, self._start + self._n / self.rate)
        self._n += 1
        if due > now:
            self._sleep(due - now)
