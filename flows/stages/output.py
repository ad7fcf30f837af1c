"""The output stage: one total event-time order over every output item."""

from __future__ import annotations

from salvage.flows.messages import Emit
from salvage.flows.stages.base import OUT_KEY, StageConfig, _Stage


class OutputStage(_Stage):
    """Total order over every trigger and alert, so output files are byte-identical. Upstreams:
    dispatch (triggers, model events, dispositions), lanes (lane alerts) and cases (the return
    journey's status updates and alerts, which bypass scoring and policy)."""

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__(OUT_KEY, cfg.cust_keys("disp") + cfg.lane_keys() + cfg.case_keys())

    def apply(self, released, low: int, out: Emit) -> None:
        for _t, _tie, (kind, payload) in released:
            out.append((kind, payload))
