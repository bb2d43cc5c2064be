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


# ---------------------------------------------------------------------------
# Kernels used by kernel thinning: general half-integer Matern, power kernels,
# normalised sums (KT+), and the protocol that lets a kernel precompute
# per-point features (the Stein kernel needs each point's score).
# ---------------------------------------------------------------------------


def _prepare_default(self, X: Array):
    """Features and the kernel acting on them: ``(n, d) -> ((n, d'), Kernel)``.

    Thinning algorithms call this once on the whole input and then only ever
    evaluate the returned kernel on rows of the returned features. Plain
    kernels return ``(X, self)``; the Stein kernel appends each point's score,
    so the score is evaluated n times instead of once per kernel entry.
    """
    return X, self


Kernel.prepare = _prepare_default
# A kernel whose expectation under the target is zero (a Stein kernel): KT-SWAP
# then minimises MMD to the zero measure instead of to the input points.
Kernel.mean_zero = False


def _half_integer_matern(s: Array, p: int) -> Array:
    """Matern correlation with ``nu = p + 1/2`` as a function of ``s = sqrt(2 nu) r / l``.

    Closed form (Rasmussen & Williams eq. 4.16):
    ``exp(-s) p!/(2p)! sum_i (p+i)!/(i!(p-i)!) (2 s)^(p-i)``.
    """
    fact = math.factorial
    poly = 0.0
    for i in range(p + 1):
        poly = poly + (fact(p + i) / (fact(i) * fact(p - i))) * (2.0 * s) ** (p - i)
    return jnp.exp(-s) * poly * (fact(p) / fact(2 * p))


def _matern_general(s: Array, nu: float) -> Array:
    """Matern correlation ``2^(1-nu)/Gamma(nu) s^nu K_nu(s)`` for any ``nu > 0``.

    JAX has no modified Bessel function K_nu, so it is computed from
    ``K_nu(s) = int_0^inf exp(-s cosh t) cosh(nu t) dt`` with the trapezoid
    rule, which converges geometrically for this analytic, doubly decaying
    integrand. The integration range is cut where ``s cosh t`` exceeds ~40
    (the integrand is then below e^-40 relative). Used only by power kernels
    whose smoothness is not a half-integer; 64 nodes keep float32 exact to
    about 1e-6.
    """
    s = jnp.maximum(s, 1e-30)
    t_max = jnp.arccosh(1.0 + (40.0 + 2.0 * nu) / s) + 1.0
    nodes = jnp.linspace(0.0, 1.0, 65, dtype=s.dtype)
    t = t_max[..., None] * nodes
    log_terms = -s[..., None] * jnp.cosh(t) + jnp.log(jnp.cosh(nu * t))
    log_terms = log_terms + nu * jnp.log(s)[..., None]
    trap = jnp.ones(65, s.dtype).at[0].set(0.5).at[-1].set(0.5)
    integral = jnp.sum(jnp.exp(log_terms) * trap, axis=-1) * t_max / 64.0
    lognorm = (1.0 - nu) * math.log(2.0) - math.lgamma(nu)
    return jnp.minimum(integral * math.exp(lognorm), 1.0)


@dataclasses.dataclass(frozen=True)
class GeneralMaternKernel(Kernel):
    """Matern kernel with any smoothness ``nu > 0`` (unit value at distance 0).

    ``k(x, y) = 2^(1-nu)/Gamma(nu) s^nu K_nu(s)``, ``s = sqrt(2 nu) |x - y| / bandwidth``.
    Half-integer ``nu`` uses the closed form; other values a 64-node
    quadrature (64x slower), so prefer half-integers when you have a choice.
    This is the family that power kernels of Laplace and Matern kernels live in.
    """

    bandwidth: float = 1.0
    nu: float = 1.5

    def __post_init__(self):
        _check_bandwidth(self.bandwidth)
        if not (isinstance(self.nu, (int, float)) and self.nu > 0):
            raise ValueError(f"Matern smoothness nu must be a positive number, got {self.nu}")

    def _from_sq_dist(self, sq):
        safe = jnp.where(sq > 0, sq, 1.0)
        r = jnp.where(sq > 0, jnp.sqrt(safe), 0.0)
        nu = float(self.nu)
        s = math.sqrt(2.0 * nu) * r / self.bandwidth
        p = nu - 0.5
        if p >= 0 and abs(p - round(p)) < 1e-12:
            return _half_integer_matern(s, int(round(p)))
        return jnp.where(sq > 0, _matern_general(s, nu), 1.0)

    def diagonal(self, X):
        return jnp.ones(X.shape[:1], X.dtype)


jax.tree_util.register_pytree_node(
    GeneralMaternKernel,
    lambda k: ((k.bandwidth,), k.nu),
    lambda nu, leaves: GeneralMaternKernel(leaves[0], nu),
)


@dataclasses.dataclass(frozen=True)
class SumKernel(Kernel):
    """``k(x, y) = sum_i k_i(x, y) / sup k_i``: the KT+ kernel ``k/|k|_inf + k_a/|k_a|_inf``.

    Each term is divided by its supremum (its value at distance 0 for the
    translation-invariant kernels here), so neither term dominates the split.
    """

    kernels: tuple = ()

    def _sup(self, k, dtype):
        x = jnp.zeros((1, 1), dtype)
        return k.matrix(x, x)[0, 0]

    def matrix(self, X, Y):
        return sum(k.matrix(X, Y) / self._sup(k, X.dtype) for k in self.kernels)

    def diagonal(self, X):
        return sum(k.diagonal(X) / self._sup(k, X.dtype) for k in self.kernels)


jax.tree_util.register_pytree_node(
    SumKernel,
    lambda k: (k.kernels, None),
    lambda _, leaves: SumKernel(tuple(leaves)),
)


def power_kernel(kernel: Kernel, alpha: float, dim: int) -> Kernel:
    """The alpha-power kernel ``k_alpha`` of a translation-invariant kernel in ``dim`` dims.

    ``k_alpha`` has Fourier transform ``(k^)^alpha`` (Dwivedi & Mackey,
    "Generalized Kernel Thinning", ICLR 2022, Table 2); ``alpha = 1/2`` is the
    square-root kernel of the original KT, ``alpha = 1`` the kernel itself.
    Constant factors are dropped: KT-SPLIT is invariant to kernel scale.

    * Gaussian(l): Gaussian(l sqrt(alpha)).
    * Matern(nu, l) (Laplace is nu = 1/2): Matern(nu', l sqrt(nu'/nu)) with
      ``nu' = alpha (nu + dim/2) - dim/2``, which must be positive, i.e.
      ``alpha > dim / (2 nu + dim)``.

    Raises:
      ValueError: the power kernel does not exist (alpha too small for a
        Matern/Laplace kernel, alpha outside (0, 1]) or has no closed form
        (inverse multiquadric, sums, Stein kernels).
    """
    if not (0 < alpha <= 1):
        raise ValueError(f"power kernel exponent alpha must be in (0, 1], got {alpha}")
    if alpha == 1:
        return kernel
    if isinstance(kernel, GaussianKernel):
        return GaussianKernel(kernel.bandwidth * math.sqrt(alpha))
    if isinstance(kernel, (LaplaceKernel, MaternKernel, GeneralMaternKernel)):
        nu = 0.5 if isinstance(kernel, LaplaceKernel) else float(kernel.nu)
        nu_a = alpha * (nu + dim / 2.0) - dim / 2.0
        if nu_a <= 0:
            raise ValueError(
                f"the alpha={alpha} power of a Matern kernel with nu={nu} does not exist in "
                f"dim={dim}; need alpha > {dim / (2 * nu + dim):.4g}"
            )
        # Laplace has bandwidth = 1/gamma with s = r / bandwidth = sqrt(2 nu) r / l, l = bandwidth.
        return GeneralMaternKernel(kernel.bandwidth * math.sqrt(nu_a / nu), nu_a)
    raise ValueError(
        f"no closed-form power kernel for {type(kernel).__name__}; use method='kt' "
        "(target KT) or a Gaussian/Laplace/Matern kernel for power KT and KT+"
    )
