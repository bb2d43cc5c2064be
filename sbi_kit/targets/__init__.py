"""Targets: log densities on flat unconstrained vectors, and benchmark targets."""

from sbi_kit.targets.base import Target, check_position
from sbi_kit.targets.benchmarks import (
    banana,
    double_well,
    four_mode,
    funnel,
    gaussian,
    gaussian_mixture,
    gmm40,
    ill_conditioned_gaussian,
    many_well,
    mixture_modes,
    phi4,
    phi4_mass,
)
from sbi_kit.targets.density import from_energy, from_logdensity
from sbi_kit.targets.numpyro_bridge import from_numpyro

__all__ = [
    "Target", "banana", "check_position", "double_well", "four_mode", "from_energy",
    "from_logdensity", "from_numpyro", "funnel", "gaussian", "gaussian_mixture", "gmm40",
    "ill_conditioned_gaussian", "many_well", "mixture_modes", "phi4", "phi4_mass",
]
