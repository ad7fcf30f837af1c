"""Explicit, versioned state of every stage: a small header plus keyed maps, each entry msgpack.

A stage shard's state is split the way :mod:`salvage.flows.journal` stores it:

* a **header**: the watermark position and reorder buffer, counters, small dicts, and the
  schema (field names) of every record type it holds;
* **keyed maps**: the open cases by order id, customers by id, per-order dispatch memory, the
  model snapshots of open cases ... each entry one msgpack document of the record's fields
  (``c:<order id>`` for a case, ``k:<customer id>`` for a customer ...).

When a stage is journaled (:func:`track`), its keyed maps are :class:`TrackedDict` /
:class:`TrackedSet`: every key read for update, written or deleted is recorded, so a snapshot
(:meth:`StageState.delta`) encodes only those entries (and the header), whatever the number of
open cases. Heaps of timers are not stored: they are recomputed on load from the entries and the
*current* configuration (a changed return window moves every deadline), as are the parts of the
stage that follow the configuration. A resume builds the stage from the current config, then
loads the state into it (:meth:`StageState.load`).

What is pickled: the items in flight in a reorder buffer or waiting for their order (input
events, case views: transient, usually few) and the models' evaluation windows (River metrics and
ADWIN, inside each model's entry). The models' parameters are the dense core's float64 arrays
(:func:`model_doc`: a keyed entry per model, rewritten only when it learned). Everything else is
plain values.

Versioning: :data:`CODEC_VERSION` is written in every header and checked on load; record
schemas travel with the header, so a record type that gained a field loads older entries with
the field's default. The recovery manifest's ``state_version`` (salvage.runner) gates whole
formats. Pure Python, no Bytewax import.
"""

from __future__ import annotations

import heapq
import pickle
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from salvage.features.customer import CustomerContext
from salvage.features.eventtime import BEGIN, Reorderer
from salvage.features.lane import LaneMonitor
from salvage.features.order_case import STATE_FIELDS, OrderCase, Outcome, Status, shared
from salvage.scoring.models import Snapshot
from salvage.sinks import kpis, metrics

CODEC_VERSION = 2  # 2: the models' dense state (msgpack doc, not a pickle)
_PICKLE = pickle.HIGHEST_PROTOCOL


class StateError(RuntimeError):
    """State that this version cannot load (another codec version, an unknown stage)."""


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# ----------------------------------------------------------------------------- tracking


class TrackedDict(dict):
    """A dict that records every key fetched, stored or removed (``touched``): what a snapshot
    must rewrite. Reads through ``get`` / ``[]`` count (the value may be changed in place);
    ``in`` and iteration do not."""

    __slots__ = ("touched",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.touched: set = set()

    def __reduce__(self):  # pickles (tests, tools) as a plain dict
        return (dict, (dict(self),))

    def get(self, key, default=None):
        self.touched.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.touched.add(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        self.touched.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.touched.add(key)
        super().__delitem__(key)

    def pop(self, key, *default):
        self.touched.add(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self.touched.add(key)
        return super().setdefault(key, default)

    def popitem(self):
        key, value = super().popitem()
        self.touched.add(key)
        return key, value

    def update(self, *args, **kw) -> None:
        other = dict(*args, **kw)
        self.touched.update(other)
        super().update(other)

    def clear(self) -> None:
        self.touched.update(self)
        super().clear()


class TrackedSet(set):
    """A set that records the members added or removed (``touched``)."""

    __slots__ = ("touched",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.touched: set = set()

    def __reduce__(self):
        return (set, (set(self),))

    def add(self, item) -> None:
        self.touched.add(item)
        super().add(item)

    def discard(self, item) -> None:
        self.touched.add(item)
        super().discard(item)

    def remove(self, item) -> None:
        self.touched.add(item)
        super().remove(item)

    def pop(self):
        item = super().pop()
        self.touched.add(item)
        return item

    def clear(self) -> None:
        self.touched.update(self)
        super().clear()


# ----------------------------------------------------------------------------- records


class Record:
    """The msgpack codec of one dataclass record type: a list of its field values, in the order
    of the schema written in the header (``names``), with per-field conversions back."""

    def __init__(
        self,
        cls: type,
        decode: dict[str, Callable[[Any], Any]] | None = None,
        names: tuple[str, ...] | None = None,
        make: Callable[..., Any] | None = None,
    ) -> None:
        self.cls = cls
        # the values stored (attributes of a record): by default its dataclass fields
        # (fields marked ``metadata={"derived": True}`` are rebuilt from the others, not stored)
        self.names = (
            names
            if names is not None
            else tuple(f.name for f in fields(cls) if not f.metadata.get("derived"))
        )
        self.decode_field = decode or {}
        self.make = make or cls  # takes the values by name (and in order, with the default names)

    def encode(self, obj: Any) -> list:
        return [getattr(obj, n) for n in self.names]

    def decoder(self, names: Iterable[str] | None) -> Callable[[list], Any]:
        """A decoder for entries written under the schema ``names`` (None: the current one).
        Fields the record no longer has are ignored; new ones take their defaults."""
        written = tuple(names) if names is not None else self.names
        conv = [(i, self.decode_field[n]) for i, n in enumerate(written) if n in self.decode_field]
        make = self.make
        if written == self.names and make is self.cls:

            def same(values: list) -> Any:
                for i, f in conv:
                    values[i] = f(values[i])
                return make(*values)

            return same
        known = set(self.names)

        def mapped(values: list) -> Any:
            for i, f in conv:
                values[i] = f(values[i])
            return make(**{n: v for n, v in zip(written, values, strict=False) if n in known})

        return mapped


def _tuple(v: Any) -> tuple:
    return tuple(v)


def _tuples(v: Any) -> tuple:
    """A tuple of tuples (msgpack gives lists of lists back)."""
    return tuple(map(tuple, v))


CASE = Record(
    OrderCase,
    {
        "status": Status,
        "outcome": lambda v: Outcome(v) if v is not None else None,
        "contacts": lambda v: [tuple(c) for c in v] if v else (),  # () as in a new case
        # the labels a new case shares (order_case.shared), shared by a restored one too
        **dict.fromkeys(
            ("currency", "sku_family", "campaign", "channel", "courier", "lane"), shared
        ),
        "seen": _tuple,
        "abuse_flags": _tuple,
        "other_returns": _tuples,
        "other_flags": _tuple,
        "other_closed": _tuples,
        "refunded_other": _tuples,
    },
    STATE_FIELDS,  # (the ReturnState fields among them, as attributes of the case)
    OrderCase.of,
)
CUSTOMER = Record(CustomerContext)
LANE = Record(LaneMonitor)


def _settled_record() -> Record:
    from salvage.flows.stages import Settled

    strings = ("currency", "campaign", "sku_family", "lane", "support")
    return Record(Settled, {"returns": Settled.decode_returns, **dict.fromkeys(strings, shared)})


# ----------------------------------------------------------------------------- keyed maps


@dataclass(frozen=True)
class KeyedMap:
    """One keyed map of a stage: where it lives, and how its entries encode."""

    prefix: str  # one character: the entry key is "<prefix>:<key>"
    attr: str  # attribute path from the stage, e.g. "cases" or "models.pending"
    encode: Callable[[Any], Any]
    decode: Callable[[Any, dict], Any]  # (value, header) -> entry
    kind: str = "dict"  # "dict" | "set" | "ordered" (insert/delete only, order kept)
    int_keys: bool = False

    def get(self, stage: Any) -> Any:
        obj = stage
        for part in self.attr.split("."):
            obj = getattr(obj, part)
        return obj

    def set(self, stage: Any, value: Any) -> None:
        *path, last = self.attr.split(".")
        obj = stage
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)

    def tracked(self, value: Any) -> Any:
        if self.kind == "set":
            return value if isinstance(value, TrackedSet) else TrackedSet(value)
        return value if isinstance(value, TrackedDict) else TrackedDict(value)

    def key(self, k: Any) -> str:
        return f"{self.prefix}:{k}"


def _schema_dec(record: Record, schema_key: str) -> Callable[[Any, dict], Any]:
    """Decode with the record schema named ``schema_key`` in the header (cached per header)."""

    def decode(value: Any, header: dict) -> Any:
        cache = header.setdefault("_decoders", {})
        dec = cache.get(schema_key)
        if dec is None:
            dec = cache[schema_key] = record.decoder(header.get("schema", {}).get(schema_key))
        return dec(value)

    return decode


def _case_map() -> KeyedMap:
    return KeyedMap("c", "cases", CASE.encode, _schema_dec(CASE, "case"))


def _tomb_ids_dec(v: Any, _h: dict) -> array:
    a = array("Q")
    a.frombytes(v)
    return a


def _snap_enc(snaps: list[Snapshot]) -> list:
    return [[s.t, s.v.tobytes(), s.kind] for s in snaps]


def _snap_dec(v: list) -> list[Snapshot]:
    out = []
    for t, raw, kind in v:
        a = array("f")
        a.frombytes(raw)
        out.append(Snapshot(t, a, kind))
    return out


# ----------------------------------------------------------------------------- stage codecs


class StageCodec:
    """How one stage class's state is split into header and keyed maps."""

    maps: tuple[KeyedMap, ...] = ()
    schema: dict[str, Record] = {}

    def header(self, stage: Any) -> dict:
        return {}

    def load_header(self, stage: Any, doc: dict) -> None:
        """Restore the header's own fields (the stage was built from the current config)."""

    def finish(self, stage: Any, cfg: Any) -> None:
        """After the entries are loaded: recompute what follows from them and the config."""

    def virtual(self, stage: Any) -> dict[str, Any]:
        """Entries that live outside a dict (the models): name -> object, stored as the entry
        ``m:<name>`` (:meth:`encode_virtual`), rewritten when its :meth:`StageState._mark`
        changes."""
        return {}

    def encode_virtual(self, name: str, value: Any) -> bytes:
        return pickle.dumps(value, protocol=_PICKLE)

    def load_virtual(self, stage: Any, name: str, blob: bytes) -> None:
        _set_virtual(stage, name, pickle.loads(blob))


def _reorderer_doc(r: Reorderer) -> dict:
    return {
        "upstream": r.upstream,
        "low": r.low,
        "seq": r._seq,
        "idle_clock": getattr(r, "idle_clock", {}),
        "real": getattr(r, "real", {}),
        # items in flight (events, case views): few, transient; pickled as they are
        "buffer": pickle.dumps(r._heap, protocol=_PICKLE) if r._heap else b"",
    }


def _load_reorderer(r: Reorderer, doc: dict) -> None:
    """Into a reorderer built from the current config: its upstreams keep their saved
    watermarks; an upstream added since (a grown Kafka topic) starts at BEGIN (waited for), one
    the config no longer has is dropped."""
    saved = doc["upstream"]
    r.upstream = {u: saved.get(u, BEGIN) for u in r.upstream}
    r.low = doc["low"]
    r._seq = doc["seq"]
    r.idle_clock = {u: c for u, c in doc["idle_clock"].items() if u in r.upstream}
    r.real = {u: w for u, w in doc["real"].items() if u in r.upstream}
    r._heap = pickle.loads(doc["buffer"]) if doc["buffer"] else []
    heapq.heapify(r._heap)


class _Base(StageCodec):
    def header(self, stage: Any) -> dict:
        return {
            "reorderer": _reorderer_doc(stage.reorderer),
            "seen_t": stage.seen_t,
            # data queued but not sent: empty between batches (a batch sends what it queued)
            "outbox": pickle.dumps(stage._outbox, protocol=_PICKLE) if stage._outbox else b"",
        }

    def load_header(self, stage: Any, doc: dict) -> None:
        _load_reorderer(stage.reorderer, doc["reorderer"])
        stage.seen_t = doc["seen_t"]
        stage._outbox = pickle.loads(doc["outbox"]) if doc["outbox"] else {}


class CaseCodec(_Base):
    def __init__(self) -> None:
        settled = _settled_record()
        self.settled = settled
        self.maps = (
            _case_map(),
            KeyedMap("t", "tombstones", lambda v: v, lambda v, h: v),
            KeyedMap("i", "tomb_ids", lambda v: v.tobytes(), _tomb_ids_dec),
            KeyedMap("d", "tomb_digests", lambda v: v, lambda v, h: v),
            KeyedMap("s", "settled", settled.encode, _schema_dec(settled, "settled")),
            # events waiting for their order_placed (pickled: input events in flight)
            KeyedMap(
                "o",
                "orphans",
                lambda v: pickle.dumps(v, protocol=_PICKLE),
                lambda v, h: pickle.loads(v),
            ),
        )

    def header(self, stage: Any) -> dict:
        return {
            **super().header(stage),
            "schema": {"case": CASE.names, "settled": self.settled.names},
            "tomb_sweep": list(getattr(stage, "tomb_sweep", (BEGIN, BEGIN))),
            # the duplicate digests are of the events' content (not of their raw bytes)
            **({"digests": CONTENT_DIGESTS} if getattr(stage, "content_digests", False) else {}),
        }

    def load_header(self, stage: Any, doc: dict) -> None:
        super().load_header(stage, doc)
        # (a snapshot from before it: the first sweep after the resume forgets nothing)
        stage.tomb_sweep = tuple(doc.get("tomb_sweep", (BEGIN, BEGIN)))
        stage.content_digests = doc.get("digests") == CONTENT_DIGESTS

    def finish(self, stage: Any, cfg: Any) -> None:
        if not stage.content_digests:
            _forget_raw_digests(stage)
        self._timers(stage, cfg)

    def _timers(self, stage: Any, cfg: Any) -> None:
        from salvage.flows.stages.base import TOMBSTONE_US

        # deadlines follow the config (return window, journey thresholds, promise re-checks)
        rechecks = cfg.promise_rechecks_us
        timers = []
        for oid, case in stage.cases.items():
            case.timer = case.next_deadline(cfg.return_window_us, stage.journey, rechecks)
            if case.timer:
                timers.append((case.timer, oid))
        heapq.heapify(timers)
        stage.timers = timers
        keep = max(TOMBSTONE_US, cfg.settled_grace_us)
        stage.tomb_heap = [(t + keep, oid) for oid, t in stage.tombstones.items()]
        heapq.heapify(stage.tomb_heap)
        stage.orphan_heap = [
            (items[0][0] + cfg.orphan_wait_us, oid) for oid, items in stage.orphans.items() if items
        ]
        heapq.heapify(stage.orphan_heap)


CONTENT_DIGESTS = "content"
"""A case stage's header ``digests``: its duplicate digests are of the events' content
(:func:`salvage.connectors.parse.content_digest`). Without it (state from before), they are
crc32s of raw bytes, which a content digest cannot be compared with."""


def _forget_raw_digests(stage: Any) -> None:
    """State from before content digests: its raw-byte digests become unknown (0), so a
    re-delivered event id remembered then counts as a duplicate whatever its payload (as one
    remembered before digests existed). Every entry that held one is rewritten at the next
    snapshot (touched), so none keeps a raw digest under a header that says content."""
    for order_id, case in dict.items(stage.cases):
        digests = getattr(case, "digests", b"")
        if any(digests):
            case.digests = bytes(len(digests))
            _touch(stage.cases, order_id)
    for order_id, digests in dict.items(stage.tomb_digests):
        if any(digests):
            dict.__setitem__(stage.tomb_digests, order_id, bytes(len(digests)))
            _touch(stage.tomb_digests, order_id)
    stage.content_digests = True


def _touch(live: Any, key: Any) -> None:
    if isinstance(live, TrackedDict):
        live.touched.add(key)


class ContextCodec(_Base):
    maps = (KeyedMap("k", "customers", CUSTOMER.encode, _schema_dec(CUSTOMER, "customer")),)

    def header(self, stage: Any) -> dict:
        schema = {"customer": CUSTOMER.names}
        return {**super().header(stage), "schema": schema, "sweep": stage.last_sweep}

    def load_header(self, stage: Any, doc: dict) -> None:
        super().load_header(stage, doc)
        stage.last_sweep = doc["sweep"]


def _same(v: Any, _h: dict | None = None) -> Any:
    return v


def _amendable(v: Any, _h: dict | None = None) -> tuple[int, float, bool | None]:
    """A DispatchStage.amendable entry: (close time, refunded so far, retained so far)."""
    return (int(v[0]), float(v[1]), bool(v[2]) if len(v) > 2 and v[2] is not None else None)


class DispatchCodec(_Base):
    maps = (
        KeyedMap("k", "contacted", _same, _same),
        KeyedMap("s", "sent", _same, _same),
        KeyedMap("f", "first_score", _same, _same),
        KeyedMap("h", "held_out", sorted, lambda v, h: set(v)),
        KeyedMap("d", "last_decision", _same, _same),
        KeyedMap("a", "assigned", lambda v: True, _same, kind="set"),
        # (a snapshot from before it has none: its closed orders' late money is not amended)
        # (an entry from before ``retained`` was kept has two values: None, the close decides)
        KeyedMap("o", "amendable", list, _amendable),
    )

    def header(self, stage: Any) -> dict:
        return {
            **super().header(stage),
            "spent": [[a, day, v] for (a, day), v in stage.spent.items()],
            "sweep": stage.last_sweep,
        }

    def load_header(self, stage: Any, doc: dict) -> None:
        super().load_header(stage, doc)
        stage.spent = {(a, day): v for a, day, v in doc["spent"]}
        stage.last_sweep = doc["sweep"]


def model_doc(m: Any) -> dict:
    """One online model (salvage.scoring.models.OnlineModel) as plain values: the dense core's
    parameters as float64 bytes (:data:`salvage.scoring.dense.LAYOUT_VERSION` slots), its
    promotion state, and its evaluation windows (River metrics and ADWIN, pickled)."""
    from salvage.scoring import dense

    state = None if m.state is None else np_bytes(m.state)
    return {
        "layout": dense.LAYOUT_VERSION,
        "rows": dense.ROWS,
        "state": state,
        "intercept": float(m.intercept),
        "steps": m.steps,
        "active": m.active,
        "version": m.version,
        "labels": m.labels,
        "labels_since_change": m.labels_since_change,
        "positives": m.positives,
        "negatives": m.negatives,
        "evaluation": pickle.dumps(
            (m.model_eval, m.rules_eval, m.model_flagged, m.rules_flagged, m.adwin),
            protocol=_PICKLE,
        ),
    }


def np_bytes(state: Any) -> bytes:
    import numpy as np

    return np.asarray(state, dtype="<f8").tobytes()


def load_model_doc(m: Any, doc: dict, inputs: Any) -> None:
    """Into a model built from the current config (its engine converts the state)."""
    import numpy as np

    from salvage.scoring import dense

    if doc.get("layout") != dense.LAYOUT_VERSION or doc.get("rows") != dense.ROWS:
        raise StateError(
            f"model state with layout {doc.get('layout')}, this version reads "
            f"{dense.LAYOUT_VERSION}"
        )
    m.state = None
    if doc["state"] is not None:
        rows = np.frombuffer(doc["state"], dtype="<f8").reshape(dense.ROWS, -1)
        if inputs is None or rows.shape[1] != 2 * inputs.n:
            raise StateError("model state does not match its feature names")
        m.state = m.engine.adopt(rows)
    if inputs is not None:
        m.bind(inputs)
    m.intercept = doc["intercept"]
    m.steps = doc["steps"]
    m.active = doc["active"]
    m.version = doc["version"]
    m.labels = doc["labels"]
    m.labels_since_change = doc["labels_since_change"]
    m.positives = doc["positives"]
    m.negatives = doc["negatives"]
    (m.model_eval, m.rules_eval, m.model_flagged, m.rules_flagged, m.adwin) = pickle.loads(
        doc["evaluation"]
    )


class ModelCodec(_Base):
    maps = (
        KeyedMap("p", "models.pending", _snap_enc, lambda v, h: _snap_dec(v)),
        KeyedMap(
            "w",
            "models.awaiting",
            lambda e: [e[0], e[1], _snap_enc(e[2]), e[3]],
            lambda v, h: (v[0], v[1], _snap_dec(v[2]), v[3]),
        ),
    )
    MODELS = ("recoverability", "abuse")

    def header(self, stage: Any) -> dict:
        ms = stage.models
        return {
            **super().header(stage),
            "feature_names": ms.feature_names,
            "scored": ms.scored,
            "rules_prior_sum": ms.rules_prior_sum,
            "late_labels": ms.late_labels,
            "export": getattr(stage, "exported_labels", None),
        }

    def load_header(self, stage: Any, doc: dict) -> None:
        super().load_header(stage, doc)
        ms = stage.models
        ms.feature_names = tuple(doc["feature_names"])
        ms.scored = doc["scored"]
        ms.rules_prior_sum = doc["rules_prior_sum"]
        ms.late_labels = doc["late_labels"]
        if doc.get("export") is not None:
            stage.exported_labels = doc["export"]

    def virtual(self, stage: Any) -> dict[str, Any]:
        ms = stage.models
        return {name: getattr(ms, name) for name in self.MODELS}

    def encode_virtual(self, name: str, value: Any) -> bytes:
        return pack(model_doc(value))

    def load_virtual(self, stage: Any, name: str, blob: bytes) -> None:
        ms = stage.models
        load_model_doc(getattr(ms, name), unpack(blob), ms.inputs if ms.feature_names else None)

    def finish(self, stage: Any, cfg: Any) -> None:
        ms = stage.models
        # the promotion and demotion gates and the engine of this run; the models' structure
        # (learning rate, windows) is fixed when they are created
        ms.configure(cfg.model)
        ms.await_heap = [(e[0], oid) for oid, e in ms.awaiting.items()]
        heapq.heapify(ms.await_heap)
        ms.upgrade()


class LaneCodec(_Base):
    maps = (KeyedMap("l", "lanes", LANE.encode, _schema_dec(LANE, "lane")),)

    def header(self, stage: Any) -> dict:
        return {**super().header(stage), "schema": {"lane": LANE.names}}

    def finish(self, stage: Any, cfg: Any) -> None:
        for lane, monitor in stage.lanes.items():  # the gauge of a fresh process starts at 0
            if monitor.alert_open:
                metrics.LANE_ALERT_OPEN.labels(kpis.bucket("lane_monitor", lane)).inc()


class IntentCodec(_Base):
    maps = (
        KeyedMap("w", "intents.model.counts", _same, _same),
        # event ids already learned from (insertion order: the oldest is forgotten first)
        KeyedMap("r", "recent", _same, _same, kind="ordered", int_keys=True),
    )

    def header(self, stage: Any) -> dict:
        clf = stage.intents
        return {
            **super().header(stage),
            "examples": clf.examples,
            "hits": list(clf.hits),
            "class_docs": clf.model.class_docs,
            "class_terms": clf.model.class_terms,
        }

    def load_header(self, stage: Any, doc: dict) -> None:
        super().load_header(stage, doc)
        clf = stage.intents
        clf.examples = doc["examples"]
        clf.hits = deque(doc["hits"], maxlen=clf.hits.maxlen)
        clf.model.class_docs = doc["class_docs"]
        clf.model.class_terms = doc["class_terms"]


class OutputCodec(_Base):
    pass


def codec_of(stage: Any) -> StageCodec:
    from salvage.flows import stages as s

    for cls, codec in (
        (s.CaseStage, CaseCodec),
        (s.ContextStage, ContextCodec),
        (s.ModelStage, ModelCodec),
        (s.DispatchStage, DispatchCodec),
        (s.LaneStage, LaneCodec),
        (s.IntentStage, IntentCodec),
        (s.OutputStage, OutputCodec),
    ):
        if isinstance(stage, cls):
            return _CODECS.setdefault(cls.__name__, codec())
    raise StateError(f"no state codec for {type(stage).__name__}")


_CODECS: dict[str, StageCodec] = {}


# ----------------------------------------------------------------------------- a stage's state


class StageState:
    """The state of one stage shard, as header + keyed entries (bytes, ready for the journal)."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self.codec = codec_of(stage)
        self.seq: dict[str, int] = {}  # ordered maps: the insertion number after the last entry
        self._marks: dict[str, Any] = {}  # virtual entries: what was last written

    def track(self) -> StageState:
        """Make the keyed maps record what they touch (costs a little on every access)."""
        for m in self.codec.maps:
            m.set(self.stage, m.tracked(m.get(self.stage)))
        return self

    # -- encoding --------------------------------------------------------------------------
    def _header(self) -> bytes:
        doc = self.codec.header(self.stage)
        doc["codec"] = CODEC_VERSION
        doc["kind"] = type(self.stage).__name__
        doc["seq"] = self.seq
        return pack(doc)

    def _mark(self, value: Any) -> Any:
        return (getattr(value, "labels", None), getattr(value, "version", None))

    def delta(self) -> tuple[bytes, dict[str, bytes], list[str]]:
        """(header, changed entries, deleted keys) since the previous call; clears the marks."""
        changed: dict[str, bytes] = {}
        deleted: list[str] = []
        for m in self.codec.maps:
            live = m.get(self.stage)
            touched = live.touched
            if not touched:
                continue
            live.touched = set()
            if m.kind == "ordered":
                present = [k for k in touched if k in live]
                for k in touched:
                    if k not in live:
                        deleted.append(m.key(k))
                # entries are only ever appended: the touched ones still present are the last
                # len(present) of the map, in order
                top = self.seq.get(m.prefix, 0) + len(present)
                self.seq[m.prefix] = top
                tail = list(_last(live, len(present)))
                for i, k in enumerate(tail):
                    changed[m.key(k)] = pack(top - len(tail) + i)
                continue
            if m.kind == "set":
                for k in touched:
                    if k in live:
                        changed[m.key(k)] = b"\xc3"  # msgpack true
                    else:
                        deleted.append(m.key(k))
                continue
            enc = m.encode
            for k in touched:
                v = dict.get(live, k, _MISSING)
                if v is _MISSING:
                    deleted.append(m.key(k))
                else:
                    changed[m.key(k)] = pack(enc(v))
        for name, value in self.codec.virtual(self.stage).items():
            mark = self._mark(value)
            if self._marks.get(name) != mark:
                self._marks[name] = mark
                changed[f"m:{name}"] = self.codec.encode_virtual(name, value)
        return self._header(), changed, deleted

    def entries(self) -> dict[str, bytes]:
        """Every keyed entry (a full snapshot's body). Call after :meth:`delta` for the same
        snapshot (the ordered maps' numbering is the delta's)."""
        out: dict[str, bytes] = {}
        for m in self.codec.maps:
            live = m.get(self.stage)
            if m.kind == "ordered":
                top = self.seq.get(m.prefix, 0)
                for i, k in enumerate(live):
                    out[m.key(k)] = pack(top - len(live) + i)
            elif m.kind == "set":
                for k in live:
                    out[m.key(k)] = b"\xc3"
            else:
                enc = m.encode
                for k, v in dict.items(live):
                    out[m.key(k)] = pack(enc(v))
        for name, value in self.codec.virtual(self.stage).items():
            self._marks[name] = self._mark(value)
            out[f"m:{name}"] = self.codec.encode_virtual(name, value)
        return out

    def full(self) -> tuple[bytes, dict[str, bytes]]:
        """(header, every entry): the whole state; clears the touched marks."""
        for m in self.codec.maps:
            live = m.get(self.stage)
            if isinstance(live, TrackedDict | TrackedSet):
                live.touched = set()
        return self._header(), self.entries()

    # -- decoding --------------------------------------------------------------------------
    def load(self, header: bytes, entries: dict[str, bytes], cfg: Any) -> None:
        """Load the state into the stage (built from ``cfg``, this run's configuration)."""
        doc = unpack(header)
        if doc.get("codec") != CODEC_VERSION:
            raise StateError(
                f"state written with codec {doc.get('codec')}, this version reads {CODEC_VERSION}"
            )
        if doc.get("kind") != type(self.stage).__name__:
            raise StateError(f"state of a {doc.get('kind')}, not a {type(self.stage).__name__}")
        codec = self.codec
        codec.load_header(self.stage, doc)
        self.seq = dict(doc.get("seq", {}))
        by_prefix: dict[str, list[tuple[str, bytes]]] = {}
        for key, value in entries.items():
            prefix, _, k = key.partition(":")
            by_prefix.setdefault(prefix, []).append((k, value))
        for m in codec.maps:
            items = by_prefix.get(m.prefix, [])
            if m.kind == "set":
                m.set(self.stage, m.tracked(k for k, _ in items))
                continue
            if m.kind == "ordered":
                conv = int if m.int_keys else str
                ordered = sorted((unpack(v), conv(k)) for k, v in items)
                m.set(self.stage, m.tracked({k: None for _, k in ordered}))
                continue
            dec = m.decode
            m.set(self.stage, m.tracked({k: dec(unpack(v), doc) for k, v in items}))
        for name in codec.virtual(self.stage):
            blob = entries.get(f"m:{name}")
            if blob is not None:
                codec.load_virtual(self.stage, name, blob)
        for name, value in codec.virtual(self.stage).items():
            if f"m:{name}" in entries:
                self._marks[name] = self._mark(value)
        codec.finish(self.stage, cfg)


_MISSING = object()


def _set_virtual(stage: Any, name: str, value: Any) -> None:
    setattr(stage.models, name, value)


def _last(d: dict, n: int) -> Iterator:
    """The last ``n`` keys of ``d``, oldest first."""
    if n <= 0:
        return iter(())
    it = reversed(d)
    tail = [next(it) for _ in range(n)]
    tail.reverse()
    return iter(tail)


def snapshot_bytes(stage: Any) -> bytes:
    """The whole state of ``stage`` as one blob (msgpack of header + entries): what a
    journal-less snapshot stores (``python -m bytewax.run`` without ``SALVAGE_RECOVERY_DIR``)."""
    header, entries = StageState(stage).full()
    return pack([CODEC_VERSION, header, entries])


def load_bytes(stage: Any, blob: bytes, cfg: Any) -> StageState:
    version, header, entries = unpack(blob)
    if version != CODEC_VERSION:
        raise StateError(f"state written with codec {version}, this version reads {CODEC_VERSION}")
    state = StageState(stage)
    state.load(header, entries, cfg)
    return state


def fresh(stage: Any, cfg: Any) -> Any:
    """A new, empty stage of ``stage``'s class and shard, built from ``cfg``."""
    from salvage.flows import stages as s

    if isinstance(stage, s.IntentStage | s.OutputStage):
        return type(stage)(cfg)
    return type(stage)(stage.shard, cfg)


def rebuild(old: Any, cfg: Any) -> Any:
    """A stage built from ``cfg`` holding the state of ``old`` (a stage object from a pickle
    written before the codec, or from a tool): encode its state, load it into the new one."""
    from salvage.flows import stages as s

    if isinstance(old, s.ModelStage):
        old.models.upgrade()
    for name, empty in (
        ("tomb_digests", dict),
        ("orphans", dict),
        ("settled", dict),
    ):
        if isinstance(old, s.CaseStage) and not hasattr(old, name):
            setattr(old, name, empty())
    if isinstance(old, s.DispatchStage) and not hasattr(old, "amendable"):
        old.amendable = {}
    new = fresh(old, cfg)
    header, entries = StageState(old).full()
    StageState(new).load(header, entries, cfg)
    return new
