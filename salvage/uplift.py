"""Intention-to-treat uplift of a finished run: 95% intervals on the treated - holdout difference.

Inputs (written by every run into its out dir, file and Kafka mode alike):

* ``assignments.jsonl``: one line per order that reached a decision point whose chosen action is
  randomised (holdout share > 0, not a forced review): the action chosen there (the order's
  stratum) and its arm, from the deterministic holdout draw
  (:func:`salvage.policy.engine.holdout_unit` ``< share``). The first such point fixes the arm for
  good:
  what happens later (a contact cap or budget suppressing the message, a later action, a
  holdout for another action) does not move the order between arms.
* ``outcomes.jsonl``: the closing outcome of assigned orders. An order is *retained* unless it
  ends with a refund or a chargeback (DESIGN §11), so an order still open when the log ends
  counts as retained. Money paid after the close (in the settled grace period: a refund's second
  payment, a chargeback...) follows as ``outcome_amended`` lines, each restating the outcome
  with the order's new refunded total and whether the order is still retained (money going back
  after the close ends it, but an exchange's price difference); :func:`fold_outcomes` folds them
  in: an order is retained only if none of its lines says otherwise.
* ``orders.jsonl``: every order's placement (order, customer, time), for the repeat-order effect
  with customers as units: a customer's arm and stratum are those of their *first* assigned order
  (earliest ``decided_at``), and they *repeat* when they place another order in the
  :data:`REPEAT_WINDOW_DAYS` after that decision (or by the end of the log, the same cut-off in
  both arms).

Per action and overall: retention rate, retained margin (the order's margin when retained, 0
otherwise, per assigned order) and refund leakage (refunded amount per assigned order) for each
arm, and the difference treated - holdout with a 95% interval: Newcombe's hybrid score interval
(Wilson intervals per arm, method 10) for the retention rate, a percentile bootstrap with a fixed
seed (resampling orders within arm and stratum) for money. The overall difference is stratified
by action (weights = assigned units per action), because actions can have different holdout
shares; its rate interval combines the per-action Newcombe limits (MOVER). A minimum detectable
effect (80% power, two-sided 5%) is reported so a small holdout is read as "cannot tell", not
as "no effect".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from salvage.features.eventtime import iso
from salvage.report import wilson

__all__ = [
    "Customer",
    "Unit",
    "analyse",
    "bootstrap_diff",
    "fold_outcomes",
    "load_customers",
    "load_units",
    "mde",
    "newcombe",
    "placed",
    "uplift",
]

ASSIGNMENTS = "assignments.jsonl"
OUTCOMES = "outcomes.jsonl"
ORDERS = "orders.jsonl"
REPEAT_WINDOW_DAYS = 90
LOST = frozenset({"refund", "chargeback"})
Z = 1.959964
Z_POWER = 0.841621  # 80% power
BOOTSTRAP = 1000
SEED = 20261204


@dataclass(frozen=True, slots=True)
class Unit:
    """One assigned order."""

    order_id: str
    action: str
    holdout: bool
    retained: bool
    margin: float
    refunded: float


@dataclass(frozen=True, slots=True)
class Customer:
    """One assigned customer: arm and stratum of their first assigned order."""

    customer_id: str
    action: str
    holdout: bool
    repeated: bool  # another order placed within REPEAT_WINDOW_DAYS after that first decision


def placed(view: Any, t: int) -> dict:
    """The ``orders.jsonl`` record of an order's placement (written by the dispatch stage)."""
    return {"order_id": view.order_id, "customer_id": view.customer_id, "placed_at": iso(t)}


def newcombe(k1: int, n1: int, k0: int, n0: int, z: float = Z) -> tuple[float, float, float]:
    """``p1 - p0`` and its Newcombe hybrid score interval (Wilson limits per arm)."""
    if not n1 or not n0:
        return (math.nan, -1.0, 1.0)
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1, z)
    l0, u0 = wilson(k0, n0, z)
    d = p1 - p0
    lo = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return (d, max(-1.0, lo), min(1.0, hi))


def mde(n1: int, n0: int, p: float) -> float:
    """Smallest true rate difference detected with 80% power at two-sided 5% (normal approx.)."""
    if not n1 or not n0:
        return math.inf
    p = min(max(p, 0.01), 0.99)
    return (Z + Z_POWER) * math.sqrt(p * (1 - p) * (1 / n1 + 1 / n0))


def bootstrap_diff(
    strata: list[tuple[np.ndarray, np.ndarray]],
    weights: list[float],
    b: int = BOOTSTRAP,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """Weighted sum over strata of ``mean(treated) - mean(holdout)`` and its 95% percentile
    bootstrap interval (orders resampled within each stratum and arm; fixed seed)."""
    if not strata:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    point = sum(w * (x1.mean() - x0.mean()) for (x1, x0), w in zip(strata, weights, strict=True))
    reps = np.zeros(b)
    for (x1, x0), w in zip(strata, weights, strict=True):
        for x, sign in ((x1, 1.0), (x0, -1.0)):
            # resampled means, in chunks to bound memory on big arms
            chunk = max(1, 2_000_000 // max(len(x), 1))
            for s in range(0, b, chunk):
                m = min(chunk, b - s)
                idx = rng.integers(0, len(x), size=(m, len(x)))
                reps[s : s + m] += sign * w * x[idx].mean(axis=1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return (float(point), float(lo), float(hi))


def _jsonl(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)


AMENDED = "outcome_amended"
"""``record`` of an ``outcomes.jsonl`` line that amends an order's outcome (an outcome line has
no ``record``)."""


def fold_outcomes(records: Iterable[dict]) -> dict[str, dict]:
    """Each order's outcome from ``outcomes.jsonl`` lines, with the money paid after its close:
    its ``outcome`` line (the close) and its ``outcome_amended`` lines (one per later payment,
    each restating the outcome with the order's refunded total so far), as one record: the
    close's fields, with ``refunded_amount`` the order's total, the largest of its lines' (totals
    only grow, so repeated or reordered lines, or a missing one, do not change it), and
    ``retained`` true only if no line says otherwise (a chargeback after a "kept" close ends it;
    a line without ``retained``, from before it was written, reads as its outcome says).

    >>> close = {"order_id": "o1", "outcome": "kept", "retained": True, "refunded_amount": 0.0}
    >>> later = {**close, "record": AMENDED, "amount": 100.0, "refunded_amount": 100.0,
    ...          "retained": False}
    >>> fold_outcomes([close, later])
    {'o1': {'order_id': 'o1', 'outcome': 'kept', 'retained': False, 'refunded_amount': 100.0}}
    """
    closes: dict[str, dict] = {}
    totals: dict[str, float] = {}
    retained: dict[str, bool] = {}
    for r in records:
        oid = r["order_id"]
        total = float(r.get("refunded_amount") or 0.0)
        totals[oid] = max(totals.get(oid, total), total)
        kept = bool(r.get("retained", r.get("outcome") not in LOST))
        retained[oid] = retained.get(oid, True) and kept
        if r.get("record") != AMENDED or oid not in closes:
            closes[oid] = r  # (an amendment stands in for a close line not read, or missing)
    return {
        oid: {
            **{k: v for k, v in close.items() if k not in _AMENDMENT_ONLY},
            "retained": retained[oid],
            "refunded_amount": totals[oid],
        }
        for oid, close in closes.items()
    }


_AMENDMENT_ONLY = frozenset(
    {"record", "amended_at", "late", "amount", "currency", "basis", "source_event_id"}
)


def load_units(out_dir: Path) -> list[Unit]:
    """The assigned orders of a run, with their outcome (retained when no closing outcome) and
    refunded amount (money paid after the close included, and ending retention but for an
    exchange's price difference: :func:`fold_outcomes`)."""
    out_dir = Path(out_dir)
    outcome = fold_outcomes(_jsonl(out_dir / OUTCOMES))
    units = []
    for a in _jsonl(out_dir / ASSIGNMENTS):
        o = outcome.get(a["order_id"], {})
        retained = bool(o.get("retained", True))
        units.append(
            Unit(
                order_id=a["order_id"],
                action=a["action"],
                holdout=bool(a["holdout"]),
                retained=retained,
                margin=float(a.get("margin", 0.0)) if retained else 0.0,
                refunded=float(o.get("refunded_amount", 0.0)),
            )
        )
    return units


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def load_customers(out_dir: Path) -> list[Customer] | None:
    """The assigned customers of a run, with whether they placed a repeat order; ``None`` when the
    run wrote no ``orders.jsonl`` (an out dir from before it existed)."""
    out_dir = Path(out_dir)
    if not (out_dir / ORDERS).exists():
        return None
    first: dict[str, tuple[float, str, dict]] = {}
    for a in _jsonl(out_dir / ASSIGNMENTS):
        key = (_ts(a["decided_at"]), a["order_id"], a)
        cid = a["customer_id"]
        if cid not in first or key[:2] < first[cid][:2]:
            first[cid] = key
    later: dict[str, list[tuple[float, str]]] = {}
    for o in _jsonl(out_dir / ORDERS):
        if o["customer_id"] in first:
            later.setdefault(o["customer_id"], []).append((_ts(o["placed_at"]), o["order_id"]))
    window = REPEAT_WINDOW_DAYS * 86400.0
    out = []
    for cid, (t0, oid, a) in sorted(first.items()):
        repeated = any(t0 < t <= t0 + window and o != oid for t, o in later.get(cid, ()))
        out.append(Customer(cid, a["action"], bool(a["holdout"]), repeated))
    return out


def _arm(units: list[Unit]) -> dict:
    n = len(units)
    k = sum(u.retained for u in units)
    return {
        "n": n,
        "retained": k,
        "rate": k / n if n else None,
        "retained_margin": round(sum(u.margin for u in units) / n, 4) if n else None,
        "refund_leakage": round(sum(u.refunded for u in units) / n, 4) if n else None,
    }


def _money(field: str, strata: list[tuple[list[Unit], list[Unit]]], weights: list[float]) -> dict:
    arrays = [
        (
            np.array([getattr(u, field) for u in t], dtype=float),
            np.array([getattr(u, field) for u in h], dtype=float),
        )
        for t, h in strata
    ]
    d, lo, hi = bootstrap_diff(arrays, weights)
    return {"diff": round(d, 4), "ci": [round(lo, 4), round(hi, 4)]}


def _rate_diff(counts: list[tuple[int, int, int, int]], unit: str = "orders") -> dict:
    """Stratified difference treated - holdout of a rate, from ``(k_treated, n_treated,
    k_holdout, n_holdout)`` per stratum (strata missing an arm are left out of the difference):
    weights = units per stratum, Newcombe limits combined by MOVER, and the design's MDE."""
    n_t = sum(c[1] for c in counts)
    n_h = sum(c[3] for c in counts)
    doc: dict = {"n_treated": n_t, "n_holdout": n_h}
    usable = [c for c in counts if c[1] and c[3]]
    if not usable:
        doc.update(diff=None, ci=None, mde=None, note=f"no holdout (or no treated) {unit}")
        return doc
    total = sum(n1 + n0 for _, n1, _, n0 in usable)
    weights = [(n1 + n0) / total for _, n1, _, n0 in usable]
    d = lo2 = hi2 = 0.0
    for (k1, n1, k0, n0), w in zip(usable, weights, strict=True):
        dt, lt, ht = newcombe(k1, n1, k0, n0)
        d += w * dt
        lo2 += (w * (dt - lt)) ** 2
        hi2 += (w * (ht - dt)) ** 2
    p = min(max(sum(k1 + k0 for k1, _, k0, _ in usable) / total, 0.01), 0.99)
    # the MDE of the stratified design, via its effective arm sizes
    var = sum(w * w * (1 / n1 + 1 / n0) for (_, n1, _, n0), w in zip(usable, weights, strict=True))
    m = (Z + Z_POWER) * math.sqrt(p * (1 - p) * var)
    doc.update(
        diff=round(d, 5),
        ci=[round(d - math.sqrt(lo2), 5), round(d + math.sqrt(hi2), 5)],
        mde=round(m, 5),
    )
    if min(n_t, n_h) < 30:
        doc["note"] = (
            f"fewer than 30 {unit} in an arm ({n_t} treated, {n_h} held out): "
            "too few to tell anything"
        )
    elif m > 0.05:
        doc["note"] = (
            f"small sample: only effects of about {m:.0%} or more would be detected "
            "(80% power); an interval containing 0 does not show there is no effect"
        )
    return doc


def _block(strata: list[tuple[list[Unit], list[Unit]]]) -> dict:
    """Difference treated - holdout over strata: retention rate, retained margin, leakage."""
    doc = _rate_diff(
        [
            (sum(u.retained for u in t), len(t), sum(u.retained for u in h), len(h))
            for t, h in strata
        ]
    )
    usable = [(t, h) for t, h in strata if t and h]
    if usable:
        total = sum(len(t) + len(h) for t, h in usable)
        weights = [(len(t) + len(h)) / total for t, h in usable]
        doc["retained_margin"] = _money("margin", usable, weights)
        doc["refund_leakage"] = _money("refunded", usable, weights)
    return doc


def _repeat(strata: list[tuple[list[Customer], list[Customer]]]) -> dict:
    """Customer-level repeat-rate difference treated - holdout, with both arms' rates."""
    counts = [
        (sum(c.repeated for c in t), len(t), sum(c.repeated for c in h), len(h)) for t, h in strata
    ]
    doc = _rate_diff(counts, "customers")
    for arm, (k, n) in (
        ("treated", (sum(c[0] for c in counts), sum(c[1] for c in counts))),
        ("holdout", (sum(c[2] for c in counts), sum(c[3] for c in counts))),
    ):
        doc[arm] = {"n": n, "repeated": k, "rate": k / n if n else None}
    return doc


def analyse(units: Iterable[Unit], customers: Iterable[Customer] | None = None) -> dict:
    """The ITT table as plain data: ``{"overall": {...}, "actions": {action: {...}}}``; each
    block has ``diff`` (retention rate, treated - holdout) with ``ci`` [lo, hi], ``n_treated``,
    ``n_holdout``, ``mde``, the money differences and, per action, both arms' numbers. With
    ``customers``, each block also has ``repeat``: the same for the customers' repeat rate."""
    by: dict[str, tuple[list[Unit], list[Unit]]] = {}
    for u in units:
        arms = by.setdefault(u.action, ([], []))
        arms[1 if u.holdout else 0].append(u)
    actions = {}
    for action in sorted(by):
        t, h = by[action]
        actions[action] = {**_block([(t, h)]), "treated": _arm(t), "holdout": _arm(h)}
    overall = _block([by[a] for a in sorted(by)])
    overall["treated"] = _arm([u for t, _ in by.values() for u in t])
    overall["holdout"] = _arm([u for _, h in by.values() for u in h])
    method = (
        "intention-to-treat; orders as units; assignment at the first randomised "
        "decision; Newcombe hybrid score interval for the retention difference, percentile "
        f"bootstrap ({BOOTSTRAP} resamples, fixed seed) for money; overall stratified by action"
    )
    if customers is not None:
        cust: dict[str, tuple[list[Customer], list[Customer]]] = {}
        for c in customers:
            arms_c = cust.setdefault(c.action, ([], []))
            arms_c[1 if c.holdout else 0].append(c)
        for action, block in actions.items():
            block["repeat"] = _repeat([cust.get(action, ([], []))])
        overall["repeat"] = _repeat([cust[a] for a in sorted(cust)])
        method += (
            "; repeat rate: customers as units (arm and action of their first assigned order), "
            f"another order within {REPEAT_WINDOW_DAYS} days of that decision, Newcombe interval"
        )
    return {"overall": overall, "actions": actions, "method": method}


def uplift(out_dir: Path) -> dict:
    """:func:`analyse` of a finished run's out dir."""
    return analyse(load_units(out_dir), load_customers(out_dir))


def has_inputs(out_dir: Path) -> bool:
    return (Path(out_dir) / ASSIGNMENTS).exists()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ci(block: dict, scale: float = 100.0, unit: str = " pts") -> str:
    if block.get("diff") is None:
        return "-"
    lo, hi = block["ci"]
    return f"{block['diff'] * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]{unit}"


def render(console, result: dict) -> None:
    """The ITT table (rich): per action and overall."""
    from rich.table import Table

    t = Table(
        title="Uplift (intention-to-treat): treated - holdout [95% interval]; "
        "kept T / H = retention rate treated / holdout; money per assigned order"
    )
    for col in (
        "action",
        "n treated/holdout",
        "kept T",
        "kept H",
        "retention diff, pts",
        "margin/order",
        "leakage/order",
    ):
        t.add_column(col, justify="left" if col == "action" else "right")

    def money(block: dict, key: str) -> str:
        m = block.get(key)
        return "-" if not m else _ci(m, 1.0, "")

    rows = [*result["actions"].items(), ("overall", result["overall"])]
    for name, b in rows:
        t.add_row(
            name,
            f"{b['n_treated']:,}/{b['n_holdout']:,}",
            _pct(b["treated"]["rate"]),
            _pct(b["holdout"]["rate"]),
            _ci(b, 100.0, ""),
            money(b, "retained_margin"),
            money(b, "refund_leakage"),
        )
    console.print(t)
    if "repeat" in result["overall"]:
        r = Table(
            title=f"Repeat orders (customers as units, {REPEAT_WINDOW_DAYS}-day window): "
            "treated - holdout [95% interval]"
        )
        for col in ("action", "customers T/H", "repeat T", "repeat H", "repeat diff, pts"):
            r.add_column(col, justify="left" if col == "action" else "right")
        for name, b in rows:
            c = b["repeat"]
            r.add_row(
                name,
                f"{c['n_treated']:,}/{c['n_holdout']:,}",
                _pct(c["treated"]["rate"]),
                _pct(c["holdout"]["rate"]),
                _ci(c, 100.0, ""),
            )
        console.print(r)
    notes = [f"{n}: {b['note']}" for n, b in rows if b.get("note")]
    for n in notes:
        console.print(f"  {n}")
    console.print(
        "  Orders are assigned at their first randomised decision (holdout draw) and counted in "
        "that arm whatever happened later; retained = no refund and no chargeback (open orders "
        "count as retained). Newcombe interval for rates, bootstrap for money. A customer is "
        "in the arm of their first assigned order; repeat = another order placed within "
        f"{REPEAT_WINDOW_DAYS} days of that decision (or by the end of the log)."
    )
