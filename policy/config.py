"""The intervention policy as a file: YAML validated by pydantic, explicit and auditable.

Each action has an eligibility rule (``when``), its economics (expected lift on P(retained), message
cost, goodwill credit, label cost), a budget per event-time day, a channel, a time-to-live and a
holdout share. Global guardrails cap contact frequency and goodwill, block automatic offers above an
abuse threshold, and send costly or ambiguous cases to human review.

The eligibility language is deliberately small. ``when`` maps feature names to comparisons, all of
which must hold; ``any`` holds when at least one of its sub-rules holds::

    when:
      delivered: false            # equality (booleans are 1.0 / 0.0 features)
      slippage_hours: ">= 6"      # one of < <= > >= == !=, then a number
      any:
        - {wismo_7d: ">= 1"}
        - {lost: true}

Feature names are checked at load time against the features the flow computes (case, customer,
and the scores ``recoverability`` / ``abuse``): a typo stops start-up with its field path.
"""

from __future__ import annotations

import math
import operator
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from salvage.connectors.outputs import Action, JourneyAlertKind, JourneyStage
from salvage.features.eventtime import DAY_US, HOUR_US
from salvage.features.journey import JourneyConfig
from salvage.policy.disposition import DispositionPolicy

DEFAULT_POLICY = Path(__file__).with_name("default.yaml")

# Contacts remembered per customer by the dispatch stage (flows/stages/dispatch.py trims its log to
# this): a contact cap above it could never be reached, so the guardrails reject one.
MAX_CONTACT_LOG = 8

_OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_CMP = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


class PolicyError(ValueError):
    """An invalid policy file: the message names the field path and the reason."""


def known_features() -> frozenset[str]:
    """Every feature name a rule may use (computed the way the flow computes them)."""
    from salvage.features.customer import CustomerContext
    from salvage.features.order_case import OrderCase

    names = set(OrderCase("x").features(0)) | set(CustomerContext("x").features(0))
    return frozenset(names | {"recoverability", "abuse"})


def _compile(value: Any) -> tuple[Any, float]:
    if isinstance(value, bool):
        return operator.eq, float(value)
    if isinstance(value, int | float):
        return operator.eq, float(value)
    if isinstance(value, str):
        m = _CMP.match(value)
        if m:
            return _OPS[m.group(1)], float(m.group(2))
    raise ValueError(f"not a comparison: {value!r} (use e.g. '>= 6', '< 0.5', true, 3)")


class Rule(BaseModel):
    """All conditions hold, and (if given) at least one ``any`` sub-rule holds.

    >>> rule = Rule.model_validate(
    ...     {"delivered": False, "any": [{"slippage_hours": ">= 6"}, {"lost": True}]})
    >>> compiled = rule.compiled()
    >>> holds(compiled, {"delivered": 0.0, "slippage_hours": 8.0, "lost": 0.0})
    True
    >>> holds(compiled, {"delivered": 0.0, "slippage_hours": 2.0, "lost": 0.0})  # no ``any``
    False
    >>> holds(compiled, {"delivered": 1.0, "slippage_hours": 8.0, "lost": 1.0})
    False
    >>> try:  # feature names are checked when the rule is loaded
    ...     Rule.model_validate({"slipage_hours": ">= 6"})
    ... except ValueError as exc:
    ...     print(exc.errors()[0]["msg"])
    Value error, unknown feature 'slipage_hours'
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    any: list[Rule] | None = None

    @model_validator(mode="after")
    def _check(self) -> Rule:
        names = known_features()
        for name, value in (self.model_extra or {}).items():
            if name not in names:
                raise ValueError(f"unknown feature {name!r}")
            _compile(value)
        return self

    def compiled(self) -> tuple[list[tuple[str, Any, float]], list]:
        conds = [(n, *_compile(v)) for n, v in sorted((self.model_extra or {}).items())]
        return conds, [r.compiled() for r in self.any or ()]


def holds(compiled: tuple[list, list], f: dict[str, float]) -> bool:
    """Does a compiled :class:`Rule` hold on the features ``f``?

    >>> holds(Rule.model_validate({"wismo_7d": ">= 2"}).compiled(), {"wismo_7d": 2.0})
    True
    """
    conds, anys = compiled
    for name, op, value in conds:
        if not op(f[name], value):
            return False
    return not anys or any(holds(sub, f) for sub in anys)


Money = Annotated[float, Field(ge=0, le=10_000)]


class ActionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    when: Rule
    lift: float = Field(ge=0, le=1, description="expected gain in P(retained) when lost-bound")
    message_cost: Money = 0.0
    goodwill_credit: Money = 0.0
    label_cost: Money = 0.0
    budget_per_day: Money | None = Field(None, description="spend cap per event-time day")
    channel: Literal["email", "sms", "push", "app", "agent"] = "email"
    ttl_hours: int = Field(48, ge=1, le=24 * 30)
    holdout_share: float = Field(0.0, ge=0, le=0.5)

    @property
    def cost(self) -> float:
        return self.message_cost + self.goodwill_credit + self.label_cost


class Guardrails(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    contact_cap_24h: int = Field(1, ge=0)
    contact_cap_30d: int = Field(3, ge=0)
    max_goodwill_share_of_margin: float = Field(0.3, ge=0, le=1)
    abuse_block: float = Field(0.5, gt=0, le=1, description="no automatic offer at or above")
    abuse_history_block: int = Field(
        1,
        ge=0,
        description="a claim (a return, a not-arrived contact) of a customer with at least this "
        "many earlier abuse flags (grades, confirmed reviews) gets no automatic offer and goes "
        "to human review, whatever its abuse score; 0: off",
    )
    review_value: Money = Field(400.0, description="ambiguous cases above this go to review")
    ambiguity_band: tuple[float, float] = (0.35, 0.65)

    @field_validator("contact_cap_24h", "contact_cap_30d")
    @classmethod
    def _cap(cls, v: int, info) -> int:
        if v > MAX_CONTACT_LOG:
            raise ValueError(
                f"{info.field_name} is {v}, at most {MAX_CONTACT_LOG}: the dispatch stage remembers"
                f" only the last {MAX_CONTACT_LOG} contacts per customer, so a higher cap is never"
                " enforced"
            )
        return v

    @field_validator("ambiguity_band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] <= 1:
            raise ValueError("ambiguity_band must be two probabilities, low <= high")
        return v


class JourneyPolicy(BaseModel):
    """Return-journey status updates and breakage alerts (features/journey.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    status_stages: tuple[JourneyStage, ...] = tuple(JourneyStage)
    alerts: tuple[JourneyAlertKind, ...] = tuple(JourneyAlertKind)
    received_ungraded_hours: float = Field(
        72.0, gt=0, le=24 * 60, description="received but ungraded for longer: alert"
    )
    refund_target_days: float = Field(
        7.0, gt=0, le=120, description="received and not settled this long after receipt: alert"
    )
    refund_sla_business_days: int = Field(
        5, ge=0, le=60, description="expected refund date = receipt date + this many business days"
    )

    @field_validator("status_stages", "alerts")
    @classmethod
    def _unique(cls, v: tuple) -> tuple:
        if len(set(v)) != len(v):
            raise ValueError("listed twice: " + ", ".join(sorted({x for x in v if v.count(x) > 1})))
        return v

    def config(self) -> JourneyConfig | None:
        """The case stage's view of this section (None: journey tracking off)."""
        if not self.enabled:
            return None
        return JourneyConfig(
            stages=frozenset(self.status_stages),
            alerts=frozenset(self.alerts),
            received_ungraded_us=int(self.received_ungraded_hours * HOUR_US),
            refund_target_us=int(self.refund_target_days * DAY_US),
            refund_sla_business_days=self.refund_sla_business_days,
        )


# the order features in the order's currency (money): decide() converts them to the policy's
MONEY_FEATURES = ("order_value", "margin")
# a rate outside this range is a typo (a rate given the wrong way round is usually still inside:
# check the README's definition), not an exchange rate
FX_RATE_RANGE = (1e-6, 1e6)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    fx: dict[str, float] = Field(
        default_factory=dict,
        description="units of the policy currency per unit of each order currency (the policy "
        "currency itself: 1, implicitly); an order in a currency not listed is never priced",
    )
    guardrails: Guardrails = Guardrails()
    actions: dict[Action, ActionPolicy]
    disposition: DispositionPolicy = DispositionPolicy()
    journey: JourneyPolicy = JourneyPolicy()
    _compiled: dict | None = PrivateAttr(None)
    _gate: str | None = PrivateAttr(None)  # engine.could_decide's test (its source), on first use

    def compiled_rules(self) -> dict:
        """Each action's eligibility rule, compiled once per policy object."""
        if self._compiled is None:
            self._compiled = {a: p.when.compiled() for a, p in self.actions.items()}
        return self._compiled

    def fx_rate(self, currency: str | None) -> float | None:
        """Units of the policy currency per unit of ``currency`` (None or the policy currency:
        1.0); None when the policy has no rate for it.

        >>> policy = load_policy()
        >>> policy.fx_rate("EUR"), policy.fx_rate("SEK"), policy.fx_rate("BRL")
        (1.0, 0.0893, None)
        """
        if currency is None or currency == self.currency:
            return 1.0
        return self.fx.get(currency)

    @field_validator("fx", mode="before")
    @classmethod
    def _no_bool_rates(cls, fx: Any) -> Any:
        if isinstance(fx, dict):
            for code, rate in fx.items():
                if isinstance(rate, bool) or not isinstance(rate, int | float):
                    raise ValueError(f"{code}: the rate must be a number, not {rate!r}")
        return fx

    @field_validator("fx")
    @classmethod
    def _rates(cls, fx: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        lo, hi = FX_RATE_RANGE
        currency = info.data.get("currency")
        for code, rate in fx.items():
            if not re.fullmatch(r"[A-Z]{3}", code):
                raise ValueError(f"{code!r} is not an ISO 4217 currency code (three capitals)")
            if code == currency:
                raise ValueError(f"{code} is the policy currency (its rate is 1, implicitly)")
            if not (math.isfinite(rate) and lo <= rate <= hi):
                raise ValueError(
                    f"{code}: rate {rate!r} is not a finite number in [{lo:g}, {hi:g}]"
                    f" ({currency} per {code})"
                )
        return fx

    @field_validator("actions")
    @classmethod
    def _all_actions(cls, actions: dict[Action, ActionPolicy]) -> dict[Action, ActionPolicy]:
        missing = set(Action) - set(actions)
        if missing:
            raise ValueError(f"actions missing: {', '.join(sorted(a.value for a in missing))}")
        if not actions[Action.HUMAN_REVIEW].enabled:
            # the abuse and review-value guardrails route claims there; with review off, likely
            # abuse would get no decision at all and its refund would pass unchallenged
            raise ValueError(
                "human_review cannot be disabled: the abuse_block and review_value guardrails route"
                " claims to it (narrow its own 'when' rule instead)"
            )
        return actions


def _where(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "<root>"


def load_policy(path: Path | str | None = None) -> Policy:
    """Load and validate a policy file (default: the shipped ``policy/default.yaml``).

    >>> policy = load_policy()
    >>> policy.version, policy.currency, policy.guardrails.abuse_block
    ('default-v1', 'EUR', 0.5)
    >>> sorted(a.value for a in policy.actions)  # doctest: +NORMALIZE_WHITESPACE
    ['delay_intervention', 'exchange_first_offer', 'human_review', 'proactive_reassurance',
     'product_guidance']
    >>> delay = policy.actions[Action.DELAY_INTERVENTION]
    >>> delay.cost, delay.budget_per_day, delay.holdout_share  # 0.50 message + 5.00 goodwill
    (5.5, 2000.0, 0.1)
    >>> load_policy("no/such/policy.yaml")
    Traceback (most recent call last):
    ...
    salvage.policy.config.PolicyError: no/such/policy.yaml: file not found
    """
    path = Path(path) if path else DEFAULT_POLICY
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise PolicyError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise PolicyError(f"{path}: a policy is a mapping with version, guardrails, actions")
    try:
        return Policy.model_validate(doc)
    except ValidationError as exc:
        lines = [f"{_where(dict(e))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise PolicyError(f"{path}: invalid policy\n  " + "\n  ".join(lines)) from exc
