"""Settings from the environment (prefix ``SALVAGE_``); CLI flags override them.

One tree: :class:`Settings` holds one sub-model per concern (``kafka``, ``topics``, ``dataflow``,
``models``, ``lanes``, ``redis``, ``metrics``, ``kpis``, ``cost``); code reads
``settings.kafka.bootstrap``, ``settings.dataflow.shards``, ... Each field has one **flat**
environment variable, the documented one (``SALVAGE_KAFKA_BOOTSTRAP``, ``SALVAGE_SHARDS``,
``SALVAGE_KPI_TOP_N_LANE``, ``SALVAGE_COST_CHARGEBACK_FEE``: see :data:`FLAT` and the README's
settings table), and the nested form works too (``SALVAGE_KAFKA__BOOTSTRAP``,
``SALVAGE_DATAFLOW__SHARDS``; it wins over the flat name). Keyword arguments take the flat names
(``Settings(shards=4, redis_url="")``) or the groups (``Settings(dataflow={"shards": 4})``).

:func:`salvage.settings_doc.validate_all` builds it once at CLI start (KPI and cost settings
included) and renders the tree ``salvage config`` prints, secrets redacted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from salvage.features.anonymous import ANONYMOUS_CUSTOMER_IDS
from salvage.sinks.cost_model import CostSettings

if TYPE_CHECKING:
    from salvage.features.lane import LaneConfig


class Group(BaseModel):
    """A settings group. Its fields' flat environment names are ``SALVAGE_`` + ``flat_prefix`` +
    the field name, except those in ``flat_names``."""

    model_config = ConfigDict(extra="forbid")
    flat_prefix: ClassVar[str] = ""
    flat_names: ClassVar[dict[str, str]] = {}


class KafkaSettings(Group):
    """Kafka connection. No bootstrap => `salvage` starts the embedded broker."""

    flat_prefix = "kafka_"

    bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers (none: the embedded broker)"
    )
    security_protocol: str | None = Field(
        None, description="librdkafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    sasl_mechanism: str | None = Field(
        None, description="librdkafka sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    )
    sasl_username: str | None = Field(None, description="librdkafka sasl.username")
    sasl_password: SecretStr | None = Field(
        None, description="librdkafka sasl.password (never printed)"
    )
    ssl_ca_location: str | None = Field(None, description="librdkafka ssl.ca.location")
    fetch_wait_max_ms: int = Field(
        100, ge=0, le=10_000, description="source fetch.wait.max.ms: latency vs fetch requests"
    )
    group_id: str = Field(
        "salvage",
        min_length=1,
        description="consumer group: input offsets are committed at each clean stop, and a run "
        "with no recovery snapshot starts from them (run --from-beginning: from the start)",
    )

    def as_librdkafka_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The confluent-kafka (librdkafka) configuration every producer, consumer and admin
        client starts from, plus ``extra`` (e.g. ``{"group.id": ...}``). Holds the SASL password
        in clear: pass it to a client, never print it."""
        if not self.bootstrap:
            raise ValueError("no Kafka bootstrap configured")
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            # Idle connections closed by the broker are routine; don't log each one.
            "log.connection.close": "false",
        }
        for key, value in (
            ("security.protocol", self.security_protocol),
            ("sasl.mechanism", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password and self.sasl_password.get_secret_value()),
            ("ssl.ca.location", self.ssl_ca_location),
        ):
            if value:
                conf[key] = value
        conf.update(extra or {})
        return conf


class TopicSettings(Group):
    """Topic names (inputs, then every output stream of connectors/outputs.py)."""

    flat_prefix = "topic_"

    partitions: int = Field(
        4,
        ge=1,
        description="partitions for topics salvage creates; file mode judges lateness as if the "
        "log were on topics of this many",
    )
    orders: str = Field("orders", description="topic of the orders stream")
    deliveries: str = Field("deliveries", description="topic of the deliveries stream")
    support: str = Field("support", description="topic of the support stream")
    returns: str = Field("returns", description="topic of the returns stream")
    interventions: str = Field("interventions", description="topic of the interventions stream")
    lane_alerts: str = Field("lane-alerts", description="topic of the lane-alerts stream")
    dead_letters: str = Field("dead-letters", description="topic of the dead-letters stream")
    model_events: str = Field("model-events", description="topic of the model-events stream")
    dispositions: str = Field("dispositions", description="topic of the dispositions stream")
    status_updates: str = Field("return-status", description="topic of the return-status stream")
    journey_alerts: str = Field("journey-alerts", description="topic of the journey-alerts stream")

    def inputs(self) -> dict[str, str]:
        """stream name -> topic."""
        return {
            "orders": self.orders,
            "deliveries": self.deliveries,
            "support": self.support,
            "returns": self.returns,
        }

    def output(self, stream: Any) -> str:
        """The topic of an output stream (an ``OutputStream`` of connectors/outputs.py)."""
        return str(getattr(self, stream.topic_setting.removeprefix("topic_")))

    def outputs(self) -> list[str]:
        from salvage.connectors.outputs import OUTPUTS

        return [self.output(stream) for stream in OUTPUTS]


class DataflowSettings(Group):
    """Shards, event-time handling, case lifecycle, the source, the policy."""

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
        description="one event further ahead of its partition's clock is held until the clock "
        "comes within this of it or 2 more confirm it; bad_timestamp once the clock moved on this "
        "much without reaching it; 0: off",
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
        description="after a case settles: grades, contacts, chargebacks, review verdicts and "
        "another return's events still update customer history, labels and KPIs for this long "
        "(not dead letters)",
    )
    promise_recheck_hours: tuple[float, ...] = Field(
        (6.0, 24.0, 72.0),
        description="re-check a late, undelivered parcel this long after its promise (after the "
        "missed check at +2 h): each check is a case update, so reassurance / delay actions can "
        "fire; increasing, each > 2",
    )
    anonymous_customer_ids: tuple[str, ...] = Field(
        ANONYMOUS_CUSTOMER_IDS,
        description="customer ids that name nobody (guest checkouts, placeholders; matched "
        "case-insensitively): each such order is its own customer, sharing no history; [] for "
        "none",
    )
    source_batch_size: int = Field(
        2000, ge=1, le=100_000, description="events per source read: lower latency vs throughput"
    )
    source_batch_ms: float = Field(
        20.0,
        ge=0,
        le=10_000,
        description="Kafka mode: a source read takes at most the events its worker handles in "
        "about this many ms (measured cost per event; at most source_batch_size); 0: no bound",
    )
    idle_partition_seconds: float = Field(
        0.5,
        gt=0,
        description="live mode: when a process has read nothing this long, its partitions caught "
        "up by offsets are idle (stop holding the watermark; when all are, it reaches the highest "
        "partition clock); within a flowing stream a sparse partition's clock follows by checks",
    )
    follow: bool = Field(
        False, description="bytewax.run entry point in Kafka mode: keep following the topics"
    )
    policy: str | None = Field(
        None, description="policy YAML (SALVAGE_POLICY); default: the shipped policy/default.yaml"
    )
    dead_letter_max_bytes: int = Field(
        4096,
        ge=0,
        le=262_144,
        description="payload bytes a dead letter keeps (plus raw_len and raw_sha256 of it all)",
    )

    @model_validator(mode="after")
    def _check_rechecks(self) -> DataflowSettings:
        hours = list(self.promise_recheck_hours)
        if any(h <= 2 for h in hours) or hours != sorted(set(hours)):
            raise ValueError("promise_recheck_hours: increasing, each > 2 (the missed check)")
        return self


class ModelSettings(Group):
    """Online models (scoring/models.py) and intent inference (scoring/text.py)."""

    flat_prefix = "model_"
    flat_names = {"infer_intents": "infer_intents", "intent_threshold": "intent_threshold"}

    shards: int = Field(
        0,
        ge=0,
        le=256,
        description="model replicas (stable key: customer); 0: one per process of the cluster; "
        "results are deterministic per count",
    )
    min_labels: int = Field(1000, ge=1, description="labels before a promotion is considered")
    promote_margin: float = Field(0.03, ge=0, description="AUC margin over the rules")
    engine: Literal["numba", "python"] = Field(
        "numba",
        description="model core: numba (compiled) or python (the reference); identical outputs",
    )
    infer_intents: bool = Field(True, description="fill missing support intents from free text")
    intent_threshold: float = Field(0.6, gt=0, le=1, description="below: the intent stays other")


class LaneSettings(Group):
    """Lane monitor (features/lane.py): shipment cohorts against each lane's own baseline."""

    flat_prefix = "lane_"

    windows_hours: tuple[float, ...] = Field(
        (12.0, 24.0, 48.0, 96.0, 192.0),
        description="cohort test windows (promises in the last w hours), increasing",
    )
    rate_multiplier: float = Field(1.5, ge=1, description="threshold: k * baseline + margin")
    rate_margin: float = Field(0.05, ge=0, lt=1, description="threshold margin (rate)")
    open_confidence: float = Field(
        0.99, gt=0, lt=1, description="P(cohort late rate > threshold) to open an alert"
    )
    close_confidence: float = Field(
        0.5, gt=0, lt=1, description="close when the recent cohort's P(rate > threshold) < this"
    )
    min_late: int = Field(3, ge=1, description="late shipments in a window to open")
    late_grace_hours: float = Field(
        0.0, ge=0, description="delivered this long after the promise still counts as on time"
    )
    baseline_half_life_days: float = Field(14.0, gt=0, description="lane baseline memory")
    adapt_after_days: float = Field(
        28.0,
        ge=0,
        description="a shift that keeps a lane in alert this long (a close reopened within the "
        "longest window continues it) closes as the lane's new normal: the shift's shipments "
        "become its baseline; 0: never; else at least the longest window",
    )

    @model_validator(mode="after")
    def _check(self) -> LaneSettings:
        self.config()  # raises ValueError on settings that cannot work
        return self

    def config(self) -> LaneConfig:
        from salvage.features.lane import LaneConfig

        hour = 3_600_000_000
        return LaneConfig(
            windows_us=tuple(int(h * hour) for h in self.windows_hours),
            rate_multiplier=self.rate_multiplier,
            rate_margin=self.rate_margin,
            open_confidence=self.open_confidence,
            close_confidence=self.close_confidence,
            min_late=self.min_late,
            late_grace_us=int(self.late_grace_hours * hour),
            baseline_half_life_us=int(self.baseline_half_life_days * 24 * hour),
            adapt_after_us=int(self.adapt_after_days * 24 * hour),
        ).validate()


class RedisSettings(Group):
    """Case store and review queue. An empty URL disables them."""

    flat_prefix = "redis_"
    flat_names = {"case_ttl_seconds": "case_ttl_seconds"}

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="case store and review queue ('' or run --no-case-store disables); set "
        "explicitly, a Redis that is down or refuses the password stops run with exit 2",
    )
    password: SecretStr | None = Field(
        None, description="Redis password (never printed; URLs are shown redacted)"
    )
    socket_timeout_seconds: float = Field(
        0.5, gt=0, le=30, description="sinks' Redis connect/read timeout: a frozen Redis backs up"
    )
    case_ttl_seconds: int = Field(
        45 * 24 * 3600, ge=60, description="TTL of a case document in Redis (45 days)"
    )

    def password_value(self) -> str | None:
        return self.password.get_secret_value() if self.password else None


class MetricsSettings(Group):
    """The Prometheus endpoint."""

    flat_prefix = "metrics_"

    host: str = Field("127.0.0.1", description="bind address of /metrics (0.0.0.0 in containers)")
    port: int = Field(9464, ge=0, le=65535, description="0 disables the endpoint")


class KpiSettings(BaseSettings):
    """KPI knobs (sinks/kpis.py; env prefix ``SALVAGE_KPI_``): label buckets of the metrics. A
    settings class of its own too: ``KpiSettings()`` reads ``SALVAGE_KPI_*`` alone."""

    model_config = SettingsConfigDict(env_prefix="SALVAGE_KPI_", extra="forbid")
    flat_prefix: ClassVar[str] = "kpi_"
    flat_names: ClassVar[dict[str, str]] = {}

    repeat_window_days: float = Field(90.0, gt=0, description="repeat-customer window")
    top_n_campaign: int = Field(12, ge=0)
    top_n_sku_family: int = Field(16, ge=0)
    top_n_lane: int = Field(32, ge=0)
    # the lane delay metrics (3 series per lane, no other dimension) afford many more lanes than
    # the KPIs, where a lane multiplies with campaign and SKU family
    top_n_lane_monitor: int = Field(256, ge=0)
    top_n_courier: int = Field(8, ge=0)
    top_n_support_reason: int = Field(12, ge=0)
    top_n_action: int = Field(12, ge=0)
    top_n_outcome: int = Field(12, ge=0)
    top_n_grade: int = Field(6, ge=0)
    top_n_reason: int = Field(12, ge=0)
    top_n_currency: int = Field(
        4,
        ge=0,
        description="currencies whose money keeps its campaign / SKU family / lane / support "
        "reason / courier slices (first come); a later currency keeps its own `currency` label, "
        "those slices `other`",
    )
    preset_campaign: list[str] = []
    preset_sku_family: list[str] = []
    preset_lane: list[str] = []
    preset_courier: list[str] = []

    def top_n(self, label: str) -> int:
        return int(getattr(self, f"top_n_{label}"))

    def preset(self, label: str) -> list[str]:
        label = "lane" if label == "lane_monitor" else label
        return list(getattr(self, f"preset_{label}", []))

    @classmethod
    def from_env(cls) -> KpiSettings:
        """Built from the ``SALVAGE_KPI_*`` (and ``SALVAGE_KPIS__*``) variables alone."""
        return cls(**env_values().get("kpis", {}))


# group name -> its model; the order is `salvage config`'s
GROUP_MODELS: dict[str, type[BaseModel]] = {
    "kafka": KafkaSettings,
    "topics": TopicSettings,
    "dataflow": DataflowSettings,
    "models": ModelSettings,
    "lanes": LaneSettings,
    "redis": RedisSettings,
    "metrics": MetricsSettings,
    "kpis": KpiSettings,
    "cost": CostSettings,
}
_PREFIXES = {"cost": "cost_"}  # CostSettings lives in sinks/cost_model.py


def _flat_name(group: str, field: str) -> str:
    model = GROUP_MODELS[group]
    prefix = str(_PREFIXES.get(group) or getattr(model, "flat_prefix", ""))
    return str(getattr(model, "flat_names", {}).get(field, prefix + field))


FLAT: dict[str, tuple[str, str]] = {
    _flat_name(group, field): (group, field)
    for group, model in GROUP_MODELS.items()
    for field in model.model_fields
}
"""Flat name (``SALVAGE_`` + its upper case is the environment variable) -> (group, field)."""


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"shards": 4, "kafka": {...}}`` -> ``{"dataflow": {"shards": 4}, "kafka": {...}}``: flat
    names go into their group, everything else is kept as it is (flat names win)."""
    out: dict[str, Any] = {k: v for k, v in flat.items() if k not in FLAT}
    for name, value in flat.items():
        if name in FLAT:
            group, field = FLAT[name]
            sub = out.get(group)
            if isinstance(sub, BaseModel):
                sub = sub.model_dump()
            out[group] = {**(sub or {}), field: value}
    return out


# one optional field per flat name, with the nested field's type: pydantic-settings' own env
# source then reads the flat variables (JSON for lists and mappings, case-insensitive)
class _FlatBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SALVAGE_", extra="ignore")


_FLAT_FIELDS: dict[str, Any] = {
    name: (cast(Any, GROUP_MODELS[g].model_fields[f].annotation) | None, None)
    for name, (g, f) in FLAT.items()
}
_FlatEnv = create_model("_FlatEnv", __base__=_FlatBase, **_FLAT_FIELDS)


class _FlatEnvSource(PydanticBaseSettingsSource):
    """The documented flat variables (``SALVAGE_SHARDS``), nested into their groups."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """One group's values from the flat variables (``__call__`` reads all groups at once)."""
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = EnvSettingsSource(_FlatEnv)()
        return nest({k: v for k, v in values.items() if v is not None})


class Settings(BaseSettings):
    """Every setting of the pipeline, as a tree of groups (see the module docstring)."""

    model_config = SettingsConfigDict(
        env_prefix="SALVAGE_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    dataflow: DataflowSettings = Field(default_factory=DataflowSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    lanes: LaneSettings = Field(default_factory=LaneSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    kpis: KpiSettings = Field(default_factory=KpiSettings)
    cost: CostSettings = Field(default_factory=CostSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # keyword arguments, then SALVAGE_GROUP__FIELD, then the flat SALVAGE_FIELD names
        return (init_settings, env_settings, _FlatEnvSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_arguments(cls, data: Any) -> Any:
        return nest(data) if isinstance(data, Mapping) else data

    def updated(self, **changes: Any) -> Settings:
        """A copy with some fields changed, by flat name (``updated(shards=8)``); not validated
        (like ``model_copy``)."""
        groups: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            group, field = FLAT[name]
            groups.setdefault(group, {})[field] = value
        return self.model_copy(
            update={g: getattr(self, g).model_copy(update=u) for g, u in groups.items()}
        )

    # -- read-only flat names (``settings.shards``) for older callers; the tree is the API
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            where = FLAT.get(name)
            if where is None:
                return super().__getattr__(name)
            return getattr(getattr(self, where[0]), where[1])


def env_values() -> dict[str, Any]:
    """What the environment sets, as a (partial) nested tree: flat and nested variables (nested
    ones win), without validating it."""
    out = _FlatEnvSource(Settings)()
    for group, value in EnvSettingsSource(Settings, env_nested_delimiter="__")().items():
        flat = out.get(group)
        out[group] = (
            {**flat, **value} if isinstance(flat, dict) and isinstance(value, dict) else value
        )
    return out
