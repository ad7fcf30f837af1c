r"""The hot-path parse: msgspec decodes and validates a record into the pydantic event model.

The pydantic models in :mod:`salvage.connectors.events` stay the contracts. This module derives
from them, at import, one msgspec ``Struct`` per model (same fields, same constraints, the
``event_type`` literal as the union's tag) and a generated converter per model that builds the
pydantic instance directly: the same ``__dict__`` (same field order, same values and types,
timestamps normalised to UTC), an equal ``model_fields_set`` (one set shared by the instances
with the same given fields: the models are frozen), no extra, no private state.

The fast path only ever *accepts*, and only what the pydantic path accepts with the same values;
anything it cannot decide exactly returns ``None`` and :func:`salvage.connectors.parse.parse`
runs pydantic, which makes the dead letter (so dead letters keep their precise kinds and
messages). What the fast path leaves to pydantic on purpose:

* any msgspec decode or validation error (pydantic then finds its own first error);
* a record that is not *clean* (:func:`clean`: ASCII, no escape, no DEL): on a clean record
  every string is ``\x20-\x7e``, so the contracts' printable-ASCII patterns reduce to a length
  (and a no-space check for ids) instead of a regex per field (msgspec's costs ~0.8 µs each);
  other patterns are matched with Python's ``re`` (``$`` as ``\Z``, as pydantic's Rust regex);
* more than ``MAX_CONTAINERS`` ``[``/``{`` bytes: pydantic's JSON parser refuses nesting deeper
  than 200 levels even in ignored fields, which msgspec would accept (counted only in records
  longer than ``2 * MAX_CONTAINERS`` bytes: valid JSON that deep is longer);
* timestamps other than ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+HH:MM)`` (msgspec rounds more than 6
  fractional digits where pydantic truncates; pydantic also takes ``,`` and shorter forms), and
  any timestamp outside the contract's range;
* ``schema_version`` given as ``1.0`` or ``true`` (pydantic's literal accepts those), and a
  quantity given as an integral float (``2.0``: the contracts' ``INTEGRAL``, JSON Schema's
  ``integer`` accepts it).

An unsupported constraint in a contract (a new validator, ``strip_whitespace``...) fails at
import rather than being approximated: extend :meth:`_Gen.translate` for it.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

import annotated_types as at
import msgspec
from pydantic import AfterValidator, BaseModel, BeforeValidator, StringConstraints
from pydantic.fields import FieldInfo

from salvage.connectors.events import EVENT_MODELS, INTEGRAL, MAX_TIME, MIN_TIME, UtcTime

MAX_CONTAINERS = 200
"""At most this many ``[`` and ``{`` bytes in a record for the fast path (so at most this deep)."""

_TIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\Z"
)
_fromisoformat = datetime.fromisoformat


# the contract's bounds in the common form: fixed width, so text order is time order
_MIN_Z, _MAX_Z = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (MIN_TIME, MAX_TIME))
assert all(t.utcoffset() is not None and not t.utcoffset() for t in (MIN_TIME, MAX_TIME))
assert MIN_TIME.microsecond == MAX_TIME.microsecond == 0


def _time(text: str) -> datetime:
    """A timestamp as pydantic's ``UtcTime`` makes it, for the forms where both agree
    (ValueError / OverflowError otherwise: left to pydantic)."""
    if len(text) == 20 and text[4::3] == "--T::Z":  # YYYY-MM-DDTHH:MM:SSZ, the common form
        if not _MIN_Z <= text < _MAX_Z:
            raise ValueError(text)
        return _fromisoformat(text)  # UTC already; digits and ranges checked by fromisoformat
    if _TIME_RE.match(text) is None:
        raise ValueError(text)
    value = _fromisoformat(text).astimezone(UTC)
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError(text)
    return value


_TIME_CACHE: dict[str, datetime] = {}
_TIME_CACHE_MAX = 4096


def _cached_time(text: str) -> datetime:
    """:func:`_time`, remembered: deadlines (``promised_delivery_at``, ``estimated_delivery_at``)
    take few distinct values, so most are a dict hit (the generated converters look the cache up
    themselves first; ``occurred_at`` is nearly always new: not cached). A datetime is
    immutable, so the events may share it."""
    value = _time(text)  # raises (not cached) where the text is not for the fast path
    if len(_TIME_CACHE) >= _TIME_CACHE_MAX:
        _TIME_CACHE.clear()
    _TIME_CACHE[text] = value
    return value


def clean(value: bytes) -> bool:
    """Every string in this JSON text is made of ``\x20-\x7e`` only: ASCII, no escape (so no
    control character either: JSON has none raw) and no DEL."""
    return value.isascii() and b"\\" not in value and b"\x7f" not in value


# On a clean record (see :func:`clean`), what a contract's pattern still has to check, as an
# expression over ``{x}`` (None: nothing). A pattern not listed here is matched in full.
_PRINTABLE = "^[\\x20-\\x7e]+$"
_NO_SPACE = "^[\\x21-\\x7e]+$"
_ON_CLEAN = {_PRINTABLE: None, _NO_SPACE: "' ' not in {x}"}


def _python_pattern(pattern: str) -> str:
    # pydantic's (Rust) ``$`` is the end of the text; Python's also matches before a final "\n"
    return (
        pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    )


_BOUNDS: dict[type, str] = {
    at.Ge: "ge",
    at.Le: "le",
    at.Gt: "gt",
    at.Lt: "lt",
    at.MinLen: "min_length",
    at.MaxLen: "max_length",
}
"""annotated-types bounds with the msgspec ``Meta`` keyword (and attribute) of the same name."""


def _constraints(meta: list[Any]) -> tuple[dict[str, Any], str | None]:
    """msgspec ``Meta`` keywords, and a pattern left to check (as in pydantic)."""
    out: dict[str, Any] = {}
    pattern = None
    for m in meta:
        if isinstance(m, StringConstraints):
            extra = {
                k: getattr(m, k)
                for k in ("strip_whitespace", "to_upper", "to_lower", "ascii_only")
                if getattr(m, k)
            }
            if extra or m.strict is False:
                raise TypeError(f"fastparse: unsupported string constraint {extra or m}")
            for key in ("min_length", "max_length"):
                if getattr(m, key) is not None:
                    out[key] = getattr(m, key)
            if m.pattern is not None:
                pattern = str(m.pattern)
        elif isinstance(m, FieldInfo):
            sub, sub_pattern = _constraints(list(m.metadata))
            out.update(sub)
            pattern = sub_pattern or pattern
        elif type(m) in _BOUNDS:  # Ge(ge=...) -> Meta(ge=...), and so on
            key = _BOUNDS[type(m)]
            out[key] = getattr(m, key)
        elif type(m).__name__ == "AllowInfNan" and not m.allow_inf_nan:
            continue  # msgspec's JSON has no NaN/Infinity and refuses numbers out of range
        else:
            raise TypeError(f"fastparse: unsupported constraint {m!r}")
    return out, pattern


MAX_OPTIONAL = 10
"""At most this many optional fields per model (2**n shared fields sets each)."""


def _shared_fields_sets(required: list[str], optional: list[str]) -> tuple[set[str], ...]:
    """``model_fields_set`` for each mask ``k`` of given optional fields (bit i: ``optional[i]``).

    One set per combination, shared by every instance built with it: a fresh set per event was
    the largest single cost of a conversion (an allocation the cyclic GC tracks). Sharing is
    safe because the event models are frozen: pydantic changes a fields set only on attribute
    assignment (refused) and in ``model_copy``, which copies the set first (``__copy__``)."""
    return tuple(
        set(required) | {name for i, name in enumerate(optional) if k >> i & 1}
        for k in range(1 << len(optional))
    )


class _Gen:
    """Translates the pydantic contracts into Structs and generates their converters."""

    def __init__(self) -> None:
        self.structs: dict[type[BaseModel], type[msgspec.Struct]] = {}
        self.ns: dict[str, Any] = {
            "_time": _time,
            "_ctime": _cached_time,
            "_tcget": _TIME_CACHE.get,
            "_fromiso": _fromisoformat,
            "_MIN_Z": _MIN_Z,
            "_MAX_Z": _MAX_Z,
            "_UNSET": msgspec.UNSET,
            "_new": object.__new__,
            **{
                f"_set{slot}": BaseModel.__dict__[f"__{slot}__"].__set__
                for slot in ("dict", "pydantic_fields_set", "pydantic_extra", "pydantic_private")
            },
        }
        self.converters: dict[type[msgspec.Struct], Any] = {}
        self.sources: list[str] = []  # the generated converters (for reading / debugging)

    def translate(self, tp: Any) -> tuple[Any, str | None, str | None]:
        """(msgspec type, converter expression over ``{x}`` or None for the identity, check
        expression over ``{x}`` or None)."""
        if tp == UtcTime:
            return str, "_time({x})", None
        origin = typing.get_origin(tp)
        if origin is Annotated:
            base, *meta = typing.get_args(tp)
            # an integral float for an int (2.0): msgspec refuses it, so pydantic converts it
            meta = [m for m in meta if m is not INTEGRAL]
            if any(isinstance(m, AfterValidator | BeforeValidator) for m in meta):
                raise TypeError(f"fastparse: unsupported validator in {tp!r}")
            inner, conv, check = self.translate(base)
            kwargs, pattern = _constraints(meta)
            if pattern is not None:
                if check is not None or inner is not str:
                    raise TypeError(f"fastparse: unsupported pattern on {tp!r}")
                if pattern in _ON_CLEAN:
                    check = _ON_CLEAN[pattern]
                    kwargs["min_length"] = max(kwargs.get("min_length", 0), 1)
                else:
                    name = f"_re{len(self.ns)}"
                    self.ns[name] = re.compile(_python_pattern(pattern))
                    check = f"{name}.search({{x}}) is not None"
            return (Annotated[inner, msgspec.Meta(**kwargs)] if kwargs else inner), conv, check
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1 or len(args) != 2:
                raise TypeError(f"fastparse: unsupported union {tp!r}")
            inner, conv, check = self.translate(rest[0])
            if conv is not None:
                conv = f"(None if {{x}} is None else {conv})"
            if check is not None:
                check = f"({{x}} is None or {check})"
            return inner | None, conv, check
        if origin is list:
            (item,) = typing.get_args(tp)
            inner, conv, check = self.translate(item)
            if conv is not None:
                conv = "[" + conv.format(x="_i") + " for _i in {x}]"
            if check is not None:
                check = "all(" + check.format(x="_i") + " for _i in {x})"
            return list[inner], conv, check  # type: ignore[valid-type]
        if origin is Literal:
            return tp, None, None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            struct = self.struct(tp)
            return struct, f"_conv_{tp.__name__}({{x}})", None
        if isinstance(tp, type) and issubclass(tp, enum.Enum | str | int | float | bool):
            return tp, None, None
        raise TypeError(f"fastparse: unsupported type {tp!r}")

    def struct(self, model: type[BaseModel], tag: str | None = None) -> type[msgspec.Struct]:
        """The Struct for ``model`` (tagged by its ``event_type``: ``tag``), and its converter
        ``_conv_<Model>`` in ``self.ns``."""
        if model in self.structs:
            return self.structs[model]
        config = model.model_config
        if (
            config.get("extra") != "ignore"
            or not config.get("strict")
            or config.get("alias_generator")
        ):
            raise TypeError(f"fastparse: {model.__name__} must be strict, extra='ignore'")
        if model.__pydantic_post_init__ or model.__private_attributes__:
            raise TypeError(f"fastparse: {model.__name__} has post-init or private state")
        hints = typing.get_type_hints(model, include_extras=True)
        fields: list[tuple[str, Any, Any]] = []
        required: list[str] = []
        checks: list[str] = []
        lines: list[str] = []
        entries: list[str] = []
        optional: list[str] = []  # the optional fields, in order (bit i of k: the i-th was given)
        for name, info in model.model_fields.items():
            if info.alias is not None or info.validation_alias is not None:
                raise TypeError(f"fastparse: aliases are not supported ({model.__name__}.{name})")
            if name == "event_type" and tag is not None:
                required.append(name)
                entries.append(f"{name!r}: {tag!r}")
                continue
            mtype, conv, check = self.translate(hints[name])
            if conv == "_time({x})" and name == "occurred_at":  # the common form inline
                conv = (
                    "(_fromiso(_o) if len(_o := {x}) == 20 and _o[4::3] == '--T::Z'"
                    " and _MIN_Z <= _o < _MAX_Z else _time(_o))"
                )
            elif conv is not None:  # few distinct values: cached
                conv = conv.replace("_time({x})", "(_tcget({x}) or _ctime({x}))")
            if info.is_required():
                fields.append((name, mtype, msgspec.NODEFAULT))
                required.append(name)
                if check is not None:
                    checks.append(check.format(x=f"s.{name}"))
                entries.append(f"{name!r}: {(conv or '{x}').format(x=f's.{name}')}")
                continue
            default = info.get_default(call_default_factory=False)
            if isinstance(default, list) and default == []:
                default_expr = "[]"  # pydantic copies a mutable default per instance
            elif default is None or isinstance(default, str | int | float | enum.Enum):
                default_expr = f"_d_{model.__name__}_{name}"
                self.ns[default_expr] = default
            else:
                raise TypeError(f"fastparse: unsupported default {default!r}")
            fields.append((name, mtype | msgspec.UnsetType, msgspec.UNSET))
            v = f"v_{name}"
            lines += [
                f"    {v} = s.{name}",
                f"    if {v} is _UNSET:",
                f"        {v} = {default_expr}",
                "    else:",
                f"        k |= {1 << len(optional)}",
            ]
            optional.append(name)
            if check is not None:
                lines.append(f"        if not ({check.format(x=v)}):")
                lines.append("            raise ValueError")
            if conv is not None:
                lines.append(f"        {v} = {conv.format(x=v)}")
            entries.append(f"{name!r}: {v}")
        opts: dict[str, Any] = {"kw_only": True, "gc": False}  # no cycles: not GC-tracked
        if tag is not None:
            opts.update(tag_field="event_type", tag=tag)
        struct = msgspec.defstruct(f"_{model.__name__}Struct", fields, **opts)
        self.structs[model] = struct
        self.ns[model.__name__] = model
        if len(optional) > MAX_OPTIONAL:
            raise TypeError(f"fastparse: {model.__name__} has over {MAX_OPTIONAL} optional fields")
        # the fields set of every combination of given optional fields, built once and shared
        # by the instances (see _shared_fields_sets)
        self.ns[f"_fs_{model.__name__}"] = _shared_fields_sets(required, optional)
        src = "\n".join(
            [
                f"def _conv_{model.__name__}(s):",
                *(
                    [f"    if not ({' and '.join(checks)}):", "        raise ValueError"]
                    * bool(checks)
                ),
                *(["    k = 0"] * bool(optional)),
                *lines,
                f"    m = _new({model.__name__})",
                "    _setdict(m, {" + ", ".join(entries) + "})",
                f"    _setpydantic_fields_set(m, _fs_{model.__name__}[{'k' if optional else 0}])",
                "    _setpydantic_extra(m, None)",
                "    _setpydantic_private(m, None)",
                "    return m",
            ]
        )
        exec(src, self.ns)
        self.converters[struct] = self.ns[f"_conv_{model.__name__}"]
        self.sources.append(src)
        return struct


def _build() -> tuple[msgspec.json.Decoder[Any], dict[type[msgspec.Struct], Any]]:
    gen = _Gen()
    for tag, model in EVENT_MODELS.items():
        gen.struct(model, tag)
    tops = tuple(gen.structs[m] for m in EVENT_MODELS.values())
    return msgspec.json.Decoder(Union[tops]), {s: gen.converters[s] for s in tops}  # noqa: UP007


_DECODER, _CONVERTERS = _build()
_ERRORS = (msgspec.MsgspecError, ValueError, OverflowError, RecursionError)


def parse_fast(value: bytes) -> Any:
    """The event model for a valid record, or None: not decided here, ask pydantic."""
    if (  # clean(value), inline
        not value.isascii()
        or b"\\" in value
        or b"\x7f" in value
        # JSON nested n deep has n opening and n closing brackets: no need to count below that
        or (
            len(value) > 2 * MAX_CONTAINERS
            and value.count(b"[") + value.count(b"{") > MAX_CONTAINERS
        )
    ):
        return None
    try:
        s = _DECODER.decode(value)
        return _CONVERTERS[type(s)](s)
    except _ERRORS:
        return None
