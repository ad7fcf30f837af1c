"""/metrics without stalling the flow: the Prometheus text format, rendered from cached lines.

A scrape renders every series in the worker's process, in Python, holding the GIL while the
flow waits. With prometheus_client's ``generate_latest`` that costs ~10 µs per line (a
``Sample`` and a labels dict built per series, the labels sorted, escaped and formatted on
every scrape): 137 ms on the 200,000-event benchmark log's registry and 0.7-1.0 s on the
1,000,000-event one (~60,000 lines), every 15 s in production (README "Observability", "What a
scrape costs").

:class:`Exposition` renders the same bytes (tested against ``generate_latest`` on generated
registries) at a fraction of that: each series' line up to its value (name, sorted and escaped
labels) is built once, by ``generate_latest`` itself (the new series of a family in one call,
each at 0.0), and kept; a scrape then appends each series' value, read straight from the
children of counters and histograms (see :func:`_check_fast_reads`) and from the samples of
the other metric kinds. Collectors that are not
prometheus_client's own metric classes (the process, platform and GC collectors, anything
custom), samples with a timestamp, and anything this module does not recognise are rendered
by ``generate_latest`` as they are.

:func:`serve` is ``prometheus_client.start_http_server`` with that renderer for ``GET``: the
text format 0.0.4 for every ``Accept`` (Prometheus asks for OpenMetrics first and takes the text
format as well), gzip when asked. ``?name[]=`` filters and other methods go to
prometheus_client's own app.
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client import metrics as metrics_module
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    generate_latest,
    gzip_accepted,
    make_wsgi_app,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

# samples generate_latest moves out of their family, into a gauge family of their own after it
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_FLOAT_CACHE_MAX = 1 << 16  # distinct values whose text is kept (counts and sums repeat)
_SENTINEL = "0.0\n"  # floatToGoString(0.0): what a one-sample render ends with


class _Families:
    """A stand-in registry for ``generate_latest``: these families, as they are."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _generic(families: Iterable[Metric]) -> str:
    return generate_latest(_Families(families)).decode("utf-8")


class Exposition:
    """Render ``registry`` as ``generate_latest(registry)`` does, byte for byte, from cached
    line prefixes (module docstring). Safe to call from a scrape thread while the flow updates
    metrics: it takes the same locks as ``generate_latest``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, fast_reads: bool | None = None):
        self.registry = registry
        # counters and histograms read from their children (None: as the import-time check says)
        self.fast_reads = _FAST_READS if fast_reads is None else fast_reads
        self._heads: dict[Any, str] = {}  # collector -> its family's HELP and TYPE lines
        self._om_heads: dict[tuple[Any, str], str] = {}  # (collector, suffix) -> the same
        self._prefixes: dict[Any, dict[tuple, str]] = {}  # collector -> sample key -> prefix
        self._rows: dict[Any, dict[tuple, tuple[str, ...]]] = {}  # Counter/Histogram children
        self._floats: dict[float, str] = {}
        self._lock = threading.Lock()  # one render at a time (two Prometheus replicas scraping)

    def render(self) -> bytes:
        with self._lock:
            return self._render()

    def _render(self) -> bytes:
        reg = self.registry
        with reg._lock:  # as CollectorRegistry.collect
            collectors = list(reg._collector_to_names)
            target_info = reg._target_info_metric() if reg._target_info else None
        out: list[str] = []
        if target_info is not None:
            out.append(_generic([target_info]))
        for collector in collectors:
            if isinstance(collector, MetricWrapperBase) and not collector._labelvalues:
                try:
                    out.extend(self._metric(collector))
                    continue
                except (AttributeError, TypeError, KeyError):  # not as this module expects
                    self._prefixes.pop(collector, None)
            out.append(_generic(collector.collect()))
        live = set(collectors)
        if any(c not in live for c in self._heads):  # unregistered since: forget them
            for cache in (self._heads, self._prefixes, self._rows):
                for gone in [k for k in cache if k not in live]:
                    del cache[gone]
            for key in [k for k in self._om_heads if k[0] not in live]:
                del self._om_heads[key]
        return "".join(out).encode("utf-8")

    def _metric(self, c: MetricWrapperBase) -> list[str]:
        """One registered metric's lines (its whole family, as ``generate_latest`` writes it)."""
        head = self._heads.get(c)
        if head is None:
            head = self._heads[c] = _generic([c._get_metric()])
        lines = [head]
        prefixes = self._prefixes.get(c)
        if prefixes is None:
            prefixes = self._prefixes[c] = {}
        if c._is_parent():
            with c._lock:  # as MetricWrapperBase._multi_samples
                children: Iterable[tuple[Any, Any]] = list(c._metrics.items())
        else:
            children = (((), c),)
        if self.fast_reads and not metrics_module._use_created:
            kind = type(c)
            if kind is Counter or kind is Histogram:
                self._fast(c, kind is Histogram, children, lines)
                return lines
        om: dict[str, list[str]] | None = None
        n = 0
        for labelvalues, child in children:
            for sample in child._samples():
                suffix, labels, value, timestamp = sample[0], sample[1], sample[2], sample[3]
                n += 1
                if timestamp is not None:  # (none of Salvage's have one) as generate_latest
                    line = self._line(c, labelvalues, suffix, labels, value, timestamp)
                else:
                    key = (labelvalues, suffix, *labels.items())
                    prefix = prefixes.get(key)
                    if prefix is None:
                        prefix = prefixes[key] = self._line(c, labelvalues, suffix, labels, 0.0)[
                            : -len(_SENTINEL)
                        ]
                    line = f"{prefix}{self._text(value)}\n"
                if suffix in _OM_SUFFIXES:
                    if om is None:
                        om = {}
                    om.setdefault(suffix, []).append(line)
                else:
                    lines.append(line)
        if len(prefixes) > 2 * n + 64:  # series removed since: drop their prefixes
            self._prefixes[c] = {}
        if om:
            for suffix in sorted(om):
                lines.append(self._om_head(c, suffix))
                lines.extend(om[suffix])
        return lines

    def _text(self, value: float) -> str:
        """``floatToGoString(value)``, kept for the next time (not zeros: 0.0 and -0.0 are equal
        keys with different texts; not NaN: a new key every time)."""
        if value:
            text = self._floats.get(value)
            if text is not None:
                return text
        text = floatToGoString(value)
        if value and value == value:
            floats = self._floats
            if len(floats) >= _FLOAT_CACHE_MAX:
                floats.clear()
            floats[value] = text
        return text

    def _fast(
        self, c: Any, histogram: bool, children: Iterable[tuple[Any, Any]], lines: list[str]
    ) -> None:
        """A Counter's or a Histogram's samples (no ``_created``), read from its children's
        values as their ``_child_samples`` does (checked at import: :func:`_check_fast_reads`),
        without building the samples; each child's line prefixes built once."""
        rows = self._rows.get(c)
        if rows is None:
            rows = self._rows[c] = {}
        text = self._text
        children = list(children)
        if len(rows) < len(children) or any(lv not in rows for lv, _ in children):
            self._new_rows(c, [(lv, ch) for lv, ch in children if lv not in rows], rows)
        n = 0
        for labelvalues, child in children:
            pre = rows[labelvalues]
            n += 1
            if not histogram:
                v = child._value._value
                lines.append(f"{pre[0]}{text(v)}\n")
                continue
            acc = 0.0
            i = 0
            for bucket in child._buckets:
                acc += bucket._value
                lines.append(f"{pre[i]}{text(acc)}\n")
                i += 1
            lines.append(f"{pre[i]}{text(acc)}\n")  # _count
            if i + 1 < len(pre):  # _sum (a histogram whose first bound is >= 0)
                v = child._sum._value
                lines.append(f"{pre[i + 1]}{text(v)}\n")
        if len(rows) > 2 * n + 64:  # series removed since: drop their prefixes
            self._rows[c] = {}

    def _new_rows(
        self, c: Any, new: list[tuple[Any, Any]], rows: dict[tuple, tuple[str, ...]]
    ) -> None:
        """The line prefixes of ``new`` children, by one ``generate_latest`` of them all (each
        sample at 0.0, in the children's order, as ``_multi_samples`` gives them)."""
        m = c._get_metric()
        counts = []
        for labelvalues, child in new:
            series = list(zip(c._labelnames, labelvalues, strict=True))
            samples = list(child._samples())
            counts.append(len(samples))
            for s in samples:
                m.add_sample(c._name + s[0], dict(series + list(s[1].items())), 0.0)
        body = _generic([m]).split("\n")[2:-1]  # less HELP and TYPE; "" after the last line
        if len(body) != sum(counts) or not all(x.endswith(_SENTINEL[:-1]) for x in body):
            for labelvalues, child in new:  # not as expected: one generate_latest per sample
                rows[labelvalues] = tuple(
                    self._line(c, labelvalues, s[0], s[1], 0.0)[: -len(_SENTINEL)]
                    for s in child._samples()
                )
            return
        at = 0
        for (labelvalues, _), k in zip(new, counts, strict=True):
            rows[labelvalues] = tuple(x[: 1 - len(_SENTINEL)] for x in body[at : at + k])
            at += k

    def _line(
        self,
        c: MetricWrapperBase,
        labelvalues: tuple,
        suffix: str,
        labels: dict[str, str],
        value: float,
        timestamp: Any = None,
    ) -> str:
        """``generate_latest``'s line for one sample (labels as ``_multi_samples`` joins them)."""
        m = c._get_metric()
        m.add_sample(
            c._name + suffix,
            dict(list(zip(c._labelnames, labelvalues, strict=True)) + list(labels.items())),
            value,
            timestamp,
        )
        text = _generic([m])
        return text[text.rindex("\n", 0, len(text) - 1) + 1 :]

    def _om_head(self, c: MetricWrapperBase, suffix: str) -> str:
        """The HELP and TYPE lines ``generate_latest`` puts before a family's ``suffix`` samples."""
        key = (c, suffix)
        head = self._om_heads.get(key)
        if head is None:
            m = c._get_metric()
            m.add_sample(c._name + suffix, {}, 0.0)
            parts = _generic([m]).split("\n")
            head = self._om_heads[key] = f"{parts[2]}\n{parts[3]}\n"
        return head


def _check_fast_reads() -> bool:
    """Whether :meth:`Exposition._fast`, which reads counters' and histograms' children instead
    of their samples, renders what this prometheus_client's ``generate_latest`` renders: on a
    counter and two histograms (one with a negative first bound, so no ``_sum``), with
    ``_created`` off as the fast reads need."""
    created = metrics_module._use_created
    prometheus_client.disable_created_metrics()
    try:
        reg = CollectorRegistry()
        Counter("check", "", ["k"], registry=reg).labels("a").inc(2.5)
        h = Histogram("check_h", "", ["k"], registry=reg, buckets=(0.5, 2))
        h.labels("a").observe(1)
        h.labels("a").observe(0.25)
        Histogram("check_g", "", registry=reg, buckets=(-1, 3)).observe(-2)
        return Exposition(reg, fast_reads=True).render() == generate_latest(reg)
    except (AttributeError, TypeError, ValueError, KeyError):
        return False
    finally:
        if created:
            prometheus_client.enable_created_metrics()


_FAST_READS = _check_fast_reads()


# ------------------------------------------------------------------------------------ server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(
    registry: CollectorRegistry = REGISTRY, exposition: Exposition | None = None
) -> Callable[[dict, Callable], Iterator[bytes] | list[bytes]]:
    """A WSGI app serving ``registry``: ``GET`` (except ``/favicon.ico`` and ``?name[]=``) from
    an :class:`Exposition`, the rest by prometheus_client's own app."""
    fallback = make_wsgi_app(registry)
    render = (exposition or Exposition(registry)).render

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or environ.get("PATH_INFO") == "/favicon.ico"
            or "name[]" in parse_qs(environ.get("QUERY_STRING", ""))
        ):
            return fallback(environ, start_response)
        output = render()
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING") or ""):
            output = gzip.compress(output)  # zlib lets the flow run meanwhile (GIL released)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    return app


def serve(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on ``host:port`` from a daemon thread (as
    ``prometheus_client.start_http_server``); returns the server and its thread."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]

    class Server(_Server):
        address_family = family

    httpd = make_server(host, port, make_app(registry), Server, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, name="salvage-metrics", daemon=True)
    thread.start()
    return httpd, thread
