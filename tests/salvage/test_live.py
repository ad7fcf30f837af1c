"""The demo's live view (salvage/live.py) around real flow runs: the numbers it shows are the run's
(checked against the output files, the event log and the registry), it prints plain lines when the
console is not a terminal and redraws a rich panel when it is."""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime

from prometheus_client import REGISTRY
from rich.console import Console

from salvage.flows.messages import Tick
from salvage.live import LiveView, render
from salvage.sinks import kpis
from salvage.sinks.kpis import RETAINED
from tests.flowkit import jsonl, run_file_flow, sim_log

MALFORMED = [b"this line is not JSON", b'{"event_type": "carrier_scan", "schema_version": 1}']


def _by(name: str, label: str) -> Counter:
    """Sum of a metric's samples by one label, straight from the registry."""
    out: Counter = Counter()
    for m in REGISTRY.collect():
        for x in m.samples:
            if x.name == name:
                out[x.labels[label]] += x.value
    return out


def _retained() -> Counter:
    out: Counter = Counter()
    for m in REGISTRY.collect():
        for x in m.samples:
            if x.name == "salvage_closed_order_value_total" and x.labels["outcome"] in RETAINED:
                out[x.labels["currency"]] += x.value
    return out


def _delta(after: Counter, before: Counter) -> Counter:
    return Counter({k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)})


def _row(text: str, label: str) -> str:
    """The panel line of ``label`` (with its wrapped continuation lines)."""
    lines = text.splitlines()
    i = next(i for i, x in enumerate(lines) if re.match(rf"│ {label}\s", x))
    row = [lines[i]]
    for x in lines[i + 1 :]:
        if not re.match(r"│\s{10,}\S", x):
            break
        row.append(x)
    return " ".join(" ".join(x.strip("│ ").split()) for x in row)


def _n(v: float) -> str:
    return f"{v:,.0f}"


def test_the_live_view_shows_the_runs_numbers_and_plain_lines_without_a_terminal(tmp_path):
    log = sim_log(tmp_path, "launch-week-backlog", 900, 11)
    salted = tmp_path / "salted.jsonl"
    salted.write_bytes(log.read_bytes() + b"\n".join(MALFORMED) + b"\n")
    out = tmp_path / "out"
    before = {
        "events": _by("salvage_events_total", "stream"),
        "held": _by("salvage_holdout_total", "action"),
        "dups": REGISTRY.get_sample_value("salvage_duplicate_events_total") or 0.0,
        "retained": _retained(),
        "leakage": _by("salvage_refund_leakage_total", "currency"),
    }
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=250)
    assert not console.is_terminal
    with LiveView(console, plain_interval=0.2) as view:
        outputs = run_file_flow([salted], out)
    s, elapsed, _ = view.snapshot()
    panel = Console(file=io.StringIO(), force_terminal=False, width=250)
    panel.print(render(s, elapsed))
    text = panel.file.getvalue()

    # triggers by action: exactly what the run published
    triggers = Counter(t["action"] for t in jsonl(outputs["interventions"]))
    assert triggers
    row = _row(text, "triggers")
    assert row.startswith(f"triggers {_n(sum(triggers.values()))}")
    for action, n in triggers.most_common(6):
        assert f"{action} {_n(n)}" in row
    # dead letters: the dead-letter output (the two salted lines at least)
    dead = Counter(d["kind"] for d in jsonl(outputs["dead_letters"]))
    assert sum(dead.values()) >= len(MALFORMED)
    row = _row(text, "dead letters")
    assert row.startswith(f"dead letters {_n(sum(dead.values()))}")
    for kind, n in dead.items():
        assert f"{kind} {_n(n)}" in row
    # events by stream: the registry's increase; with duplicates and dead letters, every line
    events = _delta(_by("salvage_events_total", "stream"), before["events"])
    dups = (REGISTRY.get_sample_value("salvage_duplicate_events_total") or 0) - before["dups"]
    lines = sum(1 for x in salted.read_bytes().splitlines() if x.strip())
    assert sum(events.values()) + dups + sum(dead.values()) == lines
    row = _row(text, "events")
    assert row.startswith(f"events {_n(sum(events.values()))}")
    for stream, n in events.items():
        assert f"{stream} {_n(n)}" in row
    # held-out decisions (never published) and the KPI counters, as this run moved them
    held = _delta(_by("salvage_holdout_total", "action"), before["held"])
    assert sum(held.values()) > 0
    row = _row(text, "held out")
    assert row.startswith(f"held out {_n(sum(held.values()))}")
    for action, n in held.items():
        assert f"{action} {_n(n)}" in row
    retained = _delta(_retained(), before["retained"])
    leakage = _delta(_by("salvage_refund_leakage_total", "currency"), before["leakage"])
    assert retained and leakage
    for cur, v in retained.items():
        assert f"{cur} {_n(v)}" in _row(text, "value of orders kept")
    for cur, v in leakage.items():
        assert f"{cur} {_n(v)}" in _row(text, "refund leakage")
    # gauges: open cases, open lane alerts (every lane the run left open is listed)
    assert (
        _row(text, "open cases")
        == f"open cases {_n(sum(_by('salvage_open_cases', 'shard').values()))}"
    )
    gauge_open = sorted(k for k, v in _by("salvage_lane_alert_open", "lane").items() if v >= 1)
    last_state = {a["lane"]: a["state"] for a in jsonl(outputs["lane_alerts"])}
    left_open = {lane for lane, state in last_state.items() if state == "open"}
    assert left_open <= set(gauge_open)
    row = _row(text, "lane alerts")
    assert row.startswith(f"lane alerts {len(gauge_open)} open")
    for lane in sorted(left_open)[:6]:
        assert lane in row
    # event time: inside the log's event-time range
    times = [json.loads(x)["occurred_at"] for x in log.read_text().splitlines() if x.strip()]
    shown = re.search(r"event time\s+(\d{4}-\d\d-\d\d \d\d:\d\d) UTC", text)
    assert shown, text
    at = datetime.strptime(shown.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    first = datetime.fromisoformat(min(times).replace("Z", "+00:00"))
    last = datetime.fromisoformat(max(times).replace("Z", "+00:00"))
    assert first.replace(second=0, microsecond=0) <= at <= last

    # no terminal: plain lines while it ran, and a last one with the final numbers
    printed = [x for x in buf.getvalue().splitlines() if x]
    assert len(printed) >= 2 and all(x.startswith("live ") for x in printed)
    assert "\x1b[" not in buf.getvalue()  # no cursor movement, no colours
    final = printed[-1]
    assert f"events {_n(sum(events.values()))}" in final
    assert f"triggers {_n(sum(triggers.values()))} (held out {_n(sum(held.values()))})" in final
    assert f"dead letters {_n(sum(dead.values()))}" in final


def test_the_live_view_redraws_a_panel_on_a_terminal(tmp_path):
    log = sim_log(tmp_path, "steady-state", 300, 2)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140)
    with LiveView(console, interval=0.05, title="Salvage · live (test)") as view:
        outputs = run_file_flow([log], tmp_path / "out")
    drawn = buf.getvalue()
    assert view.frames >= 3
    assert drawn.count("Salvage · live (test)") >= 2  # redrawn in place
    assert "\x1b[2K" in drawn or "\x1b[1A" in drawn  # cursor control: a live display
    # the last frame holds the run's final trigger count
    n = len(jsonl(outputs["interventions"]))
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    last = plain[plain.rindex("Salvage · live (test)") :]
    assert re.search(rf"triggers\s+{_n(n)}\b", last)


def test_a_failing_sample_stops_the_view_never_the_run():
    class Flaky:
        calls = 0

        def collect(self):
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("registry gone")
            return []

    view = LiveView(Console(file=io.StringIO()), registry=Flaky(), plain_interval=0.01)
    with view:
        time.sleep(0.2)
    assert view._failed and not view._thread.is_alive()


def test_open_lane_alerts_are_listed_by_lane(tmp_path, monkeypatch):
    """Drain the run (as SIGTERM does) as soon as a lane alert is open: the alert stays open in
    the stages' state and the gauge, and the view lists that lane."""
    from salvage.flows.sources import clear_stop, request_stop
    from salvage.flows.stages import lane as lane_stage

    log = sim_log(tmp_path, "launch-week-backlog", 1200, 5)
    # the stop is asked for in the lane stage itself when an alert opens (a thread watching the
    # gauge missed it under load: the whole run could end between two of its looks)
    alert_of = lane_stage._lane_alert

    def stop_at_an_opening(tr):
        if tr.opened:
            request_stop()
        return alert_of(tr)

    monkeypatch.setattr(lane_stage, "_lane_alert", stop_at_an_opening)
    console = Console(file=io.StringIO(), force_terminal=False, width=250)
    clear_stop()
    try:
        with LiveView(console, plain_interval=60) as view:
            outputs = run_file_flow([log], tmp_path / "out")
    finally:
        clear_stop()
    s, elapsed, _ = view.snapshot()
    panel = Console(file=io.StringIO(), force_terminal=False, width=250)
    panel.print(render(s, elapsed))
    text = panel.file.getvalue()
    last_state = {a["lane"]: a["state"] for a in jsonl(outputs["lane_alerts"])}
    left_open = sorted(lane for lane, state in last_state.items() if state == "open")
    assert left_open, "the run was drained with no lane alert open"
    gauge_open = sorted(k for k, v in _by("salvage_lane_alert_open", "lane").items() if v >= 1)
    # bounded labels: past the process's top-N lanes (earlier runs in this process count) a lane
    # is reported as "other"
    assert {kpis.bucket("lane_monitor", lane) for lane in left_open} <= set(gauge_open)
    row = _row(text, "lane alerts")
    assert row.startswith(f"lane alerts {len(gauge_open)} open: ")
    for lane in gauge_open[:6]:
        assert lane in row
    # the plain line at close says the same
    assert f"lane alerts open {len(gauge_open)}" in console.file.getvalue()


def test_a_shard_without_a_watermark_yet_is_not_an_event_time():
    """Kafka mode: before any data a case shard has no position; it reports none, and the live
    view takes the slowest shard that has one."""
    from prometheus_client import REGISTRY, CollectorRegistry, Gauge

    from salvage.features.eventtime import BEGIN
    from salvage.flows.stages import CaseStage, StageConfig
    from salvage.live import sample

    stage = CaseStage(97, StageConfig(case_shards=98, cust_shards=1, lane_shards=1, sources=("p",)))

    def reported() -> float | None:
        return REGISTRY.get_sample_value("salvage_watermark_lag_seconds", {"shard": "97"})

    stage.on_batch([Tick("p", BEGIN, BEGIN)])
    assert reported() is None
    t = 1_700_000_000 * 10**6
    stage.on_batch([Tick("p", t, t)])
    assert abs(reported() - (time.time() - t / 1e6)) < 60

    reg = CollectorRegistry()
    lag = Gauge("salvage_watermark_lag_seconds", "t", ["shard"], registry=reg)
    now = 1_800_000_000.0
    assert sample(reg, now=now).event_time is None
    lag.labels("1").set(3600.0)
    lag.labels("2").set(7200.0)  # the slowest shard is where the flow is
    assert sample(reg, now=now).event_time == datetime.fromtimestamp(now - 7200, UTC)
    text = io.StringIO()
    Console(file=text, width=200).print(render(sample(reg, now=now), 1.0))
    assert re.search(r"event time +2027-01-15 06:00 UTC", text.getvalue())
