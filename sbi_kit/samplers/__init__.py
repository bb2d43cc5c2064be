"""Samplers: one module per algorithm family."""

from sbi_kit.samplers.hmc import (
    SamplerSpec,
    TunedState,
    build_hmc,
    build_mala,
    build_nuts,
    hmc,
    mala,
    nuts,
    sample,
    uniform_initial_positions,
)

__all__ = [
    "SamplerSpec", "TunedState", "build_hmc", "build_mala", "build_nuts",
    "hmc", "mala", "nuts", "sample", "uniform_initial_positions",
]
