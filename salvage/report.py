"""A self-contained HTML report of a finished run (inline SVG charts: no JS, no CSS files, no
network), from the run's output directory and the run's Prometheus metrics: the metrics snapshot
``OUT_DIR/metrics.prom`` when the run left one (the demo does, :func:`write_metrics_snapshot`),
else this process's registry.

Sources:

* ``interventions.jsonl``: published triggers by action (bars, "treated"); held-out decisions are
  never published (the control group gets no message), so their bars come from the metrics'
  ``salvage_holdout_total{action}``;
* ``lane_alerts.jsonl``: alert transitions (table, and marks on the heatmap);
* ``dead_letters.jsonl``, ``model_events.jsonl``: counts by kind, promotions / demotions;
* ``events.jsonl`` when present (the demo writes it; or pass ``events=``): refunds vs retained per
  day (refund_issued + chargeback_filed vs exchange_completed + store_credit_issued +
  return_cancelled) and the lane delay heatmap (lanes x days: share of the lane's scanned parcels
  with a delayed / exception / lost / returned-to-sender scan that day); without it the heatmap
  falls back to the run's ``salvage_lane_*`` totals;
* the metrics' ``salvage_cases_by_action_total{action,holdout,retained}``: uplift, retained rate
  treated vs holdout with 95% Wilson intervals.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from html import escape
from pathlib import Path

__all__ = ["collect", "render_html", "wilson", "write_metrics_snapshot", "write_report"]

METRICS_FILE = "metrics.prom"

DELAY_SCANS = frozenset({"delayed", "exception", "lost", "returned_to_sender"})
REFUNDS = frozenset({"refund_issued", "chargeback_filed"})
RETAINED = frozenset({"exchange_completed", "store_credit_issued", "return_cancelled"})
HEATMAP_LANES = 15

ACCENT = "#2563eb"
WARN = "#dc2626"
GREEN = "#16a34a"
GREY = "#9ca3af"


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n (``(0, 1)`` when n is 0)."""
    if not n:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _valid_events(path: Path) -> Iterator[dict]:
    """The log's events that the pipeline would accept (same parser); the rest are skipped."""
    from salvage.connectors.parse import RawRecord, parse

    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            value = raw.rstrip(b"\r\n")
            if value.strip() and hasattr(parse(RawRecord(str(path), 0, i, value)), "event_type"):
                yield json.loads(value)


def _jsonl(path: Path) -> Iterator[dict]:
    """JSON objects of a JSONL file; lines that are not (the pipeline dead-letters those) are
    skipped, so a raw event log with garbage in it still reports."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                yield doc


def _day(ts: str) -> str:
    return ts[:10]


# ------------------------------------------------------------------------------------- data


def collect(out_dir: Path, events: Path | None = None, registry=None) -> dict:
    """Everything the report shows, as plain data (tested on its own)."""
    out_dir = Path(out_dir)
    data: dict = {"out_dir": str(out_dir)}
    registry, data["metrics_source"] = _registry(out_dir, registry)
    samples = _samples(registry)
    triggers: Counter = Counter()
    holdout: Counter = Counter()
    for t in _jsonl(out_dir / "interventions.jsonl"):
        (holdout if t.get("holdout") else triggers)[t["action"]] += 1
    if "salvage_holdout_total" in samples:  # held-out decisions are recorded, never published
        holdout = Counter()
        for x in samples["salvage_holdout_total"]:
            holdout[x.labels["action"]] += int(x.value)
    data["triggers"] = dict(triggers)
    data["holdout_triggers"] = {a: n for a, n in holdout.items() if n}
    data["alerts"] = list(_jsonl(out_dir / "lane_alerts.jsonl"))
    data["dead_letters"] = dict(Counter(d["kind"] for d in _jsonl(out_dir / "dead_letters.jsonl")))
    data["model_events"] = list(_jsonl(out_dir / "model_events.jsonl"))

    log = Path(events) if events is not None else out_dir / "events.jsonl"
    data["events_log"] = str(log) if log.exists() else None
    outcomes: dict[str, Counter] = defaultdict(Counter)
    lane_of: dict[str, str] = {}
    scanned: dict[tuple[str, str], set] = defaultdict(set)
    delayed: dict[tuple[str, str], set] = defaultdict(set)
    for ev in _valid_events(log) if log.exists() else ():
        kind = ev.get("event_type")
        if kind == "order_placed":
            lane_of[ev["order_id"]] = (
                f"{ev.get('courier')}:{ev.get('origin_region')}>{ev.get('destination_region')}"
            )
        elif kind == "carrier_scan":
            lane = lane_of.get(ev.get("order_id", ""))
            if lane:
                key = (lane, _day(ev["occurred_at"]))
                scanned[key].add(ev["order_id"])
                if ev.get("scan") in DELAY_SCANS:
                    delayed[key].add(ev["order_id"])
        elif kind in REFUNDS:
            outcomes[_day(ev["occurred_at"])]["refunded"] += 1
        elif kind in RETAINED:
            outcomes[_day(ev["occurred_at"])]["retained"] += 1
    data["outcomes_by_day"] = {
        d: {"refunded": c["refunded"], "retained": c["retained"]}
        for d, c in sorted(outcomes.items())
    }
    cells = {k: (len(delayed.get(k, ())), len(v)) for k, v in scanned.items()}
    data["lane_days"] = cells

    lanes_total: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for x in samples.get("salvage_lane_shipments_total", ()):
        lanes_total[x.labels["lane"]][1] += x.value
    for x in samples.get("salvage_lane_delayed_shipments_total", ()):
        lanes_total[x.labels["lane"]][0] += x.value
    data["lane_totals"] = {k: tuple(v) for k, v in lanes_total.items() if v[1]}
    data["uplift"] = uplift_rows(samples.get("salvage_cases_by_action_total", ()))
    from salvage import uplift as itt

    data["itt"] = itt.uplift(out_dir) if itt.has_inputs(out_dir) else None
    return data


def _itt_html(itt: dict) -> str:
    """The intention-to-treat table (:mod:`salvage.uplift`)."""

    def ci(b: dict, scale: float, unit: str) -> str:
        if b.get("diff") is None:
            return "-"
        lo, hi = b["ci"]
        return f"{b['diff'] * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]{unit}"

    def rate(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    rows = []
    for name, b in [*itt["actions"].items(), ("overall", itt["overall"])]:
        rows.append(
            [
                name,
                f"{b['n_treated']:,} / {b['n_holdout']:,}",
                rate(b["treated"]["rate"]),
                rate(b["holdout"]["rate"]),
                ci(b, 100.0, " pts"),
                ci(b["retained_margin"], 1.0, "") if b.get("retained_margin") else "-",
                ci(b["refund_leakage"], 1.0, "") if b.get("refund_leakage") else "-",
                ci(b["repeat"], 100.0, " pts") if b.get("repeat") else "-",
                b.get("note", ""),
            ]
        )
    head = [
        "action",
        "n treated / holdout",
        "retained treated",
        "retained holdout",
        "retention diff [95% CI]",
        "retained margin / order",
        "refund leakage / order",
        "repeat-rate diff [95% CI], customers",
        "note",
    ]
    return (
        "<h2>Uplift (intention-to-treat): treated - holdout, 95% intervals</h2>"
        + _table(head, rows)
        + '<p class="muted">Every order assigned at its first randomised decision counts in its '
        "arm, whatever happened later; retained = no refund and no chargeback (open orders count "
        "as retained). Newcombe interval for the retention difference, bootstrap for money. "
        "Repeat rate: customers as units, in the arm of their first assigned order; repeat = "
        "another order within 90 days of that decision (or by the end of the log).</p>"
    )


def uplift_rows(samples) -> list[dict]:
    """Retained rate, treated vs holdout, per action that was triggered, from the samples of
    ``salvage_cases_by_action_total{action,holdout,retained}``: ``treated`` / ``holdout`` are
    ``(retained, cases, wilson low, wilson high)``, ``uplift`` their difference (or None)."""
    cells: dict[tuple[str, str], list[float]] = {}
    for x in samples:
        cell = cells.setdefault((x.labels["action"], x.labels["holdout"]), [0.0, 0.0])
        cell[1] += x.value
        if x.labels["retained"] == "true":
            cell[0] += x.value
    rows = []
    for action in sorted({a for a, _ in cells if a != "none"}):
        k1, n1 = cells.get((action, "false"), [0.0, 0.0])
        k0, n0 = cells.get((action, "true"), [0.0, 0.0])
        rows.append(
            {
                "action": action,
                "treated": (k1, n1, *wilson(k1, n1)),
                "holdout": (k0, n0, *wilson(k0, n0)),
                "uplift": (k1 / n1 - k0 / n0) if n1 and n0 else None,
            }
        )
    return rows


class _SnapshotRegistry:
    """A metrics snapshot file (Prometheus text format) with a registry's ``collect()``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self):
        from prometheus_client.parser import text_string_to_metric_families

        return text_string_to_metric_families(self.path.read_text(encoding="utf-8"))


def _registry(out_dir: Path, registry) -> tuple[object, str]:
    """The metrics to report: ``registry`` if given, else the run's snapshot file, else this
    process's registry; with a description of which."""
    if registry is not None:
        return registry, "the given registry"
    snapshot = out_dir / METRICS_FILE
    if snapshot.is_file():
        return _SnapshotRegistry(snapshot), f"the run's metrics snapshot ({METRICS_FILE})"
    from prometheus_client import REGISTRY

    return REGISTRY, "this process's metrics registry"


def write_metrics_snapshot(out_dir: Path, registry=None) -> Path:
    """Write the registry (default: this process's) to ``OUT_DIR/metrics.prom`` in the Prometheus
    text format, so a later ``salvage report`` shows the run's holdouts and uplift."""
    from prometheus_client import REGISTRY, generate_latest

    path = Path(out_dir) / METRICS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(generate_latest(registry if registry is not None else REGISTRY))
    tmp.replace(path)
    return path


def _samples(registry) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for metric in registry.collect():
        for x in metric.samples:
            out[x.name].append(x)
    return out


# ------------------------------------------------------------------------------------- SVG


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, s: object, size: int = 11, anchor: str = "start", **kw) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in kw.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"'
        f' font-family="sans-serif"{extra}>{escape(str(s))}</text>'
    )


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def bar_chart(title: str, rows: list[tuple[str, float, float]], labels=("treated", "holdout")):
    """Horizontal grouped bars: (label, value a, value b)."""
    if not rows:
        return _svg(700, 60, title, [_text(10, 35, "no triggers in this run", fill=GREY)])
    bar_h, gap, left, width = 14, 10, 200, 700
    height = 40 + len(rows) * (2 * bar_h + gap) + 20
    top = max(max(a, b) for _, a, b in rows)
    scale = (width - left - 80) / _nice_max(top)
    body = [
        f'<rect x="{left}" y="8" width="10" height="10" fill="{ACCENT}"/>',
        _text(left + 14, 17, labels[0]),
        f'<rect x="{left + 90}" y="8" width="10" height="10" fill="{GREY}"/>',
        _text(left + 104, 17, labels[1]),
    ]
    y = 32
    for label, a, b in rows:
        body.append(_text(left - 8, y + bar_h + 4, label, anchor="end"))
        for value, colour in ((a, ACCENT), (b, GREY)):
            w = value * scale
            body.append(
                f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{colour}"><title>{escape(label)}: {value:,.0f}</title></rect>'
            )
            body.append(_text(left + w + 4, y + bar_h - 3, f"{value:,.0f}", size=10))
            y += bar_h
        y += gap
    return _svg(width, height, title, body)


def line_chart(title: str, days: list[str], series: list[tuple[str, str, list[float]]]) -> str:
    """Daily lines: (name, colour, values per day)."""
    width, height, left, right, top, bottom = 1000, 300, 50, 20, 30, 50
    if not days:
        return _svg(width, 60, title, [_text(10, 35, "no event log: outcomes over time n/a")])
    vmax = _nice_max(max((max(v) for _, _, v in series if v), default=1))
    pw, ph = width - left - right, height - top - bottom
    step = pw / max(len(days) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + i * step, top + ph - v / vmax * ph

    body = []
    for k in range(5):
        v = vmax * k / 4
        y = top + ph - v / vmax * ph
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e5e7eb"/>'
        )
        body.append(_text(left - 6, y + 4, f"{v:,.0f}", size=10, anchor="end"))
    every = max(1, len(days) // 12)
    for i, d in enumerate(days):
        if i % every == 0:
            x, _ = xy(i, 0)
            body.append(_text(x, height - bottom + 16, d[5:], size=10, anchor="middle"))
    lx = left
    for name, colour, values in series:
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(values)))
        body.append(
            f'<polyline class="series" points="{pts}" fill="none" stroke="{colour}" '
            f'stroke-width="2"><title>{escape(name)}: {sum(values):,.0f} in total</title>'
            "</polyline>"
        )
        body.append(f'<rect x="{lx}" y="{height - 18}" width="10" height="10" fill="{colour}"/>')
        body.append(_text(lx + 14, height - 9, f"{name} ({sum(values):,.0f})"))
        lx += 220
    return _svg(width, height, title, body)


def _heat(rate: float) -> str:
    # white -> amber -> red over 0 .. 0.6+
    r = min(rate / 0.6, 1.0)
    if r < 0.5:
        t = r / 0.5
        rgb = (255, round(255 - 64 * t), round(255 - 200 * t))
    else:
        t = (r - 0.5) / 0.5
        rgb = (round(255 - 35 * t), round(191 - 153 * t), round(55 - 17 * t))
    return f"#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x}"


def heatmap(title: str, lanes: list[str], days: list[str], cells: dict, marks=()) -> str:
    """Lanes x days delay share; ``cells[(lane, day)] = (delayed, scanned)``; ``marks``: cells
    where a lane alert was open (outlined)."""
    if not lanes or not days:
        return _svg(1000, 60, title, [_text(10, 35, "no lane data", fill=GREY)])
    left, top, cw, ch = 200, 40, max(16, min(40, 780 // len(days))), 18
    width = left + cw * len(days) + 20
    height = top + ch * len(lanes) + 50
    body = []
    every = max(1, len(days) // 15)
    for j, d in enumerate(days):
        if j % every == 0:
            body.append(_text(left + j * cw + cw / 2, top - 8, d[5:], size=9, anchor="middle"))
    mark_set = set(marks)
    for i, lane in enumerate(lanes):
        y = top + i * ch
        body.append(_text(left - 6, y + ch - 5, lane, size=10, anchor="end"))
        for j, d in enumerate(days):
            k, n = cells.get((lane, d), (0, 0))
            rate = k / n if n else 0.0
            fill = _heat(rate) if n else "#f3f4f6"
            stroke = f' stroke="{WARN}" stroke-width="2"' if (lane, d) in mark_set else ""
            body.append(
                f'<rect class="cell" x="{left + j * cw}" y="{y}" width="{cw - 1}" '
                f'height="{ch - 1}" fill="{fill}"{stroke}><title>{escape(lane)} {d}: '
                f"{k}/{n} delayed ({rate:.0%})</title></rect>"
            )
    y = top + ch * len(lanes) + 20
    for i, v in enumerate((0.0, 0.15, 0.3, 0.45, 0.6)):
        body.append(f'<rect x="{left + i * 60}" y="{y}" width="58" height="10" fill="{_heat(v)}"/>')
        body.append(_text(left + i * 60 + 29, y + 24, f"{v:.0%}", size=10, anchor="middle"))
    body.append(
        f'<rect x="{left + 320}" y="{y}" width="10" height="10" fill="white" '
        f'stroke="{WARN}" stroke-width="2"/>'
    )
    body.append(_text(left + 336, y + 9, "lane alert open", size=10))
    return _svg(width, height, title, body)


# ------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111827;
max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.muted{color:#6b7280;font-size:12px} table{border-collapse:collapse;font-size:12px}
td,th{border-bottom:1px solid #e5e7eb;padding:3px 10px;text-align:right}
td:first-child,th:first-child{text-align:left} .kpis{display:flex;gap:16px;flex-wrap:wrap}
.kpi{border:1px solid #e5e7eb;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:20px}
"""


def _table(head: list[str], rows: list[list[object]]) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def _alert_days(alerts: list[dict]) -> list[tuple[str, str]]:
    """(lane, day) cells covered by an open alert (open's span start .. close's window end)."""
    out = []
    open_at: dict[str, str] = {}
    last = max((a["window_end"] for a in alerts), default="")
    for a in sorted(alerts, key=lambda a: (a["window_end"], a["lane"])):
        if a["state"] == "open":
            open_at[a["lane"]] = a["window_end"]
        elif a["lane"] in open_at:
            out += [(a["lane"], d) for d in _days_between(open_at.pop(a["lane"]), a["window_end"])]
    for lane, start in open_at.items():
        out += [(lane, d) for d in _days_between(start, last)]
    return out


def _days_between(a: str, b: str) -> list[str]:
    da = datetime.fromisoformat(a.replace("Z", "+00:00")).date()
    db = datetime.fromisoformat(b.replace("Z", "+00:00")).date()
    return [
        datetime.fromordinal(o).replace(tzinfo=UTC).date().isoformat()
        for o in range(da.toordinal(), db.toordinal() + 1)
    ]


def render_html(data: dict) -> str:
    parts: list[str] = []
    triggers, hold = data["triggers"], data["holdout_triggers"]
    n_trig = sum(triggers.values())
    opened = sum(1 for a in data["alerts"] if a["state"] == "open")
    outcomes = data["outcomes_by_day"]
    refunded = sum(v["refunded"] for v in outcomes.values())
    retained = sum(v["retained"] for v in outcomes.values())
    kpis = [
        ("triggers", f"{n_trig:,}"),
        ("held out (control)", f"{sum(hold.values()):,}"),
        ("lane alerts opened", str(opened)),
        ("dead letters", f"{sum(data['dead_letters'].values()):,}"),
        ("model events", str(len(data["model_events"]))),
    ]
    if data["events_log"]:
        kpis += [("refunds (log)", f"{refunded:,}"), ("retained returns (log)", f"{retained:,}")]
    parts.append(
        '<div class="kpis">'
        + "".join(f'<div class="kpi"><b>{escape(v)}</b>{escape(k)}</div>' for k, v in kpis)
        + "</div>"
    )

    parts.append("<h2>Refunds vs retained over time</h2>")
    days = sorted(outcomes)
    parts.append(
        line_chart(
            "Refunds vs retained per day",
            days,
            [
                ("refunded", WARN, [outcomes[d]["refunded"] for d in days]),
                ("retained", GREEN, [outcomes[d]["retained"] for d in days]),
            ],
        )
    )
    parts.append(
        '<p class="muted">Per day of the event log: refund_issued + chargeback_filed vs '
        "exchange_completed + store_credit_issued + return_cancelled.</p>"
    )

    parts.append("<h2>Triggers by action</h2>")
    actions = sorted(
        set(triggers) | set(hold), key=lambda a: -(triggers.get(a, 0) + hold.get(a, 0))
    )
    parts.append(
        bar_chart(
            "Triggers by action",
            [(a, triggers.get(a, 0), hold.get(a, 0)) for a in actions],
        )
    )
    parts.append(
        '<p class="muted">Treated: triggers published (interventions). Holdout: decisions for the '
        "same actions withheld as the control group (never published), from "
        f"{escape(data['metrics_source'])}.</p>"
    )

    parts.append("<h2>Lane delay heatmap</h2>")
    cells = data["lane_days"]
    if cells:
        lanes_all = {lane for lane, _ in cells}
        alert_lanes = {a["lane"] for a in data["alerts"]}

        def worst(lane: str) -> float:
            return (
                max(k / n for (ln, _), (k, n) in cells.items() if ln == lane and n >= 5)
                if any(ln == lane and n >= 5 for (ln, _), (k, n) in cells.items())
                else 0.0
            )

        ranked = sorted(lanes_all, key=lambda ln: (ln not in alert_lanes, -worst(ln), ln))
        lanes = sorted(ranked[:HEATMAP_LANES])
        hdays = sorted({d for _, d in cells})
        parts.append(
            heatmap(
                "Lane delay share by day",
                lanes,
                hdays,
                cells,
                _alert_days(data["alerts"]),
            )
        )
        parts.append(
            f'<p class="muted">Share of each lane\'s scanned parcels with a delayed / exception / '
            f"lost scan that day; the {len(lanes)} lanes with alerts or the worst days of "
            f"{len(lanes_all)}.</p>"
        )
    else:
        totals = data["lane_totals"]
        lanes = sorted(totals, key=lambda ln: -totals[ln][0] / totals[ln][1])[:HEATMAP_LANES]
        parts.append(
            heatmap(
                "Lane delay share (whole run)",
                lanes,
                ["run total"],
                {(ln, "run total"): (int(totals[ln][0]), int(totals[ln][1])) for ln in lanes},
            )
        )

    if data.get("itt") and data["itt"]["actions"]:
        parts.append(_itt_html(data["itt"]))
    parts.append(
        "<h2>Retained rate of closed cases, treated vs holdout (95% Wilson intervals)</h2>"
        if data.get("itt")
        else "<h2>Uplift: retained rate, treated vs holdout (95% Wilson intervals)</h2>"
    )
    rows = []
    for r in data["uplift"]:

        def fmt(cell) -> str:
            k, n, lo, hi = cell
            return f"{k / n:.1%} [{lo:.1%}, {hi:.1%}] n={n:,.0f}" if n else "-"

        up = f"{r['uplift']:+.1%}" if r["uplift"] is not None else "-"
        rows.append([r["action"], fmt(r["treated"]), fmt(r["holdout"]), up])
    parts.append(
        _table(["action", "treated", "holdout", "uplift"], rows)
        if rows
        else f'<p class="muted">No closed cases in {escape(data["metrics_source"])}.</p>'
    )

    parts.append("<h2>Lane alerts</h2>")
    parts.append(
        _table(
            ["lane", "state", "severity", "window end", "delay rate", "baseline", "volume"],
            [
                [
                    a["lane"],
                    a["state"] + (" (new normal)" if a.get("reason") == "new_normal" else ""),
                    a["severity"],
                    a["window_end"],
                    f"{a['delay_rate']:.0%}",
                    f"{a['baseline_rate']:.0%}",
                    a["volume"],
                ]
                for a in data["alerts"]
            ],
        )
        if data["alerts"]
        else '<p class="muted">No lane alerts.</p>'
    )
    parts.append("<h2>Dead letters and model events</h2>")
    parts.append(
        _table(["dead-letter kind", "count"], sorted(data["dead_letters"].items()))
        if data["dead_letters"]
        else '<p class="muted">No dead letters.</p>'
    )
    if data["model_events"]:
        parts.append("<br>")
        parts.append(
            _table(
                ["at", "model", "change", "reason"],
                [
                    [e.get("at"), e.get("model"), e.get("change"), e.get("reason")]
                    for e in data["model_events"]
                ],
            )
        )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Salvage run report</title>"
        f"<style>{_CSS}</style></head><body><h1>Salvage run report</h1>"
        f'<p class="muted">{escape(data["out_dir"])} &middot; generated {now}</p>'
        + "\n".join(parts)
        + "</body></html>\n"
    )


def write_report(out_dir: Path, html_path: Path, events: Path | None = None, registry=None) -> Path:
    """Write the HTML report of the run in ``out_dir`` to ``html_path``; return the path."""
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(collect(Path(out_dir), events, registry)), encoding="utf-8")
    return html_path
