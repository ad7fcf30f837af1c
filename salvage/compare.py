"""What-if replay: run two policies over the same event log and compare what they would do."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bytewax.testing import run_main

from salvage.config import Settings
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.policy.config import Policy, load_policy
from salvage.uplift import uplift


@dataclass
class PolicyRun:
    policy: Policy
    path: str
    triggers: list[dict] = field(default_factory=list)
    itt: dict = field(default_factory=dict)  # salvage.uplift.analyse of this run

    def margin_estimate(self, action: str | None = None) -> dict | None:
        """Estimated retained margin the policy earned on this log (ITT: assigned orders x the
        per-order retained-margin difference treated - holdout), with its 95% interval; None
        without a holdout to estimate from."""
        block = self.itt.get("overall") if action is None else self.itt["actions"].get(action)
        if not block or not block.get("retained_margin"):
            return None
        n = block["n_treated"] + block["n_holdout"]
        m = block["retained_margin"]
        return {
            "estimate": round(n * m["diff"], 2),
            "ci": [round(n * m["ci"][0], 2), round(n * m["ci"][1], 2)],
            "assigned": n,
        }

    @property
    def by_action(self) -> Counter[str]:
        return Counter(t["action"] for t in self.triggers)

    def cost(self, action: str | None = None) -> float:
        """Expected cost of what was triggered, as the policy counted it (goodwill capped)."""
        return round(
            sum(t["cost"] for t in self.triggers if action is None or t["action"] == action),
            2,
        )

    def expected_retained(self, action: str | None = None) -> float:
        """Expected retained revenue: EV + cost = lift x P(lost) x value at risk."""
        return round(
            sum(
                t["expected_value"] + t["cost"]
                for t in self.triggers
                if action is None or t["action"] == action
            ),
            2,
        )


def run_policy(settings: Settings, log: Path, policy_path: str | None) -> PolicyRun:
    policy = load_policy(policy_path)
    with tempfile.TemporaryDirectory() as tmp:
        spec = FlowSpec(
            settings.updated(policy=policy_path, redis_url=""),
            inputs=[log],
            out_dir=Path(tmp),
            case_store=False,
        )
        run_main(build_flow(spec))
        lines = (Path(tmp) / "interventions.jsonl").read_text().splitlines()
        itt = uplift(Path(tmp))
    return PolicyRun(policy, policy_path or "default", [json.loads(x) for x in lines], itt)


def compare(a: PolicyRun, b: PolicyRun) -> dict:
    """Per action: triggers, cost and expected retained revenue in A and B, and the orders whose
    treatment differs."""
    keys_a = {(t["order_id"], t["action"]) for t in a.triggers}
    keys_b = {(t["order_id"], t["action"]) for t in b.triggers}
    actions = sorted(set(a.by_action) | set(b.by_action))
    rows = [
        {
            "action": act,
            "a": a.by_action[act],
            "b": b.by_action[act],
            "cost_a": a.cost(act),
            "cost_b": b.cost(act),
            "retained_a": a.expected_retained(act),
            "retained_b": b.expected_retained(act),
            "margin_a": a.margin_estimate(act),
            "margin_b": b.margin_estimate(act),
        }
        for act in actions
    ]
    return {
        "a": {"policy": a.policy.version, "file": a.path},
        "b": {"policy": b.policy.version, "file": b.path},
        "rows": rows,
        "total": {
            "a": len(a.triggers),
            "b": len(b.triggers),
            "cost_a": a.cost(),
            "cost_b": b.cost(),
            "retained_a": a.expected_retained(),
            "retained_b": b.expected_retained(),
            "margin_a": a.margin_estimate(),
            "margin_b": b.margin_estimate(),
        },
        "only_a": len(keys_a - keys_b),
        "only_b": len(keys_b - keys_a),
        "both": len(keys_a & keys_b),
    }
