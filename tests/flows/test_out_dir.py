"""A rerun into the same out dir: every output file is this run's (a stream this run leaves
empty was keeping the last run's lines: its dead letters, say, which the run summary reported)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.flowkit import OUTPUT_FILES, jsonl, run_file_flow
from tests.helpers import event, order_placed


def test_a_rerun_into_the_same_out_dir_keeps_nothing_of_the_last_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    good = [
        order_placed("o1", "2026-03-02T10:00:00Z"),
        event("d1", "carrier_scan", "o1", "2026-03-04T09:00:00Z", scan="delivered", courier="dhl"),
    ]
    bad.write_text("".join(json.dumps(d) + "\n" for d in good) + "not json\n")
    first = run_file_flow([bad], out)
    assert len(jsonl(first["dead_letters"])) == 1
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(d) + "\n" for d in good))
    second = run_file_flow([clean], out)
    assert jsonl(second["dead_letters"]) == []
    fresh = run_file_flow([clean], tmp_path / "fresh")
    assert {n: second[n] for n in OUTPUT_FILES} == {n: fresh[n] for n in OUTPUT_FILES}
