"""Positive-definite kernels as small JAX pytrees.

A kernel is called on two single points, ``k(x, y)`` with ``x, y`` of shape
``(d,)``, and returns a scalar; ``k.matrix(X, Y)`` gives the ``(n, m)`` block
for ``X (n, d)``, ``Y (m, d)``. Callers that must not materialise an ``n x n``
matrix (MMD, kernel thinning) ask for tiles of it with ``matrix``.

The bandwidth is a pytree leaf, so kernels can be passed through ``jit`` and
``vmap`` and their bandwidth can be traced (e.g. a median heuristic computed
inside a jitted function).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _sq_dist(X: Array, Y: Array) -> Array:
    """Pairwise squared Euclidean distances, ``(n, d), (m, d) -> (n, m)``, clipped at 0."""
    xx = jnp.sum(X * X, axis=-1)[:, None]
    yy = jnp.sum(Y * Y, axis=-1)[None, :]
    return jnp.maximum(xx + yy - 2.0 * X @ Y.T, 0.0)


def _check_bandwidth(bandwidth) -> None:
    # Only concrete values can be checked; traced ones are validated by callers.
    if isinstance(bandwidth, (int, float)) and not (bandwidth > 0 and math.isfinite(bandwidth)):
        raise ValueError(f"kernel bandwidth must be positive and finite, got {bandwidth}")


class Kernel:
    """Base class: subclasses define ``_from_sq_dist`` or override ``matrix``."""

    def __call__(self, x: Array, y: Array) -> Array:
        return self.matrix(x[None, :], y[None, :])[0, 0]

    def matrix(self, X: Array, Y: Array) -> Array:
        return self._from_sq_dist(_sq_dist(X, Y))

    def diagonal(self, X: Array) -> Array:
        """``k(x_i, x_i)`` for each row of ``X (n, d)``, shape ``(n,)``."""
        return jax.vmap(self)(X, X)


def _register(cls):
    """Register a dataclass kernel as a pytree with float fields as leaves."""
    names = [f.name for f in dataclasses.fields(cls)]
    jax.tree_util.register_pytree_node(
        cls,
        lambda k: (tuple(getattr(k, n) for n in names), None),
        lambda _, leaves: cls(*leaves),
    )
    return cls


@_register
@dataclasses.dataclass(frozen=True)
class GaussianKernel(Kernel):
    """``k(x, y) = exp(-|x - y|^2 / (2 bandwidth^2))``."""

    bandwidth: float = 1.0

    def __post_init__(self):
        _check_bandwidth(self.bandwidth)

    def _from_sq_dist(self, sq):
        return jnp.exp(-0.5 * sq / self.bandwidth**2)

    def diagonal(self, X):
        return jnp.ones(X.shape[:1], X.dtype)


@_register
@dataclasses.dataclass(frozen=True)
class IMQKernel(Kernel):
    """Inverse multiquadric ``k(x, y) = (c^2 + |x - y|^2 / bandwidth^2)^beta``, beta < 0."""

    bandwidth: float = 1.0
    c: float = 1.0
    beta: float = -0.5

    def __post_init__(self):
        _check_bandwidth(self.bandwidth)
        if isinstance(self.beta, (int, float)) and not self.beta < 0:
            raise ValueError(f"IMQ exponent beta must be negative, got {self.beta}")

    def _from_sq_dist(self, sq):
        return (self.c**2 + sq / self.bandwidth**2) ** self.beta

    def diagonal(self, X):
        return jnp.full(X.shape[:1], (self.c**2) ** self.beta, X.dtype)


@_register
@dataclasses.dataclass(frozen=True)
class LaplaceKernel(Kernel):
    """``k(x, y) = exp(-|x - y| / bandwidth)``."""

    bandwidth: float = 1.0

    def __post_init__(self):
        _check_bandwidth(self.bandwidth)

    def _from_sq_dist(self, sq):
        # sqrt has an infinite derivative at 0; the double-where keeps grads finite.
        safe = jnp.where(sq > 0, sq, 1.0)
        return jnp.exp(-jnp.where(sq > 0, jnp.sqrt(safe), 0.0) / self.bandwidth)

    def diagonal(self, X):
        return jnp.ones(X.shape[:1], X.dtype)


@dataclasses.dataclass(frozen=True)
class MaternKernel(Kernel):
    """Matern kernel with smoothness ``nu`` in {0.5, 1.5, 2.5}.

    ``nu = 1.5``: ``(1 + s) exp(-s)``; ``nu = 2.5``: ``(1 + s + s^2/3) exp(-s)``
    with ``s = sqrt(2 nu) |x - y| / bandwidth``.
    """

    bandwidth: float = 1.0
    nu: float = 1.5

    def __post_init__(self):
        _check_bandwidth(self.bandwidth)
        if isinstance(self.nu, (int, float)) and float(self.nu) not in (0.5, 1.5, 2.5):
            raise ValueError(f"Matern smoothness nu must be 0.5, 1.5 or 2.5, got {self.nu}")

    def _from_sq_dist(self, sq):
        safe = jnp.where(sq > 0, sq, 1.0)
        r = jnp.where(sq > 0, jnp.sqrt(safe), 0.0)
        s = jnp.sqrt(2.0 * self.nu) * r / self.bandwidth
        nu = float(self.nu)
        if nu == 0.5:
            poly = 1.0
        elif nu == 1.5:
            poly = 1.0 + s
        else:
            poly = 1.0 + s + s * s / 3.0
        return poly * jnp.exp(-s)

    def diagonal(self, X):
        return jnp.ones(X.shape[:1], X.dtype)


# Matern's nu is a structural choice (it selects the polynomial), so it must stay
# static under tracing: re-register with nu as auxiliary data.
jax.tree_util.register_pytree_node(
    MaternKernel,
    lambda k: ((k.bandwidth,), k.nu),
    lambda nu, leaves: MaternKernel(leaves[0], nu),
)


def median_bandwidth(X: Array, *, max_points: int = 1000, key: Array | None = None) -> Array:
    """Median pairwise Euclidean distance of (a subsample of) ``X (n, d)``.

    Uses at most ``max_points`` rows (a random subset when ``key`` is given,
    otherwise an evenly spaced one), so the cost is O(max_points^2 d) whatever n.
    Returns a scalar; falls back to 1.0 if all points coincide.
    """
    X = jnp.asarray(X)
    n = X.shape[0]
    if n > max_points:
        if key is None:
            idx = jnp.linspace(0, n - 1, max_points).astype(jnp.int32)
        else:
            idx = jax.random.choice(key, n, (max_points,), replace=False)
        X = X[idx]
    m = X.shape[0]
    d = jnp.sqrt(_sq_dist(X, X))
    iu = jnp.triu_indices(m, k=1)
    med = jnp.median(d[iu])
    return jnp.where(med > 0, med, 1.0)


_KERNELS: dict[str, Callable[..., Kernel]] = {
    "gaussian": GaussianKernel,
    "imq": IMQKernel,
    "laplace": LaplaceKernel,
    "matern32": lambda bandwidth=1.0: MaternKernel(bandwidth, 1.5),
    "matern52": lambda bandwidth=1.0: MaternKernel(bandwidth, 2.5),
}


def get_kernel(kernel: str | Kernel, bandwidth=None, X: Array | None = None) -> Kernel:
    """Resolve a kernel given by name or instance.

    Args:
      kernel: a `Kernel` (returned unchanged) or one of ``"gaussian"``,
        ``"imq"``, ``"laplace"``, ``"matern32"``, ``"matern52"``.
      bandwidth: a positive float, or None for the median heuristic on ``X``.
      X: points ``(n, d)`` for the median heuristic.

    Raises:
      ValueError: unknown kernel name, or no bandwidth and no points.
    """
    if isinstance(kernel, Kernel):
        return kernel
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(_KERNELS)}")
    if bandwidth is None:
        if X is None:
            raise ValueError("need a bandwidth or points for the median heuristic")
        bandwidth = median_bandwidth(X)
    return _KERNELS[kernel](bandwidth)
