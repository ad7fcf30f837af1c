"""Raw bytes -> validated event, or a dead letter with a precise kind. Never raises on bad input."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import BaseModel, TypeAdapter, ValidationError

from salvage.connectors.events import EVENT_ADAPTER, STREAM_OF, Id, Stream
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetter, DeadLetterKind

MAX_EVENT_BYTES = 64 * 1024
"""Documented size limit: a message above this is a ``too_large`` dead letter, unparsed."""

DEAD_LETTER_MAX_BYTES = 4096
"""Default bound on the raw bytes a dead letter carries (``SALVAGE_DEAD_LETTER_MAX_BYTES``)."""

PRODUCER_MESSAGE_MAX_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``: no dead letter may come near it."""

DEAD_LETTER_OVERHEAD_BYTES = 8192
"""Upper bound on a dead letter's JSON besides the base64 prefix (message <= 500 characters,
escaped at most 6 bytes each; source <= 256; ids <= 128)."""

FREE_TEXT_FRAGMENTS = (
    "text",
    "body",
    "message",
    "subject",
    "note",
    "comment",
    "description",
    "transcript",
    "email",
    "name",
    "phone",
    "address",
    "street",
)
"""A key containing one of these (case-insensitive, at any depth) has its value dropped from a
dead letter's payload: free text and contact details (``text``, ``notes``, ``customer_email``,
``shipping_address``...)."""


def _free_text_key(key: object) -> bool:
    return isinstance(key, str) and any(f in key.lower() for f in FREE_TEXT_FRAGMENTS)


_max_bytes = DEAD_LETTER_MAX_BYTES


def dead_letter_size_bound(max_bytes: int) -> int:
    """The largest serialized dead letter a ``max_bytes`` prefix can produce."""
    return 4 * ((max_bytes + 2) // 3) + DEAD_LETTER_OVERHEAD_BYTES


def set_dead_letter_max_bytes(
    max_bytes: int, producer_max_bytes: int = PRODUCER_MESSAGE_MAX_BYTES
) -> None:
    """Bound the raw prefix dead letters carry; refuse a bound the producer could not send."""
    if max_bytes < 0:
        raise ValueError(f"dead-letter max bytes must be >= 0, got {max_bytes}")
    if dead_letter_size_bound(max_bytes) >= producer_max_bytes:
        raise ValueError(
            f"dead_letter_max_bytes={max_bytes} makes dead letters of up to "
            f"{dead_letter_size_bound(max_bytes)} bytes, over the producer's message.max.bytes "
            f"({producer_max_bytes})"
        )
    global _max_bytes
    _max_bytes = max_bytes


def dead_letter_max_bytes() -> int:
    return _max_bytes


class _TooDeep(Exception):
    """JSON nested deeper than :data:`MAX_REDACT_DEPTH`: not walked, nothing of it kept."""


# deeper than any event (pydantic refuses far less); a hostile payload of thousands of nested
# arrays would otherwise exhaust the stack while its dead letter is built
MAX_REDACT_DEPTH = 100


def _redact(node: object, depth: int = 0) -> tuple[object, bool]:
    """``node`` with free-text fields dropped at any depth, and whether anything was dropped.

    Raises :class:`_TooDeep` past :data:`MAX_REDACT_DEPTH` levels."""
    if depth > MAX_REDACT_DEPTH:
        raise _TooDeep
    if isinstance(node, dict):
        out: dict[str, object] = {}
        hit = False
        for k, v in node.items():
            if _free_text_key(k) and v is not None:
                hit = True
                continue
            out[k], sub = _redact(v, depth + 1)
            hit = hit or sub
        return out, hit
    if isinstance(node, list):
        items = [_redact(v, depth + 1) for v in node]
        return [v for v, _ in items], any(h for _, h in items)
    return node, False


def _is_support(raw: RawRecord) -> bool:
    if raw.stream is not None:
        return raw.stream == Stream.SUPPORT
    return "support" in raw.source.rsplit("/", 1)[-1].lower()


def _kept_bytes(raw: RawRecord, limit: int) -> tuple[bytes, bool, bool]:
    """What a dead letter may carry of ``raw``: free text dropped, at most ``limit`` bytes;
    and whether it was truncated, and redacted.

    A payload that parses as JSON loses its free-text fields (re-serialized compactly only when
    something was dropped). One that does not parse keeps a prefix, except on the support
    stream, where unparsed bytes may be a customer's words: nothing is kept there; nor of a
    payload over ``MAX_EVENT_BYTES`` that looks like JSON, or of JSON nested deeper than
    :data:`MAX_REDACT_DEPTH` (not parsed or not walked, so its free text could not be dropped).
    Never raises: hostile input becomes a dead letter, never a stopped flow."""
    value = raw.value
    if len(value) <= MAX_EVENT_BYTES:
        try:
            redacted, hit = _redact(json.loads(value))
        except (_TooDeep, RecursionError):  # too deep to walk, so not redacted: keep nothing
            return b"", bool(value), True
        except ValueError:  # not JSON: the prefix below
            pass
        else:
            if hit:  # (a lone surrogate, such as the escape \ud800, goes back as an escape)
                text = json.dumps(redacted, separators=(",", ":"), ensure_ascii=False)
                value = text.encode("utf-8", "backslashreplace")
            return value[:limit], len(value) > limit, hit
    if _is_support(raw):
        return b"", bool(value), bool(value)
    if len(value) > MAX_EVENT_BYTES and value[:64].lstrip()[:1] in (b"{", b"["):
        # JSON too large to parse, so its free-text fields cannot be dropped: no bytes kept
        return b"", True, True
    return value[:limit], len(value) > limit, False


_TIME_ERRORS = {
    "timezone_aware",
    "timezone_naive",
    "datetime_type",
    "datetime_parsing",
    "datetime_from_date_parsing",
    "datetime_object_invalid",
    "datetime_past",
    "datetime_future",
}
_TYPE_ERRORS = {
    "string_type",
    "int_type",
    "float_type",
    "bool_type",
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "int_from_float",
    "none_required",
}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input message as it arrived: where from, and its bytes."""

    source: str
    partition: int
    offset: int
    value: bytes
    stream: Stream | None = None  # the stream the topic stands for; None in file mode


def dead_letter(
    raw: RawRecord,
    kind: DeadLetterKind,
    message: str,
    event_id: str | None = None,
    order_id: str | None = None,
) -> DeadLetter:
    """A bounded dead letter: at most ``dead_letter_max_bytes()`` of the payload (free text
    dropped, see :func:`_kept_bytes`), with the original's length and SHA-256."""
    kept, truncated, redacted = _kept_bytes(raw, _max_bytes)
    return DeadLetter(
        source=raw.source[:256],
        partition=raw.partition,
        offset=raw.offset,
        kind=kind,
        message=message[:500],
        raw_b64=base64.b64encode(kept).decode("ascii"),
        raw_len=len(raw.value),
        raw_sha256=hashlib.sha256(raw.value).hexdigest(),
        raw_truncated=truncated,
        raw_redacted=redacted,
        event_id=event_id,
        order_id=order_id,
    )


def _classify(exc: ValidationError) -> tuple[DeadLetterKind, str]:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    etype = first["type"]
    loc = ".".join(str(p) for p in first["loc"][1:]) or "<root>"
    msg = f"{loc}: {first['msg']}"
    if len(errors) > 1:
        msg += f" (+{len(errors) - 1} more)"
    if etype == "json_invalid":
        return DeadLetterKind.INVALID_JSON, first["msg"]
    if etype in {"dict_type", "model_type"} and not first["loc"]:
        return DeadLetterKind.NOT_AN_OBJECT, "top-level JSON value is not an object"
    if etype == "union_tag_invalid":
        return DeadLetterKind.UNKNOWN_EVENT_TYPE, first["msg"]
    if etype == "union_tag_not_found":
        return DeadLetterKind.MISSING_FIELD, "event_type: field required"
    if first["loc"][-1:] == ("schema_version",) and etype == "literal_error":
        return DeadLetterKind.UNSUPPORTED_SCHEMA_VERSION, msg
    if etype == "missing":
        return DeadLetterKind.MISSING_FIELD, msg
    if etype in _TIME_ERRORS or (
        etype == "value_error" and "timestamp" in str(first.get("msg", ""))
    ):
        return DeadLetterKind.BAD_TIMESTAMP, msg
    if etype in _TYPE_ERRORS:
        return DeadLetterKind.WRONG_TYPE, msg
    return DeadLetterKind.INVALID_VALUE, msg


_ID = TypeAdapter(Id)  # the contracts' own id type (printable ASCII, no space, 1-128)


def _valid_id(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return _ID.validate_python(value)
    except ValidationError:
        return None


def ids_of(value: bytes) -> tuple[str | None, str | None]:
    """The ``event_id`` and ``order_id`` of a record that failed validation, where its JSON has
    them as valid ids (the contracts' ``Id``), so its dead letter still names the event and the
    order (ops look a rejected event up by its id, and the dead-letter topic is keyed by order):
    ``(None, None)`` for what is not a JSON object, an id of the wrong type or shape is None.

    >>> ids_of(b'{"event_id": "e1", "order_id": "o1", "event_type": "order_teleported"}')
    ('e1', 'o1')
    >>> ids_of(b'{"event_id": 7, "order_id": "has space"}'), ids_of(b'[1]'), ids_of(b'{')
    ((None, None), (None, None), (None, None))
    """
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    return _valid_id(doc.get("event_id")), _valid_id(doc.get("order_id"))


def _fields(model: BaseModel) -> dict[str, Any]:
    return model.__dict__


DIGEST_ENCODE = msgspec.msgpack.Encoder(enc_hook=_fields).encode
"""A validated event's fields and values (nested lines and items: theirs), in model field order,
as msgpack: a timestamp as its instant (tz-aware, UTC), a float as float64, an enum as its value
(the ``__dict__`` itself: cheaper than a tuple of its values)."""


def content_digest(event: BaseModel) -> int:
    """The duplicate digest of a validated event: crc32 of its field values as validated.

    The same for every serialisation the contract accepts as the same event (key order,
    whitespace, escapes, ``+02:00`` or ``Z`` for one instant, ``10`` or ``10.0`` for money,
    ``2.0`` or ``2`` for a quantity, an optional field omitted or given its default, unknown
    extra fields), and the same on the fast path and the pydantic path (they build equal
    models, field for field, in the same order). Deterministic across processes (no ``hash``).
    The source puts it in the event's tiebreak (:func:`event_tie`); the case stage compares a
    re-delivered event id's digest with the first one's (README "Reliability", duplicates)."""
    return zlib.crc32(DIGEST_ENCODE(event.__dict__))


TIE_DIGEST_MARK = "v"
"""Marks a content digest in a tiebreak (``event_id|v<8 hex>``): a tie from before content
digests (``event_id|<8 hex>``, a crc32 of the raw bytes) has none, and its digest is unknown."""


def event_tie(event: BaseModel) -> str:
    """An event's tiebreak among equal times: its id, then its content digest (so even
    conflicting copies of one id order the same way in every run)."""
    return "%s|v%08x" % (event.event_id, content_digest(event))  # type: ignore[attr-defined]  # noqa: UP031


def parse(raw: RawRecord, fast: bool = True):
    """Return a validated event model, or a :class:`DeadLetter`.

    A valid record is decoded by msgspec (:mod:`salvage.connectors.fastparse`), into the same
    model pydantic would build; a record the fast path does not accept goes through pydantic,
    which names the dead letter's kind. ``fast=False``: pydantic only (the reference)."""
    value = raw.value
    if len(value) > MAX_EVENT_BYTES:
        return dead_letter(
            raw, DeadLetterKind.TOO_LARGE, f"{len(value)} bytes > limit {MAX_EVENT_BYTES}"
        )
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return dead_letter(raw, DeadLetterKind.INVALID_UTF8, str(exc))
    event = parse_fast(value) if fast else None
    if event is None:
        try:
            event = EVENT_ADAPTER.validate_json(value)
        except ValidationError as exc:
            kind, message = _classify(exc)
            event_id, order_id = ids_of(value)
            return dead_letter(raw, kind, message, event_id=event_id, order_id=order_id)
        except (ValueError, RecursionError) as exc:  # pragma: no cover - defensive
            return dead_letter(raw, DeadLetterKind.INVALID_JSON, str(exc))
    if raw.stream is not None and STREAM_OF[event.event_type] != raw.stream:
        return dead_letter(
            raw,
            DeadLetterKind.WRONG_STREAM,
            f"{event.event_type} belongs on '{STREAM_OF[event.event_type]}', not '{raw.stream}'",
            event_id=event.event_id,
            order_id=event.order_id,
        )
    return event
