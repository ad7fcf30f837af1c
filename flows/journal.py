"""Incremental snapshots of keyed state on the recovery volume (an epoch journal).

A stage shard holds many small keyed entries (open cases, customers, model snapshots). Pickling the
whole shard at every Bytewax snapshot costs time and bytes in proportion to the *open* entries;
this journal makes a snapshot cost what *changed* since the previous one:

* snapshot ``n`` writes one file, ``seg-n``: a small header (the shard's non-keyed state), the
  entries changed since snapshot ``n - 1`` and the keys deleted since then;
* every so often (when the segments written since the last base outweigh a fraction of it) the
  whole state is written as ``base-n`` instead, and files no resume can need any more are removed;
* :meth:`EpochJournal.load` rebuilds the state of snapshot ``n``: the newest base at or before
  ``n``, then the segments after it up to ``n``, in order. Files *after* ``n`` were written by a
  run that crashed before Bytewax committed that epoch: they are ignored (and a later write of the
  same number replaces them).

Bytewax stores, per key and epoch, only what ``snapshot()`` returns: here a tiny
:class:`JournalRef` (the journal's name and the snapshot number), so a resume from any committed
epoch finds its number and loads exactly that state. Every file ends with a CRC-32: a file torn by
a crash mid-write fails it and counts as absent (its snapshot had not returned, so its epoch was
never committed).

Retention: resumes go back at most to the last *committed* epoch, which trails the newest snapshot
by the epochs in flight. The journal keeps the previous base and every file after it, so any
snapshot since the previous compaction can be loaded; compaction happens at most every
``min_segments`` snapshots. Pure file I/O, no Bytewax import.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"SLVJ"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">4sHBQI")  # magic, format version, kind (0 seg, 1 base), n, header length
_LEN = struct.Struct(">I")
_SEG, _BASE = 0, 1


class JournalError(RuntimeError):
    """The journal cannot give the requested state (a file it needs is missing or corrupt)."""


@dataclass(frozen=True, slots=True)
class JournalRef:
    """What Bytewax snapshots for a journaled shard: which journal, which snapshot number."""

    name: str
    n: int


def _encode(
    kind: int, n: int, header: bytes, changed: Mapping[str, bytes], deleted: Iterable[str]
) -> bytes:
    parts = [_HEAD.pack(MAGIC, FORMAT_VERSION, kind, n, len(header)), header]
    parts.append(_LEN.pack(len(changed)))
    for key, value in changed.items():
        k = key.encode()
        parts += [_LEN.pack(len(k)), k, _LEN.pack(len(value)), value]
    gone = [key.encode() for key in deleted]
    parts.append(_LEN.pack(len(gone)))
    for k in gone:
        parts += [_LEN.pack(len(k)), k]
    body = b"".join(parts)
    return body + _LEN.pack(zlib.crc32(body))


def _decode(data: bytes) -> tuple[int, int, bytes, dict[str, bytes], list[str]] | None:
    """(kind, n, header, changed, deleted), or None for a torn / foreign file."""
    if len(data) < _HEAD.size + 4:
        return None
    body, (crc,) = data[:-4], _LEN.unpack(data[-4:])
    if zlib.crc32(body) != crc:
        return None
    magic, version, kind, n, hlen = _HEAD.unpack_from(body, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        return None
    at = _HEAD.size
    header = body[at : at + hlen]
    at += hlen
    (count,) = _LEN.unpack_from(body, at)
    at += 4
    changed: dict[str, bytes] = {}
    for _ in range(count):
        (klen,) = _LEN.unpack_from(body, at)
        key = body[at + 4 : at + 4 + klen].decode()
        at += 4 + klen
        (vlen,) = _LEN.unpack_from(body, at)
        changed[key] = body[at + 4 : at + 4 + vlen]
        at += 4 + vlen
    (count,) = _LEN.unpack_from(body, at)
    at += 4
    deleted: list[str] = []
    for _ in range(count):
        (klen,) = _LEN.unpack_from(body, at)
        deleted.append(body[at + 4 : at + 4 + klen].decode())
        at += 4 + klen
    return kind, n, header, changed, deleted


class EpochJournal:
    """The journal of one stage shard, in ``root/name``.

    ``compact_ratio``: write a base instead of a segment once the segments since the last base
    add up to this fraction of the base's size (and at least ``min_segments`` were written)."""

    def __init__(
        self, root: Path, name: str, compact_ratio: float = 0.5, min_segments: int = 8
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.dir = self.root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compact_ratio = compact_ratio
        self.min_segments = min_segments
        self._base_bytes = 0
        self._since_base_bytes = 0
        self._since_base_count = 0
        self.bytes_written = 0  # by this object: what the last write cost is in last_write_bytes
        self.last_write_bytes = 0

    # -- files -----------------------------------------------------------------------------
    def _path(self, kind: int, n: int) -> Path:
        return self.dir / f"{'base' if kind == _BASE else 'seg'}-{n:012d}"

    def _files(self) -> list[tuple[int, int, Path]]:
        """(n, kind, path) of every journal file, in snapshot order (a base before a segment)."""
        out = []
        for p in self.dir.iterdir():
            kind_s, _, num = p.name.partition("-")
            if kind_s in ("base", "seg") and num.isdigit():
                out.append((int(num), _BASE if kind_s == "base" else _SEG, p))
        return sorted(out, key=lambda f: (f[0], -f[1]))

    def _write(self, kind: int, n: int, data: bytes) -> None:
        path = self._path(kind, n)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.last_write_bytes = len(data)
        self.bytes_written += len(data)

    # -- writing ---------------------------------------------------------------------------
    def write(
        self,
        n: int,
        header: bytes,
        changed: Mapping[str, bytes],
        deleted: Iterable[str],
        full: Mapping[str, bytes] | None = None,
    ) -> JournalRef:
        """Record snapshot ``n``. ``full`` (the whole keyed state, needed for the first snapshot)
        lets the journal compact now when the segments since the last base have grown past
        ``compact_ratio`` of it; without it (or when compaction is not due) only the changes are
        written. Pass ``full`` lazily (only when :meth:`compaction_due`) to keep snapshots cheap."""
        self._forget_after(n - 1)  # a crashed run's files past the resumed snapshot
        if self._base_bytes == 0 and full is None:
            raise JournalError(f"{self.dir}: the first snapshot must carry the full state")
        if full is not None and self.compaction_due():
            self._write(_BASE, n, _encode(_BASE, n, header, full, ()))
            self._base_bytes = self.last_write_bytes
            self._since_base_bytes = self._since_base_count = 0
            self._retire(n)
        else:
            self._write(_SEG, n, _encode(_SEG, n, header, changed, deleted))
            self._since_base_bytes += self.last_write_bytes
            self._since_base_count += 1
        return JournalRef(self.name, n)

    def compaction_due(self) -> bool:
        """Whether the next :meth:`write` with ``full`` would write a base."""
        return self._base_bytes == 0 or (
            self._since_base_count >= self.min_segments
            and self._since_base_bytes >= self.compact_ratio * self._base_bytes
        )

    def _forget_after(self, n: int) -> None:
        for num, _kind, path in self._files():
            if num > n:
                path.unlink(missing_ok=True)

    def _retire(self, n: int) -> None:
        """After base ``n``: keep the previous base and everything after it, remove the rest."""
        bases = [num for num, kind, _ in self._files() if kind == _BASE and num < n]
        keep_from = bases[-1] if bases else n
        for num, _kind, path in self._files():
            if num < keep_from:
                path.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------
    def load(self, n: int) -> tuple[bytes, dict[str, bytes]]:
        """The header and keyed state as of snapshot ``n``; files after ``n`` are ignored."""
        files = [f for f in self._files() if f[0] <= n]
        base_at = None
        for num, kind, path in reversed(files):
            if kind == _BASE and _decode(path.read_bytes()) is not None:
                base_at = num
                break
        if base_at is None:
            raise JournalError(f"{self.dir}: no base at or before snapshot {n}")
        state: dict[str, bytes] = {}
        header = b""
        expected = base_at
        for num, kind, path in files:
            if num < base_at or (num == base_at and kind == _SEG):
                continue
            decoded = _decode(path.read_bytes())
            if decoded is None:
                raise JournalError(f"{path}: torn or corrupt (snapshot {num} <= {n})")
            if num != expected:
                raise JournalError(f"{self.dir}: snapshot {expected} missing before {num}")
            _kind, _n, header, changed, deleted = decoded
            state.update(changed)
            for key in deleted:
                state.pop(key, None)
            expected = num + 1
        if expected != n + 1:
            raise JournalError(
                f"{self.dir}: snapshot {n} not in the journal (ends at {expected - 1})"
            )
        # the next write continues from here: its size bookkeeping restarts with this base
        base_path = self._path(_BASE, base_at)
        self._base_bytes = base_path.stat().st_size
        self._since_base_bytes = sum(
            p.stat().st_size for num, kind, p in files if kind == _SEG and base_at < num <= n
        )
        self._since_base_count = sum(
            1 for num, kind, _ in files if kind == _SEG and base_at < num <= n
        )
        return header, state
