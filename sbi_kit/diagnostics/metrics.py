"""Sample-quality metrics: MMD, energy distance, KSD, ESS rates, IS ESS, mode weights.

A re-exporting facade kept so existing imports work; each job lives in its
own module:

- `sbi_kit.diagnostics.draws`: `draws_as_array` and the shared input checks;
- `sbi_kit.diagnostics.pairwise`: tiled pairwise sums (exact diagonal masking);
- `sbi_kit.diagnostics.discrepancy`: `mmd`, `mmd_squared`, `energy_distance`,
  `ksd`, `ksd_squared`;
- `sbi_kit.diagnostics.efficiency`: `EssRate`, `ess_per_grad`,
  `ess_per_second`, `is_ess`;
- `sbi_kit.diagnostics.benchmark_metrics`: `log_z_error`, `mode_weights`,
  `mode_weight_error`.

Every metric accepts draws as an array ``(n, d)``, an array
``(chains, draws, d)`` (chains pooled), an ArviZ ``InferenceData`` (its
posterior group flattened by `draws_as_array`) or a `Trace`. Pairwise
metrics are computed in ``block_size x block_size`` tiles, so memory is
O((n + m) d + block_size^2) and no ``n x n`` matrix is ever formed.
Metrics are reporting tools: they validate their inputs eagerly and return
Python floats. Definitions follow TARGETS.md (Gaussian-kernel MMD with the
median heuristic, IMQ-kernel KSD, IS ESS normalised to (0, 1]).
"""

from __future__ import annotations

from sbi_kit.diagnostics.benchmark_metrics import log_z_error, mode_weight_error, mode_weights
from sbi_kit.diagnostics.discrepancy import energy_distance, ksd, ksd_squared, mmd, mmd_squared
from sbi_kit.diagnostics.draws import draws_as_array
from sbi_kit.diagnostics.efficiency import EssRate, ess_per_grad, ess_per_second, is_ess

__all__ = [
    "EssRate",
    "draws_as_array",
    "energy_distance",
    "ess_per_grad",
    "ess_per_second",
    "is_ess",
    "ksd",
    "ksd_squared",
    "log_z_error",
    "mmd",
    "mmd_squared",
    "mode_weight_error",
    "mode_weights",
]
