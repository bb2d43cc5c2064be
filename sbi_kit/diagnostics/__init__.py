"""Diagnostics: the Trace, ArviZ conversion, sample-quality metrics, plots."""

from sbi_kit.diagnostics.metrics import (
    EssRate,
    draws_as_array,
    energy_distance,
    ess_per_grad,
    ess_per_second,
    is_ess,
    ksd,
    ksd_squared,
    log_z_error,
    mmd,
    mmd_squared,
    mode_weight_error,
    mode_weights,
)
from sbi_kit.diagnostics.trace import Trace, trace_to_arviz

__all__ = [
    "EssRate", "Trace", "draws_as_array", "energy_distance", "ess_per_grad", "ess_per_second",
    "is_ess", "ksd", "ksd_squared", "log_z_error", "mmd", "mmd_squared", "mode_weight_error",
    "mode_weights", "trace_to_arviz",
]
