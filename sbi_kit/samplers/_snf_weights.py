"""Importance-sampling summaries of SNF log weights (numpy float64, no compile).

* ``log Z_hat = log mean_i w_i`` over *all* draws (zero weights included: the
  estimator is unbiased for ``Z`` only when every draw counts).
* Its standard error: with one batch, the delta method
  ``se = sd(w) / (sqrt(n) mean(w))``; with several independent batches, the
  spread of the per-batch estimates (batch means) ``sd_b(log Z_b) / sqrt(B)``
  as well, and the larger of the two is reported.
* Pareto k of the largest weights (Vehtari et al., PSIS; the generalized
  Pareto fit of Zhang & Stephens as implemented in ``arviz.psislw``): above
  0.7 the estimates are unreliable however many draws are taken.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def _as_log_weights(log_weights) -> np.ndarray:
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.size == 0:
        raise ValueError("log_weights is empty")
    if np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise ValueError("log_weights must not contain NaN or +inf (use -inf for zero weights)")
    return lw


def log_mean_exp(lw: np.ndarray) -> float:
    """``log mean exp(lw)`` of a flat array (``-inf`` when every weight is zero)."""
    m = np.max(lw)
    if not np.isfinite(m):
        return -math.inf
    return float(m + np.log(np.mean(np.exp(lw - m))))


def log_z_and_se(log_weights) -> tuple[float, float]:
    """``(log Z_hat, standard error)`` from log weights ``(batches, n)`` or ``(n,)``.

    Returns ``(-inf, inf)`` when every weight is zero.
    """
    lw = _as_log_weights(log_weights)
    lw2 = lw.reshape(1, -1) if lw.ndim == 1 else lw.reshape(lw.shape[0], -1)
    flat = lw2.ravel()
    log_z = log_mean_exp(flat)
    if not np.isfinite(log_z):
        return -math.inf, math.inf
    w = np.exp(flat - np.max(flat))
    n = w.size
    se = float(np.std(w, ddof=1) / (math.sqrt(n) * np.mean(w))) if n > 1 else math.inf
    b = lw2.shape[0]
    if b > 1:
        per_batch = np.array([log_mean_exp(row) for row in lw2])
        if np.all(np.isfinite(per_batch)):
            se = max(se, float(np.std(per_batch, ddof=1) / math.sqrt(b)))
        else:
            se = math.inf
    return log_z, se


def resampled_log_z_and_se(log_weights) -> tuple[float, float]:
    """``(log Z_hat, standard error)`` for resampled populations, one per row of ``log_weights (batches, n)``.

    Each row's log weights already include its population's resampling
    increments, so ``log Z_hat`` is the log mean of the batches' estimates.
    Resampled draws are not independent, so the SE comes from the batches
    alone (delta method on their ``Z`` estimates): NaN for one batch, inf
    when a batch has no valid draw.
    """
    lw = _as_log_weights(log_weights)
    log_z = log_mean_exp(lw.ravel())
    if lw.shape[0] < 2:
        return log_z, math.nan
    per_batch = np.array([log_mean_exp(row) for row in lw])
    if not np.all(np.isfinite(per_batch)):
        return log_z, math.inf
    z = np.exp(per_batch - np.max(per_batch))
    return log_z, float(np.std(z, ddof=1) / (math.sqrt(z.size) * np.mean(z)))


def pareto_k(log_weights) -> float:
    """Pareto-smoothed IS shape ``k_hat`` of the finite weights (NaN if fewer than 10)."""
    import arviz as az

    lw = _as_log_weights(log_weights).ravel()
    lw = lw[np.isfinite(lw)]
    if lw.size < 10:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(lw - np.max(lw))
    return float(np.asarray(k))


def normalized_weights(log_weights) -> np.ndarray:
    """Self-normalised weights ``w_i / sum w`` (flat, float64); raises if all are zero."""
    lw = _as_log_weights(log_weights).ravel()
    m = np.max(lw)
    if not np.isfinite(m):
        raise ValueError("all log weights are -inf (every weight is zero)")
    w = np.exp(lw - m)
    return w / np.sum(w)


def weighted_mean_and_se(x, log_weights) -> tuple[np.ndarray, np.ndarray]:
    """Self-normalised mean of ``x (n, ...)`` and its delta-method standard error.

    ``se^2 = sum_i wbar_i^2 (x_i - mean)^2`` with normalised weights ``wbar``
    (the usual ratio-estimator variance). Draws with weight zero (invalid
    paths, ``log_weight = -inf``) are dropped first: their ``x`` may be NaN,
    and ``0 * NaN`` would otherwise poison the sums.
    """
    w = normalized_weights(log_weights)
    x = np.asarray(x, dtype=np.float64).reshape(w.shape[0], -1)
    keep = w > 0
    w, x = w[keep], x[keep]
    mean = w @ x
    se = np.sqrt((w * w) @ ((x - mean) ** 2))
    return mean, se


def systematic_resample_indices(u0: float, log_weights, n: int) -> np.ndarray:
    """Systematic resampling: ``n`` indices into the flat draws, drawn in proportion to the weights.

    ``u0`` is one uniform in [0, 1); systematic resampling has lower variance
    than multinomial and keeps every draw with weight >= 1/n at least once.
    """
    w = normalized_weights(log_weights)
    cdf = np.cumsum(w)
    cdf[-1] = 1.0
    points = (u0 + np.arange(n)) / n
    return np.minimum(np.searchsorted(cdf, points, side="right"), w.size - 1)
