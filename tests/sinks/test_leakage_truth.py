"""Refund leakage checked against the simulator's truth (issue 11 item 5; sinks/leakage.py).

Each case simulates a brand (a few thousand orders), runs ``salvage run`` on it in file mode in a
fresh process (its own Prometheus registry), reads ``metrics.prom`` from the out dir and compares
the leaked share of refunded value (``salvage_refund_leakage_total / salvage_refunded_total``) with
the truth's: the share of refunded value on orders whose latent recoverability (the simulator's
P(retained), truth records) was >= 0.5, i.e. customers who were more likely than not to stay.

Tolerance: 0.10 absolute. The definition reads only observable facts (reason, abuse evidence,
delivery), so it agrees with the truth in share, not case by case (README, "On data Salvage was
not tuned to", has the measured figures). Its blind spot is abuse that nobody flags: with
``bracketing-unflagged`` the bracketers' extra sizes come back as clean fit returns and count as
leakage, so there the KPI overstates, by 0.09-0.11; that case asserts the overstatement (above the
truth, by at most 0.15) rather than agreement.

The definition it replaced (first recoverability score >= 0.5) reported 0.605 on steady-state at
5,000 orders where the truth says 0.396, 0.613 vs 0.366 on silent-carrier-incident, 0.602 vs 0.430
with bracketing-unflagged: it fails every case here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from salvage.connectors.simulator import write_log

TOLERANCE = 0.10
SEED = 7

AGREE = (-TOLERANCE, TOLERANCE)  # bounds on leaked share - truth share
CASES = [
    ("steady-state", (), 4000, AGREE),
    ("steady-state", ("realistic-text",), 4000, AGREE),
    ("silent-carrier-incident", (), 4000, AGREE),  # a lane incident, carriers without delay scans
    ("steady-state", ("bracketing-unflagged",), 4000, (0.0, 0.15)),  # unflagged abuse: overstated
]


def truth_share(log: Path, truth: Path) -> tuple[float, float]:
    """(refunded value in the log, share of it on orders with latent recoverability >= 0.5)."""
    recoverable = {}
    for line in truth.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "order":
            recoverable[rec["order_id"]] = rec["recoverability"] >= 0.5
    refunded: dict[str, float] = {}
    for line in log.read_text().splitlines():
        ev = json.loads(line)
        if ev["event_type"] in ("refund_issued", "chargeback_filed"):
            refunded[ev["order_id"]] = refunded.get(ev["order_id"], 0.0) + ev["amount"]
    total = sum(refunded.values())
    return total, sum(v for o, v in refunded.items() if recoverable[o]) / total


def kpi_totals(metrics_prom: Path) -> dict[str, float]:
    """Sum over labels of the refund counters in a ``metrics.prom`` snapshot."""
    want = {"salvage_refunded_total", "salvage_refund_leakage_total"}
    totals = dict.fromkeys(want, 0.0)
    for family in text_string_to_metric_families(metrics_prom.read_text()):
        for sample in family.samples:
            if sample.name in want:
                totals[sample.name] += sample.value
    return totals


@pytest.mark.parametrize(
    ("scenario", "variants", "orders", "bounds"),
    CASES,
    ids=[f"{s}{'+' if v else ''}{'+'.join(v)}" for s, v, _, _ in CASES],
)
def test_leaked_share_agrees_with_the_truth(tmp_path: Path, scenario, variants, orders, bounds):
    log, truth, out = tmp_path / "log.jsonl", tmp_path / "truth.jsonl", tmp_path / "out"
    write_log(scenario, orders, SEED, log, truth, variants=variants)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALVAGE_")}
    cmd = [sys.executable, "-c", "from salvage.cli import app; app()", "run"]
    cmd += ["--input", str(log), "--out-dir", str(out), "--no-case-store"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    kpi = kpi_totals(out / "metrics.prom")
    refunded, truth_recoverable = truth_share(log, truth)
    # every refund and chargeback of the log reached the KPI (same denominator as the truth)
    assert kpi["salvage_refunded_total"] == pytest.approx(refunded, abs=0.01)
    leaked = kpi["salvage_refund_leakage_total"] / kpi["salvage_refunded_total"]
    assert 0.2 < truth_recoverable < 0.6  # the truth is far from "all" or "none"
    lo, hi = bounds
    assert lo <= leaked - truth_recoverable <= hi, (leaked, truth_recoverable)
