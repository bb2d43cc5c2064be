r"""Bayesian inversion of a 1-d heat equation with a NumPy (non-JAX) solver.

Physics: the temperature ``u(x, t)`` on a rod ``x in [0, 1]`` with cold ends
(``u(0, t) = u(1, t) = 0``) obeys ``u_t = kappa u_xx``. At ``t = 0`` a hot spot
sits at ``c``: ``u(x, 0) = A exp(-(x - c)^2 / (2 w^2))`` with known width
``w = 0.1``. Sensors at ``x = 0.2, 0.4, 0.6, 0.8`` record ``u`` at times
``t = 0.005, 0.01, 0.02, 0.04`` with Gaussian noise ``sigma = 0.02``
(16 observations).

Unknowns (unconstrained vector ``theta``, ``dim = 3``):

    theta[0] = log kappa   ~ Normal(log 0.5, 1)
    theta[1] = log A       ~ Normal(0, 0.5)
    theta[2] = c           ~ Normal(0.5, 0.2)

Solver (`forward`): second-order finite differences on ``NX = 99`` interior
nodes, Crank-Nicolson in time with step ``DT = 1e-4``, solved exactly in the
discrete-sine eigenbasis of the finite-difference Laplacian (a legacy-style
NumPy solver, vectorised over a batch of parameter vectors, no gradients).

The data are synthetic: simulated with `forward` at ``TRUE_THETA`` (kappa =
0.5, A = 1.2, c = 0.35) plus noise from ``numpy.random.default_rng(20240131)``,
regenerated identically at import (no data file).

This is not a numpyro model. Use it as a black-box target::

    from models import heat_inversion as hi
    import sbi_kit.samplers.ensemble as ens
    target = hi.make_target()                       # from_blackbox(log_posterior, 3)
    trace = ens.ensemble_score(target, key, initial_positions=hi.prior_sample(rng, (4, 300)))

``data`` holds the observations and the design as plain Python/NumPy values.
"""

from __future__ import annotations

import numpy as np

PARAM_NAMES = ("log_kappa", "log_amplitude", "centre")
TRUE_THETA = np.array([np.log(0.5), np.log(1.2), 0.35])
PRIOR_MEAN = np.array([np.log(0.5), 0.0, 0.5])
PRIOR_STD = np.array([1.0, 0.5, 0.2])
WIDTH = 0.1
NX = 99
DT = 1e-4
SENSORS = np.array([0.2, 0.4, 0.6, 0.8])
TIMES = np.array([0.005, 0.01, 0.02, 0.04])
NOISE_STD = 0.02
SEED = 20240131

_grid = np.linspace(0.0, 1.0, NX + 2)[1:-1]  # interior nodes
_dx = 1.0 / (NX + 1)
_modes = np.arange(1, NX + 1)
# Discrete sine basis: eigenvectors of the Dirichlet FD Laplacian, orthonormal rows.
_basis = np.sqrt(2.0 / (NX + 1)) * np.sin(np.pi * np.outer(_modes, _grid))  # (NX modes, NX nodes)
_eig = -(4.0 / _dx**2) * np.sin(0.5 * np.pi * _modes * _dx) ** 2  # (NX,) Laplacian eigenvalues
_sensor_idx = np.rint(SENSORS / _dx).astype(int) - 1  # nodes at the sensors (exact on this grid)
_steps = np.rint(TIMES / DT).astype(int)


def forward(theta: np.ndarray) -> np.ndarray:
    """Sensor temperatures for a batch of parameters.

    Args:
      theta: ``(n, 3)`` float array (log kappa, log A, c).

    Returns:
      ``(n, len(TIMES) * len(SENSORS))`` float64, time-major (all sensors at
      the first time, then the second, ...).
    """
    theta = np.asarray(theta, dtype=np.float64)
    kappa = np.exp(theta[:, 0])[:, None]
    amp = np.exp(theta[:, 1])[:, None]
    centre = theta[:, 2][:, None]
    u0 = amp * np.exp(-0.5 * ((_grid[None, :] - centre) / WIDTH) ** 2)  # (n, NX)
    coef = u0 @ _basis.T  # (n, modes)
    # Crank-Nicolson amplification per step of each mode: (1 + k dt l / 2) / (1 - k dt l / 2).
    half = 0.5 * kappa * DT * _eig[None, :]
    growth = (1.0 + half) / (1.0 - half)
    out = []
    for steps in _steps:
        u = (coef * growth**steps) @ _basis  # (n, NX)
        out.append(u[:, _sensor_idx])
    return np.concatenate(out, axis=1)


def _simulate_data() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    clean = forward(TRUE_THETA[None, :])[0]
    return clean + NOISE_STD * rng.standard_normal(clean.shape)


OBSERVED = _simulate_data()

data = {
    "observed": OBSERVED,
    "sensors": SENSORS,
    "times": TIMES,
    "noise_std": NOISE_STD,
    "true_theta": TRUE_THETA,
    "prior_mean": PRIOR_MEAN,
    "prior_std": PRIOR_STD,
}


def log_prior(theta: np.ndarray) -> np.ndarray:
    """Gaussian prior log density of ``theta (n, 3)``, shape ``(n,)``."""
    z = (np.asarray(theta, np.float64) - PRIOR_MEAN) / PRIOR_STD
    return -0.5 * np.sum(z * z, axis=1) - np.sum(np.log(PRIOR_STD)) - 1.5 * np.log(2 * np.pi)


def log_likelihood(theta: np.ndarray) -> np.ndarray:
    """Gaussian log likelihood of the observations, shape ``(n,)``."""
    resid = (forward(theta) - OBSERVED[None, :]) / NOISE_STD
    return -0.5 * np.sum(resid * resid, axis=1) - OBSERVED.size * (np.log(NOISE_STD) + 0.5 * np.log(2 * np.pi))


def log_posterior(theta: np.ndarray) -> np.ndarray:
    """Unnormalised log posterior of ``theta (n, 3)``, shape ``(n,)`` (NaN-free for finite input)."""
    return log_prior(theta) + log_likelihood(theta)


def prior_sample(rng: np.random.Generator, shape) -> np.ndarray:
    """Prior draws of shape ``(*shape, 3)`` (float32, for JAX's default precision)."""
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    z = rng.standard_normal(shape + (3,))
    return (PRIOR_MEAN + PRIOR_STD * z).astype(np.float32)


def make_target(batch_size: int | None = None):
    """The posterior as a black-box sbi_kit `Target` (``from_blackbox(log_posterior, 3)``)."""
    from sbi_kit.samplers.ensemble import from_blackbox

    def to_constrained(x):
        import jax.numpy as jnp

        return {"kappa": jnp.exp(x[0]), "amplitude": jnp.exp(x[1]), "centre": x[2]}

    return from_blackbox(log_posterior, 3, batch_size=batch_size, name="heat_inversion",
                         to_constrained=to_constrained)
