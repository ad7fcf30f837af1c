"""Raw bytes -> validated event, or a dead letter with a precise kind. Never raises on bad input."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pydantic import ValidationError

from connectors.events import EVENT_ADAPTER, STREAM_OF, Stream
from connectors.outputs import DeadLetter, DeadLetterKind

MAX_EVENT_BYTES = 64 * 1024
"""Documented size limit: a message above this is a ``too_large`` dead letter, unparsed."""

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
    return DeadLetter(
        source=raw.source,
        partition=raw.partition,
        offset=raw.offset,
        kind=kind,
        message=message[:500],
        raw_b64=base64.b64encode(raw.value).decode("ascii"),
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


def parse(raw: RawRecord):
    """Return a validated event model, or a :class:`DeadLetter`."""
    value = raw.value
    if len(value) > MAX_EVENT_BYTES:
        return dead_letter(
            raw, DeadLetterKind.TOO_LARGE, f"{len(value)} bytes > limit {MAX_EVENT_BYTES}"
        )
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead_letter(raw, DeadLetterKind.INVALID_UTF8, str(exc))
    try:
        event = EVENT_ADAPTER.validate_json(value)
    except ValidationError as exc:
        kind, message = _classify(exc)
        return dead_letter(raw, kind, message)
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
