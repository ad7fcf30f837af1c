"""A small typed builder: dataclasses -> Grafana dashboard JSON model (schemaVersion 39).

Only what Salvage's dashboards use: rows of panels (timeseries, stat, bar gauge, pie chart, heatmap,
state timeline, table), each with Prometheus targets, and template variables (the Prometheus
datasource by uid, and ``label_values`` queries with *All* = ``.*``). Panels are laid out left to
right on Grafana's 24-column grid; the output is deterministic (same code, same bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

SCHEMA_VERSION = 39
DATASOURCE_UID = "salvage-prometheus"  # the uid the provisioned datasource gets
DS_VAR = "datasource"
DS_REF = {"type": "prometheus", "uid": "${" + DS_VAR + "}"}
GRID_WIDTH = 24

PanelKind = Literal[
    "timeseries", "stat", "bargauge", "piechart", "heatmap", "state-timeline", "table"
]


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel. ``instant``: evaluate at the range end only."""

    expr: str
    legend: str = ""
    instant: bool = False
    optional: bool = False  # may legitimately be empty (e.g. failure counters); still must parse


@dataclass(frozen=True)
class Threshold:
    value: float | None  # None: the base step
    color: str


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    kind: PanelKind = "timeseries"
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    decimals: int | None = None
    stacked: bool = False
    min: float | None = None
    max: float | None = None
    thresholds: tuple[Threshold, ...] = ()
    value_text: tuple[tuple[str, str, str], ...] = ()  # (value, text, color) mappings

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError(f"panel {self.title!r} has no query")
        if not 1 <= self.width <= GRID_WIDTH:
            raise ValueError(f"panel {self.title!r}: width must be 1..{GRID_WIDTH}")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A ``label_values(metric, label)`` query variable, multi-select with All (= ``.*``)."""

    name: str
    label: str
    metric: str

    @property
    def query(self) -> str:
        return f"label_values({self.metric}, {self.name})"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("salvage",)
    refresh: str = "30s"
    time_from: str = "now-6h"

    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r.panels]

    def targets(self) -> list[tuple[Panel, Target]]:
        """(panel, target) for every target of every panel."""
        return [(p, t) for p in self.panels() for t in p.targets]


# ------------------------------------------------------------------------------ rendering


def _field_config(p: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.decimals is not None:
        defaults["decimals"] = p.decimals
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    steps = p.thresholds or (Threshold(None, "green"),)
    defaults["thresholds"] = {
        "mode": "absolute",
        "steps": [{"color": s.color, "value": s.value} for s in steps],
    }
    if p.value_text:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {v: {"text": text, "color": color, "index": i}},
            }
            for i, (v, text, color) in enumerate(p.value_text)
        ]
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if p.stacked else 0,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if p.stacked else "none", "group": "A"},
        }
    return {"defaults": defaults, "overrides": []}


def _options(p: Panel) -> dict[str, Any]:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True}
    if p.kind == "timeseries":
        return {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
    if p.kind == "stat":
        return {
            "reduceOptions": reduce,
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    if p.kind == "bargauge":
        return {
            "reduceOptions": reduce,
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
        }
    if p.kind == "piechart":
        return {
            "reduceOptions": reduce,
            "pieType": "donut",
            "legend": {**legend, "placement": "right", "values": ["percent"]},
        }
    if p.kind == "heatmap":
        return {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "yAxis": {"axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "legend": {"show": True},
            "tooltip": {"show": True, "yHistogram": False},
        }
    if p.kind == "state-timeline":
        return {
            "mergeValues": True,
            "showValue": "never",
            "rowHeight": 0.9,
            "legend": legend,
        }
    return {"showHeader": True, "cellHeight": "sm"}  # table


def _targets(p: Panel) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(p.targets):
        doc: dict[str, Any] = {
            "datasource": DS_REF,
            "refId": chr(ord("A") + i),
            "expr": t.expr,
            "legendFormat": t.legend or "__auto",
            "range": not t.instant,
            "instant": t.instant,
            "editorMode": "code",
        }
        if p.kind == "table":
            doc["format"] = "table"
        out.append(doc)
    return out


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS_REF,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": _field_config(p),
        "options": _options(p),
        "targets": _targets(p),
    }


def _variable(v: Variable) -> dict[str, Any]:
    return {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": DS_REF,
        "definition": v.query,
        "query": {"query": v.query, "refId": f"{v.name}-values"},
        "refresh": 2,  # on time range change
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
        "skipUrlSync": False,
    }


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": DS_VAR,
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID},
        "options": [],
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def render(d: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of ``d`` (no ``id``: Grafana assigns it on import)."""
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        x = 0
        line_height = 0
        for p in row.panels:
            if x + p.width > GRID_WIDTH:
                y += line_height
                x, line_height = 0, 0
            panels.append(_panel(p, pid, x, y))
            pid += 1
            x += p.width
            line_height = max(line_height, p.height)
        y += line_height
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "editable": True,
        "graphTooltip": 1,
        "refresh": d.refresh,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "timezone": "utc",
        "time": {"from": d.time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "Salvage",
                "tags": ["salvage"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [_datasource_variable(), *(_variable(v) for v in d.variables)]},
        "panels": panels,
    }


# ------------------------------------------------------------------------------ for tests

_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` as Grafana would (unknown names raise KeyError)."""
    return _VAR.sub(lambda m: variables[m.group(1)], expr)
