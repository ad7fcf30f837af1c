"""Every check of ``tests/checks.py`` on every keyed stage of the graph, on real inputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from salvage.config import Settings
from salvage.flows.topology import graph, stage_config
from tests.checks import CHECKS, Recording
from tests.flowkit import sim_log

STAGES = [st.name for st in graph(stage_config(Settings(redis_url=""), ("p",), case_records=True))]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    log = sim_log(tmp_path_factory.mktemp("checks"), "launch-week-backlog", orders=500, seed=5)
    return Recording(log)


def test_every_stage_of_the_graph_is_checked(recording: Recording):
    assert set(recording.calls) == set(STAGES)  # each stage got input in the recording
    assert {"intents", "cases", "context", "models", "dispatch", "lanes", "output"} <= set(STAGES)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_check(recording: Recording, stage: str, check: Callable[[Recording, str], None]):
    check(recording, stage)
