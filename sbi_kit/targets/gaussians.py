"""Gaussian benchmark targets: isotropic and ill-conditioned (optionally rotated).

Both densities are the normalised log pdf, so ``log_Z = 0``; mean and std are
exact and ``sample`` draws exact i.i.d. samples.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from sbi_kit.targets import _checks
from sbi_kit.targets.base import Target


def gaussian(dim: int, mean=None, scale: float = 1.0) -> Target:
    """Isotropic Gaussian ``N(mean, scale^2 I)`` in ``dim`` dimensions.

    Args:
      dim: number of coordinates, >= 1.
      mean: None (zeros), a scalar, or an array of shape ``(dim,)``.
      scale: positive standard deviation shared by all coordinates.

    Returns:
      A `Target` whose ``log_density(x (dim,)) -> scalar`` is the normalised
      log pdf in the dtype of ``x``; ``log_Z = 0``; exact ``mean``/``std``
      (float64 numpy arrays of shape ``(dim,)``); ``sample(key, n) -> (n, dim)``
      in the default float dtype.
    """
    dim = _checks.positive_int(dim, "dim")
    scale = _checks.positive_float(scale, "scale")
    if mean is None:
        mu = np.zeros(dim)
    elif np.ndim(mean) == 0:
        mu = np.full(dim, _checks.finite_float(mean, "mean"))
    else:
        mu = _checks.finite_array(mean, "mean", (dim,))
    log_norm = dim * (np.log(scale) + 0.5 * _checks.LOG_2PI)

    def log_density(x):
        x = _checks.float_input(x)
        z = (x - jnp.asarray(mu, x.dtype)) / scale
        return -0.5 * jnp.sum(z * z) - jnp.asarray(log_norm, x.dtype)

    def sample(key, n):
        dt = _checks.default_float()
        return jnp.asarray(mu, dt) + scale * jax.random.normal(key, (n, dim), dt)

    return Target(
        log_density=log_density,
        dim=dim,
        name=f"gaussian_{dim}d",
        sample=_checks.jit_sampler(sample),
        log_Z=0.0,
        mean=mu,
        std=np.full(dim, scale),
        info={"scale": scale},
    )


def random_orthogonal(dim: int, seed: int) -> np.ndarray:
    """A fixed Haar-random orthogonal ``(dim, dim)`` float64 matrix from ``seed``.

    QR of a Gaussian matrix with the signs of R's diagonal folded into Q, which
    makes the distribution exactly Haar (plain QR is not).
    """
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))[None, :]


def ill_conditioned_gaussian(
    dim: int, condition_number: float = 100.0, rotate: bool | int = False
) -> Target:
    """Zero-mean Gaussian whose covariance has condition number ``condition_number``.

    The covariance eigenvalues (variances) are log-spaced between 1 and
    ``condition_number``; with ``rotate`` the covariance is ``Q diag(v) Q^T``
    for a fixed random orthogonal ``Q`` (``rotate=True`` uses seed 0, an int
    uses that seed), so the ill-conditioning is not axis aligned. With
    ``dim = 1`` the single variance is 1.

    Args:
      dim: number of coordinates, >= 1.
      condition_number: ratio of largest to smallest variance, >= 1.
      rotate: False, True, or an integer seed for the rotation.

    Returns:
      A `Target` with the normalised log pdf (``log_Z = 0``), exact
      ``mean`` (zeros) and ``std`` (sqrt of the covariance diagonal), and an
      exact sampler ``(key, n) -> (n, dim)``. ``info["covariance"]`` holds the
      float64 ``(dim, dim)`` covariance.
    """
    dim = _checks.positive_int(dim, "dim")
    condition_number = _checks.finite_float(condition_number, "condition_number")
    if condition_number < 1:
        raise ValueError(f"condition_number must be >= 1, got {condition_number}")
    if isinstance(rotate, bool):
        seed = 0 if rotate else None
    else:
        seed = _checks.positive_int(rotate, "rotate (seed)", minimum=0)
    variances = np.geomspace(1.0, condition_number, dim)
    q = np.eye(dim) if seed is None else random_orthogonal(dim, seed)
    cov = (q * variances[None, :]) @ q.T
    inv_sd = 1.0 / np.sqrt(variances)
    log_norm = 0.5 * np.sum(np.log(variances)) + 0.5 * dim * _checks.LOG_2PI

    def log_density(x):
        x = _checks.float_input(x)
        # Whiten in the eigenbasis: z = diag(v)^(-1/2) Q^T x.
        z = (jnp.asarray(q, x.dtype).T @ x) * jnp.asarray(inv_sd, x.dtype)
        return -0.5 * jnp.sum(z * z) - jnp.asarray(log_norm, x.dtype)

    def sample(key, n):
        dt = _checks.default_float()
        eps = jax.random.normal(key, (n, dim), dt) * jnp.asarray(np.sqrt(variances), dt)
        return eps @ jnp.asarray(q, dt).T

    rot = "" if seed is None else f"_rot{seed}"
    return Target(
        log_density=log_density,
        dim=dim,
        name=f"ill_conditioned_gaussian_{dim}d_cond{condition_number:g}{rot}",
        sample=_checks.jit_sampler(sample),
        log_Z=0.0,
        mean=np.zeros(dim),
        std=np.sqrt(np.diag(cov)),
        info={"covariance": cov, "variances": variances, "rotation": q},
    )
