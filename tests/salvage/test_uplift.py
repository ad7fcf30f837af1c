"""Intention-to-treat uplift: the interval maths, the open-loop null, and the closed-loop truth."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from salvage.cli import app
from salvage.connectors.closed_loop import EXPERIMENT_POLICY, read_true_effects
from salvage.connectors.closed_loop import write_log as write_closed_loop
from salvage.uplift import (
    Unit,
    analyse,
    bootstrap_diff,
    fold_outcomes,
    load_customers,
    load_units,
    mde,
    newcombe,
    uplift,
)
from tests.flowkit import run_file_flow, sim_log

runner = CliRunner()


def _contains(ci, x: float) -> bool:
    return ci[0] - 1e-9 <= x <= ci[1] + 1e-9


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), Stat Med 17:873, method 10 (hybrid score): 56/70 - 48/80
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    # swapping the arms mirrors the interval
    d2, lo2, hi2 = newcombe(48, 80, 56, 70)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))
    # no holdout: no interval to speak of
    assert newcombe(5, 10, 0, 0)[1:] == (-1.0, 1.0)


def test_newcombe_covers_the_true_difference_about_95_percent_of_the_time():
    rng = random.Random(5)
    hits = 0
    reps = 600
    for _ in range(reps):
        n1, n0 = 300, 40
        k1 = sum(rng.random() < 0.7 for _ in range(n1))
        k0 = sum(rng.random() < 0.6 for _ in range(n0))
        _, lo, hi = newcombe(k1, n1, k0, n0)
        hits += lo <= 0.1 <= hi
    assert 0.92 <= hits / reps <= 0.98


def test_bootstrap_is_deterministic_and_brackets_the_difference():
    rng = np.random.default_rng(1)
    x1, x0 = rng.normal(12.0, 5.0, 400), rng.normal(10.0, 5.0, 60)
    a = bootstrap_diff([(x1, x0)], [1.0])
    assert a == bootstrap_diff([(x1, x0)], [1.0])  # fixed seed: same interval every time
    d, lo, hi = a
    assert d == pytest.approx(x1.mean() - x0.mean())
    assert lo < d < hi
    se = np.sqrt(x1.var() / 400 + x0.var() / 60)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # close to the normal interval


def test_mde_shrinks_with_the_sample():
    assert mde(100, 10, 0.6) > mde(1000, 100, 0.6) > mde(10000, 1000, 0.6)
    assert mde(1000, 100, 0.6) == pytest.approx(2.8 * np.sqrt(0.24 * (1 / 1000 + 1 / 100)), 0.01)


def _units(action: str, n_t: int, n_h: int, p_t: float, p_h: float, rng) -> list[Unit]:
    out = []
    for i in range(n_t + n_h):
        hold = i >= n_t
        kept = rng.random() < (p_h if hold else p_t)
        out.append(
            Unit(f"{action}{i}", action, hold, kept, 10.0 if kept else 0.0, 0.0 if kept else 50.0)
        )
    return out


def test_overall_is_stratified_so_unequal_holdout_shares_do_not_fake_an_effect():
    """Action a: 50% held out, retention 0.9; action b: 5% held out, retention 0.3; no effect.
    Pooling the arms would show a large negative 'uplift' (Simpson); the stratified one is ~0."""
    rng = random.Random(2)
    units = _units("a", 1000, 1000, 0.9, 0.9, rng) + _units("b", 1900, 100, 0.3, 0.3, rng)
    r = analyse(units)
    pooled = r["overall"]["treated"]["rate"] - r["overall"]["holdout"]["rate"]
    assert pooled < -0.2
    assert _contains(r["overall"]["ci"], 0.0)
    assert abs(r["overall"]["diff"]) < 0.05
    assert r["overall"]["n_treated"] == 2900 and r["overall"]["n_holdout"] == 1100
    assert set(r["actions"]) == {"a", "b"}
    # money: retained margin 10 per kept order, leakage 50 per lost one
    assert _contains(r["overall"]["retained_margin"]["ci"], 0.0)
    assert _contains(r["overall"]["refund_leakage"]["ci"], 0.0)


def test_a_small_holdout_says_so():
    rng = random.Random(3)
    r = analyse(_units("a", 200, 40, 0.6, 0.6, rng) + _units("b", 20, 5, 0.6, 0.6, rng))
    assert "would be detected" in r["actions"]["a"]["note"]
    assert "too few" in r["actions"]["b"]["note"]
    assert analyse(_units("c", 50, 0, 0.5, 0.5, rng))["actions"]["c"]["diff"] is None


def test_open_orders_count_as_retained(tmp_path):
    (tmp_path / "assignments.jsonl").write_text(
        "\n".join(
            json.dumps({"order_id": o, "action": "x", "holdout": h, "margin": 5.0})
            for o, h in (("A", False), ("B", False), ("C", True))
        )
    )
    (tmp_path / "outcomes.jsonl").write_text(
        json.dumps({"order_id": "B", "outcome": "chargeback", "refunded_amount": 30.0})
    )
    units = {u.order_id: u for u in load_units(tmp_path)}
    assert units["A"].retained and units["C"].retained  # A and C never closed
    assert not units["B"].retained and units["B"].refunded == 30.0 and units["B"].margin == 0.0


def _outcome_lines(oid: str, outcome: str, at_close: float, later: list[float]) -> list[dict]:
    """What the dispatch stage writes for one order: its outcome at the close, then one
    amendment per later payment with the running total (DispatchStage._amend)."""
    close = {
        "order_id": oid,
        "outcome": outcome,
        "retained": outcome not in ("refund", "chargeback"),
        "refunded_amount": at_close,
        "closed_at": "2026-03-08T10:00:00Z",
    }
    lines, total = [close], at_close
    for i, amount in enumerate(later):
        total = round(total + amount, 2)
        lines.append(
            {
                **close,
                "record": "outcome_amended",
                "refunded_amount": total,
                "amended_at": f"2026-03-{10 + i:02d}T10:00:00Z",
                "late": "refund_issued" if i % 3 else "chargeback_filed",
                "amount": amount,
                "currency": "EUR",
                "basis": "fit",
                "source_event_id": f"{oid}-e{i}",
            }
        )
    return lines


_MONEY = st.integers(1, 50_000).map(lambda c: c / 100)
_ORDERS = st.lists(
    st.tuples(
        st.sampled_from(["refund", "kept", "exchange", "chargeback", "cancelled"]),
        st.one_of(st.just(0.0), _MONEY),
        st.lists(_MONEY, max_size=5),
    ),
    min_size=1,
    max_size=6,
)


@given(orders=_ORDERS, data=st.data())
def test_folding_the_outcomes_takes_every_later_payment_once_in_any_order(orders, data):
    """An order's folded refunded amount is its close's plus every later payment, rounded as
    written; so is its latest line's (a reader keeping an order's last line, as salvage uplift
    did before amendments, reads the same total); repeated lines, any order of the lines, and a
    missing line other than the last amendment change nothing."""
    streams = {
        f"o{i}": _outcome_lines(f"o{i}", outcome, at_close, later)
        for i, (outcome, at_close, later) in enumerate(orders)
    }
    expected = {}
    for oid, lines in streams.items():
        total = lines[0]["refunded_amount"]
        for line in lines[1:]:
            total = round(total + line["amount"], 2)
        expected[oid] = {**lines[0], "refunded_amount": total}
        assert lines[-1]["refunded_amount"] == total
    in_order = [x for lines in streams.values() for x in lines]
    assert fold_outcomes(in_order) == expected
    assert {x["order_id"]: x["refunded_amount"] for x in in_order} == {
        k: v["refunded_amount"] for k, v in expected.items()
    }
    shaken = in_order + data.draw(st.lists(st.sampled_from(in_order), max_size=8))
    shaken = data.draw(st.permutations(shaken))
    assert fold_outcomes(shaken) == expected
    # a line lost (not an order's last one, nor its only one), its close's included: an
    # amendment restates the outcome, and the later totals include the lost payment
    droppable = [x for lines in streams.values() for x in lines[:-1]]
    if droppable:
        lost = data.draw(st.sampled_from(droppable))
        assert fold_outcomes(x for x in shaken if x != lost) == expected


def test_customers_are_in_the_arm_of_their_first_assignment_and_repeat_within_90_days(tmp_path):
    rows = [  # (order, customer, action, holdout, decided_at)
        ("A1", "a", "x", False, "2026-03-05T10:00:00Z"),
        ("A0", "a", "y", True, "2026-03-03T10:00:00Z"),  # a's first assignment: y, held out
        ("B1", "b", "x", True, "2026-03-02T00:00:00Z"),
        ("C1", "c", "x", False, "2026-03-02T00:00:00Z"),
        ("D1", "d", "y", False, "2026-03-02T00:00:00Z"),
    ]
    (tmp_path / "assignments.jsonl").write_text(
        "\n".join(
            json.dumps(
                {"order_id": o, "customer_id": c, "action": a, "holdout": h, "decided_at": t}
            )
            for o, c, a, h, t in rows
        )
    )
    assert load_customers(tmp_path) is None  # a run from before orders.jsonl: no repeat table
    placed = [  # (order, customer, placed_at)
        ("A0", "a", "2026-03-01T00:00:00Z"),
        ("A1", "a", "2026-03-02T00:00:00Z"),  # placed before a's first decision: not a repeat
        ("B0", "b", "2026-03-01T00:00:00Z"),  # before the decision
        ("B1", "b", "2026-03-01T12:00:00Z"),  # the assigned order itself
        ("B2", "b", "2026-05-31T00:00:00Z"),  # day 90 after B1's decision: a repeat
        ("C2", "c", "2026-05-31T00:00:01Z"),  # one second past 90 days: not one
        ("X1", "x", "2026-03-10T00:00:00Z"),  # never assigned
    ]
    (tmp_path / "orders.jsonl").write_text(
        "\n".join(
            json.dumps({"order_id": o, "customer_id": c, "placed_at": t}) for o, c, t in placed
        )
    )
    got = {c.customer_id: (c.action, c.holdout, c.repeated) for c in load_customers(tmp_path)}
    assert got == {
        "a": ("y", True, False),
        "b": ("x", True, True),
        "c": ("x", False, False),
        "d": ("y", False, False),
    }
    r = uplift(tmp_path)
    rep = r["actions"]["x"]["repeat"]
    assert (rep["n_treated"], rep["n_holdout"]) == (1, 1)
    assert rep["treated"]["rate"] == 0.0 and rep["holdout"]["rate"] == 1.0 and rep["diff"] == -1.0
    assert "too few" in rep["note"]
    assert r["overall"]["repeat"]["n_treated"] == 2 and r["overall"]["repeat"]["n_holdout"] == 2


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_open_loop_steady_state_shows_no_uplift(seed, tmp_path_factory):
    """Outcomes ignore interventions here: the overall interval contains 0 on every seed, and
    the per-action intervals contain 0 as often as 95% intervals should."""
    log = sim_log(tmp_path_factory.mktemp("logs"), "steady-state", 3000, seed)
    out = tmp_path_factory.mktemp("out")
    run_file_flow([log], out)
    r = uplift(out)
    assert r["overall"]["n_holdout"] > 50
    assert _contains(r["overall"]["ci"], 0.0), r["overall"]
    blocks = [b for b in r["actions"].values() if b["diff"] is not None]
    assert len(blocks) >= 3
    # 95% intervals: with 3-4 actions, at most one may miss 0 on a seed
    assert sum(_contains(b["ci"], 0.0) for b in blocks) >= len(blocks) - 1


@pytest.fixture(scope="module")
def closed_loop(tmp_path_factory):
    """The closed-loop world (experiment policy: every action held out at 50%), 6,000 orders."""
    d = tmp_path_factory.mktemp("closed")
    record = write_closed_loop(6000, 11, d / "events.jsonl", d / "truth.jsonl")
    return d, record


@pytest.fixture(scope="module")
def closed_loop_uplift(closed_loop, tmp_path_factory):
    """`salvage run` from scratch on the closed-loop log with its policy, then `salvage uplift
    --json`."""
    d, _record = closed_loop
    out = tmp_path_factory.mktemp("closed-run")
    run = runner.invoke(
        app,
        [
            "run",
            "--input",
            str(d / "events.jsonl"),
            "--out-dir",
            str(out),
            "--policy",
            str(EXPERIMENT_POLICY),
        ],
    )
    assert run.exit_code == 0, run.output
    cli = runner.invoke(app, ["uplift", "--out-dir", str(out), "--json"])
    assert cli.exit_code == 0, cli.output
    return json.loads(cli.stdout)


ACTIONS = {
    "proactive_reassurance",
    "delay_intervention",
    "exchange_first_offer",
    "product_guidance",
    "human_review",
}


def test_closed_loop_estimates_contain_the_true_effects(closed_loop, closed_loop_uplift):
    d, record = closed_loop
    r = closed_loop_uplift
    assert record == read_true_effects(d / "truth.jsonl")
    assert record["converged"] and record["policy_version"] == "closed-loop-v1"
    truth = record["true_effects"]
    assert set(truth) == ACTIONS
    assert truth["exchange_first_offer"] > 0.05 and truth["product_guidance"] < -0.02
    assert truth["delay_intervention"] > 0.02
    assert truth["proactive_reassurance"] == 0.0 and truth["human_review"] == 0.0
    # the pipeline, from scratch on the reacted log, assigns exactly as the world reacted to
    assert set(r["overall"]) >= {"diff", "ci", "n_treated", "n_holdout"}
    assigned = {a: b["n_treated"] + b["n_holdout"] for a, b in r["actions"].items()}
    assert assigned == record["assigned"]
    # the experiment policy randomises all five actions, rule-chosen reviews included, and each
    # is an order's first chosen action often enough for an interval
    assert set(r["actions"]) == ACTIONS
    for action, b in r["actions"].items():
        assert b["diff"] is not None and min(b["n_treated"], b["n_holdout"]) >= 40, action
    covered = [a for a, b in r["actions"].items() if _contains(b["ci"], truth[a])]
    assert len(covered) >= 4, r["actions"]
    assert _contains(r["overall"]["ci"], record["overall"])
    # a real effect is detected where the sample allows: exchange-first is clearly positive
    assert r["actions"]["exchange_first_offer"]["diff"] > 0


def test_closed_loop_repeat_rate_per_customer_contains_the_true_effects(
    closed_loop, closed_loop_uplift
):
    """Customers as units: the arm of their first assignment, repeat = another order within 90
    days; the world adds (or removes) repeat orders of treated customers with known effects."""
    d, record = closed_loop
    r = closed_loop_uplift
    truth = record["repeat"]["true_effects"]
    assert set(truth) == ACTIONS and record["repeat"]["window_days"] == 90
    assert truth["product_guidance"] > 0.08 and truth["proactive_reassurance"] > 0.05
    assert truth["human_review"] < -0.02
    assert truth["delay_intervention"] == 0.0 and truth["exchange_first_offer"] == 0.0
    customers = {
        a: b["repeat"]["n_treated"] + b["repeat"]["n_holdout"] for a, b in r["actions"].items()
    }
    assert customers == record["repeat"]["customers"]
    blocks = {a: b["repeat"] for a, b in r["actions"].items()}
    assert all(b["diff"] is not None and b["ci"] for b in blocks.values())
    covered = [a for a, b in blocks.items() if _contains(b["ci"], truth[a])]
    assert len(covered) >= 4, blocks
    overall = r["overall"]["repeat"]
    assert _contains(overall["ci"], record["repeat"]["overall"]), overall
    # the sign is recovered where the effect is large for the sample
    assert record["repeat"]["overall"] > 0.02 and overall["diff"] > 0
    assert blocks["product_guidance"]["diff"] > 0
    # the world's repeat orders are real orders in the log, placed by the reacting customers
    added = [
        json.loads(x)
        for x in (d / "truth.jsonl").read_text().splitlines()
        if "repeat_reaction_to" in x
    ]
    assert added and {a["repeat_reaction_to"] for a in added} <= {
        "proactive_reassurance",
        "product_guidance",
    }
    placed = {
        e["order_id"]: e["customer_id"]
        for e in map(json.loads, (d / "events.jsonl").read_text().splitlines())
        if e["event_type"] == "order_placed"
    }
    assert all(placed[a["order_id"]] == a["customer_id"] for a in added)


def test_uplift_cli_explains_a_directory_without_assignments(tmp_path):
    result = runner.invoke(app, ["uplift", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "assignments.jsonl" in result.output


@pytest.mark.integration
def test_closed_loop_log_in_kafka_mode_gives_the_file_mode_assignments(
    closed_loop, kafka_broker, tmp_path, unique_name
):
    from bytewax.testing import cluster_main

    from salvage.connectors.broker import ensure_topics
    from salvage.flows.recovery import FlowSpec, build_flow
    from salvage.runner import publish_log
    from tests.salvage.test_integration import WIDE, _topic_settings

    d, _record = closed_loop
    settings = _topic_settings(kafka_broker.bootstrap, unique_name("cl"), **WIDE).updated(
        policy=str(EXPERIMENT_POLICY)
    )
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        settings.topics.partitions,
    )
    publish_log(settings, d / "events.jsonl")
    spec = FlowSpec(settings, to_end=True, case_store=False, out_dir=tmp_path / "kafka")
    cluster_main(build_flow(spec), [], 0, worker_count_per_proc=2)
    file_out = run_file_flow(
        [d / "events.jsonl"], tmp_path / "file", policy=str(EXPERIMENT_POLICY), **WIDE
    )
    got = (tmp_path / "kafka" / "assignments.jsonl").read_bytes()
    assert got == file_out["assignments"] and got
    assert (tmp_path / "kafka" / "outcomes.jsonl").read_bytes() == file_out["outcomes"]
    assert (tmp_path / "kafka" / "orders.jsonl").read_bytes() == file_out["orders"]
