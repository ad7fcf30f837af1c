"""The ``closed-loop`` scenario: simulated customers react to Salvage's interventions, with known,
heterogeneous true effects per action, so the uplift estimate (:mod:`salvage.uplift`) can be
checked against the truth.

How the loop closes (deterministic, honest, no peeking at the estimator):

1. The steady-state world is simulated (:mod:`salvage.connectors.simulator`): the *base* log, where
   nothing reacts to anything.
2. The pipeline runs on the log (file mode, default settings, in this process) and records each
   order's intention-to-treat assignment (``assignments.jsonl``: first randomised action, arm,
   decision time, whether a guardrail suppressed the message).
3. Customers of *treated* orders whose message went out react from ``decided_at + 12 h`` on:

   * positive effect: an order that would end in a refund / chargeback (all of it after the
     reaction time) is kept instead, with probability ``q`` (its refund becomes store credit, a
     chargeback is not filed);
   * negative effect ("one contact too many"): an order that would be retained gets a refund
     instead (its exchange / store credit after the reaction time becomes a refund) or, if it
     had no such resolution, a chargeback at the reaction time, with probability ``q``;

   ``q`` per action is fixed once, from the base run, so the effect on the population assigned
   to that action is the configured :data:`TRUE_EFFECTS` value; each order's coin is a hash of
   (seed, order id), the same in every iteration.
4. Steps 2-3 repeat on the reacted log until the assignments no longer change. Reactions only
   change events after the decision that caused them, and the pipeline decides in event time,
   so this is a fixed point in time order (1-3 re-runs seen; at most 6): the final log is one the
   pipeline, run from scratch in file or Kafka mode, assigns exactly as the world reacted to.

The true effect recorded in the truth file is the *realised* one: over the orders assigned to an
action (both arms), the mean of retained-if-treated minus retained-if-held-out, each order's two
potential outcomes being known here. That is the quantity the ITT estimate targets.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCENARIO = "closed-loop"
# retention difference (treated - held out) on the orders assigned to each action
TRUE_EFFECTS: dict[str, float] = {
    "proactive_reassurance": 0.0,
    "delay_intervention": 0.08,
    "exchange_first_offer": 0.12,
    "product_guidance": -0.06,  # one contact too many: the customer asks for their money back
    "human_review": 0.0,
}
REACT_DELAY_S = 12 * 3600
MAX_ITERATIONS = 6
LOST = frozenset({"refund_issued", "chargeback_filed"})
KEPT = frozenset({"exchange_completed", "store_credit_issued"})


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _coin(seed: int, order_id: str) -> float:
    digest = hashlib.sha256(f"closed-loop|{seed}|{order_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class _Base:
    """The base log, indexed per order."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.times: list[float] = []
        self.of_order: dict[str, list[int]] = defaultdict(list)
        self.kinds: list[str] = []
        high = float("-inf")
        self.high: list[float] = []  # running max of event time (for inserts)
        for i, line in enumerate(lines):
            doc = json.loads(line)
            t = _ts(doc["occurred_at"])
            self.times.append(t)
            self.kinds.append(doc["event_type"])
            self.of_order[doc["order_id"]].append(i)
            high = max(high, t)
            self.high.append(high)

    def plan(self, order_id: str, effect: float, react_at: float) -> str:
        """What a reaction would do to this order: '' (nothing possible), 'save' or 'lose'."""
        idx = self.of_order.get(order_id, [])
        lost = [i for i in idx if self.kinds[i] in LOST]
        if effect > 0:
            return "save" if lost and all(self.times[i] > react_at for i in lost) else ""
        if effect < 0 and not lost:
            done = [i for i in idx if self.kinds[i] in KEPT and self.times[i] <= react_at]
            return "" if done else "lose"
        return ""


def _react(base: _Base, flips: dict[str, tuple[str, float, float]]) -> tuple[list[str], set[str]]:
    """The reacted log: ``flips`` maps order -> (plan, react_at, order value)."""
    replace: dict[int, str | None] = {}
    inserts: list[tuple[int, float, str]] = []
    for order_id, (plan, react_at, value) in flips.items():
        idx = base.of_order[order_id]
        if plan == "save":
            for i in idx:
                if base.kinds[i] == "chargeback_filed":
                    replace[i] = None
                elif base.kinds[i] == "refund_issued":
                    doc = json.loads(base.lines[i])
                    doc["event_type"] = "store_credit_issued"
                    replace[i] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        elif plan == "lose":
            later = [i for i in idx if base.kinds[i] in KEPT and base.times[i] > react_at]
            if later:
                i = later[0]
                doc = json.loads(base.lines[i])
                amount = doc.get("amount") or value
                refund = {
                    "amount": round(max(amount, 0.01), 2),
                    "currency": doc.get("currency", "EUR"),
                    "event_id": doc["event_id"],
                    "event_type": "refund_issued",
                    "occurred_at": doc["occurred_at"],
                    "order_id": order_id,
                    "schema_version": doc.get("schema_version", 1),
                }
                if doc.get("return_id"):
                    refund["return_id"] = doc["return_id"]
                replace[i] = json.dumps(refund, sort_keys=True, separators=(",", ":"))
            else:
                first = json.loads(base.lines[idx[0]])
                doc = {
                    "amount": round(max(value, 0.01), 2),
                    "currency": first.get("currency", "EUR"),
                    "event_id": f"{order_id}-CL",
                    "event_type": "chargeback_filed",
                    "occurred_at": _iso(react_at),
                    "order_id": order_id,
                    "reason": "customer_dispute",
                    "schema_version": 1,
                }
                pos = bisect_right(base.high, react_at)
                inserts.append(
                    (pos, react_at, json.dumps(doc, sort_keys=True, separators=(",", ":")))
                )
    inserts.sort()
    out: list[str] = []
    j = 0
    for i, line in enumerate(base.lines):
        while j < len(inserts) and inserts[j][0] <= i:
            out.append(inserts[j][2])
            j += 1
        new = replace.get(i, line)
        if new is not None:
            out.append(new)
    out.extend(x[2] for x in inserts[j:])
    return out, set(flips)


def _assign(log: Path, settings=None) -> dict[str, dict]:
    """Run the pipeline (file mode, in process) on ``log``; its ITT assignments by order."""
    from bytewax.testing import run_main

    from salvage.config import Settings
    from salvage.flows.recovery import FlowSpec, build_flow

    settings = settings or Settings()
    with tempfile.TemporaryDirectory() as tmp:
        spec = FlowSpec(
            settings.updated(redis_url=""),
            inputs=[log],
            out_dir=Path(tmp),
            case_store=False,
        )
        run_main(build_flow(spec))
        rows = (Path(tmp) / "assignments.jsonl").read_text().splitlines()
    return {a["order_id"]: a for a in map(json.loads, rows)}


def _key(a: dict[str, dict]) -> dict[str, tuple]:
    return {
        o: (x["action"], x["holdout"], x["decided_at"], x["suppressed_by"]) for o, x in a.items()
    }


def write_log(
    orders: int,
    seed: int,
    out: Path,
    truth: Path | None = None,
    start: datetime | None = None,
    orders_per_day: float | None = None,
    effects: dict[str, float] | None = None,
    settings=None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write the closed-loop log to ``out`` (and the truth, with its ``true_effects`` record, to
    ``truth``); returns the ``true_effects`` record."""
    from salvage.connectors import simulator

    effects = dict(TRUE_EFFECTS if effects is None else effects)
    say = progress or (lambda _m: None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {} if orders_per_day is None else {"orders_per_day": orders_per_day}
    with tempfile.TemporaryDirectory() as tmp:
        base_path, base_truth = Path(tmp) / "base.jsonl", Path(tmp) / "truth.jsonl"
        simulator.write_log(
            "steady-state", orders, seed, base_path, base_truth, start=start, **kwargs
        )
        base = _Base(base_path.read_text(encoding="utf-8").splitlines())
        truth_lines = base_truth.read_text(encoding="utf-8").splitlines()
        say("base world simulated; running the pipeline on it")
        assigned = _assign(base_path, settings)
        # q per action, fixed once: |effect| / share of its assigned orders a reaction can move
        plans = {
            o: base.plan(o, effects.get(a["action"], 0.0), _ts(a["decided_at"]) + REACT_DELAY_S)
            for o, a in assigned.items()
        }
        movable: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for o, a in assigned.items():
            movable[a["action"]][0] += 1
            movable[a["action"]][1] += bool(plans[o]) and not a["suppressed_by"]
        q = {
            act: (min(1.0, abs(effects.get(act, 0.0)) * n / k) if k else 0.0)
            for act, (n, k) in movable.items()
        }
        iterations, converged, log_path = 0, False, Path(tmp) / "reacted.jsonl"
        lines = base.lines
        while iterations < MAX_ITERATIONS:
            iterations += 1
            flips = {}
            for o, a in assigned.items():
                act = a["action"]
                plan = base.plan(o, effects.get(act, 0.0), _ts(a["decided_at"]) + REACT_DELAY_S)
                if plan and not a["holdout"] and not a["suppressed_by"]:
                    if _coin(seed, o) < q.get(act, 0.0):
                        flips[o] = (plan, _ts(a["decided_at"]) + REACT_DELAY_S, a["order_value"])
            lines, _ = _react(base, flips)
            log_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            say(f"iteration {iterations}: {len(flips)} orders reacted; re-running the pipeline")
            again = _assign(log_path, settings)
            if _key(again) == _key(assigned):
                converged = True
                break
            assigned = again
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # realised true effects: per assigned order, retained-if-treated minus retained-if-held-out
    diff: dict[str, list[float]] = defaultdict(list)
    for o, a in assigned.items():
        act = a["action"]
        plan = base.plan(o, effects.get(act, 0.0), _ts(a["decided_at"]) + REACT_DELAY_S)
        moved = bool(plan) and not a["suppressed_by"] and _coin(seed, o) < q.get(act, 0.0)
        diff[act].append((1.0 if plan == "save" else -1.0) if moved else 0.0)
    every = [d for ds in diff.values() for d in ds]
    record = {
        "type": "true_effects",
        "true_effects": {act: round(sum(ds) / len(ds), 5) for act, ds in sorted(diff.items())},
        "overall": round(sum(every) / len(every), 5) if every else 0.0,
        "configured_effects": effects,
        "flip_probability": {act: round(v, 5) for act, v in sorted(q.items())},
        "assigned": {act: len(ds) for act, ds in sorted(diff.items())},
        "iterations": iterations,
        "converged": converged,
        "react_delay_hours": REACT_DELAY_S / 3600,
    }
    if truth is not None:
        reacted = {
            o
            for o, a in assigned.items()
            if not a["holdout"]
            and not a["suppressed_by"]
            and base.plan(o, effects.get(a["action"], 0.0), _ts(a["decided_at"]) + REACT_DELAY_S)
            and _coin(seed, o) < q.get(a["action"], 0.0)
        }
        truth = Path(truth)
        truth.parent.mkdir(parents=True, exist_ok=True)
        with truth.open("w", encoding="utf-8", newline="\n") as f:
            for line in truth_lines:
                doc = json.loads(line)
                if doc.get("type") == "order" and doc.get("order_id") in reacted:
                    a = assigned[doc["order_id"]]
                    doc["retained"] = effects[a["action"]] > 0
                    doc["reacted_to"] = a["action"]
                    line = json.dumps(doc, sort_keys=True, separators=(",", ":"))
                f.write(line + "\n")
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def read_true_effects(truth: Path) -> dict:
    """The ``true_effects`` record of a closed-loop truth file."""
    for line in Path(truth).read_text(encoding="utf-8").splitlines():
        if '"true_effects"' in line:
            doc = json.loads(line)
            if doc.get("type") == "true_effects":
                return doc
    raise ValueError(f"{truth}: no true_effects record (not a closed-loop truth file?)")
