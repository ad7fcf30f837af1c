"""Pickling of what crosses between a cluster's processes (salvage/fastpickle.py): what comes back
equals what went, field for field; pickles written the default way (older snapshots) still load."""

from __future__ import annotations

import copyreg
import io
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from salvage.connectors.events import Stream
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetterKind, Trigger
from salvage.connectors.parse import RawRecord, dead_letter
from salvage.connectors.simulator import SCENARIOS
from salvage.flows.items import Overdue
from salvage.flows.messages import CaseView, InferredContact
from salvage.scoring.baseline import ScoreResult
from salvage.scoring.models import Scored
from tests.flowkit import run_file_flow, sim_log


def _same_model(a, b) -> None:
    assert type(a) is type(b) and a == b
    assert list(a.__dict__) == list(b.__dict__)  # same fields, same order
    assert a.__dict__ == b.__dict__
    assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__
    assert b.__pydantic_extra__ is None and b.__pydantic_private__ is None
    assert a.model_dump_json() == b.model_dump_json()
    assert a.model_dump_json(exclude_unset=True) == b.model_dump_json(exclude_unset=True)


def _old_way(obj) -> bytes:
    """``obj`` pickled as Python does by default (before salvage/fastpickle.py)."""

    class Old(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, BaseModel):
                return (copyreg.__newobj__, (type(o),), o.__getstate__())
            return NotImplemented

    f = io.BytesIO()
    Old(f, protocol=5).dump(obj)
    return f.getvalue()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_event_of_every_scenario_comes_back_equal(scenario, tmp_path):
    log = sim_log(tmp_path, scenario=scenario, orders=150, seed=5)
    events = [parse_fast(line) for line in log.read_bytes().splitlines()]
    assert len({type(e) for e in events}) >= 5
    for event in events:
        _same_model(event, pickle.loads(pickle.dumps(event, 5)))
        _same_model(event, pickle.loads(_old_way(event)))  # an older snapshot's pickle


def test_output_records_and_wrappers_come_back_equal(tmp_path):
    log = sim_log(tmp_path, orders=120, seed=2)
    lines = log.read_bytes().splitlines()
    event = parse_fast(lines[0])
    raw = RawRecord("orders", 1, 7, lines[0], Stream.ORDERS)
    letter = dead_letter(
        raw, DeadLetterKind.TOO_LATE, "behind", event_id=event.event_id, order_id=event.order_id
    )
    triggers = [
        Trigger.model_validate_json(x)
        for x in run_file_flow([log], tmp_path / "out")["interventions"].splitlines()
    ]
    assert triggers
    for obj in (letter, *triggers):
        _same_model(obj, pickle.loads(pickle.dumps(obj, 5)))
        _same_model(obj, pickle.loads(_old_way(obj)))
    over = pickle.loads(pickle.dumps(Overdue(event, letter), 5))
    assert type(over) is Overdue and over.event == event and over.letter == letter
    inferred = pickle.loads(pickle.dumps(InferredContact(event, None), 5))
    assert inferred == InferredContact(event, None)


_floats = st.floats(allow_nan=False, width=64)
_names = st.text(min_size=1, max_size=12)


@given(
    st.builds(
        CaseView,
        order_id=_names,
        customer_id=_names,
        t=st.integers(),
        source_id=_names,
        changes=st.tuples(_names, _names),
        features=st.dictionaries(_names, _floats, max_size=8),
        status=_names,
        outcome=st.none() | _names,
        lane=_names,
        campaign=_names,
        sku_family=_names,
        currency=_names,
        order_value=_floats,
        refunded_amount=_floats,
        returned=st.booleans(),
        abuse_flags=st.tuples(_names),
        facts=st.none() | st.dictionaries(_names, st.integers(), max_size=3),
        grade=_names,
        return_value=_floats,
        received_at=st.integers(),
    ),
    st.builds(ScoreResult, _floats, _floats, _names),
)
def test_case_views_and_scores_come_back_equal(view, score):
    back = pickle.loads(pickle.dumps(view, 5))
    assert type(back) is CaseView and back == view
    assert pickle.loads(pickle.dumps(score, 5)) == score
    scored = Scored(score, {"recoverability": 0.5, "abuse": 0.25}, score)
    back_scored = pickle.loads(pickle.dumps(scored, 5))
    assert (back_scored.scores, back_scored.shadow, back_scored.rules) == (
        scored.scores,
        scored.shadow,
        scored.rules,
    )
