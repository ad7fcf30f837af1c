"""Sinks: Kafka, Redis, Prometheus metrics and KPIs, the review queue.

No ``_created`` series: prometheus_client adds one to every counter and histogram series (its
creation time, which no dashboard or alert of ours reads), and a scrape renders every series in
the worker's process, holding the GIL while the flow waits. On the 200,000-event benchmark log
that was 234 ms and 3.1 MB per scrape with them, 137 ms and 1.8 MB without (README
"Observability"). Every metric of Salvage is defined under this package, so importing it turns
them off for the process; ``PROMETHEUS_DISABLE_CREATED_SERIES=false`` keeps them."""

import os

import prometheus_client

if os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES") is None:
    prometheus_client.disable_created_metrics()
