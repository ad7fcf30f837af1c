"""Settings from the environment (prefix ``SALVAGE_``); CLI flags override them."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SALVAGE_", extra="ignore")

    # --- Kafka. No bootstrap => `salvage` starts the embedded broker.
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers (none: the embedded broker)"
    )
    kafka_security_protocol: str | None = Field(
        None, description="librdkafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="librdkafka sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(None, description="librdkafka sasl.username")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="librdkafka sasl.password (never printed)"
    )
    kafka_ssl_ca_location: str | None = Field(None, description="librdkafka ssl.ca.location")
    topic_orders: str = Field("orders", description="topic of the orders stream")
    topic_deliveries: str = Field("deliveries", description="topic of the deliveries stream")
    topic_support: str = Field("support", description="topic of the support stream")
    topic_returns: str = Field("returns", description="topic of the returns stream")
    topic_interventions: str = Field(
        "interventions", description="topic of the interventions stream"
    )
    topic_lane_alerts: str = Field("lane-alerts", description="topic of the lane-alerts stream")
    topic_dead_letters: str = Field("dead-letters", description="topic of the dead-letters stream")
    topic_partitions: int = Field(
        4,
        ge=1,
        description="partitions for topics salvage creates; file mode judges lateness as if the "
        "log were on topics of this many",
    )
    kafka_group_id: str = Field(
        "salvage",
        min_length=1,
        description="consumer group: input offsets are committed at each clean stop, and a run "
        "with no recovery snapshot starts from them (run --from-beginning: from the start)",
    )
    dead_letter_max_bytes: int = Field(
        4096,
        ge=0,
        le=262_144,
        description="payload bytes a dead letter keeps (plus raw_len and raw_sha256 of it all)",
    )

    # --- Redis case store. Empty string disables it.
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="case store and review queue ('' or run --no-case-store disables); set "
        "explicitly, a Redis that is down or refuses the password stops run with exit 2",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password (never printed; URLs are shown redacted)"
    )
    redis_socket_timeout_seconds: float = Field(
        0.5, gt=0, le=30, description="sinks' Redis connect/read timeout: a frozen Redis backs up"
    )
    case_ttl_seconds: int = Field(
        45 * 24 * 3600, ge=60, description="TTL of a case document in Redis (45 days)"
    )

    # --- Dataflow.
    shards: int = Field(8, ge=1, le=1024, description="logical shards per keyed stage; >= workers")
    reorder_tolerance_seconds: float = Field(
        60.0, ge=0, description="within-partition disorder absorbed without re-stamping"
    )
    max_lateness_seconds: float = Field(
        7 * 24 * 3600, ge=0, description="older than this behind its partition: too_late"
    )
    max_future_seconds: float = Field(
        86_400.0, ge=0, description="event time further past the wall clock: bad_timestamp; 0: off"
    )
    max_clock_jump_seconds: float = Field(
        6 * 3600.0,
        ge=0,
        description="one event further ahead of its partition's clock is held until 2 more "
        "confirm the jump, else bad_timestamp; 0: off",
    )
    orphan_wait_seconds: float = Field(
        6 * 3600.0,
        ge=0,
        description="an event before its order_placed waits this long (event time) for it",
    )
    return_window_days: float = Field(
        30.0, gt=0, description="a delivered order with no open return closes (kept) after this"
    )
    settled_grace_days: float = Field(
        45.0,
        ge=0,
        description="after a case settles: grades, contacts, chargebacks and review verdicts "
        "still update customer history, labels and KPIs for this long (not dead letters)",
    )
    kafka_fetch_wait_max_ms: int = Field(
        100, ge=0, le=10_000, description="source fetch.wait.max.ms: latency vs fetch requests"
    )
    source_batch_size: int = Field(
        2000, ge=1, le=100_000, description="events per source read: lower latency vs throughput"
    )
    idle_partition_seconds: float = Field(
        0.5,
        gt=0,
        description="live mode: a partition caught up by offsets and quiet this long stops "
        "holding the watermark; when all are, it reaches the highest partition clock",
    )
    policy: str | None = Field(
        None, description="policy YAML (SALVAGE_POLICY); default: the shipped policy/default.yaml"
    )
    model_shards: int = Field(
        1, ge=1, le=256, description="model replicas (stable key: customer); results per count"
    )
    model_min_labels: int = Field(1000, ge=1, description="labels before a promotion is considered")
    model_promote_margin: float = Field(0.03, ge=0, description="AUC margin over the rules")
    infer_intents: bool = Field(True, description="fill missing support intents from free text")
    intent_threshold: float = Field(0.6, gt=0, le=1, description="below: the intent stays other")
    # --- Lane monitor (features/lane.py): shipment cohorts against each lane's own baseline.
    lane_windows_hours: tuple[float, ...] = Field(
        (12.0, 24.0, 48.0, 96.0, 192.0),
        description="cohort test windows (promises in the last w hours), increasing",
    )
    lane_rate_multiplier: float = Field(1.5, ge=1, description="threshold: k * baseline + margin")
    lane_rate_margin: float = Field(0.05, ge=0, lt=1, description="threshold margin (rate)")
    lane_open_confidence: float = Field(
        0.99, gt=0, lt=1, description="P(cohort late rate > threshold) to open an alert"
    )
    lane_close_confidence: float = Field(
        0.5, gt=0, lt=1, description="close when the recent cohort's P(rate > threshold) < this"
    )
    lane_min_late: int = Field(3, ge=1, description="late shipments in a window to open")
    lane_late_grace_hours: float = Field(
        0.0, ge=0, description="delivered this long after the promise still counts as on time"
    )
    lane_baseline_half_life_days: float = Field(14.0, gt=0, description="lane baseline memory")
    promise_recheck_hours: tuple[float, ...] = Field(
        (6.0, 24.0, 72.0),
        description="re-check a late, undelivered parcel this long after its promise (after the "
        "missed check at +2 h): each check is a case update, so reassurance / delay actions can "
        "fire; increasing, each > 2",
    )
    topic_model_events: str = Field("model-events", description="topic of the model-events stream")
    topic_dispositions: str = Field("dispositions", description="topic of the dispositions stream")
    topic_status_updates: str = Field(
        "return-status", description="topic of the return-status stream"
    )
    topic_journey_alerts: str = Field(
        "journey-alerts", description="topic of the journey-alerts stream"
    )
    follow: bool = Field(
        False, description="bytewax.run entry point in Kafka mode: keep following the topics"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="bind address of /metrics (0.0.0.0 in containers)"
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables the endpoint")

    @model_validator(mode="after")
    def _check_lane(self) -> Settings:
        self.lane_config()  # raises ValueError on settings that cannot work
        hours = list(self.promise_recheck_hours)
        if any(h <= 2 for h in hours) or hours != sorted(set(hours)):
            raise ValueError("promise_recheck_hours: increasing, each > 2 (the missed check)")
        return self

    def lane_config(self):  # -> salvage.features.lane.LaneConfig
        from salvage.features.lane import LaneConfig

        hour = 3_600_000_000
        return LaneConfig(
            windows_us=tuple(int(h * hour) for h in self.lane_windows_hours),
            rate_multiplier=self.lane_rate_multiplier,
            rate_margin=self.lane_rate_margin,
            open_confidence=self.lane_open_confidence,
            close_confidence=self.lane_close_confidence,
            min_late=self.lane_min_late,
            late_grace_us=int(self.lane_late_grace_hours * hour),
            baseline_half_life_us=int(self.lane_baseline_half_life_days * 24 * hour),
        ).validate()

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings common to producers, consumers and the admin client."""
        if not self.kafka_bootstrap:
            raise ValueError("no Kafka bootstrap configured")
        conf: dict[str, str] = {
            "bootstrap.servers": self.kafka_bootstrap,
            # Idle connections closed by the broker are routine; don't log each one.
            "log.connection.close": "false",
        }
        if self.kafka_security_protocol:
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = self.kafka_ssl_ca_location
        return conf

    def input_topics(self) -> dict[str, str]:
        """stream name -> topic."""
        return {
            "orders": self.topic_orders,
            "deliveries": self.topic_deliveries,
            "support": self.topic_support,
            "returns": self.topic_returns,
        }

    def output_topics(self) -> list[str]:
        from salvage.connectors.outputs import OUTPUTS

        return [getattr(self, stream.topic_setting) for stream in OUTPUTS]
