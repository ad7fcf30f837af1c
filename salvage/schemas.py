"""JSON Schema for every input and output message, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import TypeAdapter

from salvage.connectors.events import EVENT_ADAPTER, EVENT_MODELS, STREAM_OF
from salvage.connectors.outputs import OUTCOME_RECORDS, OUTPUTS


def all_schemas() -> dict[str, dict]:
    """file stem -> JSON Schema."""
    out: dict[str, dict] = {}
    for event_type, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["title"] = event_type
        schema["description"] = f"Input event on the '{STREAM_OF[event_type]}' topic."
        out[f"{STREAM_OF[event_type]}.{event_type}"] = schema
    union = EVENT_ADAPTER.json_schema(mode="validation")
    union["title"] = "salvage input event (any stream)"
    out["input-event"] = union
    for stream in OUTPUTS:
        schema = TypeAdapter(stream.model).json_schema(mode="serialization")
        schema["description"] = f"Output message on the '{stream.name}' topic."
        out[stream.name] = schema
    for kind, record in OUTCOME_RECORDS.items():  # a run's outcomes.jsonl (salvage uplift)
        schema = TypeAdapter(record).json_schema(mode="serialization")
        schema["title"] = kind
        schema["description"] = " ".join((record.__doc__ or "").split())
        out[f"outcomes.{kind}"] = schema
    return out


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, schema in sorted(all_schemas().items()):
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        path = out_dir / f"{stem}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
