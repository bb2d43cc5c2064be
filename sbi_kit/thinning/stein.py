"""Stein kernels: kernels whose mean under the target is zero.

Given a base radial kernel ``k(x, y) = phi(|x - y|^2)`` and the target's score
``s = grad log p``, the Langevin Stein kernel is

    k_p(x, y) = s(x).s(y) k + s(x).grad_y k + s(y).grad_x k + div_x grad_y k,

and ``E_{y ~ p} k_p(x, y) = 0`` for every x. Thinning with ``k_p`` and
minimising MMD to the zero measure therefore pulls a coreset toward p itself
rather than toward the (possibly biased, not burnt-in) input sample
(Riabiz et al. 2022; Dwivedi & Mackey 2022, Stein KT).

The score is evaluated once per point: ``SteinKernel.prepare`` returns the
features ``[x, s(x)]`` and a kernel acting on those features, so tiles of the
kernel matrix cost no score evaluations.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from sbi_kit.thinning.kernels import GaussianKernel, IMQKernel, Kernel, LaplaceKernel, _sq_dist

Array = jax.Array


def _radial_derivatives(base: Kernel, sq: Array):
    """``phi, phi', phi''`` of a radial kernel at squared distances ``sq`` (any shape).

    Derivatives come from forward-mode autodiff of the elementwise map
    ``sq -> phi(sq)``, so any kernel defined by ``_from_sq_dist`` works.
    """
    f = base._from_sq_dist
    ones = jnp.ones_like(sq)

    def d1(s):
        return jax.jvp(f, (s,), (ones,))

    (phi, dphi), (_, ddphi) = jax.jvp(d1, (sq,), (ones,))
    return phi, dphi, ddphi


@dataclasses.dataclass(frozen=True)
class _SteinFeatureKernel(Kernel):
    """The Stein kernel acting on features ``z = [x, s(x)]`` of shape ``(2 dim,)``."""

    base: Kernel
    dim: int

    mean_zero = True

    def matrix(self, Z1, Z2):
        d = self.dim
        X, SX = Z1[:, :d], Z1[:, d:]
        Y, SY = Z2[:, :d], Z2[:, d:]
        sq = _sq_dist(X, Y)
        phi, dphi, ddphi = _radial_derivatives(self.base, sq)
        ss = SX @ SY.T
        # s(y).(x - y) - s(x).(x - y), expanded so no (n, m, d) array is built.
        sy_x = X @ SY.T  # s(y_j).x_i
        sy_y = jnp.sum(SY * Y, axis=-1)[None, :]
        sx_x = jnp.sum(SX * X, axis=-1)[:, None]
        sx_y = SX @ Y.T
        cross = (sy_x - sy_y) - (sx_x - sx_y)
        return phi * ss + 2.0 * dphi * cross - 2.0 * d * dphi - 4.0 * ddphi * sq

    def diagonal(self, Z):
        d = self.dim
        S = Z[:, d:]
        zero = jnp.zeros(Z.shape[:1], Z.dtype)
        phi, dphi, _ = _radial_derivatives(self.base, zero)
        return phi * jnp.sum(S * S, axis=-1) - 2.0 * d * dphi


jax.tree_util.register_pytree_node(
    _SteinFeatureKernel,
    lambda k: ((k.base,), k.dim),
    lambda dim, leaves: _SteinFeatureKernel(leaves[0], dim),
)


@dataclasses.dataclass(frozen=True, eq=False)
class SteinKernel(Kernel):
    """Langevin Stein kernel from a radial base kernel and the target's score.

    Args:
      base: a Gaussian or IMQ kernel, whose profiles ``phi(|x - y|^2)`` are
        smooth in the squared distance (Laplace and Matern profiles involve
        ``|x - y|`` and their derivatives at 0 need limits autodiff does not
        give). The IMQ base is the usual choice: its Stein discrepancy
        controls weak convergence (Gorham & Mackey 2017).
      score: ``x (dim,) -> (dim,)``, the gradient of the target's log density,
        or a `sbi_kit.targets.Target` (its ``.score`` is used).

    ``k(x, y)`` and ``matrix(X, Y)`` work on plain points (evaluating the score
    as needed); thinning algorithms call ``prepare`` instead.
    """

    base: Kernel
    score: Callable[[Array], Array]

    mean_zero = True

    def __post_init__(self):
        if isinstance(self.base, LaplaceKernel):
            raise ValueError("the Laplace kernel is not differentiable at 0; use an IMQ or Gaussian base")
        if not isinstance(self.base, (GaussianKernel, IMQKernel)):
            raise ValueError(f"Stein kernel base must be a GaussianKernel or IMQKernel, got {type(self.base).__name__}")
        score = self.score
        if hasattr(score, "score") and hasattr(score, "log_density"):
            object.__setattr__(self, "score", score.score)
        elif not callable(score):
            raise TypeError("score must be a callable (dim,) -> (dim,) or a Target")

    def features(self, X: Array) -> Array:
        """``[x, s(x)]`` for each row of ``X (n, d)``: shape ``(n, 2d)``, same dtype."""
        S = jax.vmap(self.score)(X).astype(X.dtype)
        return jnp.concatenate([X, S], axis=-1)

    def prepare(self, X):
        return self.features(X), _SteinFeatureKernel(self.base, X.shape[-1])

    def matrix(self, X, Y):
        return _SteinFeatureKernel(self.base, X.shape[-1]).matrix(self.features(X), self.features(Y))

    def diagonal(self, X):
        return _SteinFeatureKernel(self.base, X.shape[-1]).diagonal(self.features(X))


jax.tree_util.register_pytree_node(
    SteinKernel,
    lambda k: ((k.base,), k.score),
    lambda score, leaves: SteinKernel(leaves[0], score),
)


def stein_kernel(base: Kernel | None = None, score=None) -> SteinKernel:
    """A `SteinKernel`; ``base`` defaults to ``IMQKernel(bandwidth=1.0)``."""
    if score is None:
        raise ValueError("a Stein kernel needs the target's score function or a Target")
    return SteinKernel(IMQKernel(1.0) if base is None else base, score)
