"""A live terminal view of a running flow: the headline KPIs and open lane alerts, sampled from the
``prometheus_client`` registry by a background thread (what ``salvage demo`` shows while the
dataflow runs in the foreground).

The flow is never touched: the thread reads the registry (only the metric families below, via
``restricted_registry``) every ``interval`` seconds and redraws a rich ``Live`` panel; when the
console is not a terminal (CI, pipes, tests) it prints one plain line every ``plain_interval``
seconds instead, and a last one when the view closes. Counters are shown as the increase since the
view opened (this run), gauges as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from salvage.sinks.kpis import RETAINED

log = logging.getLogger(__name__)


# sample name -> (Snapshot field, label it is keyed by)
COUNTERS = {
    "salvage_events_total": ("events", "stream"),
    "salvage_dead_letters_total": ("dead_letters", "kind"),
    "salvage_triggers_total": ("triggers", "action"),
    "salvage_holdout_total": ("holdout", "action"),
    "salvage_suppressed_total": ("suppressed", "guardrail"),
    "salvage_cases_closed_total": ("closed", "outcome"),
    "salvage_refund_leakage_total": ("leakage", "currency"),
    "salvage_closed_order_value_total": ("retained", "currency"),  # retained outcomes only
}
GAUGES = (
    "salvage_lane_alert_open",
    "salvage_open_cases",
    "salvage_watermark_lag_seconds",
    "salvage_kafka_consumer_lag",
    "salvage_review_queue_depth",
    "salvage_review_queue_oldest_age_seconds",
)


@dataclass
class Snapshot:
    """The view's numbers at one instant (counters: totals; ``minus`` makes them a run's)."""

    at: float = 0.0  # wall-clock seconds
    events: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    triggers: Counter[str] = field(default_factory=Counter)
    holdout: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    leakage: Counter[str] = field(default_factory=Counter)  # by currency
    retained: Counter[str] = field(default_factory=Counter)  # by currency
    open_alerts: list[str] = field(default_factory=list)  # lanes, sorted
    open_cases: float = 0.0
    watermark_lag: float | None = None  # the slowest case shard (wall clock - watermark)
    consumer_lag: float | None = None  # all input partitions
    reviews: dict[str, float] = field(default_factory=dict)  # state -> unresolved reviews
    review_age: float | None = None

    def minus(self, base: Snapshot) -> Snapshot:
        """Counters as the increase since ``base``; gauges unchanged."""
        out = Snapshot(**{f.name: getattr(self, f.name) for f in fields(self)})
        for name, _ in COUNTERS.values():
            now, then = getattr(self, name), getattr(base, name)
            setattr(out, name, Counter({k: v - then.get(k, 0) for k, v in now.items()}))
        return out

    @property
    def event_time(self) -> datetime | None:
        """Where the flow is in event time: the slowest case shard's watermark."""
        if self.watermark_lag is None:
            return None
        return datetime.fromtimestamp(self.at - self.watermark_lag, UTC)


def sample(registry=None, now: float | None = None) -> Snapshot:
    """Read the view's metric families from ``registry`` (default: the process registry)."""
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    source = (
        registry.restricted_registry([*COUNTERS, *GAUGES])
        if hasattr(registry, "restricted_registry")
        else registry
    )
    s = Snapshot(at=time.time() if now is None else now)
    lags: list[float] = []
    consumer: list[float] = []
    for metric in source.collect():
        for x in metric.samples:
            name, labels, v = x.name, x.labels, x.value
            if name in COUNTERS:
                attr, label = COUNTERS[name]
                if attr == "retained" and labels.get("outcome") not in RETAINED:
                    continue
                getattr(s, attr)[labels.get(label, "")] += v
            elif name == "salvage_lane_alert_open":
                if v >= 1:
                    s.open_alerts.append(labels["lane"])
            elif name == "salvage_open_cases":
                s.open_cases += v
            elif name == "salvage_watermark_lag_seconds":
                lags.append(v)
            elif name == "salvage_kafka_consumer_lag":
                consumer.append(v)
            elif name == "salvage_review_queue_depth":
                s.reviews[labels["state"]] = v
            elif name == "salvage_review_queue_oldest_age_seconds":
                s.review_age = v
    s.open_alerts.sort()
    s.watermark_lag = max(lags) if lags else None
    s.consumer_lag = sum(consumer) if consumer else None
    return s


# ---------------------------------------------------------------------------------- rendering


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _breakdown(c: Counter[str], limit: int = 6) -> str:
    items = [(k, v) for k, v in c.most_common() if v]
    shown = " · ".join(f"{k} {_n(v)}" for k, v in items[:limit])
    return shown + (f" · +{len(items) - limit} more" if len(items) > limit else "")


def _money(c: Counter[str]) -> str:
    return " · ".join(f"{cur} {_n(v)}" for cur, v in sorted(c.items()) if v) or "0"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def rows(s: Snapshot, rate: float | None = None) -> list[tuple[str, str]]:
    """(label, text) lines of the view."""
    total = sum(s.events.values())
    out = [
        (
            "events",
            f"{_n(total)}"
            + (f" ({_n(rate)}/s)" if rate is not None else "")
            + (f" · {_breakdown(Counter(dict(sorted(s.events.items()))), 8)}" if total else ""),
        )
    ]
    et = s.event_time
    out.append(("event time", et.strftime("%Y-%m-%d %H:%M UTC") if et else "-"))
    out.append(("open cases", _n(s.open_cases)))
    trig = sum(s.triggers.values())
    out.append(("triggers", _n(trig) + (f" · {_breakdown(s.triggers)}" if trig else "")))
    held = sum(s.holdout.values())
    out.append(("held out", _n(held) + (f" · {_breakdown(s.holdout)}" if held else "")))
    out.append(("suppressed", _n(sum(s.suppressed.values()))))
    closed = sum(s.closed.values())
    out.append(("closed cases", _n(closed) + (f" · {_breakdown(s.closed, 4)}" if closed else "")))
    out.append(("value of orders kept", _money(s.retained)))
    out.append(("refund leakage", _money(s.leakage)))
    alerts = s.open_alerts
    out.append(
        (
            "lane alerts",
            f"{len(alerts)} open"
            + (": " + ", ".join(alerts[:6]) if alerts else "")
            + (f" (+{len(alerts) - 6} more)" if len(alerts) > 6 else ""),
        )
    )
    dl = sum(s.dead_letters.values())
    out.append(("dead letters", _n(dl) + (f" · {_breakdown(s.dead_letters)}" if dl else "")))
    if s.consumer_lag is not None:
        out.append(("kafka lag", f"{_n(s.consumer_lag)} messages"))
    if s.reviews:
        out.append(
            (
                "review queue",
                f"{_n(s.reviews.get('unclaimed', 0))} unclaimed · "
                f"{_n(s.reviews.get('claimed', 0))} claimed"
                + (f" · oldest {_age(s.review_age)}" if s.review_age else ""),
            )
        )
    return out


def render(s: Snapshot, elapsed: float, rate: float | None = None, title: str = "Salvage · live"):
    """The rich panel."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    for label, text in rows(s, rate):
        style = "red" if label == "lane alerts" and s.open_alerts else None
        grid.add_row(label, text, style=style)
    return Panel(Group(grid), title=title, subtitle=f"{elapsed:.1f} s", expand=False)


def plain_line(s: Snapshot, elapsed: float, rate: float | None = None) -> str:
    """One line for logs (no terminal): the headline numbers only."""
    et = s.event_time
    parts = [
        f"live {elapsed:.0f}s",
        f"events {_n(sum(s.events.values()))}" + (f" ({_n(rate)}/s)" if rate is not None else ""),
        f"event time {et:%Y-%m-%d %H:%M}" if et else "event time -",
        f"open cases {_n(s.open_cases)}",
        f"triggers {_n(sum(s.triggers.values()))} (held out {_n(sum(s.holdout.values()))})",
        f"value of orders kept {_money(s.retained)}",
        f"leakage {_money(s.leakage)}",
        f"lane alerts open {len(s.open_alerts)}",
        f"dead letters {_n(sum(s.dead_letters.values()))}",
    ]
    if s.consumer_lag is not None:
        parts.append(f"kafka lag {_n(s.consumer_lag)}")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------- the view


class LiveView:
    """``with LiveView(console): run_flow(...)``: redraw while the block runs (see module doc)."""

    def __init__(
        self,
        console: Console,
        registry=None,
        interval: float = 0.5,
        plain_interval: float = 5.0,
        title: str = "Salvage · live",
    ) -> None:
        self.console = console
        self.registry = registry
        self.interval = interval
        self.plain_interval = plain_interval
        self.title = title
        self.frames = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = Snapshot()
        self._started = 0.0
        self._prev: tuple[float, float] | None = None  # (monotonic, events total)
        self._failed = False

    def __enter__(self) -> LiveView:
        self._base = sample(self.registry)
        self._started = time.monotonic()
        self._prev = (self._started, 0.0)
        self._thread = threading.Thread(target=self._loop, name="salvage-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def snapshot(self) -> tuple[Snapshot, float, float | None]:
        """(this run's numbers, seconds since the view opened, events per second lately)."""
        s = sample(self.registry).minus(self._base)
        now = time.monotonic()
        total = sum(s.events.values())
        rate = None
        if self._prev is not None and now > self._prev[0]:
            rate = max(0.0, (total - self._prev[1]) / (now - self._prev[0]))
        self._prev = (now, total)
        return s, now - self._started, rate

    def _frame(self):
        s, elapsed, rate = self.snapshot()
        self.frames += 1
        return render(s, elapsed, rate, self.title)

    def _line(self) -> str:
        s, elapsed, rate = self.snapshot()
        self.frames += 1
        return plain_line(s, elapsed, rate)

    def _loop(self) -> None:
        try:
            if self.console.is_terminal:
                with Live(
                    self._frame(),
                    console=self.console,
                    auto_refresh=False,
                    redirect_stdout=False,
                    redirect_stderr=False,
                ) as live:
                    while not self._stop.wait(self.interval):
                        live.update(self._frame(), refresh=True)
                    live.update(self._frame(), refresh=True)  # the final numbers stay on screen
            else:
                while not self._stop.wait(self.plain_interval):
                    self.console.print(self._line(), markup=False, highlight=False, soft_wrap=True)
                self.console.print(self._line(), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # the view must never take the run down
            if not self._failed:
                self._failed = True
                log.exception("live view stopped")
