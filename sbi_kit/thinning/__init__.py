"""Kernel thinning: compress draws to a small coreset that keeps their distribution.

``thin(x_or_idata, size, kernel=..., method=...)`` is the entry point; the
algorithms (KT-SPLIT, KT-SWAP, target/power KT, KT+, Compress++), kernels and
baselines are exported for direct, jit/vmap-friendly use.
"""

from sbi_kit.thinning.api import METHODS, resolve_kernel, split_kernel_for, thin, thin_array, thin_idata
from sbi_kit.thinning.baselines import iid_subsample, standard_thin
from sbi_kit.thinning.compress import compress, compress_pp, kt_halve
from sbi_kit.thinning.kernels import (
    GaussianKernel,
    GeneralMaternKernel,
    IMQKernel,
    Kernel,
    LaplaceKernel,
    MaternKernel,
    SumKernel,
    get_kernel,
    median_bandwidth,
    power_kernel,
)
from sbi_kit.thinning.kt import halve_swaps, kernel_thinning, kt_split, kt_swap, refine_coreset, weighted_sequence
from sbi_kit.thinning.mmd import coreset_mmd, mmd_between
from sbi_kit.thinning.stein import SteinKernel, stein_kernel
from sbi_kit.thinning.tiles import kernel_matvec

__all__ = [
    "METHODS",
    "GaussianKernel",
    "GeneralMaternKernel",
    "IMQKernel",
    "Kernel",
    "LaplaceKernel",
    "MaternKernel",
    "SteinKernel",
    "SumKernel",
    "compress",
    "compress_pp",
    "coreset_mmd",
    "get_kernel",
    "halve_swaps",
    "iid_subsample",
    "kernel_matvec",
    "kernel_thinning",
    "kt_halve",
    "kt_split",
    "kt_swap",
    "median_bandwidth",
    "mmd_between",
    "power_kernel",
    "refine_coreset",
    "resolve_kernel",
    "split_kernel_for",
    "standard_thin",
    "stein_kernel",
    "thin",
    "thin_array",
    "thin_idata",
    "weighted_sequence",
]
