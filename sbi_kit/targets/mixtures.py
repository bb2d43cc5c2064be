"""Gaussian mixture targets: general isotropic mixtures, GMM40 and the 4-mode mixture.

The mixture density is normalised (``log_Z = 0``); exact samples pick a
component then draw from it. The component means and weights are kept in
``info["mode_means"]`` / ``info["mode_weights"]`` (see `mixture_modes`) so the
mode-weight error of TARGETS.md can be computed.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from sbi_kit.targets import _checks
from sbi_kit.targets.base import Target


def gaussian_mixture(means, scales=1.0, weights=None, name: str | None = None) -> Target:
    """Mixture ``sum_k w_k N(mu_k, s_k^2 I)`` of isotropic Gaussians.

    Args:
      means: component means, shape ``(k, d)`` with ``k, d >= 1``.
      scales: positive component standard deviations, a scalar or shape ``(k,)``.
      weights: None (equal), or nonnegative shape ``(k,)`` with positive sum;
        normalised here. Zero-weight components are dropped.
      name: optional name; defaults to ``"gaussian_mixture_{k}x{d}d"``.

    Returns:
      A `Target` of dimension ``d`` with the normalised log density
      (``log_Z = 0``), an exact sampler ``(key, n) -> (n, d)``, and exact
      mixture moments: ``mean = sum_k w_k mu_k`` and
      ``std^2 = sum_k w_k (s_k^2 + mu_k^2) - mean^2`` per coordinate.
    """
    mu = _checks.finite_array(means, "means")
    if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
        raise ValueError(f"means must have shape (k, d) with k, d >= 1, got {mu.shape}")
    k, d = mu.shape
    s = _checks.finite_array(scales, "scales")
    if s.ndim == 0:
        s = np.full(k, float(s))
    elif s.shape != (k,):
        raise ValueError(f"scales must be a scalar or have shape ({k},), got {s.shape}")
    if np.any(s <= 0):
        raise ValueError(f"scales must be positive, got min {s.min()}")
    if weights is None:
        w = np.full(k, 1.0 / k)
    else:
        w = _checks.finite_array(weights, "weights", (k,))
        if np.any(w < 0):
            raise ValueError(f"weights must be nonnegative, got min {w.min()}")
        if not w.sum() > 0:
            raise ValueError("weights must have a positive sum")
        w = w / w.sum()
    keep = w > 0
    mu, s, w = mu[keep], s[keep], w[keep]

    mean = w @ mu
    second = w @ (mu * mu + (s * s)[:, None])
    std = np.sqrt(np.maximum(second - mean * mean, 0.0))
    log_w_norm = np.log(w) - d * (np.log(s) + 0.5 * _checks.LOG_2PI)
    inv_var = 1.0 / (s * s)

    def log_density(x):
        x = _checks.float_input(x)
        diff = x[None, :] - jnp.asarray(mu, x.dtype)
        quad = jnp.sum(diff * diff, axis=1) * jnp.asarray(inv_var, x.dtype)
        return jax.nn.logsumexp(jnp.asarray(log_w_norm, x.dtype) - 0.5 * quad)

    def sample(key, n):
        dt = _checks.default_float()
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.asarray(np.log(w), dt), shape=(n,))
        noise = jax.random.normal(k_noise, (n, d), dt)
        return jnp.asarray(mu, dt)[comp] + jnp.asarray(s, dt)[comp, None] * noise

    return Target(
        log_density=log_density,
        dim=d,
        name=name or f"gaussian_mixture_{mu.shape[0]}x{d}d",
        sample=_checks.jit_sampler(sample),
        log_Z=0.0,
        mean=mean,
        std=std,
        info={"mode_means": mu, "mode_weights": w, "mode_scales": s},
    )


def gmm40() -> Target:
    """GMM40 of TARGETS.md: 40 equal-weight ``N(mu_k, I)`` components in 2-d.

    The means are ``jax.random.uniform(PRNGKey(0), (40, 2), minval=-1,
    maxval=1) * 40``, drawn in float32 whatever the x64 setting so the target
    is the same in both precisions.
    """
    means = jax.random.uniform(
        jax.random.PRNGKey(0), (40, 2), dtype=jnp.float32, minval=-1.0, maxval=1.0
    ) * 40.0
    return gaussian_mixture(np.asarray(means, np.float64), 1.0, name="gmm40")


def four_mode(dim: int = 10, separation: float = 8.0) -> Target:
    """Four equal-weight ``N(mu_k, I)`` with ``mu_k = (+-sep, +-sep, 0, ..., 0)``.

    Args:
      dim: dimension, >= 2 (TARGETS.md uses 10).
      separation: offset of the modes along ``e_1`` and ``e_2`` (TARGETS.md: 8).
    """
    dim = _checks.positive_int(dim, "dim", minimum=2)
    separation = _checks.positive_float(separation, "separation")
    means = np.zeros((4, dim))
    means[:, :2] = separation * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float)
    return gaussian_mixture(means, 1.0, name=f"four_mode_{dim}d")


def mixture_modes(target: Target) -> tuple[np.ndarray, np.ndarray]:
    """The true mode locations ``(k, d)`` and weights ``(k,)`` of a mixture target.

    Reads ``info["mode_means"]`` and ``info["mode_weights"]`` (set by
    `gaussian_mixture`, `gmm40`, `four_mode` and `double_well`); the result
    feeds `sbi_kit.diagnostics.metrics.mode_weight_error`.

    Raises:
      ValueError: if the target carries no mode information.
    """
    info = target.info
    if "mode_means" not in info or "mode_weights" not in info:
        raise ValueError(f"target {target.name!r} carries no mode means/weights")
    return np.asarray(info["mode_means"]), np.asarray(info["mode_weights"])
