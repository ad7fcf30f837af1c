"""``salvage models export``: the models a run has learned, from its model checkpoints.

Each model shard (``ModelStage``) emits checkpoints through the flow's model sink
(:mod:`salvage.flows.model_sink`): with ``salvage run --recovery-dir DIR`` they land in
``DIR/models/model-NNNN.pkl`` on the process that owns the shard (on a promotion or demotion,
every 1,000 labels, and at the end of the input). This reads the newest checkpoint of every model
shard and writes, per shard, ``model-NNNN/<model>.json`` (weights, intercept, scaler, rolling AUC
/ log loss / Brier for the model and the rule baseline, shadow or active, promotions) and
``model-NNNN/models.pkl`` (the ModelSet with its dense parameters, for a notebook), plus
``summary.json``. Bytewax's recovery tables are not read (their snapshots are references into
the stages' state journal).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salvage.flows.model_sink import read_checkpoints


class ExportError(Exception):
    """The recovery directory holds no model state to export."""


@dataclass(frozen=True)
class ShardState:
    key: str
    labels: int  # labels learned by both models when the checkpoint was taken
    pending_cases: int
    models: Any  # salvage.scoring.models.ModelSet (without its per-case memory)


def _dirs(recovery_dirs: Path | Sequence[Path]) -> list[Path]:
    return [Path(recovery_dirs)] if isinstance(recovery_dirs, str | Path) else list(recovery_dirs)


def load_model_shards(recovery_dirs: Path | Sequence[Path]) -> list[ShardState]:
    """The newest checkpoint of each model shard. A cluster keeps each shard's checkpoints in
    the directory of the process that owns it: pass them all."""
    from salvage.flows.recovery import MODELS_DIR
    from salvage.runner import RUN_MANIFEST, STATE_VERSION

    dirs = _dirs(recovery_dirs)
    where = ", ".join(str(d) for d in dirs)
    for d in dirs:
        manifest = Path(d) / RUN_MANIFEST
        if manifest.is_file():
            version = json.loads(manifest.read_text()).get("state_version", 1)
            if version != STATE_VERSION:
                raise ExportError(
                    f"{d} holds state written by another Salvage version (state format {version},"
                    f" this one reads {STATE_VERSION}): export it with that version"
                )
    docs = [doc for d in dirs for doc in read_checkpoints(Path(d) / MODELS_DIR)]
    if not docs:
        if not any(any(Path(d).glob("part-*.sqlite3")) for d in dirs):
            raise ExportError(f"{where} holds no recovery partitions (part-*.sqlite3)")
        raise ExportError(f"{where} holds no model checkpoints yet ({MODELS_DIR}/model-*.pkl)")
    latest: dict[str, dict] = {}
    for doc in docs:  # a shard moved between directories: the one that learned more
        if doc["key"] not in latest or doc["labels"] > latest[doc["key"]]["labels"]:
            latest[doc["key"]] = doc
    return [
        ShardState(key, doc["labels"], doc["pending_cases"], doc["models"])
        for key, doc in sorted(latest.items())
    ]


def export_models(recovery_dirs: Path | Sequence[Path], out: Path) -> dict[str, Any]:
    """Write the export; returns the summary (also written as ``summary.json``)."""
    dirs = _dirs(recovery_dirs)
    shards = load_model_shards(dirs)  # before creating anything: a bad directory writes nothing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"recovery_dirs": [str(d) for d in dirs], "shards": {}}
    for shard in shards:
        models = shard.models
        folder = out / shard.key
        folder.mkdir(exist_ok=True)
        exported = models.export()
        for name, doc in exported.items():
            (folder / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
        with (folder / "models.pkl").open("wb") as f:
            pickle.dump(models, f, protocol=pickle.HIGHEST_PROTOCOL)
        summary["shards"][shard.key] = {
            "labels": shard.labels,
            "pending_cases": shard.pending_cases,
            "driving": models.version,
            "models": {
                name: {
                    k: doc[k] for k in ("driving", "active", "version", "labels", "model", "rules")
                }
                for name, doc in exported.items()
            },
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary
