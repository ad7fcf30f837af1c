"""Uplift on the closed-loop scenario: does the intention-to-treat estimate recover known effects?

    .venv/bin/python benchmarks/uplift.py --orders 40000 [--seeds 1 2] [--policy FILE]

For each seed: simulate the closed-loop world (`salvage.connectors.closed_loop`: customers react to
the pipeline's treated, not-suppressed interventions with the configured per-action effects on
retention and on the repeat rate; the loop re-runs the pipeline until its assignments are
stable), run the pipeline on the final log (file mode, like `salvage run`, with the same policy:
by default the scenario's experiment policy, policy/closed_loop.yaml), estimate the ITT uplift
(`salvage.uplift`) and print, per action and overall, for retention (orders as units) and the
repeat rate (customers as units): the realised true effect, the estimate, its 95% interval,
whether it contains the truth, the arm sizes and the minimum detectable effect. Also the wall
time of each step, and at the end how often the intervals contained the truth. Nothing is
asserted here (tests/salvage/test_uplift.py does that on a smaller world).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bytewax.testing import run_main

from salvage.config import Settings
from salvage.connectors.closed_loop import EXPERIMENT_POLICY, write_log
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.uplift import uplift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=40_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--policy", default=str(EXPERIMENT_POLICY), help="policy YAML (default: the experiment one)"
    )
    args = ap.parse_args()
    settings = Settings(redis_url="", policy=args.policy)
    tally = {key: [0, 0] for key in ("retention", "repeat")}  # [covered, total]
    overall_tally = {key: [0, 0] for key in ("retention", "repeat")}
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
        before = {k: (tally[k][0], overall_tally[k][0]) for k in tally}
        for key, truth, overall_truth, block in (
            ("retention", record["true_effects"], record["overall"], lambda b: b),
            (
                "repeat",
                record["repeat"]["true_effects"],
                record["repeat"]["overall"],
                lambda b: b["repeat"],
            ),
        ):
            print(
                f"{key + ' (' + ('orders' if key == 'retention' else 'customers') + ')':<24}"
                f"{'truth':>8}{'estimate':>10}{'95% interval':>20}{'in':>5}"
                f"{'treated':>9}{'holdout':>9}{'MDE':>7}"
            )
            rows = [(a, block(b), truth.get(a, 0.0), tally) for a, b in r["actions"].items()]
            rows.append(("overall", block(r["overall"]), overall_truth, overall_tally))
            for name, b, true, counter in rows:
                if b["diff"] is None:
                    print(f"  {name:<22}{'-':>8}{'(no holdout)':>10}")
                    continue
                lo, hi = b["ci"]
                inside = lo <= true <= hi
                counter[key][0] += inside
                counter[key][1] += 1
                print(
                    f"  {name:<22}{true:>+8.3f}{b['diff']:>+10.3f}"
                    f"{f'[{lo:+.3f}, {hi:+.3f}]':>20}{'yes' if inside else 'NO':>5}"
                    f"{b['n_treated']:>9,}{b['n_holdout']:>9,}{b['mde']:>7.3f}"
                )
        seed_line = "; ".join(
            f"{k} {tally[k][0] - before[k][0]}/5 actions, overall "
            f"{'yes' if overall_tally[k][0] > before[k][1] else 'NO'}"
            for k in tally
        )
        print(f"seed {seed} contains the truth: {seed_line}", flush=True)
    print("\nintervals containing the true effect:")
    for key in tally:
        (c, n), (oc, on) = tally[key], overall_tally[key]
        print(f"  {key}: per action {c}/{n}, overall {oc}/{on}")


if __name__ == "__main__":
    main()
