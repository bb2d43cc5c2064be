"""Double-well and many-well targets (Boltzmann-generator / FAB benchmarks).

Both use the quartic well energy of bgflow's ``DoubleWellEnergy``,
``E(t) = a t + b t^2 + c t^4``, on one coordinate and a standard Gaussian on
the others. The 1-d factor has no closed-form normaliser, so at construction
we tabulate it once with numpy on a fine float64 grid: the trapezoid rule
(spectrally accurate for a smooth, fast-decaying integrand) gives ``log Z`` and
the moments, and the cumulative integral gives an inverse-CDF sampler that is
exact up to linear interpolation between grid points (error O(h^2), h ~ 1e-4).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import jax
import jax.numpy as jnp

from sbi_kit.targets import _checks
from sbi_kit.targets.base import Target


# eq=False: the fields hold numpy arrays, which cannot be compared or hashed as a whole.
@dataclasses.dataclass(frozen=True, eq=False)
class QuarticWell:
    """Tabulated 1-d density ``exp(-(a t + b t^2 + c t^4))`` (float64 numpy).

    Attributes:
      a, b, c: energy coefficients (``c > 0``).
      grid, cdf: shape ``(n_grid,)``; ``cdf`` is the normalised cumulative
        trapezoid integral on ``grid``.
      log_Z: ``log`` of the integral of the unnormalised density.
      mean, std: exact (to quadrature accuracy) moments.
      minima: sorted locations of the local minima of the energy.
      barrier: location of the local maximum between two minima, or None.
    """

    a: float
    b: float
    c: float
    grid: np.ndarray
    cdf: np.ndarray
    log_Z: float
    mean: float
    std: float
    minima: tuple[float, ...]
    barrier: float | None

    def energy(self, t):
        """The well energy at ``t`` (any array type; float dtype preserved)."""
        return self.a * t + self.b * t * t + self.c * t**4

    def mass_above(self, t0: float) -> float:
        """Probability that the coordinate exceeds ``t0``."""
        return float(1.0 - np.interp(t0, self.grid, self.cdf))

    def sample(self, key, shape, dtype) -> jax.Array:
        """Inverse-CDF draws of the given shape and dtype."""
        u = jax.random.uniform(key, shape, dtype)
        return jnp.interp(u, jnp.asarray(self.cdf, dtype), jnp.asarray(self.grid, dtype))


def quartic_well(a: float, b: float, c: float, n_grid: int = 2**16 + 1, tail: float = 60.0) -> QuarticWell:
    """Tabulate ``exp(-(a t + b t^2 + c t^4))`` on a grid covering all but ~e^-tail of its mass."""
    a = _checks.finite_float(a, "a")
    b = _checks.finite_float(b, "b")
    c = _checks.positive_float(c, "c (quartic coefficient)")

    def energy(t):
        return a * t + b * t * t + c * t**4

    # Critical points solve E'(t) = 4c t^3 + 2b t + a = 0.
    roots = np.roots([4.0 * c, 0.0, 2.0 * b, a])
    crit = np.sort(roots[np.abs(roots.imag) < 1e-9].real)
    curvature = 2.0 * b + 12.0 * c * crit**2
    minima = tuple(float(t) for t in crit[curvature > 0])
    maxima = crit[curvature < 0]
    barrier = float(maxima[0]) if len(minima) == 2 and len(maxima) == 1 else None
    e_min = min(energy(t) for t in minima)
    # Widen until both ends sit `tail` nats above the minimum: the mass cut off
    # is then below exp(-tail) times the grid spacing ratio, far under float64 eps.
    half = 1.0 + float(np.max(np.abs(crit)))
    while min(energy(half), energy(-half)) - e_min < tail:
        half *= 1.5
    grid = np.linspace(-half, half, n_grid)
    dens = np.exp(-(energy(grid) - e_min))
    h = grid[1] - grid[0]
    cum = np.concatenate([[0.0], np.cumsum(0.5 * h * (dens[1:] + dens[:-1]))])
    z = cum[-1]
    # Trapezoid moments; the endpoint weights are negligible (density ~ e^-tail).
    mean = float(h * np.sum(grid * dens) / z)
    var = float(h * np.sum((grid - mean) ** 2 * dens) / z)
    return QuarticWell(
        a=a, b=b, c=c, grid=grid, cdf=cum / z, log_Z=float(math.log(z) - e_min),
        mean=mean, std=math.sqrt(var), minima=minima, barrier=barrier,
    )


def double_well(dim: int = 2, a: float = 0.0, b: float = -4.0, c: float = 1.0) -> Target:
    """bgflow's double well: ``E(x) = a x_1 + b x_1^2 + c x_1^4 + 0.5 sum_{i>1} x_i^2``.

    The defaults (``a = 0, b = -4, c = 1``) are bgflow's ``DoubleWellEnergy``
    defaults: two symmetric wells at ``x_1 = +-sqrt(2)`` separated by a barrier
    of height 4 nats; a nonzero ``a`` tilts it.

    Args:
      dim: dimension, >= 1.
      a, b: linear and quadratic coefficients (finite).
      c: quartic coefficient, > 0 so the density is normalisable.

    Returns:
      A `Target` with ``log_density = -E`` (dtype of ``x``), ``log_Z`` from
      quadrature, mean/std (quadrature for ``x_1``, 0/1 for the rest), and an
      exact inverse-CDF sampler ``(key, n) -> (n, dim)``. With two wells,
      ``info["mode_means"]`` holds the minima ``(2, dim)`` and
      ``info["mode_weights"]`` the mass nearest each (the nearest-mode rule of
      the mode-weight error), and ``info["right_well_mass"]`` the mass beyond
      the barrier.
    """
    dim = _checks.positive_int(dim, "dim")
    well = quartic_well(a, b, c)
    log_Z = well.log_Z + 0.5 * (dim - 1) * _checks.LOG_2PI

    def log_density(x):
        x = _checks.float_input(x)
        return -well.energy(x[0]) - 0.5 * jnp.sum(x[1:] * x[1:])

    def sample(key, n):
        dt = _checks.default_float()
        k1, k2 = jax.random.split(key)
        first = well.sample(k1, (n, 1), dt)
        return jnp.concatenate([first, jax.random.normal(k2, (n, dim - 1), dt)], axis=1)

    mean = np.zeros(dim)
    mean[0] = well.mean
    std = np.ones(dim)
    std[0] = well.std
    info = {"a": well.a, "b": well.b, "c": well.c, "well": well}
    if well.barrier is not None:
        left, right = well.minima
        modes = np.zeros((2, dim))
        modes[:, 0] = [left, right]
        p_right = well.mass_above(0.5 * (left + right))
        info.update(
            mode_means=modes,
            mode_weights=np.array([1.0 - p_right, p_right]),
            right_well_mass=well.mass_above(well.barrier),
        )
    return Target(
        log_density=log_density, dim=dim, name=f"double_well_{dim}d",
        sample=_checks.jit_sampler(sample),
        log_Z=float(log_Z), mean=mean, std=std, info=info,
    )


def many_well(dim: int = 32) -> Target:
    """Many-well of TARGETS.md (FAB, Midgley et al.): ``dim / 2`` independent double wells.

    ``log p(x) = sum_i [-(a_i^4 - 6 a_i^2 - 0.5 a_i) - 0.5 b_i^2]`` with
    ``a_i = x_{2i-1}``, ``b_i = x_{2i}`` (0-based: even and odd indices), so
    ``2^(dim/2)`` modes. ``log_Z = dim/2 * (log 11784.50927 + 0.5 log 2 pi)``
    (164.6957 for ``dim = 32``); each ``a_i`` has mass 0.8443 in its right well
    (``info["right_well_mass"]``). Exact samples draw every ``a_i`` by inverse
    CDF and every ``b_i`` from N(0, 1).

    Args:
      dim: even dimension >= 2.
    """
    dim = _checks.positive_int(dim, "dim", minimum=2)
    if dim % 2:
        raise ValueError(f"many_well dim must be even (pairs of coordinates), got {dim}")
    pairs = dim // 2
    # -(t^4 - 6 t^2 - 0.5 t) is the bgflow energy with a = -0.5, b = -6, c = 1.
    well = quartic_well(-0.5, -6.0, 1.0)
    log_Z = pairs * (well.log_Z + 0.5 * _checks.LOG_2PI)

    def log_density(x):
        x = _checks.float_input(x)
        a_coord, b_coord = x[0::2], x[1::2]
        return -jnp.sum(well.energy(a_coord)) - 0.5 * jnp.sum(b_coord * b_coord)

    def sample(key, n):
        dt = _checks.default_float()
        k1, k2 = jax.random.split(key)
        a_coord = well.sample(k1, (n, pairs), dt)
        b_coord = jax.random.normal(k2, (n, pairs), dt)
        return jnp.stack([a_coord, b_coord], axis=-1).reshape(n, dim)

    mean = np.zeros(dim)
    mean[0::2] = well.mean
    std = np.ones(dim)
    std[0::2] = well.std
    return Target(
        log_density=log_density, dim=dim, name=f"many_well_{dim}d",
        sample=_checks.jit_sampler(sample),
        log_Z=float(log_Z), mean=mean, std=std,
        info={"well": well, "right_well_mass": well.mass_above(well.barrier),
              "barrier": well.barrier},
    )
