"""sinks/exposition.py: the cached renderer writes what prometheus_client's generate_latest
writes, byte for byte, across scrapes while series change; and its server answers as
prometheus_client's does (a real socket)."""

from __future__ import annotations

import gzip
import math
import urllib.error
import urllib.request
from collections.abc import Iterator

import prometheus_client
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from salvage.connectors.broker import free_port
from salvage.sinks.exposition import Exposition, serve

LABEL_VALUES = st.text(
    alphabet=st.sampled_from(
        ["a", "Z", "0", " ", '"', "\\", "\n", "é", "}", "=", ",", "\u2603", "\u2028", "\x0b"]
    ),
    max_size=6,
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([0.0, -0.0, 1.0, 1e-7, 123456789.0, 1e22, float("nan")]),
)
KINDS = ("counter", "gauge", "histogram", "histogram_neg", "summary", "info", "enum")


def _metric(reg: CollectorRegistry, i: int, kind: str, labels: tuple[str, ...]):
    name = f"m{i}_{kind}"
    doc = 'doc with "quotes", a \\ and a\nnewline'
    if kind == "counter":
        return Counter(name, doc, labels, registry=reg)
    if kind == "gauge":
        return Gauge(name, doc, labels, registry=reg)
    if kind == "histogram":
        return Histogram(name, doc, labels, registry=reg, buckets=(0.5, 1, 1e6))
    if kind == "histogram_neg":  # a negative first bound: no _sum sample
        return Histogram(name, doc, labels, registry=reg, buckets=(-1, 0, 2.5))
    if kind == "summary":
        return Summary(name, doc, labels, registry=reg)
    if kind == "info":
        return Info(name, doc, labels, registry=reg)
    return Enum(name, doc, labels, registry=reg, states=["up", "down"])


def _touch(metric, kind: str, value: float | int) -> None:
    if kind == "counter":
        metric.inc(abs(value) if not math.isnan(value) else 1)
    elif kind == "gauge":
        metric.set(value)
    elif kind in ("histogram", "histogram_neg", "summary"):
        metric.observe(value if not math.isnan(value) else 0.25)
    elif kind == "info":
        metric.info({"version": str(value)[:8]})
    else:
        metric.state("down" if value > 0 else "up")


# a step: (metric index, label values (cut to its label count), value, remove the series)
STEPS = st.lists(
    st.tuples(st.integers(0, 5), st.tuples(LABEL_VALUES, LABEL_VALUES), VALUES, st.booleans()),
    max_size=25,
)


@pytest.fixture(params=[False, True], ids=["no-created", "created"])
def created(request) -> Iterator[bool]:
    """Both settings of prometheus_client's _created series (Salvage turns them off)."""
    if request.param:
        prometheus_client.enable_created_metrics()
    else:
        prometheus_client.disable_created_metrics()
    try:
        yield request.param
    finally:
        prometheus_client.disable_created_metrics()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2)), min_size=1, max_size=6),
    scrapes=st.lists(STEPS, min_size=1, max_size=4),
)
def test_renders_what_generate_latest_renders_across_scrapes(created, shape, scrapes) -> None:
    reg = CollectorRegistry()
    metrics = [
        (_metric(reg, i, kind, ("l1", "l2")[:n]), kind, n) for i, (kind, n) in enumerate(shape)
    ]
    exposition = Exposition(reg)
    for steps in scrapes:  # each scrape after some changes: new, changed and removed series
        for idx, values, value, remove in steps:
            metric, kind, n = metrics[idx % len(metrics)]
            if n == 0:
                _touch(metric, kind, value)
                continue
            labels = values[:n]
            if remove:
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass
            else:
                _touch(metric.labels(*labels), kind, value)
        assert exposition.render() == generate_latest(reg)


def test_custom_collectors_and_target_info_are_rendered_as_prometheus_client_does() -> None:
    class Custom:
        def collect(self):
            c = CounterMetricFamily("custom_things", "Things", labels=["k"])
            c.add_metric(["a"], 3.0)
            g = GaugeMetricFamily("custom_level", "Level")
            g.add_metric([], 1.5, timestamp=1_700_000_000.25)
            return [c, g]

    reg = CollectorRegistry(target_info={"service": "salvage"})
    reg.register(Custom())
    Counter("after_custom", "A counter after it", ["x"], registry=reg).labels("1").inc()
    out = Exposition(reg).render()
    assert out == generate_latest(reg)
    assert b"custom_level 1.5 1700000000250\n" in out  # the timestamp, through the fallback


def test_removed_series_leave_no_lines_and_their_prefixes_are_dropped() -> None:
    reg = CollectorRegistry()
    c = Counter("churn", "Series that come and go", ["id"], registry=reg)
    exposition = Exposition(reg)
    for i in range(200):
        c.labels(str(i)).inc()
    exposition.render()
    for i in range(200):
        c.remove(str(i))
    c.labels("kept").inc(2)
    out = exposition.render()
    assert out == generate_latest(reg)
    assert b'churn_total{id="kept"} 2.0\n' in out and b'id="0"' not in out
    assert sum(len(p) for p in exposition._prefixes.values()) < 10  # not the 200 gone


def test_salvage_registry_renders_as_generate_latest() -> None:
    """The process's own registry, with every Salvage metric, some series in each kind. The
    process and GC collectors' values move between two renders, so those lines are left out."""
    from salvage.sinks import metrics

    metrics.EVENTS.labels("orders").inc(3)
    metrics.GRADING_DELAY.observe(7200.0)
    metrics.REVIEW_QUEUE_DEPTH.labels("unclaimed").set(4)

    def steady(text: bytes) -> list[bytes]:  # the lines of all but those two families
        return [
            line
            for line in text.splitlines()
            if not (line.split(b" ", 3)[2] if line.startswith(b"#") else line).startswith(
                (b"process_", b"python_gc_")
            )
        ]

    assert steady(Exposition(REGISTRY).render()) == steady(generate_latest(REGISTRY))


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def test_server_answers_as_prometheus_client_does() -> None:
    reg = CollectorRegistry()
    c = Counter("served", "Served", ["k"], registry=reg)
    c.labels("a").inc(5)
    Gauge("other", "Other", registry=reg).set(2)
    port = free_port()
    httpd, thread = serve(port, "127.0.0.1", reg)
    base = f"http://127.0.0.1:{port}"
    try:
        # Prometheus asks for OpenMetrics first: it gets the text format, which it also takes
        status, headers, body = _get(
            f"{base}/metrics", Accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert body == generate_latest(reg)
        c.labels("b").inc()  # a new series shows at the next scrape
        status, headers, body = _get(f"{base}/metrics", **{"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == generate_latest(reg)
        assert b'served_total{k="b"} 1.0' in gzip.decompress(body)
        # ?name[]= filters, as prometheus_client does
        _, _, body = _get(f"{base}/metrics?name[]=other")
        assert body.count(b"# HELP") == 1 and b"other 2.0" in body
        _, _, body = _get(f"{base}/favicon.ico")
        assert body == b""
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", method="POST"))
        assert err.value.code == 405
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_scrape_of_known_series_formats_nothing_through_prometheus_client(monkeypatch) -> None:
    """The point of the module: once a series' line is known, a scrape only appends values
    (prometheus_client's formatting runs for new series and families, not for every scrape)."""
    import salvage.sinks.exposition as exposition_module

    reg = CollectorRegistry()
    c = Counter("known", "Known", ["k"], registry=reg)
    h = Histogram("spread", "Spread", ["k"], registry=reg, buckets=(1, 2))
    for k in "abc":
        c.labels(k).inc()
        h.labels(k).observe(1.5)
    exposition = Exposition(reg)
    exposition.render()
    calls: list[int] = []
    real = exposition_module._generic
    monkeypatch.setattr(exposition_module, "_generic", lambda fams: calls.append(1) or real(fams))
    c.labels("a").inc(41)
    h.labels("b").observe(0.5)
    assert exposition.render() == generate_latest(reg)
    assert calls == []
    c.labels("new").inc()
    assert exposition.render() == generate_latest(reg)
    assert calls == [1]  # the new series' line, once


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 0, 1, 1e-7, 1234567.0, 12345678.9, 1e22, -3.5, math.inf, -math.inf, math.nan],
)
def test_values_are_written_as_go_writes_them(value: float) -> None:
    """floatToGoString's cases (signed zero, exponents sooner than Python, +Inf, NaN), twice:
    the second time from the renderer's cache."""
    reg = CollectorRegistry()
    g = Gauge("level", "Level", ["k"], registry=reg)
    g.labels("x").set(value)
    g.labels("y").set(value)
    exposition = Exposition(reg)
    for _ in range(2):
        assert exposition.render() == generate_latest(reg)


def test_the_fast_reads_hold_for_the_installed_prometheus_client() -> None:
    """Counters and histograms are read from their children's values, not their samples, when
    an import-time check finds both agree (else every metric takes the samples' path). On the
    pinned version they agree, so the tests above test the fast reads."""
    from salvage.sinks import exposition as exposition_module

    assert exposition_module._FAST_READS


def test_a_series_added_during_a_render_shows_at_the_next_one() -> None:
    """The flow adds series while a scrape renders: the render reads a copy of the children
    (as prometheus_client does), so it neither fails nor half-includes the new one."""
    reg = CollectorRegistry()
    c = Counter("growing", "Growing", ["k"], registry=reg)
    for k in "abc":
        c.labels(k).inc()
    exposition = Exposition(reg)
    real = exposition._text
    added: list[str] = []

    def text_then_add(value: float) -> str:  # runs inside the render, between two series
        if not added:
            added.append("late")
            c.labels("late").inc(7)
        return real(value)

    exposition._text = text_then_add  # type: ignore[method-assign]
    first = exposition.render()
    assert added and b'k="late"' not in first and first.count(b"growing_total{") == 3
    assert exposition.render() == generate_latest(reg)
    assert b'growing_total{k="late"} 7.0' in exposition.render()


def test_renders_run_one_at_a_time() -> None:
    """Two scrapes at once (two Prometheus replicas): the second waits for the first instead of
    taking the GIL from the flow twice over; both get the whole exposition."""
    import threading

    reg = CollectorRegistry()
    Counter("once", "Once", ["k"], registry=reg).labels("a").inc()
    exposition = Exposition(reg)
    inner = exposition._render
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def held() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            assert release.wait(10)
        return inner()

    exposition._render = held  # type: ignore[method-assign]
    outs: list[bytes] = []
    first = threading.Thread(target=lambda: outs.append(exposition.render()))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=lambda: outs.append(exposition.render()))
    second.start()
    second.join(0.3)
    assert second.is_alive() and calls == 1  # waiting for the first render
    release.set()
    first.join(10)
    second.join(10)
    assert outs == [generate_latest(reg)] * 2


def test_an_unregistered_metric_is_forgotten() -> None:
    """Also beside collectors the renderer does not cache (as the process's registry has)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    kept = Counter("kept", "Kept", ["k"], registry=reg)
    gone = Counter("gone", "Gone", ["k"], registry=reg)
    kept.labels("a").inc()
    gone.labels("a").inc()
    exposition = Exposition(reg)
    exposition.render()
    assert gone in exposition._heads and gone in exposition._rows
    reg.unregister(gone)
    out = exposition.render()
    assert b"gone" not in out and b'kept_total{k="a"} 1.0' in out
    assert gone not in exposition._heads and gone not in exposition._rows
