"""The policy's money is in its own currency (``currency``): an order in another one has its
value and margin converted at the policy's rate (``fx``) before any comparison (review value,
EV against costs, goodwill cap, budgets), and an order in a currency without a rate is priced
by nobody: its claims go to human review (``no_fx_rate``), nothing is offered automatically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from salvage.features.customer import CustomerContext
from salvage.features.order_case import OrderCase
from salvage.policy.config import PolicyError, load_policy
from salvage.policy.engine import decide
from salvage.scoring.baseline import ScoreResult
from tests.flowkit import jsonl, run_file_flow
from tests.helpers import event

DEFAULT = Path(__file__).parents[2] / "policy" / "default.yaml"


def _story(oid: str, currency: str, price: float) -> list[dict]:
    """The probe's repro: a fit return of a delivered one-jacket order (margin 60%)."""
    line = {
        "sku": "J",
        "sku_family": "jackets",
        "qty": 1,
        "unit_price": price,
        "unit_cost": round(price * 0.4, 2),
    }
    return [
        event(
            f"{oid}-placed",
            "order_placed",
            oid,
            "2026-10-01T08:00:00Z",
            customer_id=f"c-{oid}",
            channel="web",
            lines=[line],
            currency=currency,
            promised_delivery_at="2026-10-04T21:59:59Z",
            courier="dhl",
            origin_region="de-west",
            destination_region="fr-north",
        ),
        event(
            f"{oid}-pu",
            "carrier_scan",
            oid,
            "2026-10-01T15:00:00Z",
            scan="picked_up",
            courier="dhl",
        ),
        event(
            f"{oid}-del",
            "carrier_scan",
            oid,
            "2026-10-03T11:00:00Z",
            scan="delivered",
            courier="dhl",
        ),
        event(
            f"{oid}-req",
            "return_requested",
            oid,
            "2026-10-05T10:00:00Z",
            return_id=f"R{oid}",
            reason="too_small",
            items=[{"sku": "SKU-1", "qty": 1}],
            preferred_resolution="refund",
        ),
    ]


def _run(tmp_path: Path, stories: list[list[dict]]) -> dict[str, dict]:
    log = tmp_path / "log.jsonl"
    events = sorted((e for s in stories for e in s), key=lambda e: e["occurred_at"])
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    out = run_file_flow([log], tmp_path / "out")
    return {t["order_id"]: t for t in jsonl(out["interventions"])}


def test_the_probes_repro_3000_sek_is_decided_as_267_90_eur(tmp_path: Path) -> None:
    # 300 EUR and 3,000 SEK (= 267.90 EUR at the default policy's 0.0893): the same return,
    # the same decision; before, the SEK one was a 3,000 "EUR" order: a high-value review
    triggers = _run(tmp_path, [_story("eur300", "EUR", 300.0), _story("sek3000", "SEK", 3000.0)])
    eur, sek = triggers["eur300"], triggers["sek3000"]
    assert eur["action"] == sek["action"] == "exchange_first_offer"
    assert "high_value" not in sek["reason_codes"]
    assert (eur["expected_value"], eur["cost"], eur["currency"]) == (30.1, 4.1, "EUR")
    # EV = 0.3 x P(lost) x value at risk - 4.10, the value 267.90 EUR: 267.9 / 300 of EUR's
    # 34.20 before costs, in EUR (the trigger's currency is its EV's and cost's)
    assert (sek["expected_value"], sek["cost"], sek["currency"]) == (26.44, 4.1, "EUR")


def _suppressed(guardrail: str) -> float:
    return REGISTRY.get_sample_value("salvage_suppressed_total", {"guardrail": guardrail}) or 0.0


def test_an_order_in_a_currency_without_a_rate_is_reviewed_never_priced(tmp_path: Path) -> None:
    # 3,000 BRL (about 470 EUR; the shipped policy has no BRL rate): without a rate it is neither a
    # 3,000 EUR order (a high-value review) nor a guess (an offer priced on it): an agent decides
    before = _suppressed("no_fx_rate")
    triggers = _run(tmp_path, [_story("brl3000", "BRL", 3000.0)])
    brl = triggers["brl3000"]
    assert brl["action"] == "human_review"
    assert brl["reason_codes"][-1] == "no_fx_rate" and "high_value" not in brl["reason_codes"]
    assert (brl["expected_value"], brl["cost"], brl["currency"]) == (0.0, 6.0, "EUR")
    assert _suppressed("no_fx_rate") - before == 1


F0 = OrderCase("o").features(0) | CustomerContext("c").features(0)


def test_the_audit_trail_records_the_rate() -> None:
    from salvage.policy.triggers import decision_record

    f = F0 | {
        "order_value": 3000.0,
        "margin": 1800.0,
        "margin_rate": 0.6,
        "delivered": 1.0,
        "return_requested": 1.0,
        "return_share": 1.0,
        "reason_fit": 1.0,
    }
    scores = ScoreResult(0.524979, 0.017986, "rules-v1")
    d = decide(load_policy(), f, scores, resolved=False, currency="SEK")
    assert d is not None
    assert decision_record(d)["fx"] == {"currency": "SEK", "rate": 0.0893}
    eur = decide(load_policy(), f, scores, resolved=False, currency="EUR")
    assert eur is not None and "fx" not in decision_record(eur)


def _policy_file(tmp_path: Path, fx: str) -> Path:
    text = DEFAULT.read_text()
    start = text.index("\nfx:")
    end = text.index("\nguardrails:")
    path = tmp_path / "p.yaml"
    path.write_text(text[:start] + "\nfx: " + fx + "\n" + text[end:])
    return path


@pytest.mark.parametrize(
    ("fx", "message"),
    [
        ("{SEK: 0}", "fx: Value error, SEK: rate 0.0 is not a finite number"),
        ("{SEK: -0.09}", "fx: Value error, SEK: rate -0.09 is not a finite number"),
        ("{SEK: .inf}", "fx: Value error, SEK: rate inf is not a finite number"),
        ("{SEK: .nan}", "fx: Value error, SEK: rate nan is not a finite number"),
        ("{sek: 0.09}", "fx: Value error, 'sek' is not an ISO 4217 currency code"),
        ("{SEKR: 0.09}", "fx: Value error, 'SEKR' is not an ISO 4217 currency code"),
        ("{EUR: 1.0}", "fx: Value error, EUR is the policy currency (its rate is 1, implicitly)"),
        ("{SEK: true}", "fx: Value error, SEK: the rate must be a number, not True"),
        ("{SEK: '0.09'}", "fx: Value error, SEK: the rate must be a number, not '0.09'"),
        ("[SEK]", "fx: Input should be a valid dictionary"),
    ],
)
def test_rates_are_validated_at_load(tmp_path: Path, fx: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(_policy_file(tmp_path, fx))
    assert message in str(err.value)


def test_a_valid_rate_loads(tmp_path: Path) -> None:
    assert load_policy(_policy_file(tmp_path, "{CHF: 1.07, SEK: 1}")).fx == {
        "CHF": 1.07,
        "SEK": 1.0,
    }


@settings(max_examples=300, deadline=None)
@given(
    cents=st.integers(1, 500_000),
    margin_rate=st.sampled_from((0.0, 0.1, 0.4, 0.6, 0.9)),
    rate=st.sampled_from((0.0893, 0.0862, 0.134, 1.1628, 0.0061, 3.25)),
    rec=st.floats(0.0, 1.0),
    abuse=st.floats(0.0, 1.0),
    flags=st.fixed_dictionaries(
        {
            "return_requested": st.sampled_from((0.0, 1.0)),
            "reason_fit": st.sampled_from((0.0, 1.0)),
            "delivered": st.sampled_from((0.0, 1.0)),
            "slippage_hours": st.sampled_from((0.0, 8.0, 30.0)),
            "wismo_7d": st.sampled_from((0.0, 1.0)),
            "wismo_after_delivered": st.sampled_from((0.0, 1.0)),
            "fit_intent_7d": st.sampled_from((0.0, 1.0)),
        }
    ),
)
def test_a_decision_in_any_rated_currency_is_the_one_in_the_policy_currency(
    cents: int, margin_rate: float, rate: float, rec: float, abuse: float, flags: dict
) -> None:
    """The same order, its amounts in ``CHF`` at ``rate`` or in EUR: the same decision (the
    amounts are cents in EUR, so converting back lands on them exactly: no ties to break)."""
    policy = load_policy().model_copy(update={"fx": {"CHF": rate}})
    value = cents / 100
    eur = (
        F0
        | flags
        | {
            "order_value": value,
            "margin": round(value * margin_rate, 2),
            "margin_rate": margin_rate,
            "return_share": 1.0,
        }
    )
    other = eur | {"order_value": value / rate, "margin": eur["margin"] / rate}
    scores = ScoreResult(rec, abuse, "rules-v1")
    a = decide(policy, eur, scores, resolved=False, currency="EUR")
    b = decide(policy, other, scores, resolved=False, currency="CHF")
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert b.fx == ("CHF", rate) and a.fx is None
        from dataclasses import replace

        assert replace(b, fx=None) == a
