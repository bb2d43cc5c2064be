"""Shared test helpers: Monte Carlo error bounds from ArviZ."""

import numpy as np
import pytest


def mc_z_scores(draws, mean, std):
    """z-scores of the sample mean and sd of ``draws (chains, n, dim)``.

    Each error is divided by ArviZ's Monte Carlo standard error (from the
    chains' ESS), so ``|z| < 5`` is a tolerance derived from the Monte Carlo
    error, not a hand-tuned one.

    Returns:
      (z_mean, z_std), each of shape ``(dim,)``.
    """
    import arviz as az

    draws = np.asarray(draws, dtype=np.float64)
    ds = az.convert_to_dataset({"x": draws})
    mcse_mean = az.mcse(ds, method="mean")["x"].values
    mcse_sd = az.mcse(ds, method="sd")["x"].values
    flat = draws.reshape(-1, draws.shape[-1])
    z_mean = (flat.mean(0) - np.asarray(mean)) / mcse_mean
    z_std = (flat.std(0, ddof=1) - np.asarray(std)) / mcse_sd
    return z_mean, z_std


@pytest.fixture
def assert_moments():
    def check(draws, mean, std, z=5.0):
        z_mean, z_std = mc_z_scores(draws, mean, std)
        assert np.all(np.abs(z_mean) < z), f"mean off by {z_mean} Monte Carlo SEs"
        assert np.all(np.abs(z_std) < z), f"sd off by {z_std} Monte Carlo SEs"
        return z_mean, z_std

    return check
