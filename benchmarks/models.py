"""Model benchmark: rolling ROC AUC of the online models vs the rule baseline, on the simulator.

    .venv/bin/python benchmarks/models.py [--orders 40000] [--orders-per-day 500] [--seed 11]

Runs `steady-state` and `launch-week-backlog` through the real dataflow (file mode, Bytewax, one
worker) and reports, per model:

* AUC against the **observed outcomes** (progressive validation inside the flow: the rolling AUC of
  the model and of the rules on the same labelled predictions, from the flow's own metrics, over
  the last 1,000 labels of the run);
* AUC against the simulator's **truth** (`retained`, `abusive`) of the score each order got at its
  first risk signal (delay, missed promise, contact, return request; for abuse: at the return
  request), model (shadow or active) vs rules, **after warm-up**: orders whose first risk signal
  came at least ``--warmup-days`` (45) after the log starts. Labels are delayed by the outcome
  itself: an order that is kept is only known to be kept when its 30-day return window closes,
  about 35 days after it was placed, so before then a model has seen refunds and almost no keeps;
* promotions/demotions and the share of labels seen before the first promotion.

The default 40,000 orders at 500 a day span 80 days (a mid-market brand's quarter), which is what
"after warm-up" needs: at the simulator's default 2,500 a day, 20,000 orders span 8 days and every
order is scored before the first "kept" label can exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bytewax.testing import TestingSink, run_main
from prometheus_client import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salvage.config import Settings
from salvage.connectors.simulator import write_log
from salvage.flows.recovery import FlowSpec, build_flow


def auc(pairs: list[tuple[bool, float]]) -> float:
    """ROC AUC by ranks (Mann-Whitney), ties averaged."""
    ranked = sorted(pairs, key=lambda p: p[1])
    pos = sum(1 for y, _ in ranked if y)
    neg = len(ranked) - pos
    if not pos or not neg:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][1] == ranked[i][1]:
            j += 1
        avg = (i + j + 1) / 2
        rank_sum += avg * sum(1 for y, _ in ranked[i:j] if y)
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _gauge(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or float("nan")


TARGETS = {"recoverability": 0.80, "abuse": 0.85}
DAY_US = 86_400 * 10**6


def run(
    scenario: str, orders: int, seed: int, work: Path, per_day: float, warmup_days: float
) -> dict:
    log, truth = work / f"{scenario}.jsonl", work / f"{scenario}.truth.jsonl"
    started = time.perf_counter()
    print(f"{scenario}: simulating {orders:,} orders at {per_day:,.0f}/day ...", flush=True)
    counts = write_log(scenario, orders, seed, log, truth, orders_per_day=per_day)
    print(f"{scenario}: running the flow over {counts['events']:,} events ...", flush=True)
    scores: list[dict] = []
    spec = FlowSpec(
        Settings(redis_url="", shards=4),
        inputs=[log],
        out_dir=work / f"{scenario}-out",
        case_store=False,
        extra_sinks={"scores": TestingSink(scores)},
    )
    run_main(build_flow(spec))
    secs = time.perf_counter() - started
    facts = {}
    for line in truth.read_text().splitlines():
        r = json.loads(line)
        if r.get("type") == "order":
            facts[r["order_id"]] = r
    first: dict[str, dict] = {}
    first_return: dict[str, dict] = {}
    for s in scores:
        first.setdefault(s["order_id"], s)
        if s["returned"]:
            first_return.setdefault(s["order_id"], s)
    start = min(s["t"] for s in scores)
    warm = {s["order_id"] for s in first.values() if s["t"] >= start + warmup_days * DAY_US}
    report = {
        "scenario": scenario,
        "orders": orders,
        "events": counts["events"],
        "seconds": round(secs, 1),
        "models": {},
    }
    events = [
        json.loads(x)
        for x in (work / f"{scenario}-out" / "model_events.jsonl").read_text().splitlines()
    ]
    for model, source, truth_key in (
        ("recoverability", first, "retained"),
        ("abuse", first_return, "abusive"),
    ):
        rows = [(facts[o][truth_key], s) for o, s in source.items() if o in warm and o in facts]
        promoted = [e for e in events if e["model"] == model and e["change"] == "promoted"]
        total = _gauge("salvage_model_labels", model=model, shard="0")
        report["models"][model] = {
            "observed_auc_model": _gauge(
                "salvage_model_auc", model=model, scorer="model", shard="0"
            ),
            "observed_auc_rules": _gauge(
                "salvage_model_auc", model=model, scorer="rules", shard="0"
            ),
            "truth_auc_model": round(auc([(y, s["model"][model]) for y, s in rows]), 4),
            "truth_auc_rules": round(auc([(y, s["rules"][model]) for y, s in rows]), 4),
            "truth_cases": len(rows),
            "labels": total,
            "promotions": len(promoted),
            "demotions": sum(1 for e in events if e["model"] == model and e["change"] == "demoted"),
            "labels_before_first_promotion": (
                round(promoted[0]["labels"] / total, 3) if promoted and total else None
            ),
        }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=40_000, help="orders per scenario")
    ap.add_argument("--orders-per-day", type=float, default=500.0, help="arrival rate")
    ap.add_argument("--warmup-days", type=float, default=45.0, help="truth AUC from this day on")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reports = []
        for i, scenario in enumerate(("steady-state", "launch-week-backlog")):
            reports.append(
                run(
                    scenario,
                    args.orders,
                    args.seed + i,
                    Path(tmp),
                    args.orders_per_day,
                    args.warmup_days,
                )
            )
    print(json.dumps(reports, indent=1))
    print(
        f"\n{'scenario':<22}{'model':<16}{'obs AUC model':>14}{'obs AUC rules':>14}"
        f"{'truth AUC model':>16}{'truth AUC rules':>16}{'promo/demo':>11}{'labels@promo':>13}"
    )
    verdicts = []
    for r in reports:
        for model, m in r["models"].items():
            print(
                f"{r['scenario']:<22}{model:<16}{m['observed_auc_model']:>14.3f}"
                f"{m['observed_auc_rules']:>14.3f}{m['truth_auc_model']:>16.3f}"
                f"{m['truth_auc_rules']:>16.3f}{m['promotions']:>6}/{m['demotions']:<4}"
                f"{m['labels_before_first_promotion']!s:>13}"
            )
            target = TARGETS[model]
            for kind in ("observed", "truth"):
                mine, rules = m[f"{kind}_auc_model"], m[f"{kind}_auc_rules"]
                ok = mine >= target and mine > rules
                verdicts.append(
                    f"{'met ' if ok else 'MISS'} {r['scenario']:<20} {model:<15} {kind:<9}"
                    f" AUC {mine:.3f} (target {target:.2f}, rules {rules:.3f})"
                )
    print(f"\ntargets after warm-up (AUC >= target and above the rules), {len(verdicts)} checks:")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
