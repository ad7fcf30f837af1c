"""The fully loaded cost of a return: a documented, configurable model.

A returned case (one with a return request) costs the sum of five components, each a label value of
``salvage_return_cost_total{component=...}``:

``return_label``
    The label's cost as reported by ``return_label_issued`` (``label_cost`` in the case facts).
    When a label was issued (or the parcel was received) but the event carried no cost, the
    courier's default from :attr:`CostModel.label_cost_by_courier` (else
    :attr:`CostModel.default_label_cost`).
``intake_labour``
    :attr:`CostModel.intake_labour_per_return` once the warehouse received the parcel.
``support``
    :attr:`CostModel.cost_per_support_touch` per support contact on the order (all of them: a
    return is usually preceded by the contacts that led to it).
``write_off``
    ``return_value * write_off_share[grade]`` once graded: the share of the returned goods' value
    that cannot be resold at full price (A: restocked as new; dispose: lost).
``refund_processing``
    :attr:`CostModel.refund_processing_fee` when the case ended in a refund, or
    :attr:`CostModel.chargeback_fee` when it ended in a chargeback.

Amounts are in the shop's currency and are labelled with the case's ``currency`` (one currency per
deployment; no FX conversion). Load order: defaults, then a JSON or YAML file named by
``SALVAGE_COST_MODEL_FILE`` (YAML needs PyYAML), then ``SALVAGE_COST_*`` environment variables
(mappings as JSON, e.g. ``SALVAGE_COST_LABEL_COST_BY_COURIER='{"swiftship": 4.9}'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

COMPONENTS = ("return_label", "intake_labour", "support", "write_off", "refund_processing")
GRADES = ("A", "B", "refurbish", "dispose")


class CostModel(BaseModel):
    """Unit costs of handling a return (shop currency). Every field has a documented default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_cost_by_courier: dict[str, float] = Field(
        default_factory=lambda: {
            "swiftship": 5.40,
            "parcelgo": 4.90,
            "northpost": 4.20,
            "bluebird": 6.10,
        },
        description="return label cost per courier when the label event carries none",
    )
    default_label_cost: float = Field(5.00, ge=0, description="label cost for other couriers")
    intake_labour_per_return: float = Field(
        3.50, ge=0, description="receiving, inspecting, grading and re-shelving one return"
    )
    cost_per_support_touch: float = Field(4.00, ge=0, description="one support contact")
    write_off_share: dict[str, float] = Field(
        default_factory=lambda: {"A": 0.0, "B": 0.35, "refurbish": 0.6, "dispose": 1.0},
        description="share of the returned value written off, by grade",
    )
    default_write_off_share: float = Field(
        1.0, ge=0, le=1, description="share written off for an unknown grade"
    )
    refund_processing_fee: float = Field(0.80, ge=0, description="payment fees + handling")
    chargeback_fee: float = Field(15.00, ge=0, description="scheme fee for a chargeback")

    @field_validator("write_off_share")
    @classmethod
    def _shares_are_fractions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {g: s for g, s in v.items() if not 0.0 <= s <= 1.0}
        if bad:
            raise ValueError(f"write-off shares must be within [0, 1]: {bad}")
        return v

    @field_validator("label_cost_by_courier")
    @classmethod
    def _costs_non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {c: x for c, x in v.items() if x < 0}
        if bad:
            raise ValueError(f"label costs must be >= 0: {bad}")
        return v

    # ------------------------------------------------------------------ components

    def label_cost(self, courier: str) -> float:
        return self.label_cost_by_courier.get(courier, self.default_label_cost)

    def write_off(self, grade: str, return_value: float) -> float:
        if not grade:
            return 0.0
        return return_value * self.write_off_share.get(grade, self.default_write_off_share)

    def components(self, case: dict[str, Any]) -> dict[str, float]:
        """Cost components of one closed case (its :meth:`OrderCase.facts`); {} if not returned.

        A refunded B-grade return with two support contacts and no label cost on the event:

        >>> case = {"return_requested_at": 1, "received_at": 2, "courier": "parcelgo",
        ...         "grade": "B", "return_value": 80.0, "contacts_total": 2, "outcome": "refund"}
        >>> CostModel().components(case)  # doctest: +NORMALIZE_WHITESPACE
        {'return_label': 4.9, 'intake_labour': 3.5, 'support': 8.0, 'write_off': 28.0,
         'refund_processing': 0.8}
        >>> CostModel().components({"outcome": "kept"})
        {}
        """
        if not case.get("return_requested_at"):
            return {}
        label = float(case.get("label_cost") or 0.0)
        if label <= 0 and (case.get("label_issued_at") or case.get("received_at")):
            label = self.label_cost(case.get("courier") or "")
        outcome = case.get("outcome")
        if outcome == "refund":
            processing = self.refund_processing_fee
        elif outcome == "chargeback":
            processing = self.chargeback_fee
        else:
            processing = 0.0
        return {
            "return_label": label,
            "intake_labour": self.intake_labour_per_return if case.get("received_at") else 0.0,
            "support": self.cost_per_support_touch * int(case.get("contacts_total") or 0),
            "write_off": self.write_off(
                case.get("grade") or "", float(case.get("return_value") or 0.0)
            ),
            "refund_processing": processing,
        }


class CostSettings(CostModel):
    """The ``cost`` group of :class:`salvage.config.Settings`: the cost model plus the file it was
    read from. Precedence: defaults < ``model_file`` < values given (``SALVAGE_COST_*``)."""

    model_file: str | None = Field(
        None, description="cost model file (JSON or YAML); `SALVAGE_COST_*` win"
    )

    @model_validator(mode="before")
    @classmethod
    def _read_model_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model_file"):
            return {**_read_file(Path(data["model_file"])), **data}
        return data


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yml", ".yaml"):
        try:
            import yaml
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from e
        doc = yaml.safe_load(text) or {}
    else:
        doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a cost model is a mapping of field -> value")
    return doc


def load_cost_model(path: str | Path | None = None) -> CostModel:
    """Defaults < file (``path`` or ``SALVAGE_COST_MODEL_FILE``) < ``SALVAGE_COST_*`` env vars."""
    from salvage.config import env_values

    fields = dict(env_values().get("cost", {}))
    if path:
        fields["model_file"] = str(path)
    return CostSettings.model_validate(fields)
