"""Gradient-free interacting-particle Langevin baselines: ALDI and EKS.

Both move an ensemble of ``N`` particles with covariance-preconditioned
overdamped Langevin dynamics, ``C = cov(ensemble)``:

* ALDI (affine-invariant Langevin dynamics; Garbuno-Inigo, Nuesken & Reich
  2020): ``dx_i = C grad log pi(x_i) dt + (d + 1)/N (x_i - m) dt + sqrt(2) C^{1/2} dW_i``
  with the generalised square root ``C^{1/2} = (X - m)^T / sqrt(N)`` (noise in
  the ensemble's span). For exact gradients and any ``N > d + 1`` its
  invariant law is ``pi^N``.
* EKS (ensemble Kalman sampler; Garbuno-Inigo, Hoffmann, Li & Stuart 2020):
  ``dx_i = C grad log pi(x_i) dt + sqrt(2 C) dW_i`` (Cholesky square root, no
  finite-size correction); its invariant law is ``pi`` only as ``N -> inf``.

Gradient-free: ``C grad log pi`` is not computed from gradients. The target is
evaluated once per particle per step (one shared batch), and ``log pi`` is
fitted by least squares over the ensemble with a quadratic in whitened
coordinates ``z = L^-1 (x - m)`` (``C = L L^T``): full quadratic when the
ensemble has at least twice as many particles as coefficients, else diagonal.
Then ``C grad log pi(x_i) = L grad_z fit(z_i)``. This is exact when ``log pi``
is quadratic (a Gaussian, or a linear-Gaussian inverse problem) — the same
statistical linearisation that makes the original EKS exact only for
Gaussian-linear problems — and a Gaussian approximation of the drift
otherwise: on multimodal or strongly curved targets the ensemble converges
to roughly Gaussian shape (a known limitation, not a bug).

Step-size control: Euler-Maruyama with step ``h``, tamed so that no particle's
drift moves it more than ``max_move`` ensemble standard deviations in one
step (``h_eff = h / max(1, max_i |L^-1 drift_i| h / max_move)``); a move to a
point with NaN or zero density is rejected (the particle stays) and counted.
The discretisation bias is O(h) (e.g. ``var * 1/(1 - h/2)`` on a Gaussian).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.samplers._ensemble_common import batched_log_density, regularised_cholesky
from sbi_kit.targets.base import Target

Array = jax.Array


class LangevinState(NamedTuple):
    """One ensemble: particles ``x (N, d)`` and their log densities ``logp (N,)``."""

    x: Array
    logp: Array


class LangevinInfo(NamedTuple):
    """Per-step statistics of one ensemble.

    Attributes:
      step_size: the tamed step ``h_eff`` used.
      num_rejected: moves rejected for a NaN or zero target density.
      num_invalid: proposals whose target value was NaN or +inf.
      num_target_evals: target evaluations (``N``).
    """

    step_size: Array
    num_rejected: Array
    num_invalid: Array
    num_target_evals: Array


def quadratic_kind(ensemble_size: int, dim: int) -> str:
    """``"full"`` if ``N >= 2 (1 + d + d (d + 1) / 2)`` coefficients' worth, else ``"diagonal"``."""
    return "full" if ensemble_size >= 2 * (1 + dim + dim * (dim + 1) // 2) else "diagonal"


def _fit_gradient(z: Array, logp: Array, kind: str) -> Array:
    """Least-squares quadratic fit of ``logp`` on ``z (N, d)``; its gradient at each ``z_i``.

    Rows with non-finite ``logp`` are left out. A tiny ridge keeps the normal
    equations solvable when the ensemble is (nearly) degenerate.
    """
    n, d = z.shape
    ok = jnp.isfinite(logp)
    y = jnp.where(ok, logp, 0.0)
    y = y - jnp.sum(y) / jnp.maximum(jnp.sum(ok), 1)
    if kind == "full":
        iu0, iu1 = np.triu_indices(d)
        quad = z[:, iu0] * z[:, iu1]
    else:
        quad = z * z
    phi = jnp.concatenate([jnp.ones((n, 1), z.dtype), z, quad], axis=1)
    phi = jnp.where(ok[:, None], phi, 0.0)
    p = phi.shape[1]
    gram = phi.T @ phi + 1e-6 * n * jnp.eye(p, dtype=z.dtype).at[0, 0].set(0.0)
    beta = jnp.linalg.solve(gram, phi.T @ y)
    b = beta[1 : 1 + d]
    if kind == "full":
        h = jnp.zeros((d, d), z.dtype).at[iu0, iu1].add(beta[1 + d :])
        h = h + h.T  # diagonal doubled: d/dz_a of beta_aa z_a^2 is 2 beta_aa z_a
    else:
        h = jnp.diag(2.0 * beta[1 + d :])
    return b[None, :] + z @ h.T


def build_ensemble_langevin(
    target: Target,
    *,
    method: str,
    step_size: float,
    max_move: float = 1.0,
    quadratic: str = "auto",
):
    """``step(key, LangevinState) -> (LangevinState, LangevinInfo)`` for ONE ensemble.

    Args:
      target: the `Target`.
      method: ``"aldi"`` or ``"eks"``.
      step_size: Euler step ``h`` in the covariance-preconditioned time, > 0.
      max_move: the taming bound, in ensemble standard deviations per step.
      quadratic: ``"full"``, ``"diagonal"`` or ``"auto"`` (see `quadratic_kind`).
    """
    aldi = method == "aldi"
    h0 = float(step_size)

    def step(key, state: LangevinState):
        x, lp = state.x, state.logp
        n, d = x.shape
        dt = x.dtype
        kind = quadratic_kind(n, d) if quadratic == "auto" else quadratic
        m = jnp.mean(x, axis=0)
        anom = (x - m) / jnp.sqrt(jnp.asarray(n, dt))  # (N, d): C = anom^T anom
        chol = regularised_cholesky(anom.T @ anom)
        z = jax.scipy.linalg.solve_triangular(chol, (x - m).T, lower=True).T
        drift = _fit_gradient(z, lp, kind) @ chol.T  # C grad log pi, (N, d)
        if aldi:
            drift = drift + (d + 1.0) / n * (x - m)
        drift_z = jax.scipy.linalg.solve_triangular(chol, drift.T, lower=True).T
        biggest = jnp.max(jnp.sqrt(jnp.sum(drift_z * drift_z, axis=1)))
        h = h0 / jnp.maximum(1.0, biggest * h0 / max_move)
        k_noise = key
        if aldi:
            xi = jax.random.normal(k_noise, (n, n), dt)
            noise = xi @ anom  # sqrt(2) (X - m)^T / sqrt(N) xi_i, row-wise
        else:
            xi = jax.random.normal(k_noise, (n, d), dt)
            noise = xi @ chol.T
        prop = x + h * drift + jnp.sqrt(2.0 * h) * noise
        lp_new, invalid = batched_log_density(target, prop)
        keep = jnp.isfinite(lp_new)
        x_new = jnp.where(keep[:, None], prop, x)
        lp_out = jnp.where(keep, lp_new, lp)
        info = LangevinInfo(
            step_size=h, num_rejected=jnp.sum(~keep).astype(jnp.int32),
            num_invalid=jnp.sum(invalid).astype(jnp.int32),
            num_target_evals=jnp.asarray(n, jnp.int32),
        )
        return LangevinState(x_new, lp_out), info

    return step
