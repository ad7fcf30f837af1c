"""Prometheus metrics (prometheus_client, default registry). Labels are bounded sets only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("salvage_events_total", "Input events accepted, by stream", ["stream"])
DEAD_LETTERS = Counter("salvage_dead_letters_total", "Rejected input, by kind", ["kind"])
DUPLICATES = Counter("salvage_duplicate_events_total", "Events dropped as duplicate event_id")
LATE = Counter(
    "salvage_late_events_total",
    "Events older than their partition watermark, applied at the watermark",
    ["stream"],
)
LATE_AFTER_IDLE = Counter(
    "salvage_late_after_idle_total",
    "Live mode: items that arrived behind a stage's watermark after an idle upstream woke up",
)
ORPHANS_PARKED = Counter(
    "salvage_orphan_events_parked_total",
    "Events that arrived before their order_placed and waited for it (README Reliability)",
)
TRIGGERS = Counter("salvage_triggers_total", "Interventions emitted, by action", ["action"])
TRIGGER_REASONS = Counter(
    "salvage_trigger_reasons_total",
    "Reason codes on emitted interventions (a bounded vocabulary, see policy/engine.py)",
    ["action", "reason"],
)
HOLDOUT = Counter(
    "salvage_holdout_total", "Decisions withheld for the control group, by action", ["action"]
)
DISPOSITIONS = Counter(
    "salvage_dispositions_total",
    "Warehouse disposition recommendations for graded returns (restock rate = restock / all)",
    ["route"],
)
SUPPRESSED = Counter(
    "salvage_suppressed_total", "Proposed interventions suppressed, by guardrail", ["guardrail"]
)
CASES_OPENED = Counter("salvage_cases_opened_total", "Order cases opened")
CASES_CLOSED = Counter("salvage_cases_closed_total", "Order cases closed, by outcome", ["outcome"])
OPEN_CASES = Gauge("salvage_open_cases", "Open order cases held in state", ["shard"])
LANE_SHIPMENTS = Counter(
    "salvage_lane_shipments_total", "Shipments judged per lane (a day after the promise)", ["lane"]
)
LANE_DELAYED = Counter(
    "salvage_lane_delayed_shipments_total", "Judged shipments that were late, per lane", ["lane"]
)
LANE_ALERT_OPEN = Gauge(
    "salvage_lane_alert_open",
    "open lane delay alerts (1 per named lane; other: their count)",
    ["lane"],
)
EVENT_TIME_LAG = Gauge(
    "salvage_watermark_lag_seconds", "Wall clock minus the case stage's watermark", ["shard"]
)


MODEL_AUC = Gauge(
    "salvage_model_auc",
    "Rolling ROC AUC on labelled predictions, for the model and the rule baseline (same cases)",
    ["model", "scorer", "shard"],
)
MODEL_LOGLOSS = Gauge("salvage_model_logloss", "Rolling log loss", ["model", "scorer", "shard"])
MODEL_BRIER = Gauge(
    "salvage_model_brier", "Rolling Brier score (calibration)", ["model", "scorer", "shard"]
)
MODEL_LABELS = Gauge("salvage_model_labels", "Labelled predictions seen", ["model", "shard"])
MODEL_ACTIVE = Gauge(
    "salvage_model_active", "1 when the model drives decisions, 0 in shadow", ["model", "shard"]
)
MODEL_PROMOTIONS = Counter("salvage_model_promotions_total", "Shadow -> active", ["model"])
MODEL_DEMOTIONS = Counter("salvage_model_demotions_total", "Active -> shadow", ["model"])
SETTLED_FACTS = Counter(
    "salvage_settled_facts_total",
    "Grades, contacts, chargebacks, verdicts, another return's events and a second payment of "
    "the settling refund for a settled case within its grace period, by stream (kept for "
    "customer history, labels and KPIs instead of dead letters)",
    ["stream"],
)
INTENT_ACCURACY = Gauge(
    "salvage_intent_accuracy",
    "Delivered accuracy of the text intent classifier: of the labelled contacts it would have "
    "filled in (after warm-up and threshold), the share right (last 500 labelled contacts)",
    ["shard"],
)
INTENT_COVERAGE = Gauge(
    "salvage_intent_coverage",
    "Share of labelled contacts the text intent classifier would have filled in (not other)",
    ["shard"],
)
INTENTS_INFERRED = Counter(
    "salvage_intents_inferred_total", "Support intents filled in from text", ["intent"]
)

STATUS_UPDATES = Counter(
    "salvage_status_updates_total",
    "Return-journey status updates sent to the messaging systems, by stage",
    ["stage"],
)
JOURNEY_ALERTS = Counter(
    "salvage_journey_alerts_total",
    "Return-journey breakage alerts (refund before grading, received ungraded, refund overdue)",
    ["kind"],
)
GRADING_DELAY = Histogram(
    "salvage_grading_delay_seconds",
    "Event time from a return's receipt at the warehouse to its grading",
    buckets=tuple(h * 3600.0 for h in (6, 12, 24, 48, 72, 96, 168, 336)),
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on ``host:port`` (port 0: do nothing), rendered by
    :mod:`salvage.sinks.exposition` (prometheus_client's text, from cached lines)."""
    if port:
        from salvage.sinks.exposition import serve as serve_exposition

        serve_exposition(port, host)


# ------------------------------------------------------------------ consumer lag and review queue

KAFKA_CONSUMER_LAG = Gauge(
    "salvage_kafka_consumer_lag",
    "Messages of an input partition not yet read: high watermark minus the next offset to read "
    "(refreshed at most once a second per partition from the consumer's cached watermarks)",
    ["topic", "partition"],
)
REVIEW_QUEUE_DEPTH = Gauge(
    "salvage_review_queue_depth",
    "Human reviews not yet resolved, by state (unclaimed: no reviewer has it; claimed: delivered "
    "to a reviewer, not resolved)",
    ["state"],
)
REVIEW_QUEUE_OLDEST_AGE = Gauge(
    "salvage_review_queue_oldest_age_seconds",
    "Wall-clock age of the oldest unresolved human review (0 when the queue is empty)",
)
