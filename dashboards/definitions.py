"""Salvage's four Grafana dashboards, as code (rendered by
``python -m salvage.dashboards.generate``).

Every query uses only metrics the pipeline emits (``sinks/metrics.py``, ``sinks/kpis.py``,
``sinks/kafka.py``); ``tests/sinks/test_prometheus.py`` runs each one against a real Prometheus
scraping a real run. Template variables ``campaign``, ``sku_family`` and ``lane`` filter with ``=~``
(All is ``.*``). KPI labels are bucketed top-N with ``other`` (``sinks/kpis.py``), so a lane outside
the KPI top-N shows under ``other`` in KPI panels while the lane monitor panels show it by name.
``currency`` is never bucketed (money is never summed across currencies): money in a currency past
its top-N shows under its own code with campaign, SKU family and lane ``other``.
"""

from __future__ import annotations

from salvage.dashboards.builder import Dashboard, Panel, Row, Target, Threshold, Variable

RETAINED = "kept|exchange|store_credit|return_cancelled"
SLICE = 'campaign=~"$campaign", sku_family=~"$sku_family", lane=~"$lane"'
OUTCOME_RETAINED = f'outcome=~"{RETAINED}"'
GRADE_A = 'grade="A"'
RETAINED_TRUE = 'retained="true"'
R = "$__rate_interval"
RANGE = "$__range"


def sel(metric: str, extra: str = "", sliced: bool = True) -> str:
    """``metric{extra, campaign=~..., sku_family=~..., lane=~...}``."""
    parts = [x for x in (extra, SLICE if sliced else "") if x]
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


def inc(metric: str, extra: str = "", sliced: bool = True) -> str:
    return f"increase({sel(metric, extra, sliced)}[{RANGE}])"


def rate(metric: str, extra: str = "", sliced: bool = True) -> str:
    return f"rate({sel(metric, extra, sliced)}[{R}])"


def top10(expr: str, top: bool = True) -> str:
    return f"topk(10, {expr})" if top else expr


def slice_vars(metric: str, lane_metric: str | None = None) -> tuple[Variable, ...]:
    return (
        Variable("campaign", "Campaign", metric),
        Variable("sku_family", "SKU family", metric),
        Variable("lane", "Courier lane", lane_metric or metric),
    )


PCT = "percentunit"
HOURLY = "per hour"

# ------------------------------------------------------------------------- return recovery

RETAINED_REVENUE = Panel(
    "Value of orders kept",
    (
        Target(
            f"sum by (currency) ({inc('salvage_closed_order_value_total', OUTCOME_RETAINED)})",
            "{{currency}}",
        ),
    ),
    kind="stat",
    description="Order value of closed cases kept, exchanged, paid out in store credit or whose "
    "return was cancelled, over the selected range: every kept order, not money the "
    "interventions saved (that is the uplift: `salvage uplift`).",
    width=4,
    decimals=0,
)
LEAKAGE = Panel(
    "Refund leakage",
    (Target(f"sum by (currency) ({inc('salvage_refund_leakage_total')})", "{{currency}}"),),
    kind="stat",
    description="Value refunded that could have been saved: the parcel was delivered, no abuse "
    "evidence (grading flag, confirmed review, flagged customer) and a controllable reason (fit, "
    "damaged, wrong item, quality, late delivery) or the customer asked for an exchange or store "
    "credit (sinks/leakage.py; salvage_refunded_by_basis_total says why).",
    width=4,
    decimals=0,
    thresholds=(Threshold(None, "orange"),),
)
LEAKAGE_SHARE = Panel(
    "Leakage share of refunds",
    (
        Target(
            f"sum by (currency) ({inc('salvage_refund_leakage_total')}) / "
            f"sum by (currency) ({inc('salvage_refunded_total')})",
            "{{currency}}",
        ),
    ),
    kind="stat",
    unit=PCT,
    description="Refund leakage / all value refunded (refunds and chargebacks), per currency "
    "(money is never summed across currencies).",
    width=4,
    decimals=1,
)
COST_PER_RETURN = Panel(
    "Cost per return (fully loaded)",
    (
        Target(
            f"sum by (currency) ({inc('salvage_return_cost_total')})"
            f" / ignoring(currency) group_left() sum({inc('salvage_returns_total')})",
            "{{currency}}",
        ),
    ),
    kind="stat",
    description="Return label, intake labour, support touches, write-off by grade and refund "
    "processing (sinks/cost_model.py), per closed case with a return request.",
    width=4,
    decimals=2,
)
RESTOCK = Panel(
    "Restock rate (A / graded)",
    (
        Target(
            f"sum({inc('salvage_returns_graded_total', GRADE_A)})"
            f" / sum({inc('salvage_returns_graded_total')})",
            "restock rate",
        ),
    ),
    kind="stat",
    unit=PCT,
    description="Returns graded A (resold as new) among all graded returns.",
    width=4,
    decimals=1,
)
REPEAT = Panel(
    "Repeat-customer rate (90 d)",
    (
        Target(
            f"sum({inc('salvage_repeat_orders_total', sliced=False)})"
            f" / sum({inc('salvage_returns_total', sliced=False)})",
            "repeat rate",
        ),
    ),
    kind="stat",
    unit=PCT,
    description="Orders placed by customers within 90 days after their last return, per return "
    "(not sliced: order facts carry no campaign/SKU/lane yet).",
    width=4,
    decimals=1,
)

RETURN_RECOVERY = Dashboard(
    uid="salvage-return-recovery",
    title="Salvage · Return recovery",
    description="Business KPIs and uplift: retained revenue, refund leakage, cost per return, "
    "time to refund, restock and repeat-customer rates.",
    variables=slice_vars("salvage_cases_resolved_total"),
    rows=(
        Row(
            "Headline (selected range)",
            (RETAINED_REVENUE, LEAKAGE, LEAKAGE_SHARE, COST_PER_RETURN, RESTOCK, REPEAT),
        ),
        Row(
            "Treated vs holdout (closed cases; uplift with intervals: `salvage uplift`)",
            (
                Panel(
                    "Value of orders kept by action, treated vs holdout (per hour)",
                    (
                        Target(
                            f"sum by (action, holdout) ({rate('salvage_retained_revenue_total')})"
                            " * 3600",
                            "{{action}} · holdout={{holdout}}",
                        ),
                    ),
                    description="Order value of retained cases per triggered action (a case with "
                    "two actions counts under both); action=none: no intervention. The arms "
                    "differ in size (holdout share), so compare rates, not these sums.",
                    width=8,
                ),
                Panel(
                    "Retention rate by action: treated vs holdout",
                    (
                        Target(
                            "sum by (action, holdout) "
                            f"({inc('salvage_cases_by_action_total', RETAINED_TRUE)})"
                            " / sum by (action, holdout) "
                            f"({inc('salvage_cases_by_action_total')})",
                            "{{action}} · holdout={{holdout}}",
                        ),
                    ),
                    kind="bargauge",
                    unit=PCT,
                    min=0,
                    max=1,
                    description="Share of closed cases retained, per action and arm (closed cases "
                    "only, no interval). The uplift (intention-to-treat, every assigned order, "
                    "95% interval on the difference) is `salvage uplift --out-dir DIR`.",
                    width=8,
                ),
                Panel(
                    "Case outcomes (per hour)",
                    (
                        Target(
                            f"sum by (outcome) ({rate('salvage_cases_resolved_total')}) * 3600",
                            "{{outcome}}",
                        ),
                    ),
                    stacked=True,
                    width=8,
                ),
            ),
        ),
        Row(
            "Returns: cost, time to refund, reasons, restock",
            (
                Panel(
                    "Cost per return by component",
                    (
                        Target(
                            f"sum by (component, currency) ({inc('salvage_return_cost_total')})"
                            " / ignoring(component, currency) group_left() "
                            f"sum({inc('salvage_returns_total')})",
                            "{{component}} ({{currency}})",
                        ),
                    ),
                    kind="bargauge",
                    decimals=2,
                    width=6,
                ),
                Panel(
                    "Time to refund (return request → refund)",
                    tuple(
                        Target(
                            f"histogram_quantile({q}, sum by (le) "
                            f"({rate('salvage_time_to_refund_seconds_bucket')}))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.9)
                    ),
                    unit="s",
                    width=6,
                ),
                Panel(
                    "Return-reason mix",
                    (Target(f"sum by (reason) ({inc('salvage_returns_total')})", "{{reason}}"),),
                    kind="piechart",
                    width=6,
                ),
                Panel(
                    "Restock rate by SKU family",
                    (
                        Target(
                            "sum by (sku_family) "
                            f"({inc('salvage_returns_graded_total', GRADE_A)})"
                            f" / sum by (sku_family) ({inc('salvage_returns_graded_total')})",
                            "{{sku_family}}",
                        ),
                    ),
                    kind="bargauge",
                    unit=PCT,
                    min=0,
                    max=1,
                    width=6,
                ),
            ),
        ),
        Row(
            "Refund leakage by slice",
            tuple(
                Panel(
                    f"Refund leakage by {title}",
                    (
                        Target(
                            top10(
                                f"sum by ({label}, currency) "
                                f"({inc('salvage_refund_leakage_total')})",
                                label == "lane",
                            ),
                            f"{{{{{label}}}}} ({{{{currency}}}})",
                        ),
                    ),
                    kind="bargauge",
                    decimals=0,
                    width=6,
                )
                for label, title in (
                    ("campaign", "campaign"),
                    ("sku_family", "SKU family"),
                    ("lane", "courier lane (top 10)"),
                    ("support_reason", "support reason"),
                )
            ),
        ),
        Row(
            "Goodwill: money paid to keep an order (no return)",
            (
                Panel(
                    "Goodwill paid, by kind",
                    (
                        Target(
                            f"sum by (kind, currency) ({inc('salvage_goodwill_total')})",
                            "{{kind}} ({{currency}})",
                        ),
                    ),
                    kind="bargauge",
                    decimals=0,
                    description="Refunds and store credit naming no return, paid while no "
                    "return was open and at most half the order's value (an apology for a late "
                    "parcel): the order is kept. Counted when the case closes. The refunds are "
                    "also in the refunded value (basis goodwill), never in refund leakage.",
                    width=12,
                ),
                Panel(
                    "Goodwill by courier lane (top 10)",
                    (
                        Target(
                            top10(
                                f"sum by (lane, currency) ({inc('salvage_goodwill_total')})",
                                True,
                            ),
                            "{{lane}} ({{currency}})",
                        ),
                    ),
                    kind="bargauge",
                    decimals=0,
                    width=12,
                ),
            ),
        ),
        Row(
            "Return journey: status updates and warehouse breakages",
            (
                Panel(
                    "Status updates by stage (per hour)",
                    (
                        Target(
                            "sum by (stage) "
                            f"({rate('salvage_status_updates_total', sliced=False)}) * 3600",
                            "{{stage}}",
                        ),
                    ),
                    description="Return-journey service messages sent to the messaging systems "
                    "(return-status topic): one per stage per order, never held out. Not sliced "
                    "by campaign / SKU family / lane.",
                    stacked=True,
                    width=8,
                ),
                Panel(
                    "Journey breakage alerts by kind",
                    (
                        Target(
                            f"sum by (kind) ({inc('salvage_journey_alerts_total', sliced=False)})",
                            "{{kind}}",
                        ),
                    ),
                    kind="bargauge",
                    decimals=0,
                    description="journey-alerts over the selected range: refunds issued before "
                    "grading, returns received but ungraded past the policy threshold (72 h), "
                    "returns not settled within the refund target after receipt (7 days).",
                    width=8,
                ),
                Panel(
                    "Grading delay (received → graded)",
                    tuple(
                        Target(
                            f"histogram_quantile({q}, sum by (le) "
                            f"({rate('salvage_grading_delay_seconds_bucket', sliced=False)}))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.9)
                    ),
                    unit="s",
                    description="Event time a returned item waits at the warehouse before it "
                    "is graded; it loses resale value meanwhile.",
                    width=8,
                ),
            ),
        ),
    ),
)

# ------------------------------------------------------------------------- courier lanes

LANE = 'lane=~"$lane"'


def lane_rate(metric: str) -> str:
    return f"rate({metric}{{{LANE}}}[{R}])"


def by_courier(expr: str) -> str:
    return f'sum by (courier) (label_replace({expr}, "courier", "$1", "lane", "([^:]+):.*"))'


COURIER_LANES = Dashboard(
    uid="salvage-courier-lanes",
    title="Salvage · Courier lanes",
    description="Late rate per courier lane (shipment cohorts judged against their promise, "
    "features/lane.py), lane alerts, and what the lanes cost in returns and leakage.",
    variables=slice_vars("salvage_cases_resolved_total", "salvage_lane_shipments_total"),
    rows=(
        Row(
            "Delays",
            (
                Panel(
                    "Delay rate by lane",
                    (
                        Target(
                            f"sum by (lane) ({lane_rate('salvage_lane_delayed_shipments_total')})"
                            " / sum by (lane) "
                            f"({lane_rate('salvage_lane_shipments_total')})",
                            "{{lane}}",
                        ),
                    ),
                    kind="heatmap",
                    unit=PCT,
                    description="Late / judged shipments per lane: a shipment is judged a day "
                    "after its promise, late if undelivered by then or delivered late; a delay "
                    "scan or an ETA past the promise counts only until the delivery, which "
                    "decides (the lane monitor's definition).",
                    width=24,
                    height=10,
                ),
                Panel(
                    "Open lane alerts",
                    (
                        Target(
                            f"sum(salvage_lane_alert_open{{{LANE}}}) or vector(0)", "open alerts"
                        ),
                    ),
                    kind="stat",
                    thresholds=(Threshold(None, "green"), Threshold(1, "red")),
                    width=4,
                ),
                Panel(
                    "Lane alerts (open / closed)",
                    (Target(f"max by (lane) (salvage_lane_alert_open{{{LANE}}})", "{{lane}}"),),
                    kind="state-timeline",
                    value_text=(("0", "closed", "green"), ("1", "open", "red")),
                    width=20,
                ),
            ),
        ),
        Row(
            "Volume by courier and lane",
            (
                Panel(
                    "Delay rate by courier",
                    (
                        Target(
                            by_courier(lane_rate("salvage_lane_delayed_shipments_total"))
                            + " / "
                            + by_courier(lane_rate("salvage_lane_shipments_total")),
                            "{{courier}}",
                        ),
                    ),
                    unit=PCT,
                    width=8,
                ),
                Panel(
                    "Shipments by lane, top 10 (per hour)",
                    (
                        Target(
                            "topk(10, sum by (lane) "
                            f"({lane_rate('salvage_lane_shipments_total')}) * 3600)",
                            "{{lane}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Return cost by courier",
                    (
                        Target(
                            f"sum by (courier, currency) ({inc('salvage_return_cost_total')})",
                            "{{courier}} ({{currency}})",
                        ),
                    ),
                    kind="bargauge",
                    decimals=0,
                    description="Fully loaded return cost (label, intake, support, write-off, "
                    "refund processing) of returns shipped by each courier.",
                    width=8,
                ),
            ),
        ),
    ),
)

# ------------------------------------------------------------------------- decisions and models

MODEL = "salvage_model"

DECISIONS_MODELS = Dashboard(
    uid="salvage-decisions-models",
    title="Salvage · Decisions and models",
    description="Intervention triggers, guardrail suppressions, per-action outcomes and the "
    "recoverability models (rolling AUC, calibration, promotions).",
    variables=slice_vars("salvage_cases_by_action_total"),
    rows=(
        Row(
            "Decisions",
            (
                Panel(
                    "Triggers by action (per hour)",
                    (
                        Target(
                            f"sum by (action) ({rate('salvage_triggers_total', sliced=False)})"
                            " * 3600",
                            "{{action}}",
                        ),
                    ),
                    stacked=True,
                    width=8,
                ),
                Panel(
                    "Suppressions by guardrail (per hour)",
                    (
                        Target(
                            "sum by (guardrail) "
                            f"({rate('salvage_suppressed_total', sliced=False)}) * 3600",
                            "{{guardrail}}",
                        ),
                    ),
                    stacked=True,
                    width=8,
                ),
                Panel(
                    "Suppressed share of proposed interventions",
                    (
                        Target(
                            f"sum({rate('salvage_suppressed_total', sliced=False)}) / ("
                            f"sum({rate('salvage_suppressed_total', sliced=False)}) + "
                            f"sum({rate('salvage_triggers_total', sliced=False)}))",
                            "suppressed share",
                        ),
                    ),
                    unit=PCT,
                    width=8,
                ),
                Panel(
                    "Closed cases by action, treated vs holdout",
                    (
                        Target(
                            f"sum by (action, holdout) ({inc('salvage_cases_by_action_total')})",
                            "{{action}} · holdout={{holdout}}",
                        ),
                    ),
                    kind="bargauge",
                    width=12,
                ),
                Panel(
                    "Retention rate by action",
                    (
                        Target(
                            "sum by (action, holdout) "
                            f"({inc('salvage_cases_by_action_total', RETAINED_TRUE)})"
                            " / sum by (action, holdout) "
                            f"({inc('salvage_cases_by_action_total')})",
                            "{{action}} · holdout={{holdout}}",
                        ),
                    ),
                    kind="bargauge",
                    unit=PCT,
                    min=0,
                    max=1,
                    width=12,
                ),
            ),
        ),
        Row(
            "Models",
            (
                Panel(
                    "Rolling AUC: model vs rule baseline",
                    (Target(f"avg by (model, scorer) ({MODEL}_auc)", "{{model}} · {{scorer}}"),),
                    min=0.5,
                    max=1,
                    decimals=3,
                    description="Mean over shards of the rolling ROC AUC on labelled predictions, "
                    "for the model and the rule scorer on the same cases.",
                    width=8,
                ),
                Panel(
                    "Rolling Brier score (calibration, lower is better)",
                    (Target(f"avg by (model, scorer) ({MODEL}_brier)", "{{model}} · {{scorer}}"),),
                    decimals=3,
                    width=8,
                ),
                Panel(
                    "Calibration: retained share by first recoverability score",
                    (
                        Target(
                            "sum by (score_bin) ("
                            f"{inc('salvage_scored_cases_total', RETAINED_TRUE, False)})"
                            " / sum by (score_bin) "
                            f"({inc('salvage_scored_cases_total', sliced=False)})",
                            "score {{score_bin}}+",
                        ),
                    ),
                    kind="bargauge",
                    unit=PCT,
                    min=0,
                    max=1,
                    description="Closed cases by the decile of their first recoverability score: "
                    "a calibrated score has the retained share near the bin's midpoint.",
                    width=8,
                ),
                Panel(
                    "Active model (1 = drives decisions, 0 = shadow)",
                    (Target(f"max by (model) ({MODEL}_active)", "{{model}}"),),
                    kind="state-timeline",
                    value_text=(("0", "shadow", "blue"), ("1", "active", "green")),
                    width=12,
                ),
                Panel(
                    "Promotions and demotions",
                    (
                        Target(
                            f"sum by (model) (increase({MODEL}_promotions_total[{RANGE}]))",
                            "promoted {{model}}",
                            optional=True,
                        ),
                        Target(
                            f"sum by (model) (increase({MODEL}_demotions_total[{RANGE}]))",
                            "demoted {{model}}",
                            optional=True,
                        ),
                    ),
                    kind="stat",
                    decimals=0,
                    description="Shadow -> active (promotion) and back (demotion) in the range.",
                    width=12,
                ),
            ),
        ),
        Row(
            "Human review queue",
            (
                Panel(
                    "Review queue depth",
                    (
                        Target(
                            "max by (state) (salvage_review_queue_depth)",
                            "{{state}}",
                        ),
                    ),
                    stacked=True,
                    decimals=0,
                    description="Human-review triggers not yet resolved (Redis stream "
                    "salvage:reviews): unclaimed = no reviewer has it yet, claimed = delivered to "
                    "a reviewer, no verdict yet. Refreshed by the pipeline after each review it "
                    "queues and every 15 s; max over processes (they export the same queue).",
                    width=16,
                ),
                Panel(
                    "Oldest unresolved review",
                    (Target("max(salvage_review_queue_oldest_age_seconds)", "oldest"),),
                    kind="stat",
                    unit="s",
                    decimals=0,
                    thresholds=(
                        Threshold(None, "green"),
                        Threshold(3600, "orange"),
                        Threshold(4 * 3600, "red"),
                    ),
                    description="Wall-clock age of the oldest review without a verdict (0: the "
                    "queue is empty). Alert SalvageReviewBacklogOld fires past 4 hours.",
                    width=8,
                ),
            ),
        ),
    ),
)

# ------------------------------------------------------------------------- pipeline health

PIPELINE_HEALTH = Dashboard(
    uid="salvage-pipeline-health",
    title="Salvage · Pipeline health",
    description="Input, dead letters, late events, state and output of the recovery dataflow.",
    rows=(
        Row(
            "Input",
            (
                Panel(
                    "Events by stream (per second)",
                    (
                        Target(
                            f"sum by (stream) ({rate('salvage_events_total', sliced=False)})",
                            "{{stream}}",
                        ),
                    ),
                    unit="ops",
                    stacked=True,
                    width=8,
                ),
                Panel(
                    "Dead letters by kind (per second)",
                    (
                        Target(
                            f"sum by (kind) ({rate('salvage_dead_letters_total', sliced=False)})",
                            "{{kind}}",
                        ),
                    ),
                    unit="ops",
                    stacked=True,
                    width=8,
                ),
                Panel(
                    "Dead-letter ratio",
                    (
                        Target(
                            f"sum({rate('salvage_dead_letters_total', sliced=False)}) / ("
                            f"sum({rate('salvage_events_total', sliced=False)}) + "
                            f"sum({rate('salvage_dead_letters_total', sliced=False)}))",
                            "dead-letter ratio",
                        ),
                    ),
                    unit=PCT,
                    width=8,
                ),
                Panel(
                    "Late events by stream (per second)",
                    (
                        Target(
                            f"sum by (stream) ({rate('salvage_late_events_total', sliced=False)})",
                            "{{stream}}",
                        ),
                    ),
                    unit="ops",
                    description="Events older than their partition watermark, applied at it.",
                    width=12,
                ),
                Panel(
                    "Duplicate events (per second)",
                    (
                        Target(
                            f"sum({rate('salvage_duplicate_events_total', sliced=False)})",
                            "duplicates",
                        ),
                    ),
                    unit="ops",
                    width=12,
                ),
                Panel(
                    "Kafka consumer lag by topic (messages)",
                    (
                        Target(
                            "sum by (topic) (salvage_kafka_consumer_lag)",
                            "{{topic}}",
                        ),
                    ),
                    decimals=0,
                    description="Messages in the input topics not read yet (high watermark minus "
                    "the next offset to read, summed over partitions). Alert "
                    "SalvageKafkaConsumerLagHigh fires when a partition stays 50k behind.",
                    width=24,
                ),
            ),
        ),
        Row(
            "State",
            (
                Panel(
                    "Open cases",
                    (Target("sum(salvage_open_cases)", "open cases"),),
                    width=12,
                ),
                Panel(
                    "Cases opened and closed (per second)",
                    (
                        Target(
                            f"sum({rate('salvage_cases_opened_total', sliced=False)})", "opened"
                        ),
                        Target(
                            f"sum({rate('salvage_cases_closed_total', sliced=False)})", "closed"
                        ),
                    ),
                    unit="ops",
                    width=12,
                ),
            ),
        ),
        Row(
            "Outages and pauses",
            (
                Panel(
                    "Writes held for Redis (outage backlog)",
                    (
                        Target("sum(salvage_review_queue_backlog)", "review queue"),
                        Target("sum(salvage_case_store_backlog)", "case store", optional=True),
                    ),
                    decimals=0,
                    description="While Redis is unreachable the case-store and review-queue sinks "
                    "keep what they could not write (bounded: the case store keeps the latest "
                    "document per order, the review queue one entry per trigger) and retry with "
                    "backoff; past the bound, or if the final flush fails, the run stops loudly. "
                    "Non-zero for long: Redis is down or refusing writes.",
                    width=12,
                ),
                Panel(
                    "Events applied late after an idle pause (per second)",
                    (
                        Target(
                            f"sum({rate('salvage_late_after_idle_total', sliced=False)})",
                            "late after idle",
                        ),
                    ),
                    unit="ops",
                    description="Events of a Kafka partition that had been declared idle "
                    "(SALVAGE_IDLE_PARTITION_SECONDS without data) and arrived behind the "
                    "watermark: applied at the watermark. A steady rate: raise the idle timeout.",
                    width=12,
                ),
            ),
        ),
        Row(
            "Output",
            (
                Panel(
                    "Kafka messages delivered by topic (per second)",
                    (
                        Target(
                            "sum by (topic) "
                            f"({rate('salvage_kafka_messages_delivered_total', sliced=False)})",
                            "{{topic}}",
                        ),
                        Target(
                            "sum by (topic) "
                            f"({rate('salvage_kafka_delivery_failures_total', sliced=False)})",
                            "failed {{topic}}",
                            optional=True,
                        ),
                    ),
                    unit="ops",
                    width=24,
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (
    RETURN_RECOVERY,
    COURIER_LANES,
    DECISIONS_MODELS,
    PIPELINE_HEALTH,
)
