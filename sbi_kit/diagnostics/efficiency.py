"""Sampling efficiency: ArviZ ESS per gradient evaluation or second, and IS ESS."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from sbi_kit.diagnostics.draws import _as_3d, _is_inference_data


class EssRate(NamedTuple):
    """Effective sample size per unit cost.

    Attributes:
      min: smallest ``ESS / cost`` over all scalar parameters; parameters
        whose ESS is NaN (e.g. constant deterministic sites) are ignored with
        a warning (NaN only if every ESS is NaN).
      per_parameter: ``{name: ESS / cost}`` arrays shaped like each variable.
      ess: ``{name: ESS}`` the raw ESS arrays.
      cost: the total cost the ESS is divided by (gradient evaluations or seconds).
    """

    min: float
    per_parameter: dict[str, np.ndarray]
    ess: dict[str, np.ndarray]
    cost: float


def _ess(draws, method: str, var_names) -> dict[str, np.ndarray]:
    import arviz as az

    if _is_inference_data(draws):
        names = list(draws.posterior.data_vars) if var_names is None else list(var_names)
        ds = az.ess(draws, method=method, var_names=names)
        return {v: np.asarray(ds[v].values) for v in names}
    arr, _ = _as_3d(draws)
    if arr.size == 0:
        raise ValueError(f"draws are empty (shape {arr.shape})")
    ds = az.ess(az.convert_to_dataset(arr), method=method)
    return {"x": np.asarray(ds["x"].values)}


def _nan_min(per: dict[str, np.ndarray]) -> float:
    """Smallest entry over all arrays, ignoring NaN (with a warning naming them)."""
    values = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in per.values()])
    nan_names = [k for k, v in per.items() if np.any(np.isnan(np.asarray(v, dtype=np.float64)))]
    if nan_names:
        warnings.warn(
            f"ESS is NaN for {nan_names} (e.g. constant deterministic sites); "
            "EssRate.min ignores them",
            RuntimeWarning,
            stacklevel=3,
        )
        if np.all(np.isnan(values)):
            return math.nan
    return float(np.nanmin(values))


def _rate(ess: dict[str, np.ndarray], cost: float, what: str) -> EssRate:
    if not (math.isfinite(cost) and cost > 0):
        raise ValueError(f"{what} must be positive and finite, got {cost}")
    per = {k: v / cost for k, v in ess.items()}
    return EssRate(min=_nan_min(per), per_parameter=per, ess=ess, cost=cost)


def _to_idata(draws):
    if hasattr(draws, "to_arviz") and not _is_inference_data(draws):
        return draws.to_arviz()
    return draws


def ess_per_grad(
    draws,
    num_grad_evals=None,
    *,
    method: str = "bulk",
    var_names=None,
    include_warmup: bool = False,
) -> EssRate:
    """ArviZ ESS divided by the total number of gradient evaluations.

    Args:
      draws: InferenceData (a `Trace` is converted with ``to_arviz()``), or an array
        ``(chains, draws, d)`` / ``(n, d)`` (one chain) with ``num_grad_evals``.
      num_grad_evals: the total count (scalar, or an array that is summed).
        None reads ``sample_stats["num_grad_evals"]``, falling back to
        ArviZ's ``sample_stats["n_steps"]`` (leapfrog steps, one gradient
        each), summed over chains and draws.
      method: ``arviz.ess`` method (default ``"bulk"``).
      var_names: posterior variables to include (default: all).
      include_warmup: also count ``warmup_sample_stats`` (or, without that
        group, the ``"warmup_grad_evals"`` run attribute) when reading counts
        from InferenceData.

    Returns:
      An `EssRate`; ``min`` is the minimum over parameters (NaN ESS ignored).

    Raises:
      ValueError: when no gradient count is given or found, or it is not positive.
    """
    draws = _to_idata(draws)
    if num_grad_evals is None:
        num_grad_evals = _grad_count(draws, include_warmup)
    cost = float(np.sum(np.asarray(num_grad_evals, dtype=np.float64)))
    return _rate(_ess(draws, method, var_names), cost, "num_grad_evals")


def _grad_count(idata, include_warmup: bool) -> float:
    if not _is_inference_data(idata) or not hasattr(idata, "sample_stats"):
        raise ValueError("pass num_grad_evals, or InferenceData with sample_stats")
    groups = [idata.sample_stats]
    total = 0.0
    if include_warmup:
        if hasattr(idata, "warmup_sample_stats"):
            groups.append(idata.warmup_sample_stats)
        else:
            # sbi_kit's Trace.to_arviz stores the warmup count as a run attribute.
            total += float(_run_attr(idata, "warmup_grad_evals", 0.0))
    for group in groups:
        for key in ("num_grad_evals", "n_steps"):
            if key in group.data_vars:
                total += float(np.sum(group[key].values))
                break
        else:
            raise ValueError(
                "sample_stats has neither 'num_grad_evals' nor 'n_steps'; pass num_grad_evals"
            )
    return total


def _run_attr(idata, key: str, default):
    """A run attribute from ``sample_stats.attrs``, the InferenceData's own
    ``attrs`` (where `Trace.to_arviz` puts run metadata) or ``posterior.attrs``."""
    sources = [
        getattr(getattr(idata, "sample_stats", None), "attrs", None),
        getattr(idata, "attrs", None),
        getattr(getattr(idata, "posterior", None), "attrs", None),
    ]
    for attrs in sources:
        if attrs and key in attrs:
            return attrs[key]
    return default


def ess_per_second(
    draws, wall_time: float | None = None, *, method: str = "bulk", var_names=None
) -> EssRate:
    """ArviZ ESS divided by the wall time in seconds.

    Args:
      draws: as for `ess_per_grad`.
      wall_time: seconds; None reads the ``"sampling_time"`` attribute of
        ``sample_stats``, else of the InferenceData itself (where
        `Trace.to_arviz` puts it), else of ``posterior``.
      method, var_names: as for `ess_per_grad`.

    Returns:
      An `EssRate` with ``cost`` in seconds.
    """
    draws = _to_idata(draws)
    if wall_time is None:
        wall_time = _run_attr(draws, "sampling_time", None)
        if wall_time is None:
            raise ValueError(
                "pass wall_time, or InferenceData with a 'sampling_time' attribute"
            )
    return _rate(_ess(draws, method, var_names), float(wall_time), "wall_time")


def is_ess(log_weights) -> float:
    """Normalised importance-sampling ESS ``(sum w)^2 / (n sum w^2)`` in (0, 1].

    Computed in float64 after subtracting ``max(lw)`` (the ratio is
    shift-invariant), so log weights in the thousands do not overflow.

    Args:
      log_weights: shape ``(n,)`` (any shape is flattened); ``-inf`` entries
        are zero weights, at least one must be finite.

    Raises:
      ValueError: empty input, NaN or ``+inf`` entries, or all weights zero.
    """
    # float64 numpy: a scalar summary, so precision is cheap and no compile is needed.
    lw = np.ravel(np.asarray(log_weights, dtype=np.float64))
    n = lw.shape[0]
    if n == 0:
        raise ValueError("log_weights is empty")
    n_bad = int(np.sum(np.isnan(lw) | (lw == np.inf)))
    if n_bad:
        raise ValueError(f"log_weights has {n_bad} of {n} NaN or +inf entries")
    if not np.any(np.isfinite(lw)):
        raise ValueError("all log_weights are -inf (every weight is zero)")
    # Shifting by the max leaves the ratio unchanged and keeps exp() in range.
    w = np.exp(lw - np.max(lw))
    return min(float(np.sum(w) ** 2 / (n * np.sum(w * w))), 1.0)


__all__ = ["EssRate", "ess_per_grad", "ess_per_second", "is_ess"]
