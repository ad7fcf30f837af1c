"""``salvage models export``: the models a run has learned, read from its recovery snapshots.

Model state lives in the dataflow's recoverable state (one ``ModelStage`` per model shard, pickled
by Bytewax into ``--recovery-dir``). This reads the latest committed snapshot of every model shard
and writes, per shard, ``model-NNNN/<model>.json`` (weights, intercept, scaler, rolling AUC / log
loss / Brier for the model and the rule baseline, shadow or active, promotions) and
``model-NNNN/models.pkl`` (the River objects, for a notebook), plus ``summary.json``.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_STEP = "salvage-recovery.models"


class ExportError(Exception):
    """The recovery directory holds no model state to export."""


@dataclass(frozen=True)
class ShardState:
    key: str
    epoch: int
    stage: Any  # salvage.flows.stages.ModelStage


def _dirs(recovery_dirs: Path | Sequence[Path]) -> list[Path]:
    return [Path(recovery_dirs)] if isinstance(recovery_dirs, str | Path) else list(recovery_dirs)


def load_model_shards(recovery_dirs: Path | Sequence[Path]) -> list[ShardState]:
    """The latest committed snapshot of each model shard. A cluster keeps each process's share of
    the recovery partitions in that process's own directory: pass them all (the committed epoch
    is the cluster's, the minimum over every partition)."""
    dirs = _dirs(recovery_dirs)
    where = ", ".join(str(d) for d in dirs)
    from salvage.runner import RUN_MANIFEST, STATE_VERSION

    for d in dirs:
        manifest = Path(d) / RUN_MANIFEST
        if manifest.is_file():
            version = json.loads(manifest.read_text()).get("state_version", 1)
            if version != STATE_VERSION:
                raise ExportError(
                    f"{d} holds state written by another Salvage version (state format {version},"
                    f" this one reads {STATE_VERSION}): export it with that version"
                )
    dbs = sorted(db for d in dirs for db in Path(d).glob("part-*.sqlite3"))
    if not dbs:
        raise ExportError(f"{where} holds no recovery partitions (part-*.sqlite3)")
    commits: list[int] = []
    snaps: list[tuple[str, int, bytes]] = []
    for db in dbs:  # one read-only pass per partition
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            commits += [row[0] for row in conn.execute("SELECT commit_epoch FROM commits")]
            snaps += conn.execute(
                "SELECT state_key, snap_epoch, ser_change FROM snaps"
                " WHERE step_id = ? AND ser_change IS NOT NULL",
                (MODEL_STEP,),
            ).fetchall()
    limit = min(commits) if commits else None
    latest: dict[str, tuple[int, bytes]] = {}
    for key, epoch, blob in snaps:
        if (limit is None or epoch <= limit) and (key not in latest or epoch > latest[key][0]):
            latest[key] = (epoch, blob)
    if not latest:
        raise ExportError(f"{where} holds no model state yet (no committed snapshot)")
    shards = []
    for key in sorted(latest):
        epoch, blob = latest[key]
        inner = pickle.loads(blob)  # Bytewax's serde wraps the stage's own pickle
        stage = pickle.loads(inner) if isinstance(inner, bytes) else inner
        shards.append(ShardState(key, epoch, stage))
    return shards


def export_models(recovery_dirs: Path | Sequence[Path], out: Path) -> dict[str, Any]:
    """Write the export; returns the summary (also written as ``summary.json``)."""
    dirs = _dirs(recovery_dirs)
    shards = load_model_shards(dirs)  # before creating anything: a bad directory writes nothing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"recovery_dirs": [str(d) for d in dirs], "shards": {}}
    for shard in shards:
        models = shard.stage.models
        folder = out / shard.key
        folder.mkdir(exist_ok=True)
        exported = models.export()
        for name, doc in exported.items():
            (folder / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
        with (folder / "models.pkl").open("wb") as f:
            pickle.dump(models, f, protocol=pickle.HIGHEST_PROTOCOL)
        summary["shards"][shard.key] = {
            "epoch": shard.epoch,
            "pending_cases": len(models.pending),
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
