"""Shared pieces of the ensemble samplers: validation, batched log densities,
initial ensembles and ensemble statistics."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.targets.base import Target

Array = jax.Array


def check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_target(target) -> Target:
    if not isinstance(target, Target):
        raise TypeError(f"target must be an sbi_kit Target, got {type(target).__name__}")
    return target


def check_ensemble_size(ensemble_size: int, dim: int, minimum_over_dim: int, method: str) -> int:
    """``ensemble_size >= dim + minimum_over_dim`` or a ValueError saying why."""
    ensemble_size = check_int(ensemble_size, "ensemble_size", 2)
    need = dim + minimum_over_dim
    if ensemble_size < need:
        raise ValueError(
            f"{method} needs an ensemble of at least dim + {minimum_over_dim} = {need} particles "
            f"for dim={dim} (its ensemble covariance must be full rank); got ensemble_size={ensemble_size}"
        )
    return ensemble_size


def batched_log_density(target: Target, x: Array) -> tuple[Array, Array]:
    """Log densities of ``x (n, dim)`` in one batch, and which were invalid.

    NaN and ``+inf`` values (a failed evaluation) become ``-inf`` (zero
    weight); ``-inf`` itself is a legitimate zero density and is not flagged.

    Returns:
      ``(logp (n,), invalid (n,) bool)``, logp in the dtype of ``x``.
    """
    logp = jax.vmap(target.log_density)(x).astype(x.dtype)
    invalid = jnp.isnan(logp) | (logp == jnp.inf)
    return jnp.where(invalid, -jnp.inf, logp), invalid


def initial_ensembles(
    key: Array,
    dim: int,
    num_ensembles: int,
    ensemble_size: int,
    *,
    init_mean=None,
    init_scale=1.0,
    initial_positions=None,
    dtype=None,
) -> Array:
    """Initial ensembles ``(num_ensembles, ensemble_size, dim)``.

    Either ``initial_positions`` (checked: shape and finiteness), or draws of
    ``N(init_mean, diag(init_scale^2))`` (``init_scale`` a scalar or ``(dim,)``).
    """
    dtype = dtype or jnp.result_type(float)
    shape = (num_ensembles, ensemble_size, dim)
    if initial_positions is not None:
        pos = jnp.asarray(initial_positions)
        if not jnp.issubdtype(pos.dtype, jnp.floating):
            pos = pos.astype(dtype)
        if pos.shape != shape:
            raise ValueError(
                f"initial_positions must have shape (num_ensembles, ensemble_size, dim) = {shape}, "
                f"got {tuple(pos.shape)}"
            )
        if not bool(jnp.all(jnp.isfinite(pos))):
            raise ValueError("initial_positions contains NaN or infinite values")
        return pos
    mean = np.zeros(dim) if init_mean is None else np.broadcast_to(np.asarray(init_mean, float), (dim,))
    scale = np.broadcast_to(np.asarray(init_scale, float), (dim,))
    if not np.all(np.isfinite(mean)):
        raise ValueError("init_mean must be finite")
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(f"init_scale must be positive and finite, got {init_scale!r}")
    z = jax.random.normal(key, shape, dtype)
    return jnp.asarray(mean, dtype) + jnp.asarray(scale, dtype) * z


def weighted_moments(y: Array, weights: Array) -> tuple[Array, Array]:
    """Mean ``(d,)`` and covariance ``(d, d)`` of points ``y (m, d)`` with weights summing to 1."""
    mu = weights @ y
    c = y - mu
    return mu, (c * weights[:, None]).T @ c


def regularised_cholesky(cov: Array, rel_jitter: float = 1e-6) -> Array:
    """Cholesky factor of ``cov + jitter I``; jitter relative to the mean variance."""
    d = cov.shape[0]
    scale = jnp.trace(cov) / d
    jitter = rel_jitter * scale + jnp.finfo(cov.dtype).tiny
    return jnp.linalg.cholesky(cov + jitter * jnp.eye(d, dtype=cov.dtype))
