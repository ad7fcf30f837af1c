"""Pickling of what crosses between a cluster's processes (salvage/fastpickle.py): what comes back
equals what went, field for field; pickles written the default way (older snapshots) still load."""

from __future__ import annotations

import io
import pickle

from hypothesis import given
from hypothesis import strategies as st

from salvage.connectors.events import Stream
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetterKind
from salvage.connectors.parse import RawRecord, dead_letter
from salvage.flows.items import Overdue
from salvage.flows.messages import CaseView, InferredContact
from salvage.scoring.baseline import ScoreResult
from salvage.scoring.models import Scored
from tests.flowkit import sim_log

_floats = st.floats(allow_nan=False, width=64)
_names = st.text(min_size=1, max_size=12)
_views = st.builds(
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
)


def _old_way(obj) -> bytes:
    """``obj`` pickled as Python does by default (before salvage/fastpickle.py): the slotted
    dataclass's own ``__getstate__``."""

    class Old(pickle.Pickler):
        def reducer_override(self, o):
            if type(o) in (CaseView, ScoreResult, Scored, Overdue, InferredContact):
                return (object.__new__, (type(o),), o.__getstate__())
            return NotImplemented

    f = io.BytesIO()
    Old(f, protocol=5).dump(obj)
    return f.getvalue()


@given(st.lists(_views, max_size=5), st.builds(ScoreResult, _floats, _floats, _names))
def test_case_views_and_scores_come_back_equal(views, score):
    back = pickle.loads(pickle.dumps(views, 5))  # the stages send batches
    assert [type(v) for v in back] == [CaseView] * len(views) and back == views
    assert pickle.loads(_old_way(views)) == views  # an older snapshot's pickle
    assert pickle.loads(pickle.dumps(score, 5)) == score
    scored = Scored(score, {"recoverability": 0.5, "abuse": 0.25}, score)
    for blob in (pickle.dumps(scored, 5), _old_way(scored)):
        again = pickle.loads(blob)
        assert (again.scores, again.shadow, again.rules) == (scored.scores, scored.shadow, score)


def test_events_inside_wrappers_come_back_equal(tmp_path):
    lines = sim_log(tmp_path, orders=80, seed=2).read_bytes().splitlines()
    for line in lines[:200]:
        event = parse_fast(line)
        letter = dead_letter(
            RawRecord("orders", 1, 7, line, Stream.ORDERS),
            DeadLetterKind.TOO_LATE,
            "behind",
            event_id=event.event_id,
            order_id=event.order_id,
        )
        for item in (Overdue(event, letter), InferredContact(event, None)):
            back = pickle.loads(pickle.dumps(item, 5))
            assert type(back) is type(item) and back == item
            assert pickle.loads(_old_way(item)) == item
