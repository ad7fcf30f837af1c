"""Model checkpoints: what ``salvage models export`` reads (not Bytewax's recovery tables).

A model shard (``ModelStage``) emits a checkpoint of its two online models on
``Route.MODEL_STATE`` when a model is promoted or demoted, every :data:`EVERY_LABELS` labels, and
when its input ends; the flow's model sink (``salvage.flows.recovery.ModelFileSink``) writes each
one atomically to ``DIR/model-NNNN.pkl`` (the newest replaces the previous: a compacted stream of
one file per shard). ``salvage run --recovery-dir DIR`` puts them in ``DIR/models``, on the
process that owns the shard. A replay after a crash emits the same checkpoints again, in the same
order, so the files end the same. No Bytewax import (the stages call :func:`checkpoint`).

A checkpoint holds the :class:`~salvage.scoring.models.ModelSet` without its per-case memory
(the pending snapshots of open cases stay in the recovery state): weights, scaler, evaluation
windows, shadow/active, promotions.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

from salvage.features.eventtime import END
from salvage.flows.messages import Route

EVERY_LABELS = 1000
SUFFIX = ".pkl"


def _mark(ms: Any) -> list[list]:
    return [[m.active, m.version] for m in (ms.recoverability, ms.abuse)]


def checkpoint(stage: Any, low: int, out: list) -> None:
    """After a batch of a model shard: emit a checkpoint if one is due (see the module doc)."""
    ms = stage.models
    labels = ms.recoverability.labels + ms.abuse.labels
    last = getattr(stage, "exported_labels", None)  # [labels, mark] of the last checkpoint
    mark = _mark(ms)
    due = (
        last is None
        or mark != [list(x) for x in last[1]]
        or labels - last[0] >= EVERY_LABELS
        or (low >= END and labels != last[0])
    )
    if not due or (last is None and labels == 0 and low < END):
        return
    stage.exported_labels = [labels, mark]
    lite = copy.copy(ms)
    lite.pending, lite.awaiting, lite.await_heap = {}, {}, []
    doc = {
        "key": f"model-{stage.shard:04d}",  # a name for people (the stage key may carry a ~salt)
        "labels": labels,
        "pending_cases": len(ms.pending),
        "driving": ms.version,
        "models": pickle.dumps(lite, protocol=pickle.HIGHEST_PROTOCOL),
    }
    out.append((Route.MODEL_STATE, doc))


def write_checkpoints(folder: Path, items: list[dict]) -> None:
    """Write the newest checkpoint of each shard in ``items`` (atomically: write, rename)."""
    newest = {doc["key"]: doc for doc in items}
    if not newest:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for key, doc in newest.items():
        path = folder / f"{key}{SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)


def read_checkpoints(folder: Path) -> list[dict[str, Any]]:
    """The checkpoints in ``folder`` (one per model shard), ``models`` unpickled, by key."""
    docs = []
    for path in sorted(Path(folder).glob(f"model-*{SUFFIX}")):
        doc = pickle.loads(path.read_bytes())
        doc["models"] = pickle.loads(doc["models"])
        docs.append(doc)
    return docs
