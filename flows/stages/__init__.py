"""The keyed stages of the recovery dataflow, as plain Python (no Bytewax import), one module each.

Each stage instance is one logical shard. It receives :class:`~salvage.flows.messages.Batch` /
:class:`~salvage.flows.messages.Event` data items and :class:`~salvage.flows.messages.Tick`
watermarks, holds data in a :class:`~salvage.features.eventtime.Reorderer`, and applies it in
event-time order once every upstream has passed it. What it emits is a list of
``(Route, payload)`` pairs; :mod:`salvage.flows.topology` declares which stage consumes which
route, for the Bytewax flow (:mod:`salvage.flows.recovery`) and the plain-loop benchmark alike.

==================  =========================================  ====================================
module              stage (key)                                consumes
==================  =========================================  ====================================
:mod:`.intent`      IntentStage (``intent``)                   support contacts with text (source)
:mod:`.case`        CaseStage (``case-NNNN``)                  events (source, intent stage)
:mod:`.context`     ContextStage (``ctx-NNNN``)                ``Route.CONTEXT`` (case views)
:mod:`.model`       ModelStage (``model-NNNN``)                ``Route.MODELS``
:mod:`.dispatch`    DispatchStage (``disp-NNNN``)              ``Route.DISPATCH``
:mod:`.lane`        LaneStage (``lane-NNNN``)                  ``Route.LANES`` (shipment facts)
:mod:`.output`      OutputStage (``out``)                      ``Route.OUTPUT``
==================  =========================================  ====================================
"""

from salvage.flows.messages import CaseView, InferredContact
from salvage.flows.stages.base import (
    INTENT_KEY,
    OUT_KEY,
    StageConfig,
    case_key,
    ctx_key,
    disp_key,
    lane_key,
    model_key,
    shard_of,
)
from salvage.flows.stages.case import CaseStage, Settled, case_upstreams
from salvage.flows.stages.context import ContextStage
from salvage.flows.stages.dispatch import DispatchStage
from salvage.flows.stages.intent import IntentStage, routes_to_intents
from salvage.flows.stages.lane import LaneStage
from salvage.flows.stages.model import ModelStage
from salvage.flows.stages.output import OutputStage
from salvage.policy.triggers import trigger_id

__all__ = [
    "INTENT_KEY",
    "OUT_KEY",
    "CaseStage",
    "CaseView",
    "ContextStage",
    "DispatchStage",
    "InferredContact",
    "IntentStage",
    "LaneStage",
    "ModelStage",
    "OutputStage",
    "Settled",
    "StageConfig",
    "case_key",
    "case_upstreams",
    "ctx_key",
    "disp_key",
    "lane_key",
    "model_key",
    "routes_to_intents",
    "shard_of",
    "trigger_id",
]
