"""Signals on data Salvage was not tuned to (issue 11): the simulator's ``bracketing-unflagged`` and
``realistic-text`` variants through the real dataflow (file mode, one worker).

    .venv/bin/python benchmarks/signals.py [--orders 30000] [--orders-per-day 500] [--seed 5]

Reports:

* intents: delivered accuracy and coverage (``salvage_intent_accuracy`` / ``_coverage``) and the
  number of intents filled in, with 1 and with 8 shards (equal by construction: one intent stage);
* abuse: AUC against the simulator's truth (``abusive``) of the score at the return request,
  model vs rules, overall, bracketers vs honest returns, and on the cases the rules flag;
  promotions/demotions of the abuse model;
* refund leakage: ``salvage_refund_leakage_total / salvage_refunded_total`` vs the truth's share of
  refunded value on orders whose latent recoverability was >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bytewax.testing import TestingSink, run_main
from prometheus_client import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models import auc
from salvage.config import Settings
from salvage.connectors.simulator import write_log
from salvage.flows.recovery import FlowSpec, build_flow

VARIANTS = ("bracketing-unflagged", "realistic-text")


def _sum(name: str) -> float:
    return sum(s.value for m in REGISTRY.collect() for s in m.samples if s.name == name)


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _flow(log: Path, out: Path, shards: int, scores: list | None = None) -> dict:
    before = {
        n: _sum(n)
        for n in (
            "salvage_intents_inferred_total",
            "salvage_refunded_total",
            "salvage_refund_leakage_total",
        )
    }
    extra = {"scores": TestingSink(scores)} if scores is not None else {}
    spec = FlowSpec(
        Settings(redis_url="", shards=shards),
        inputs=[log],
        out_dir=out,
        case_store=False,
        extra_sinks=extra,
    )
    run_main(build_flow(spec))
    delta = {n: _sum(n) - v for n, v in before.items()}
    return {
        "intent_accuracy": _gauge("salvage_intent_accuracy", shard="0"),
        "intent_coverage": _gauge("salvage_intent_coverage", shard="0"),
        "intents_inferred": delta["salvage_intents_inferred_total"],
        "refunded": delta["salvage_refunded_total"],
        "leakage": delta["salvage_refund_leakage_total"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=30_000)
    ap.add_argument("--orders-per-day", type=float, default=500.0)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--warmup-days", type=float, default=45.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log, truth_path = work / "log.jsonl", work / "truth.jsonl"
        write_log(
            "steady-state",
            args.orders,
            args.seed,
            log,
            truth_path,
            orders_per_day=args.orders_per_day,
            variants=VARIANTS,
        )
        scores: list[dict] = []
        one = _flow(log, work / "one", 1, scores)
        eight = _flow(log, work / "eight", 8)
        events = [
            json.loads(x) for x in (work / "one" / "model_events.jsonl").read_text().splitlines()
        ]
        truth = {}
        for line in truth_path.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "order":
                truth[r["order_id"]] = r
        refunds: dict[str, float] = {}
        for line in log.read_text().splitlines():
            e = json.loads(line)
            if e["event_type"] in ("refund_issued", "chargeback_filed"):
                refunds[e["order_id"]] = refunds.get(e["order_id"], 0.0) + e["amount"]
    first_return: dict[str, dict] = {}
    for s in scores:
        if s["returned"]:
            first_return.setdefault(s["order_id"], s)
    start = min(s["t"] for s in scores)
    warm = {o for o, s in first_return.items() if s["t"] >= start + args.warmup_days * 86_400e6}
    rows = [(truth[o], s) for o, s in first_return.items() if o in warm and o in truth]

    def both(sel) -> dict:
        r = [(t["abusive"], s) for t, s in rows if sel(t, s)]
        return {
            "model": round(auc([(y, s["model"]["abuse"]) for y, s in r]), 3),
            "rules": round(auc([(y, s["rules"]["abuse"]) for y, s in r]), 3),
            "driving": round(
                auc(
                    [
                        (
                            y,
                            s["model"]["abuse"]
                            if "abuse:abuse" in s["driving"]
                            else s["rules"]["abuse"],
                        )
                        for y, s in r
                    ]
                ),
                3,
            ),
            "cases": len(r),
        }

    truth_recoverable = sum(v for o, v in refunds.items() if truth[o]["recoverability"] >= 0.5)
    report = {
        "intents": {
            "1 shard": {k: one[k] for k in one if k.startswith("intent")},
            "8 shards": {k: eight[k] for k in eight if k.startswith("intent")},
        },
        "abuse_truth_auc": {
            "all returns": both(lambda t, s: True),
            "bracketers vs honest": both(lambda t, s: t["abuse_kind"] in (None, "bracketing")),
            "rule-flagged (rules >= 0.5)": both(lambda t, s: s["rules"]["abuse"] >= 0.5),
        },
        "abuse_model_events": [
            (e["change"], e["labels"], e["reason"]) for e in events if e["model"] == "abuse"
        ],
        "recoverability_model_events": [
            (e["change"], e["labels"], e["reason"])
            for e in events
            if e["model"] == "recoverability"
        ],
        "refund_leakage": {
            "kpi_share": round(one["leakage"] / one["refunded"], 3) if one["refunded"] else None,
            "truth_share": round(truth_recoverable / sum(refunds.values()), 3),
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
