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

   Customers come back, or not (:data:`REPEAT_EFFECTS`, customers as units): a customer's arm is
   that of their *first* assigned order; they *repeat* when they place another order within
   :data:`~salvage.uplift.REPEAT_WINDOW_DAYS` after that decision. A treated customer whose
   message went out reacts with probability ``q_repeat`` of their action: with a positive
   effect, one who would not have come back places a repeat order 1-29 days after the reaction
   time (a copy of a quiet order of the base world: delivered on time, nothing else happened,
   under a new id); with a negative one, one who would have come back does not (their repeat
   orders in the window are removed from the log).
4. Steps 2-3 repeat on the reacted log until the assignments no longer change. Reactions only
   change events after the decision that caused them, and the pipeline decides in event time,
   so this is a fixed point in time order (1-3 re-runs seen; at most 6): the final log is one the
   pipeline, run from scratch in file or Kafka mode, assigns exactly as the world reacted to.

The true effect recorded in the truth file is the *realised* one: over the orders assigned to an
action (both arms), the mean of retained-if-treated minus retained-if-held-out, each order's two
potential outcomes being known here. That is the quantity the ITT estimate targets. Likewise
for the repeat rate, over the assigned customers (the record's ``repeat`` part).

The world is meant to be run with its experiment policy, :data:`EXPERIMENT_POLICY`
(``policy/closed_loop.yaml``: 50% holdouts for all five actions), which is the default here; the
truth record names the policy, and the pipeline must run the log with the same one.
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

from salvage.policy.config import DEFAULT_POLICY
from salvage.uplift import REPEAT_WINDOW_DAYS

SCENARIO = "closed-loop"
EXPERIMENT_POLICY = DEFAULT_POLICY.with_name("closed_loop.yaml")
# retention difference (treated - held out) on the orders assigned to each action
TRUE_EFFECTS: dict[str, float] = {
    "proactive_reassurance": 0.0,
    "delay_intervention": 0.08,
    "exchange_first_offer": 0.12,
    "product_guidance": -0.06,  # one contact too many: the customer asks for their money back
    "human_review": 0.0,
}
# repeat-rate difference (treated - held out) on the customers whose first assignment is the action
REPEAT_EFFECTS: dict[str, float] = {
    "proactive_reassurance": 0.10,  # told in time: they come back
    "delay_intervention": 0.0,
    "exchange_first_offer": 0.0,
    "product_guidance": 0.12,  # the size guide worked: they order again
    "human_review": -0.06,  # an agent questioning their claim: they do not come back
}
REACT_DELAY_S = 12 * 3600
REPEAT_DAYS = (1.0, 29.0)  # an added repeat order comes this many days after the reaction time
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


QUIET_SCANS = frozenset(
    {"label_created", "picked_up", "in_transit", "out_for_delivery", "delivered"}
)
QUIET_KINDS = frozenset({"order_placed", "order_shipped", "carrier_scan"})


class _Base:
    """The base log, indexed per order."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.times: list[float] = []
        self.of_order: dict[str, list[int]] = defaultdict(list)
        self.kinds: list[str] = []
        high = float("-inf")
        self.high: list[float] = []  # running max of event time (for inserts)
        self.orders_of: dict[str, list[tuple[float, str]]] = defaultdict(list)  # customer ->
        noisy: set[str] = set()  # orders with anything but an on-time delivery
        delivered: set[str] = set()
        for i, line in enumerate(lines):
            doc = json.loads(line)
            t = _ts(doc["occurred_at"])
            kind = doc["event_type"]
            self.times.append(t)
            self.kinds.append(kind)
            self.of_order[doc["order_id"]].append(i)
            high = max(high, t)
            self.high.append(high)
            if kind == "order_placed":
                self.orders_of[doc["customer_id"]].append((t, doc["order_id"]))
            elif kind not in QUIET_KINDS or (
                kind == "carrier_scan" and doc.get("scan") not in QUIET_SCANS
            ):
                noisy.add(doc["order_id"])
            elif doc.get("scan") == "delivered":
                delivered.add(doc["order_id"])
        # templates for a repeat order: delivered on time, nothing else happened
        self.quiet = sorted(delivered - noisy)

    def repeats(self, customer: str, after: float, first: str) -> list[str]:
        """The customer's other orders placed in the repeat window after ``after``."""
        end = after + REPEAT_WINDOW_DAYS * 86400.0
        return [o for t, o in self.orders_of.get(customer, ()) if after < t <= end and o != first]

    def repeat_plan(self, customer: str, effect: float, after: float, first: str) -> str:
        """What a reaction would do to this customer: '' (nothing possible), 'add' or 'drop'."""
        has = bool(self.repeats(customer, after, first))
        if effect > 0 and not has:
            return "add"
        if effect < 0 and has:
            return "drop"
        return ""

    def repeat_order(self, seed: int, customer: str, first: str, react_at: float) -> list[str]:
        """The lines of the repeat order a customer places (a quiet base order, re-timed and
        re-keyed: ``{first order}-RP``)."""
        template = self.quiet[int(_coin(seed, f"template|{customer}") * len(self.quiet))]
        lo, hi = REPEAT_DAYS
        at = react_at + (lo + (hi - lo) * _coin(seed, f"when|{customer}")) * 86400.0
        idx = self.of_order[template]
        shift = at - min(self.times[i] for i in idx)
        oid = f"{first}-RP"
        out = []
        for i in idx:
            doc = json.loads(self.lines[i])
            for key, value in list(doc.items()):
                if key.endswith("_at") and isinstance(value, str):
                    doc[key] = _iso(_ts(value) + shift)
            doc["order_id"] = oid
            doc["event_id"] = oid + doc["event_id"][len(template) :]
            if "customer_id" in doc:
                doc["customer_id"] = customer
            out.append(json.dumps(doc, sort_keys=True, separators=(",", ":")))
        return out

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


def _react(
    base: _Base,
    flips: dict[str, tuple[str, float, float]],
    drop: frozenset[str] = frozenset(),
    added: tuple[str, ...] = (),
) -> tuple[list[str], set[str]]:
    """The reacted log: ``flips`` maps order -> (plan, react_at, order value); the orders in
    ``drop`` are removed and the event lines ``added`` inserted in event-time order."""
    replace: dict[int, str | None] = {i: None for o in drop for i in base.of_order[o]}
    inserts: list[tuple[int, float, str]] = []
    for line in added:
        t = _ts(json.loads(line)["occurred_at"])
        inserts.append((bisect_right(base.high, t), t, line))
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


def _firsts(assigned: dict[str, dict]) -> dict[str, dict]:
    """Each assigned customer's first assignment (earliest decision, then order id)."""
    first: dict[str, dict] = {}
    for a in sorted(assigned.values(), key=lambda a: (_ts(a["decided_at"]), a["order_id"])):
        first.setdefault(a["customer_id"], a)
    return first


def _flip_probability(
    units: dict[str, tuple[str, str]], effects: dict[str, float]
) -> dict[str, float]:
    """``q`` per action: |effect| / the share of its units (unit -> (action, plan)) a reaction
    can move, so that the effect on all of them is the configured one (capped at 1)."""
    movable: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for action, plan in units.values():
        movable[action][0] += 1
        movable[action][1] += bool(plan)
    return {
        act: (min(1.0, abs(effects.get(act, 0.0)) * n / k) if k else 0.0)
        for act, (n, k) in movable.items()
    }


class _World:
    """Who would react to what, given the pipeline's assignments (both arms: the potential
    outcomes; only treated units react in the log)."""

    def __init__(self, base: _Base, seed: int, effects: dict, repeat_effects: dict) -> None:
        self.base, self.seed = base, seed
        self.effects, self.repeat_effects = effects, repeat_effects
        self.q: dict[str, float] = {}
        self.q_repeat: dict[str, float] = {}

    def orders(self, assigned: dict[str, dict]) -> dict[str, tuple[str, str]]:
        """order -> (action, plan); no plan when a guardrail suppressed the message."""
        out = {}
        for o, a in assigned.items():
            react_at = _ts(a["decided_at"]) + REACT_DELAY_S
            plan = self.base.plan(o, self.effects.get(a["action"], 0.0), react_at)
            out[o] = (a["action"], "" if a["suppressed_by"] else plan)
        return out

    def customers(self, assigned: dict[str, dict]) -> dict[str, tuple[str, str]]:
        """customer -> (action, plan) of their first assignment."""
        out = {}
        for c, a in _firsts(assigned).items():
            effect = self.repeat_effects.get(a["action"], 0.0)
            plan = self.base.repeat_plan(c, effect, _ts(a["decided_at"]), a["order_id"])
            out[c] = (a["action"], "" if a["suppressed_by"] else plan)
        return out

    def calibrate(self, assigned: dict[str, dict]) -> None:
        self.q = _flip_probability(self.orders(assigned), self.effects)
        self.q_repeat = _flip_probability(self.customers(assigned), self.repeat_effects)

    def moved(self, assigned: dict[str, dict]) -> tuple[dict[str, str], dict[str, str]]:
        """The units that react if treated: order -> plan, customer -> plan (both arms)."""
        orders = {
            o: plan
            for o, (act, plan) in self.orders(assigned).items()
            if plan and _coin(self.seed, o) < self.q.get(act, 0.0)
        }
        customers = {
            c: plan
            for c, (act, plan) in self.customers(assigned).items()
            if plan and _coin(self.seed, f"repeat|{c}") < self.q_repeat.get(act, 0.0)
        }
        return orders, customers

    def react(
        self, assigned: dict[str, dict]
    ) -> tuple[list[str], int, dict[str, str], list[tuple[str, dict]]]:
        """The reacted log, the number of reacting units, the removed repeat orders (order ->
        action) and the added ones (order id, the customer's first assignment)."""
        orders, customers = self.moved(assigned)
        firsts = _firsts(assigned)
        drop: dict[str, str] = {}
        added: list[str] = []
        repeats: list[tuple[str, dict]] = []
        for c, plan in customers.items():
            a = firsts[c]
            if a["holdout"]:
                continue
            after = _ts(a["decided_at"])
            if plan == "drop":
                drop.update(dict.fromkeys(self.base.repeats(c, after, a["order_id"]), a["action"]))
            else:
                lines = self.base.repeat_order(self.seed, c, a["order_id"], after + REACT_DELAY_S)
                added.extend(lines)
                repeats.append((json.loads(lines[0])["order_id"], a))
        flips = {}
        for o, plan in orders.items():
            a = assigned[o]
            if not a["holdout"] and o not in drop:  # a removed order has nothing to react with
                flips[o] = (plan, _ts(a["decided_at"]) + REACT_DELAY_S, a["order_value"])
        lines, _ = _react(self.base, flips, frozenset(drop), tuple(added))
        return lines, len(flips) + len(repeats) + len(drop), drop, repeats


def _realised(units: dict[str, tuple[str, str]], moved: dict[str, str]) -> tuple[dict, float]:
    """Per action and overall: mean over units of treated-minus-held-out outcome (+1 / -1 for
    a unit that moves, 0 otherwise)."""
    diff: dict[str, list[float]] = defaultdict(list)
    for u, (act, _plan) in units.items():
        plan = moved.get(u, "")
        diff[act].append(1.0 if plan in ("save", "add") else -1.0 if plan else 0.0)
    every = [d for ds in diff.values() for d in ds]
    per = {act: round(sum(ds) / len(ds), 5) for act, ds in sorted(diff.items())}
    return per, (round(sum(every) / len(every), 5) if every else 0.0)


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
    repeat_effects: dict[str, float] | None = None,
) -> dict:
    """Write the closed-loop log to ``out`` (and the truth, with its ``true_effects`` record, to
    ``truth``); returns the ``true_effects`` record. ``settings``: the pipeline's (its policy is
    the one the world reacts to; none set: :data:`EXPERIMENT_POLICY`)."""
    from salvage.config import Settings
    from salvage.connectors import simulator
    from salvage.policy.config import load_policy

    effects = dict(TRUE_EFFECTS if effects is None else effects)
    repeat_effects = dict(REPEAT_EFFECTS if repeat_effects is None else repeat_effects)
    settings = settings or Settings(redis_url="")
    if not settings.dataflow.policy:
        settings = settings.updated(policy=str(EXPERIMENT_POLICY))
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
        world = _World(base, seed, effects, repeat_effects)
        world.calibrate(assigned)  # flip probabilities fixed once, from the base run
        iterations, converged, log_path = 0, False, Path(tmp) / "reacted.jsonl"
        lines: list[str] = base.lines
        repeats: list[tuple[str, dict]] = []
        dropped: dict[str, str] = {}
        while iterations < MAX_ITERATIONS:
            iterations += 1
            lines, n, dropped, repeats = world.react(assigned)
            log_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            say(f"iteration {iterations}: {n} reactions; re-running the pipeline")
            again = _assign(log_path, settings)
            if _key(again) == _key(assigned):
                converged = True
                break
            assigned = again
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # realised true effects: per assigned unit, outcome-if-treated minus outcome-if-held-out
    order_units, customer_units = world.orders(assigned), world.customers(assigned)
    moved_orders, moved_customers = world.moved(assigned)
    per, overall = _realised(order_units, moved_orders)
    repeat_per, repeat_overall = _realised(customer_units, moved_customers)
    record = {
        "type": "true_effects",
        "true_effects": per,
        "overall": overall,
        "configured_effects": effects,
        "flip_probability": {act: round(v, 5) for act, v in sorted(world.q.items())},
        "assigned": {act: n for act, n in sorted(_counts(order_units).items())},
        "repeat": {
            "true_effects": repeat_per,
            "overall": repeat_overall,
            "configured_effects": repeat_effects,
            "flip_probability": {act: round(v, 5) for act, v in sorted(world.q_repeat.items())},
            "customers": {act: n for act, n in sorted(_counts(customer_units).items())},
            "window_days": REPEAT_WINDOW_DAYS,
        },
        "policy": str(settings.dataflow.policy),
        "policy_version": load_policy(settings.dataflow.policy).version,
        "iterations": iterations,
        "converged": converged,
        "react_delay_hours": REACT_DELAY_S / 3600,
    }
    if truth is not None:
        _write_truth(Path(truth), truth_lines, assigned, moved_orders, dropped, repeats, record)
    return record


def _counts(units: dict[str, tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for act, _plan in units.values():
        counts[act] += 1
    return counts


def _write_truth(
    truth: Path,
    truth_lines: list[str],
    assigned: dict[str, dict],
    moved_orders: dict[str, str],
    dropped: dict[str, str],
    repeats: list[tuple[str, dict]],
    record: dict,
) -> None:
    """The base truth, amended: reacted orders (``retained`` as they ended, ``reacted_to``),
    repeat orders not placed after all (``dropped``: order -> action) left out, added ones
    appended (``repeat_reaction_to``); then the ``true_effects`` record."""
    truth.parent.mkdir(parents=True, exist_ok=True)
    with truth.open("w", encoding="utf-8", newline="\n") as f:
        for line in truth_lines:
            doc = json.loads(line)
            oid = doc.get("order_id")
            if doc.get("type") == "order" and oid in dropped:
                continue  # a repeat order the customer did not place after all
            if doc.get("type") == "order":
                a = assigned.get(oid)
                if a is not None and oid in moved_orders and not a["holdout"]:
                    doc["retained"] = moved_orders[oid] == "save"
                    doc["reacted_to"] = a["action"]
                    line = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            f.write(line + "\n")
        for oid, a in repeats:
            doc = {
                "type": "order",
                "order_id": oid,
                "customer_id": a["customer_id"],
                "retained": True,
                "repeat_reaction_to": a["action"],
            }
            f.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_true_effects(truth: Path) -> dict:
    """The ``true_effects`` record of a closed-loop truth file."""
    for line in Path(truth).read_text(encoding="utf-8").splitlines():
        if '"true_effects"' in line:
            doc = json.loads(line)
            if doc.get("type") == "true_effects":
                return doc
    raise ValueError(f"{truth}: no true_effects record (not a closed-loop truth file?)")
