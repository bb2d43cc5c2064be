"""Targets with curved or scale-varying geometry: Neal's funnel and the banana.

Both are pushforwards of Gaussians, so their densities are normalised
(``log_Z = 0``) and exact samples come from ancestral sampling.
"""

from __future__ import annotations

import math

import numpy as np
import jax
import jax.numpy as jnp

from sbi_kit.targets import _checks
from sbi_kit.targets.base import Target


def funnel(dim: int = 10, scale: float = 3.0) -> Target:
    """Neal's funnel: ``x0 ~ N(0, scale^2)``, ``x_{1:}| x0 ~ N(0, exp(x0) I)``.

    Args:
      dim: total dimension, >= 2 (TARGETS.md uses 10).
      scale: standard deviation of the neck coordinate ``x0`` (TARGETS.md: 3).

    Returns:
      A `Target` with the normalised log density (``log_Z = 0``), an ancestral
      exact sampler ``(key, n) -> (n, dim)``, ``mean = 0`` and exact
      ``std = [scale, exp(scale^2 / 4), ...]`` since
      ``Var(x_i) = E[exp(x0)] = exp(scale^2 / 2)``. The tails of ``x_{1:}`` are
      very heavy (their kurtosis grows like ``exp(scale^2)``), so Monte Carlo
      estimates of their std converge slowly.
    """
    dim = _checks.positive_int(dim, "dim", minimum=2)
    scale = _checks.positive_float(scale, "scale")
    m = dim - 1
    const = math.log(scale) + 0.5 * dim * _checks.LOG_2PI

    def log_density(x):
        x = _checks.float_input(x)
        x0, rest = x[0], x[1:]
        return (
            -0.5 * (x0 / scale) ** 2
            - 0.5 * jnp.sum(rest * rest) * jnp.exp(-x0)
            - 0.5 * m * x0
            - jnp.asarray(const, x.dtype)
        )

    def sample(key, n):
        dt = _checks.default_float()
        k0, k1 = jax.random.split(key)
        x0 = scale * jax.random.normal(k0, (n, 1), dt)
        rest = jnp.exp(0.5 * x0) * jax.random.normal(k1, (n, m), dt)
        return jnp.concatenate([x0, rest], axis=1)

    std = np.full(dim, math.exp(scale**2 / 4.0))
    std[0] = scale
    return Target(
        log_density=log_density,
        dim=dim,
        name=f"funnel_{dim}d",
        sample=_checks.jit_sampler(sample),
        log_Z=0.0,
        mean=np.zeros(dim),
        std=std,
        info={"scale": scale},
    )


def banana(dim: int = 2, b: float = 0.1, sigma1: float = 10.0) -> Target:
    """Haario's twisted Gaussian ("banana").

    ``x ~ N(0, diag(sigma1^2, 1, ..., 1))`` and ``y = x`` except
    ``y_2 = x_2 + b (x_1^2 - sigma1^2)``. The map has unit Jacobian, so
    ``log p(y) = log N(y_1; 0, sigma1^2) + log N(y_2 - b (y_1^2 - sigma1^2); 0, 1)
    + sum_{i>2} log N(y_i; 0, 1)`` exactly and ``log_Z = 0``.

    Args:
      dim: dimension, >= 2.
      b: twist strength (any finite real; 0 gives a Gaussian).
      sigma1: standard deviation of the first coordinate, > 0.

    Returns:
      A `Target` with exact sampler, ``mean = 0`` (``E[x_1^2] = sigma1^2``), and
      exact ``std``: ``sigma1`` for ``y_1``,
      ``sqrt(1 + 2 b^2 sigma1^4)`` for ``y_2`` (``Var(x_1^2) = 2 sigma1^4``),
      1 elsewhere.
    """
    dim = _checks.positive_int(dim, "dim", minimum=2)
    b = _checks.finite_float(b, "b")
    sigma1 = _checks.positive_float(sigma1, "sigma1")
    shift = sigma1**2
    const = math.log(sigma1) + 0.5 * dim * _checks.LOG_2PI

    def log_density(x):
        x = _checks.float_input(x)
        x1, x2 = x[0] / sigma1, x[1] - b * (x[0] ** 2 - shift)
        rest = x[2:]
        return -0.5 * (x1 * x1 + x2 * x2 + jnp.sum(rest * rest)) - jnp.asarray(const, x.dtype)

    def sample(key, n):
        dt = _checks.default_float()
        z = jax.random.normal(key, (n, dim), dt)
        x1 = sigma1 * z[:, 0]
        y2 = z[:, 1] + b * (x1 * x1 - shift)
        return z.at[:, 0].set(x1).at[:, 1].set(y2)

    std = np.ones(dim)
    std[0] = sigma1
    std[1] = math.sqrt(1.0 + 2.0 * b * b * sigma1**4)
    return Target(
        log_density=log_density,
        dim=dim,
        name=f"banana_{dim}d",
        sample=_checks.jit_sampler(sample),
        log_Z=0.0,
        mean=np.zeros(dim),
        std=std,
        info={"b": b, "sigma1": sigma1},
    )
