"""Samplers: one module per algorithm family.

The top-level functions (`sbi_kit.nuts`, `sbi_kit.hmc`, ...) are re-exported
from `sbi_kit`; here the submodule names (`sbi_kit.samplers.hmc`) stay modules.
"""

from sbi_kit.samplers.ensemble import EvalCounter, aldi, eks, ensemble_score, from_blackbox
from sbi_kit.samplers.flow_hmc import FlowSampler, FlowStepInfo, build_flow_sampler, flow_hmc, independence_mh, pullback_target
from sbi_kit.samplers.hmc import (
    SamplerSpec,
    TunedState,
    build_hmc,
    build_mala,
    build_nuts,
    mala,
    nuts,
    sample,
    uniform_initial_positions,
)

__all__ = [
    "EvalCounter", "aldi", "eks", "ensemble_score", "from_blackbox",
    "FlowSampler", "FlowStepInfo", "build_flow_sampler", "flow_hmc", "independence_mh", "pullback_target",
    "SamplerSpec", "TunedState", "build_hmc", "build_mala", "build_nuts",
    "mala", "nuts", "sample", "uniform_initial_positions",
]
