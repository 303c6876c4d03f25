"""Scheduling policies, found by name through :data:`POLICIES`."""

from __future__ import annotations

from typing import Any

from lamps_agent.policies.base import AdmissionGate, EngineView, Policy, TenantShares
from lamps_agent.policies.continuum import ContinuumPolicy
from lamps_agent.policies.infercept import InferceptPolicy
from lamps_agent.policies.lamps import LampsAgingPolicy, LampsNoRankPolicy, LampsPolicy
from lamps_agent.policies.nested_wait import NestedWaitPolicy
from lamps_agent.policies.program import ProgramPolicy
from lamps_agent.policies.sjf import SjfPolicy
from lamps_agent.policies.thunderagent import ThunderAgentPolicy
from lamps_agent.policies.vllm_fcfs import VllmNoCachePolicy, VllmPolicy
from lamps_agent.policies.wait import WaitPolicy
from lamps_agent.predictors.base import Predictor
from lamps_agent.presets import Preset
from lamps_agent.registry import Registry, construct

POLICIES: Registry[type[Policy]] = Registry("policy")
for _cls in (
    VllmPolicy,
    VllmNoCachePolicy,
    InferceptPolicy,
    LampsPolicy,
    LampsAgingPolicy,
    LampsNoRankPolicy,
    SjfPolicy,
    WaitPolicy,
    NestedWaitPolicy,
    ProgramPolicy,
    ContinuumPolicy,
    ThunderAgentPolicy,
):
    POLICIES.register(_cls.name)(_cls)


def make_policy(name: str, *, predictor: Predictor, preset: Preset, **options: Any) -> Policy:
    """Build a registered policy; unknown names raise an error listing the valid ones."""
    return construct(
        POLICIES.get(name), f"policy {name!r}", predictor=predictor, preset=preset, **options
    )


__all__ = [
    "POLICIES",
    "AdmissionGate",
    "ContinuumPolicy",
    "EngineView",
    "InferceptPolicy",
    "LampsAgingPolicy",
    "LampsNoRankPolicy",
    "LampsPolicy",
    "NestedWaitPolicy",
    "Policy",
    "ProgramPolicy",
    "SjfPolicy",
    "TenantShares",
    "ThunderAgentPolicy",
    "VllmNoCachePolicy",
    "VllmPolicy",
    "WaitPolicy",
    "make_policy",
]
