"""Benchmark-target metrics: log Z error and nearest-mode weights (TARGETS.md)."""

from __future__ import annotations

import functools
import math

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from sbi_kit.diagnostics.draws import _check_block_size, _checked
from sbi_kit.targets.base import Target


def log_z_error(log_z_estimate, log_z_true) -> float:
    """``|log Z_hat - log Z|``; ``log_z_true`` may be a number or a `Target` with ``log_Z``."""
    if isinstance(log_z_true, Target):
        if log_z_true.log_Z is None:
            raise ValueError(f"target {log_z_true.name!r} has no exact log_Z")
        log_z_true = log_z_true.log_Z
    est, true = float(log_z_estimate), float(log_z_true)
    if math.isnan(est) or math.isnan(true):
        raise ValueError(f"log Z values must not be NaN, got {est} and {true}")
    return abs(est - true)


def _mode_inputs(means, weights):
    if isinstance(means, Target):
        from sbi_kit.targets.mixtures import mixture_modes

        target_means, target_weights = mixture_modes(means)
        means = target_means
        weights = target_weights if weights is None else weights
    mu = np.asarray(means, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] < 1:
        raise ValueError(f"means must have shape (k, d) with k >= 1, got {mu.shape}")
    return mu, weights


@functools.partial(jax.jit, static_argnames="batch")
def _nearest_mode(X, M, batch):
    """Index of the nearest row of ``M (k, d)`` for each row of ``X (n, d)``."""
    return lax.map(lambda xi: jnp.argmin(jnp.sum((xi - M) ** 2, axis=1)), X, batch_size=batch)


def mode_weights(samples, means, block_size: int = 4096) -> np.ndarray:
    """Fraction of draws nearest (Euclidean) to each mode.

    Args:
      samples: draws ``(n, d)``, ``(chains, draws, d)`` or InferenceData.
      means: mode locations ``(k, d)``, or a mixture `Target` (its ``info``).
      block_size: rows assigned per batch.

    Returns:
      Float64 numpy array ``(k,)`` summing to 1.
    """
    mu, _ = _mode_inputs(means, None)
    X = _checked(samples, "samples")
    if X.shape[1] != mu.shape[1]:
        raise ValueError(f"samples have d={X.shape[1]} but means have d={mu.shape[1]}")
    batch = min(_check_block_size(block_size), X.shape[0])
    nearest = _nearest_mode(X, jnp.asarray(mu, X.dtype), batch)
    counts = np.bincount(np.asarray(nearest), minlength=mu.shape[0])
    return counts / counts.sum()


def mode_weight_error(samples, means, weights=None, block_size: int = 4096) -> float:
    """Largest absolute error of the nearest-mode weights (TARGETS.md).

    Args:
      samples: draws ``(n, d)``, ``(chains, draws, d)`` or InferenceData.
      means: true mode locations ``(k, d)``, or a mixture `Target` (then
        ``weights`` defaults to its true mode weights).
      weights: true weights ``(k,)``, nonnegative with positive sum
        (normalised here).
      block_size: rows assigned per batch.

    Returns:
      ``max_k |fraction of draws nearest mode k - w_k|`` as a Python float.
    """
    mu, weights = _mode_inputs(means, weights)
    if weights is None:
        raise ValueError("weights are required unless means is a mixture Target")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (mu.shape[0],):
        raise ValueError(f"weights must have shape ({mu.shape[0]},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be finite, nonnegative and have a positive sum")
    est = mode_weights(samples, mu, block_size)
    return float(np.max(np.abs(est - w / w.sum())))


__all__ = ["log_z_error", "mode_weight_error", "mode_weights"]
