"""Benchmark targets with exact ground truth (re-exported from small modules).

Definitions follow TARGETS.md. Each constructor returns a `Target` whose
``log_density`` computes in the dtype of its input; where known exactly it
carries ``sample(key, n) -> (n, dim)``, ``log_Z``, ``mean`` and ``std``.
"""

from sbi_kit.targets.curved import banana, funnel
from sbi_kit.targets.gaussians import gaussian, ill_conditioned_gaussian
from sbi_kit.targets.lattice import phi4, phi4_mass
from sbi_kit.targets.mixtures import four_mode, gaussian_mixture, gmm40, mixture_modes
from sbi_kit.targets.wells import double_well, many_well

__all__ = [
    "banana",
    "double_well",
    "four_mode",
    "funnel",
    "gaussian",
    "gaussian_mixture",
    "gmm40",
    "ill_conditioned_gaussian",
    "many_well",
    "mixture_modes",
    "phi4",
    "phi4_mass",
]
