"""Proof against a real Prometheus: every dashboard query and alert expression, on a real run.

Debian's ``prometheus`` binary scrapes this test process's ``prometheus_client`` endpoint (metrics
are process-global) every second while the recovery flow runs twice in Kafka mode over the same
simulated launch week (the second run makes every counter move between scrapes, so rates are real
numbers, not just present); human-review triggers go to a real Redis review queue of the test's
own. Then every panel query (template variables = All, ``$__rate_interval`` = 1m, ``$__range`` =
5m) and every alert expression goes through ``/api/v1/query``: each must parse and every panel
query must return data. The rule file is also loaded by that Prometheus, and each
rule must evaluate with health ``ok``. Loopback only.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bytewax.testing import cluster_main

from salvage.config import Settings
from salvage.connectors.broker import ensure_topics, free_port
from salvage.dashboards.builder import substitute
from salvage.dashboards.definitions import DASHBOARDS
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.runner import publish_log
from salvage.sinks.exposition import serve as serve_metrics
from salvage.sinks.review_queue import RedisReviewSink
from tests.flowkit import sim_log

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "alerts" / "salvage.rules.yml"
GRAFANA = {"__rate_interval": "1m", "__range": "5m", "campaign": ".*", "sku_family": ".*"}
GRAFANA["lane"] = ".*"
MALFORMED = [
    b"this line is not JSON",
    b'{"event_type": "carrier_scan", "order_id": "O00000001", "schema_version": 1}',
    b'{"event_id": "x1", "event_type": "teleported", "order_id": "O00000003", '
    b'"schema_version": 1, "occurred_at": "2026-03-02T10:00:00Z"}',
]
# Panel queries that must also yield at least one finite, non-zero number (not only NaN/0).
MUST_HAVE_NUMBERS = {
    "Value of orders kept",
    "Refund leakage",
    "Cost per return (fully loaded)",
    "Restock rate (A / graded)",
    "Events by stream (per second)",
    "Kafka messages delivered by topic (per second)",
    "Delay rate by lane",
    "Journey breakage alerts by kind",
}


def _get(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Prom:
    """A throwaway Prometheus on a loopback port."""

    def __init__(self, binary: str, root: Path, target_port: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        config.write_text(
            # a generous scrape timeout: late in a full test run this process's registry holds
            # every earlier in-process flow's series (several MB of text to render)
            "global:\n  scrape_interval: 5s\n  scrape_timeout: 5s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: salvage\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log = (root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited early ({self.proc.returncode})")
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus not ready")
            time.sleep(0.1)

    def scrapes_after(self, t: float, n: int = 1, timeout: float = 30.0) -> None:
        """Wait until the salvage target's last successful scrape started ``n`` scrapes after
        wall time ``t`` (5 s interval: in the whole suite this process's registry holds every
        earlier test's series, megabytes of exposition, so 2 s scrapes could time out)."""
        deadline = time.monotonic() + timeout
        while True:
            targets = _get(f"{self.base}/api/v1/targets?state=active")["data"]["activeTargets"]
            ours = [x for x in targets if x["labels"].get("job") == "salvage"]
            if ours and ours[0]["health"] == "up":
                last = ours[0]["lastScrape"]  # RFC 3339 with nanoseconds
                ts = _rfc3339(last)
                if ts >= t + (n - 1) * 5.0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no successful scrape after {t}: {ours}")
            time.sleep(0.2)

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return _get(url)
        except urllib.error.HTTPError as e:  # 400: the expression does not parse
            return json.loads(e.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


def _rfc3339(s: str) -> float:
    from datetime import datetime

    head, _, frac = s.rstrip("Z").partition(".")
    tz = ""
    if "+" in frac or "-" in frac:  # offset after the fraction
        for sign in "+-":
            if sign in frac:
                frac, _, tz = frac.partition(sign)
                tz = sign + tz
    dt = datetime.fromisoformat(head + (tz or "+00:00"))
    return dt.timestamp() + (float(f"0.{frac}") if frac else 0.0)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if path is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    return path


@pytest.fixture(scope="module")
def scraped_run(
    prometheus_binary: str, kafka_broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prom]:
    root = tmp_path_factory.mktemp("prometheus")
    # (with goodwill: the dashboards' goodwill panels have data)
    log = sim_log(root, "launch-week-backlog", orders=1200, seed=5, variants=("goodwill",))
    salted = root / "salted.jsonl"
    salted.write_bytes(log.read_bytes() + b"\n".join(MALFORMED) + b"\n")

    port = free_port()
    server, thread = serve_metrics(port, "127.0.0.1")  # what `salvage run` serves
    prom = Prom(prometheus_binary, root, port)
    suffix = f"prom-{int(time.time() * 1000)}"
    reviews = f"salvage:reviews:{suffix}"  # a review queue of its own (real Redis)
    try:
        settings = Settings(
            kafka_bootstrap=kafka_broker.bootstrap,
            redis_url="",
            shards=4,
            topic_partitions=2,
            **{
                f"topic_{s}": f"{s}-{suffix}"
                for s in ("orders", "deliveries", "support", "returns", "interventions")
            },
            topic_lane_alerts=f"lane-alerts-{suffix}",
            topic_dead_letters=f"dead-letters-{suffix}",
        )
        ensure_topics(
            settings.kafka.as_librdkafka_dict(),
            list(settings.topics.inputs().values()) + settings.topics.outputs(),
            settings.topics.partitions,
        )
        publish_log(settings, salted)
        for i in range(2):  # the same input twice: every counter moves between scrapes
            cluster_main(
                build_flow(
                    FlowSpec(
                        settings,
                        to_end=True,
                        case_store=False,
                        extra_sinks={"reviews": RedisReviewSink(redis_url, stream=reviews)},
                    )
                ),
                [],
                0,
                worker_count_per_proc=1,
            )
            if i == 0:  # Prometheus started meanwhile
                prom.wait_ready()
            prom.scrapes_after(time.time(), n=2)
        yield prom
    finally:
        prom.stop()
        redis.Redis.from_url(redis_url).delete(reviews, f"{reviews}:seen")
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _values(result: dict[str, Any]) -> list[float]:
    data = result["data"]
    if data["resultType"] in ("scalar", "string"):
        return [float(data["result"][1])]
    return [float(s["value"][1]) for s in data["result"]]


def test_every_panel_query_parses_and_returns_data(scraped_run: Prom):
    problems: list[str] = []
    checked = 0
    for d in DASHBOARDS:
        for panel, target in d.targets():
            expr = substitute(target.expr, GRAFANA)
            res = scraped_run.query(expr)
            checked += 1
            where = f"{d.uid} / {panel.title}: {expr}"
            if res.get("status") != "success":
                problems.append(f"does not parse: {where}: {res.get('error')}")
                continue
            values = _values(res)
            if not values and not target.optional:
                problems.append(f"no data: {where}")
            if (
                panel.title in MUST_HAVE_NUMBERS
                and not target.optional
                and not any(math.isfinite(v) and v != 0 for v in values)
            ):
                problems.append(f"no finite non-zero value: {where}: {values}")
    assert checked == sum(len(d.targets()) for d in DASHBOARDS) > 40
    assert not problems, "\n".join(problems)


def test_every_alert_expression_parses_and_every_rule_evaluates(scraped_run: Prom):
    groups = _get(f"{scraped_run.base}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {
        "SalvageCourierLaneDelaySpike",
        "SalvageDeadLetterRateHigh",
        "SalvageKafkaConsumerLagHigh",
        "SalvageNoEvents",
        "SalvageModelDemoted",
        "SalvageReturnJourneyBreakage",
        "SalvageReviewBacklogOld",
    }
    for r in rules:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
        res = scraped_run.query(r["query"])
        assert res.get("status") == "success", (r["name"], res.get("error"))
    # the launch-week backlog raised lane alerts: the gauge the spike rule reads is there
    assert _values(scraped_run.query("salvage_lane_alert_open")), "no lane alert in the run"
    # the target is up and events flow: no "no events" alert
    no_events = next(r for r in rules if r["name"] == "SalvageNoEvents")
    assert no_events["state"] == "inactive"
