"""Kernels for thinning: power kernels, general Matern, KT+ sums, Stein kernels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import gamma, kv

from sbi_kit.thinning import (
    GaussianKernel,
    GeneralMaternKernel,
    IMQKernel,
    LaplaceKernel,
    MaternKernel,
    SteinKernel,
    SumKernel,
    power_kernel,
)


@pytest.mark.parametrize("nu", [0.5, 0.75, 1.5, 2.2, 3.5])
def test_general_matern_matches_bessel_formula(nu):
    r = np.array([1e-3, 0.05, 0.3, 1.0, 2.5, 8.0])
    X = jnp.asarray(np.stack([r, np.zeros_like(r)], 1), jnp.float32)
    got = np.asarray(GeneralMaternKernel(1.7, nu).matrix(X, jnp.zeros((1, 2)))[:, 0])
    s = math.sqrt(2 * nu) * r / 1.7
    ref = 2 ** (1 - nu) / gamma(nu) * s**nu * kv(nu, s)
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_general_matern_agrees_with_matern_at_half_integers():
    X = jax.random.normal(jax.random.key(0), (7, 3))
    for nu in (0.5, 1.5, 2.5):
        np.testing.assert_allclose(
            GeneralMaternKernel(0.8, nu).matrix(X, X), MaternKernel(0.8, nu).matrix(X, X), atol=1e-6
        )


def test_power_kernels():
    # Gaussian: the alpha-power has Fourier transform (k^)^alpha, i.e. bandwidth * sqrt(alpha).
    assert power_kernel(GaussianKernel(2.0), 0.5, 3).bandwidth == pytest.approx(2.0 / math.sqrt(2))
    # Matern(nu) -> Matern(alpha (nu + d/2) - d/2) with the same spectral scale 2 nu / l^2.
    pk = power_kernel(MaternKernel(1.0, 2.5), 0.5, 2)
    assert pk.nu == pytest.approx(0.5 * 3.5 - 1.0)
    assert 2 * pk.nu / pk.bandwidth**2 == pytest.approx(2 * 2.5 / 1.0)
    lk = power_kernel(LaplaceKernel(1.0), 0.9, 1)
    assert lk.nu == pytest.approx(0.9 * 1.0 - 0.5)
    with pytest.raises(ValueError, match="need alpha >"):
        power_kernel(LaplaceKernel(1.0), 0.5, 2)
    with pytest.raises(ValueError, match="no closed-form"):
        power_kernel(IMQKernel(1.0), 0.5, 2)
    with pytest.raises(ValueError, match="alpha"):
        power_kernel(GaussianKernel(1.0), 0.0, 2)


def test_sum_kernel_normalises_terms():
    X = jax.random.normal(jax.random.key(1), (5, 2))
    k = SumKernel((GaussianKernel(1.0), IMQKernel(1.0, c=2.0)))
    ref = GaussianKernel(1.0).matrix(X, X) + IMQKernel(1.0, c=2.0).matrix(X, X) / 2.0**-1
    np.testing.assert_allclose(k.matrix(X, X), ref, rtol=1e-5)
    np.testing.assert_allclose(k.diagonal(X), jnp.diag(ref), rtol=1e-5)


def _stein_reference(base, score, x, y):
    kk = lambda a, b: base(a, b)
    gx, gy = jax.grad(kk, 0)(x, y), jax.grad(kk, 1)(x, y)
    tr = jnp.trace(jax.jacfwd(jax.grad(kk, 1), 0)(x, y))
    return kk(x, y) * score(x) @ score(y) + score(x) @ gy + score(y) @ gx + tr


@pytest.mark.parametrize("base", [IMQKernel(1.3), GaussianKernel(0.9)])
def test_stein_kernel_matches_autodiff(base):
    score = lambda x: -x / 2.0
    k = SteinKernel(base, score)
    X = jax.random.normal(jax.random.key(0), (6, 3))
    Y = jax.random.normal(jax.random.key(1), (5, 3))
    ref = jax.jit(jax.vmap(lambda x: jax.vmap(lambda y: _stein_reference(base, score, x, y))(Y)))(X)
    np.testing.assert_allclose(k.matrix(X, Y), ref, rtol=1e-4, atol=1e-5)
    # Diagonal: the x = y limit (autodiff at exactly x = y hits the clipped distance).
    np.testing.assert_allclose(k.diagonal(X), jnp.diag(k.matrix(X, X + 1e-4)), rtol=2e-3)


def test_stein_kernel_has_mean_zero_under_target():
    # Target N(0, I_2); E_y k_p(x, y) = 0 for every x. Compare with the
    # Monte Carlo standard error of a 40k-sample average (4 sigma).
    k = SteinKernel(IMQKernel(1.0), lambda x: -x)
    X = jnp.array([[0.0, 0.0], [1.0, -0.5], [2.0, 1.0]])
    Y = jax.random.normal(jax.random.key(3), (40000, 2))
    vals = k.matrix(X, Y)
    se = vals.std(1) / math.sqrt(Y.shape[0])
    assert np.all(np.abs(vals.mean(1)) < 4 * se)
    # ...while for a shifted distribution the mean is clearly not zero.
    shifted = k.matrix(X, Y + 1.0)
    assert np.any(np.abs(shifted.mean(1)) > 10 * se)


def test_stein_kernel_accepts_target_and_rejects_laplace():
    from sbi_kit.targets.base import Target

    t = Target(log_density=lambda x: -0.5 * jnp.sum(x**2), dim=2)
    k = SteinKernel(IMQKernel(1.0), t)
    k2 = SteinKernel(IMQKernel(1.0), lambda x: -x)
    X = jax.random.normal(jax.random.key(0), (4, 2))
    np.testing.assert_allclose(k.matrix(X, X), k2.matrix(X, X), rtol=1e-6)
    with pytest.raises(ValueError, match="Laplace"):
        SteinKernel(LaplaceKernel(1.0), lambda x: -x)
    with pytest.raises(ValueError, match="GaussianKernel or IMQKernel"):
        SteinKernel(MaternKernel(1.0, 2.5), lambda x: -x)
