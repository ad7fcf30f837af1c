"""Case-store documents as JSON, with orjson.

Dispatch serialises one case record per order and call, from the order's latest update in the
call, at the end of the call (:func:`case_json`): the record's dicts are still hot then, and bytes
held until the sink's flush are small and not tracked by the cyclic GC; the Redis sink
(:mod:`salvage.sinks.redis_store`) writes the latest per order of each batch. Measured
(benchmarks/throughput.py --case-records, CPU time): ``json.dumps`` at emission ~27-50 µs/event
for case records in all; the dict kept until the sink's flush and serialised there (the record
cold by then) ~23-32; orjson at emission ~14-18.
"""

from __future__ import annotations

import numbers
from typing import Any

import orjson

CaseDoc = str | bytes | dict[str, Any]
"""A case document: a dict (serialised by :func:`case_json`) or its JSON text."""


def _json_default(value: object) -> object:
    if isinstance(value, numbers.Real):  # float subclasses (numpy scalars), as json.dumps does
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def case_json(doc: CaseDoc) -> str | bytes:
    """The JSON text of a case document: text as it is, a dict through orjson (compact, UTF-8;
    parsed back it is the document ``json.dumps`` made, for the finite numbers a case holds)."""
    if isinstance(doc, str | bytes):
        return doc
    try:
        return orjson.dumps(doc)
    except TypeError:  # a non-str key or a float subclass: slower options, as json.dumps took them
        return orjson.dumps(doc, default=_json_default, option=_ORJSON_OPTIONS)
