"""Fixtures shared by the SNF tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbi_kit.targets.density import from_logdensity
from sbi_kit.targets.wells import double_well


@pytest.fixture
def nan_well():
    """The 1-d double well with a NaN energy right of 1.4, and ``log Z`` of the part left of 1.4.

    Metropolis blocks reject every proposal into the NaN region, so paths that start left of
    1.4 stay there and estimate the truncated normaliser (by quadrature here).

    Returns:
      ``(target, log_z_truncated, log_z_full)``.
    """
    good = double_well(1)

    def log_density(x):
        return jnp.where(x[0] > 1.4, jnp.nan, good.log_density(x))

    target = from_logdensity(log_density, 1, name="nan_well")
    grid = np.linspace(-6.0, 1.4, 40001)
    dens = np.exp(np.asarray(jax.vmap(good.log_density)(jnp.asarray(grid[:, None], jnp.float32)), np.float64))
    log_z_trunc = float(np.log(np.sum((dens[1:] + dens[:-1]) / 2) * (grid[1] - grid[0])))
    return target, log_z_trunc, good.log_Z
