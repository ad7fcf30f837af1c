"""SHA-256 of every output file of file-mode runs on fixed simulator logs.

Refactors promise "behaviour unchanged": run this on two commits and compare. The logs are
generated with fixed seeds (cached in --work); each run is ``salvage run --input LOG --out-dir
DIR --no-case-store`` in a fresh process. Prints one line per (log, output file) and, last, the
SHA-256 of all interventions files together: ``interventions_sha256=HEX``.

    python benchmarks/digests.py [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import DEFAULT_WORK, say

# (scenario, orders, seed, variant): the logs behind README's "Behaviour unchanged" table
LOGS = (
    ("steady-state", 3000, 1, None),
    ("silent-carrier-incident", 2000, 2, None),
    ("closed-loop", 2000, 3, None),
    ("launch-week-backlog", 3000, 4, "realistic-text"),
)


def salvage(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("salvage")), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def log_path(work: Path, scenario: str, orders: int, seed: int, variant: str | None) -> Path:
    name = f"digest-{scenario}-{orders}-{seed}{'-' + variant if variant else ''}.jsonl"
    path = work / name
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        extra = ["--variant", variant] if variant else []
        say(f"generating {name} ...")
        salvage("generate", "--scenario", scenario, "--orders", str(orders), "--seed", str(seed),
                "--out", str(path), *extra)  # fmt: skip
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache for generated logs")
    ap.add_argument("--json", action="store_true", help="print the digests as one JSON document")
    args = ap.parse_args()
    digests: dict[str, dict[str, str]] = {}
    total = hashlib.sha256()
    for scenario, orders, seed, variant in LOGS:
        log = log_path(args.work, scenario, orders, seed, variant)
        with tempfile.TemporaryDirectory() as tmp:
            say(f"running {log.name} ...")
            salvage("run", "--input", str(log), "--out-dir", tmp, "--no-case-store")
            files = sorted(Path(tmp).glob("*.jsonl"))
            digests[log.name] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
            total.update((Path(tmp) / "interventions.jsonl").read_bytes())
    if args.json:
        print(json.dumps(digests, indent=2, sort_keys=True))
    else:
        for name, files in digests.items():
            for file, digest in files.items():
                print(f"{name:<55} {file:<22} {digest[:16]}")
    print(f"interventions_sha256={total.hexdigest()}")


if __name__ == "__main__":
    main()
