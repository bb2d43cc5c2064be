"""Normalizing flows shared by the samplers and simulation-based inference.

* `make_flow` builds a coupling flow (RealNVP affine or rational-quadratic
  spline, distrax bijectors, tanh-MLP or gated residual-net conditioners as
  parameter pytrees, optional LU linear layers between couplings, optional
  conditioning context); `Flow` has ``forward``/``inverse`` with log-dets,
  ``log_prob``, ``sample`` and ``sample_and_log_prob``.
* `fit_reverse_kl` (against a `Target`, optional annealing) and
  `fit_forward_kl` (maximum likelihood on draws, validation and early
  stopping) train it with optax.
* `save_flow` / `load_flow` store it as ``.npz`` arrays plus a JSON config.
"""

from sbi_kit.flows.fit import FitInfo, NonFiniteLossError, fit_forward_kl, fit_reverse_kl
from sbi_kit.flows.flow import Flow, FlowConfig, base_log_prob, make_flow, standardize
from sbi_kit.flows.io import load_flow, save_flow

__all__ = [
    "FitInfo", "Flow", "FlowConfig", "NonFiniteLossError", "base_log_prob",
    "fit_forward_kl", "fit_reverse_kl", "load_flow", "make_flow", "save_flow", "standardize",
]
