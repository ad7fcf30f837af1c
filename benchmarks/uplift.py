"""Uplift on the closed-loop scenario: does the intention-to-treat estimate recover known effects?

    .venv/bin/python benchmarks/uplift.py --orders 40000 [--seeds 1 2] [--policy FILE]

For each seed: simulate the closed-loop world (`salvage.connectors.closed_loop`: customers react to
the
pipeline's treated, not-suppressed interventions with the configured per-action effects; the
loop re-runs the pipeline until its assignments are stable), run the pipeline on the final log
(file mode, like `salvage run`), estimate the ITT uplift (`salvage.uplift`) and print, per action
and overall: the realised true effect, the estimate, its 95% interval, whether it contains the
truth, the arm sizes and the minimum detectable effect. Also the wall time of each step.
Nothing is asserted here (tests/test_uplift.py does that on a smaller world).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bytewax.testing import run_main

from salvage.config import Settings
from salvage.connectors.closed_loop import write_log
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.uplift import uplift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=40_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--policy", default=None, help="policy YAML (default: the shipped one)")
    args = ap.parse_args()
    settings = Settings(redis_url="", policy=args.policy)
    covered = total = 0
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            log, out = Path(tmp) / "events.jsonl", Path(tmp) / "out"
            t0 = time.perf_counter()
            record = write_log(args.orders, seed, log, Path(tmp) / "truth.jsonl", settings=settings)
            t1 = time.perf_counter()
            run_main(build_flow(FlowSpec(settings, inputs=[log], out_dir=out, case_store=False)))
            t2 = time.perf_counter()
            r = uplift(out)
            t3 = time.perf_counter()
        print(
            f"\nseed {seed}: {args.orders:,} orders; world + {record['iterations']} loop run(s) "
            f"{t1 - t0:.0f}s (converged: {record['converged']}), pipeline {t2 - t1:.0f}s, "
            f"uplift {t3 - t2:.1f}s"
        )
        print(
            f"{'action':<24}{'truth':>8}{'estimate':>10}{'95% interval':>20}{'in':>5}"
            f"{'treated':>9}{'holdout':>9}{'MDE':>7}"
        )
        truth = record["true_effects"]
        rows = [(a, b, truth.get(a)) for a, b in r["actions"].items()]
        rows.append(("overall", r["overall"], record["overall"]))
        for name, b, true in rows:
            if b["diff"] is None:
                print(f"{name:<24}{'-':>8}{'(no holdout)':>10}")
                continue
            lo, hi = b["ci"]
            inside = lo <= true <= hi
            covered += inside
            total += 1
            print(
                f"{name:<24}{true:>+8.3f}{b['diff']:>+10.3f}{f'[{lo:+.3f}, {hi:+.3f}]':>20}"
                f"{'yes' if inside else 'NO':>5}{b['n_treated']:>9,}{b['n_holdout']:>9,}"
                f"{b['mde']:>7.3f}"
            )
    print(f"\nintervals containing the true effect: {covered}/{total}")


if __name__ == "__main__":
    main()
