"""No ``_created`` series in what a scrape renders (sinks/__init__.py): they doubled the lines of
every counter and histogram series, and a scrape renders them all in the worker's process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRAPE = """
from prometheus_client import REGISTRY, generate_latest
from salvage.sinks import metrics
metrics.EVENTS.labels("orders").inc()
metrics.GRADING_DELAY.observe(3600.0)
body = generate_latest(REGISTRY).decode()
print(sum(1 for x in body.splitlines() if "_created" in x and not x.startswith("#")))
print(sum(1 for x in body.splitlines() if x.startswith("salvage_events_total")))
"""


def _scrape(env: dict[str, str]) -> list[int]:
    """(``_created`` samples, salvage_events_total samples) of a fresh process's scrape."""
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_DISABLE_CREATED_SERIES"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRAPE],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [int(x) for x in done.stdout.split()]


def test_a_scrape_has_no_created_series() -> None:
    created, events = _scrape({})
    assert events == 1 and created == 0


def test_created_series_come_back_when_asked_for() -> None:
    created, events = _scrape({"PROMETHEUS_DISABLE_CREATED_SERIES": "false"})
    assert events == 1 and created > 0
