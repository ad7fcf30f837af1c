"""The HTML run report (inline SVG, self-contained; rendered with headless Chromium when available)
and the Grafana dashboard push (against a recording fake Grafana on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections import Counter
from html import escape
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import Counter as PromCounter

from salvage.dashboards.push import dashboard_files, push_dashboards
from salvage.report import METRICS_FILE, collect, wilson, write_metrics_snapshot, write_report
from tests.flowkit import jsonl, run_file_flow, sim_log

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def _holdouts() -> Counter:
    """salvage_holdout_total by action in this process's registry."""
    return Counter(
        {
            x.labels["action"]: int(x.value)
            for m in REGISTRY.collect()
            for x in m.samples
            if x.name == "salvage_holdout_total"
        }
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    log = sim_log(root, "launch-week-backlog", 1200, 5)
    out = root / "out"
    out.mkdir()
    before = _holdouts()
    outputs = run_file_flow([log], out)
    held = _holdouts()
    held.subtract(before)  # this run's held-out decisions (the registry is process-wide)
    shutil.copy(log, out / "events.jsonl")  # as `salvage demo` leaves it
    return out, outputs, +held


def _uplift_registry(held: Counter | None = None) -> CollectorRegistry:
    """The uplift counters (fixed numbers) and, given ``held``, the run's holdout counters."""
    reg = CollectorRegistry()
    if held:
        h = PromCounter("salvage_holdout", "t", ["action"], registry=reg)
        for action, n in held.items():
            h.labels(action).inc(n)
    c = PromCounter("salvage_cases_by_action", "t", ["action", "holdout", "retained"], registry=reg)
    c.labels("exchange_first_offer", "false", "true").inc(80)
    c.labels("exchange_first_offer", "false", "false").inc(20)
    c.labels("exchange_first_offer", "true", "true").inc(30)
    c.labels("exchange_first_offer", "true", "false").inc(20)
    return reg


def test_wilson_interval():
    lo, hi = wilson(80, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.7112, 0.8666)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28


def test_report_has_every_chart_with_numbers_from_the_outputs(run, tmp_path):
    out, outputs, held = run
    html_path = write_report(out, tmp_path / "r" / "report.html", registry=_uplift_registry(held))
    html = html_path.read_text()
    # self-contained: no scripts, no external resources
    assert "<script" not in html and "<link" not in html and "src=" not in html
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    assert html.count("<svg") >= 3
    for title in (
        "Refunds vs retained per day",
        "Triggers by action",
        "Lane delay share by day",
        "Uplift (intention-to-treat): treated - holdout, 95% intervals",
        "Retained rate of closed cases, treated vs holdout",
    ):
        assert title in html
    # the ITT table is salvage.uplift's, from the run's assignments and outcomes
    from salvage.uplift import uplift

    itt = uplift(out)["overall"]
    assert itt["n_holdout"] > 0
    assert f"<td>{itt['n_treated']:,} / {itt['n_holdout']:,}</td>" in html
    assert (
        f"{itt['diff'] * 100:+.1f} [{itt['ci'][0] * 100:+.1f}, {itt['ci'][1] * 100:+.1f}]" in html
    )
    rep = itt["repeat"]  # the customers' repeat rate, from the run's orders.jsonl
    assert rep["n_treated"] + rep["n_holdout"] > 0
    assert (
        f"{rep['diff'] * 100:+.1f} [{rep['ci'][0] * 100:+.1f}, {rep['ci'][1] * 100:+.1f}] pts"
        in html
    )

    # triggers by action: one bar per action and arm, with the counts of interventions.jsonl
    triggers = jsonl(outputs["interventions"])
    assert triggers
    treated = Counter(t["action"] for t in triggers if not t["holdout"])
    for action, n in treated.items():
        assert f"<title>{action}: {n:,}</title>" in html
    assert f"<b>{len(triggers):,}</b>triggers" in html
    # holdout bars: the run's held-out decisions, never published, from the metrics
    assert not any(t["holdout"] for t in triggers)
    assert sum(held.values()) > 0
    bars = re.findall(r'fill="#9ca3af"><title>([a-z_]+): ([\d,]+)</title>', html)
    assert {a: int(n.replace(",", "")) for a, n in bars if n != "0"} == dict(held)
    assert f"<b>{sum(held.values()):,}</b>held out (control)" in html

    # refunds vs retained: totals from the event log's outcome events
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    kinds = Counter(e["event_type"] for e in events)
    refunded = kinds["refund_issued"] + kinds["chargeback_filed"]
    retained = (
        kinds["exchange_completed"] + kinds["store_credit_issued"] + kinds["return_cancelled"]
    )
    assert refunded and retained
    assert f"refunded: {refunded:,} in total" in html
    assert f"retained: {retained:,} in total" in html

    # heatmap: lane x day cells, alert lanes outlined
    data = collect(out, registry=_uplift_registry())
    assert html.count('class="cell"') >= 5 * len({d for _, d in data["lane_days"]})
    alerts = jsonl(outputs["lane_alerts"])
    for a in alerts:
        assert escape(a["lane"]) in html
    if any(a["state"] == "open" for a in alerts):
        assert 'stroke="#dc2626" stroke-width="2"><title>' in html

    # uplift with 95% Wilson intervals, from the registry
    assert "80.0% [71.1%, 86.7%] n=100" in html
    assert "60.0% [46.2%, 72.4%] n=50" in html
    assert "+20.0%" in html


def test_report_reads_the_runs_metrics_snapshot_when_there_is_one(run, tmp_path):
    """`salvage report` in a later process: holdouts and uplift come from OUT_DIR/metrics.prom
    (the demo writes it), not from the (empty, or unrelated) registry of the reporting process."""
    out, _, held = run
    snap = tmp_path / "snap"
    snap.mkdir()
    for name in ("interventions", "lane_alerts", "dead_letters", "model_events"):
        shutil.copy(out / f"{name}.jsonl", snap)
    path = write_metrics_snapshot(snap, registry=_uplift_registry(held))
    assert path == snap / METRICS_FILE and "salvage_holdout_total{" in path.read_text()
    data = collect(snap)
    assert METRICS_FILE in data["metrics_source"]
    assert data["holdout_triggers"] == dict(held)
    html = write_report(snap, tmp_path / "snap.html").read_text()
    assert "80.0% [71.1%, 86.7%] n=100" in html  # the snapshot's uplift, not this process's
    for action, n in held.items():
        assert f'fill="#9ca3af"><title>{action}: {n:,}</title>' in html


def test_report_uses_the_process_registry_and_runs_without_an_event_log(run, tmp_path):
    out, _, _ = run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("interventions", "lane_alerts", "dead_letters", "model_events"):
        shutil.copy(out / f"{name}.jsonl", bare)
    html = write_report(bare, tmp_path / "bare.html").read_text()
    assert "no event log" in html
    assert "Lane delay share (whole run)" in html  # from salvage_lane_* in the registry
    delayed = re.findall(r"run total: (\d+)/(\d+) delayed", html)
    assert delayed and any(int(k) > 0 for k, _ in delayed)  # delayed shipments are counted
    assert all(int(k) <= int(n) for k, n in delayed)
    assert "Triggers by action" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(run, tmp_path):
    out, _, _ = run
    html = write_report(out, tmp_path / "report.html", registry=_uplift_registry())
    png = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chrome'}",
            f"--screenshot={png}",
            "--window-size=1200,1600",
            html.resolve().as_uri(),
        ],
        check=True,
        timeout=90,
        capture_output=True,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1200, 1600)
        colours = Counter({rgb: n for n, rgb in img.convert("RGB").getcolors(1 << 24)})
    # the charts are painted, not just the page: the series colours cover real areas
    for name, hex_ in (("refunds", "dc2626"), ("retained", "16a34a"), ("triggers", "2563eb")):
        rgb = tuple(int(hex_[i : i + 2], 16) for i in (0, 2, 4))
        assert colours[rgb] > 500, f"{name} series ({hex_}) barely visible: {colours[rgb]} px"
    heat = sum(n for (r, g, b), n in colours.items() if r == 255 and 150 < g < 240 and b < 220)
    assert heat > 2000, "the lane delay heatmap has no warm cells"
    white = colours[(255, 255, 255)]
    assert white < 0.95 * sum(colours.values()), "a blank page"


# ------------------------------------------------------------------------ dashboards push


class _FakeGrafana(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str | None, dict | None]] = []
    folders: list[dict] = []

    def _reply(self, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict | None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.calls.append((self.command, self.path, self.headers.get("Authorization"), body))
        return body

    def do_GET(self) -> None:
        self._record()
        self._reply(self.folders if self.path.startswith("/api/folders") else {})

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/api/folders":
            folder = {"id": 1, "uid": body.get("uid", "x"), "title": body["title"]}
            self.folders.append(folder)
            self._reply(folder)
        elif self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            self._reply({"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1})
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_grafana():
    _FakeGrafana.calls = []
    _FakeGrafana.folders = []
    server = HTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", _FakeGrafana
    finally:
        server.shutdown()
        server.server_close()


def test_push_dashboards_posts_every_committed_dashboard_into_the_folder(
    fake_grafana, monkeypatch, capsys
):
    pytest.importorskip("grafana_client")
    url, fake = fake_grafana
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_secret_token")
    pushed = push_dashboards(url, None, folder="Salvage")
    files = dashboard_files()
    assert len(files) == 4
    uids = sorted(json.loads(p.read_text())["uid"] for p in files)
    assert sorted(pushed) == sorted(f"/d/{u}/x" for u in uids)
    posts = [c for c in fake.calls if c[0] == "POST" and c[1] == "/api/dashboards/db"]
    assert sorted(c[3]["dashboard"]["uid"] for c in posts) == uids
    assert all(c[3]["folderUid"] == "salvage" and c[3]["overwrite"] for c in posts)
    assert all(c[2] == "Bearer glsa_secret_token" for c in fake.calls)
    created = [c for c in fake.calls if c[:2] == ("POST", "/api/folders")]
    assert [c[3]["title"] for c in created] == ["Salvage"]
    # a second push reuses the folder
    push_dashboards(url, "other-token")
    assert len([c for c in fake.calls if c[:2] == ("POST", "/api/folders")]) == 1
    assert fake.calls[-1][2] == "Bearer other-token"
    captured = capsys.readouterr()
    assert "secret" not in captured.out + captured.err


def test_report_tolerates_garbage_lines_in_the_event_log(tmp_path):
    from salvage.report import _jsonl

    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"a": 1}\nnot json\n\xff\xfe\n[1, 2]\n\n{"b": 2}\n')
    assert list(_jsonl(log)) == [{"a": 1}, {"b": 2}]


def test_report_uses_only_events_the_pipeline_would_accept(tmp_path):
    from salvage.report import _valid_events

    good = (
        '{"event_id": "e1", "event_type": "carrier_scan", "order_id": "O1", '
        '"schema_version": 1, "occurred_at": "2026-03-02T10:00:00Z", "scan": "delayed", '
        '"courier": "x"}'
    )
    log = tmp_path / "events.jsonl"
    log.write_text(good + '\n{"event_type": "carrier_scan", "order_id": "O1"}\nnot json\n')
    assert [e["event_id"] for e in _valid_events(log)] == ["e1"]
