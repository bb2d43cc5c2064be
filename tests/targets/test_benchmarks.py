"""Benchmark targets: exact samplers, normalising constants, moments, dtypes, validation.

Tolerances are Monte Carlo standard errors times Z (5 sigma) from the draws
themselves, or quadrature accuracy where a number is computed by scipy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats as jstats
from scipy import integrate
from scipy import stats as sstats

from sbi_kit.targets import benchmarks as bm

Z = 5.0


def _key(i):
    return jax.random.PRNGKey(i)


def _batched(fn):
    """``fn`` vmapped and jitted: one compile instead of many eager op dispatches."""
    return jax.jit(jax.vmap(fn))


# Targets with exact samplers, kept small enough for two CPU cores.
EXACT = {
    "gaussian": lambda: bm.gaussian(3, mean=[1.0, -2.0, 0.5], scale=2.0),
    "ill_conditioned": lambda: bm.ill_conditioned_gaussian(5, 100.0),
    "ill_conditioned_rotated": lambda: bm.ill_conditioned_gaussian(5, 1000.0, rotate=3),
    "funnel_s1": lambda: bm.funnel(4, scale=1.0),
    "banana": lambda: bm.banana(3),
    "mixture_unequal": lambda: bm.gaussian_mixture(
        [[0.0, 0.0], [4.0, 1.0], [-3.0, 5.0]], scales=[1.0, 0.5, 2.0], weights=[0.2, 0.5, 0.3]
    ),
    "gmm40": bm.gmm40,
    "four_mode": bm.four_mode,
    "double_well": bm.double_well,
    "double_well_tilted": lambda: bm.double_well(3, a=1.0, b=-3.0, c=0.5),
    "many_well": bm.many_well,
}


@pytest.fixture(scope="module", params=sorted(EXACT))
def exact(request):
    target = EXACT[request.param]()
    draws = np.asarray(target.sample(_key(sorted(EXACT).index(request.param)), 20_000), np.float64)
    return target, draws


def test_sampler_shape_dtype_and_finite(exact):
    target, draws = exact
    assert draws.shape == (20_000, target.dim)
    assert target.sample(_key(1), 7).dtype == jnp.float32
    assert np.all(np.isfinite(draws))


def test_mean_matches_within_mc_error(exact):
    target, draws = exact
    se = np.asarray(target.std) / math.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - target.mean) < Z * se), (draws.mean(0), target.mean)


def test_std_matches_within_mc_error(exact):
    target, draws = exact
    n = draws.shape[0]
    centred = draws - np.asarray(target.mean)
    var_hat = np.mean(centred**2, axis=0)
    # Standard error of a mean of squares, from the draws' own fourth moment.
    se = np.std(centred**2, axis=0) / math.sqrt(n)
    err = np.abs(var_hat - np.asarray(target.std) ** 2)
    assert np.all(err < Z * se), (np.sqrt(var_hat), target.std)


def test_stein_identities_link_density_and_sampler(exact):
    """For x ~ p: E[grad log p] = 0 and E[x_j d_j log p] = -1 (integration by parts).

    Both involve only the score, so they check sampler against density
    independently of log_Z; the small additive slack covers float32 scores.
    """
    target, draws = exact
    x = jnp.asarray(draws[:5000], jnp.float32)
    s = np.asarray(_batched(target.score)(x), np.float64)
    xs = np.asarray(x, np.float64)
    n = s.shape[0]
    assert np.all(np.abs(s.mean(0)) < Z * s.std(0) / math.sqrt(n) + 1e-6)
    prod = (xs - xs.mean(0)) * s
    assert np.all(np.abs(prod.mean(0) + 1.0) < Z * prod.std(0) / math.sqrt(n) + 1e-3)


def test_log_density_dtype_follows_input(exact):
    target, draws = exact
    x32 = jnp.asarray(draws[:4], jnp.float32)
    lp32 = _batched(target.log_density)(x32)
    assert lp32.dtype == jnp.float32
    with jax.enable_x64(True):
        x64 = jnp.asarray(draws[:4], jnp.float64)
        lp64 = _batched(target.log_density)(x64)
        assert lp64.dtype == jnp.float64
        assert target.sample(_key(2), 3).dtype == jnp.float64
        assert jax.jit(target.log_density)(x64[0]).dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(lp32), np.asarray(lp64), rtol=1e-4, atol=1e-3)


# --- normalising constants ----------------------------------------------------


def _grid_log_z_2d(target, lo, hi, n=601):
    """log of the trapezoid integral of exp(log_density) over the box [lo, hi] (2-d)."""
    with jax.enable_x64(True):
        g0 = np.linspace(lo[0], hi[0], n)
        g1 = np.linspace(lo[1], hi[1], n)
        pts = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
        lp = np.asarray(_batched(target.log_density)(jnp.asarray(pts))).reshape(n, n)
    return math.log(integrate.trapezoid(integrate.trapezoid(np.exp(lp), g1, axis=1), g0))


def test_gaussian_log_densities_are_normalised_pdfs():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(3).standard_normal((6, 5)) * 3.0)
        t = bm.ill_conditioned_gaussian(5, 50.0, rotate=True)
        cov = t.info["covariance"]
        assert np.linalg.cond(cov) == pytest.approx(50.0, rel=1e-8)
        ref = jax.jit(jstats.multivariate_normal.logpdf)(x, jnp.zeros(5), cov)
        np.testing.assert_allclose(_batched(t.log_density)(x), ref, rtol=1e-10)
        g = bm.gaussian(5, mean=1.5, scale=0.7)
        ref = np.sum(sstats.norm.logpdf(x, 1.5, 0.7), axis=1)
        np.testing.assert_allclose(_batched(g.log_density)(x), ref, rtol=1e-10)


def test_funnel_density_is_the_ancestral_one():
    t = bm.funnel(10, 3.0)
    assert t.std[0] == 3.0 and t.std[1] == pytest.approx(math.exp(9 / 4))
    with jax.enable_x64(True):
        x = t.sample(_key(4), 8)
        ref = jax.jit(lambda x: jstats.norm.logpdf(x[:, 0], 0.0, 3.0) + jnp.sum(
            jstats.norm.logpdf(x[:, 1:], 0.0, jnp.exp(0.5 * x[:, :1])), axis=1
        ))(x)
        np.testing.assert_allclose(_batched(t.log_density)(x), ref, rtol=1e-10)


def test_funnel_default_neck_std_and_means():
    # Scale 3: the neck std is checkable; the x_{1:} std is not (kurtosis ~ e^9).
    t = bm.funnel()
    x = np.asarray(t.sample(_key(5), 20_000), np.float64)
    n = x.shape[0]
    se_var0 = np.std(x[:, 0] ** 2) / math.sqrt(n)
    assert abs(np.mean(x[:, 0] ** 2) - 9.0) < Z * se_var0
    assert np.all(np.abs(x.mean(0)) < Z * t.std / math.sqrt(n))


@pytest.mark.parametrize(
    "make, lo, hi",
    [
        (lambda: bm.banana(2, b=0.5, sigma1=1.0), (-8.0, -10.0), (8.0, 42.0)),
        (bm.gmm40, (-46.0, -46.0), (46.0, 46.0)),
        (lambda: bm.gaussian_mixture([[0.0, 0.0], [3.0, 1.0]], [1.0, 0.5], [0.9, 0.1]),
         (-8.0, -8.0), (8.0, 8.0)),
        (bm.double_well, (-4.0, -9.0), (4.0, 9.0)),
    ],
)
def test_log_z_by_2d_quadrature(make, lo, hi):
    t = make()
    # Trapezoid on a smooth, fast-decaying integrand is accurate far beyond 2e-4.
    assert _grid_log_z_2d(t, lo, hi) == pytest.approx(t.log_Z, abs=2e-4)


def test_four_mode_is_the_stated_mixture():
    t = bm.four_mode(10)
    means, weights = bm.mixture_modes(t)
    assert means.shape == (4, 10) and np.allclose(weights, 0.25)
    assert {tuple(m[:2]) for m in means} == {(8.0, 8.0), (8.0, -8.0), (-8.0, 8.0), (-8.0, -8.0)}
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(6).standard_normal((5, 10)) * 6.0)
        comps = np.stack([np.sum(sstats.norm.logpdf(x, m, 1.0), axis=1) for m in means])
        ref = np.logaddexp.reduce(comps, axis=0) + math.log(0.25)
        np.testing.assert_allclose(_batched(t.log_density)(x), ref, rtol=1e-10)


def test_gmm40_means_match_targets_md():
    ref = jax.random.uniform(jax.random.PRNGKey(0), (40, 2), minval=-1, maxval=1) * 40
    means, weights = bm.mixture_modes(bm.gmm40())
    np.testing.assert_allclose(means, np.asarray(ref), rtol=1e-6)
    assert np.allclose(weights, 1 / 40)


def _quartic(t, a, b, c):
    return a * t + b * t * t + c * t**4


def test_many_well_log_z_and_right_well_mass():
    t = bm.many_well(32)
    f = lambda s: math.exp(-_quartic(s, -0.5, -6.0, 1.0))
    z1, _ = integrate.quad(f, -10, 10, epsabs=0, epsrel=1e-12, limit=200)
    assert t.log_Z == pytest.approx(16 * (math.log(z1) + 0.5 * math.log(2 * math.pi)), abs=1e-8)
    assert t.log_Z == pytest.approx(164.6957, abs=1e-4)  # TARGETS.md's published value
    assert bm.many_well(6).log_Z == pytest.approx(t.log_Z * 3 / 16, rel=1e-12)
    barrier = t.info["barrier"]
    p_right = integrate.quad(f, barrier, 10, epsabs=0, epsrel=1e-12)[0] / z1
    assert t.info["right_well_mass"] == pytest.approx(p_right, abs=1e-7)
    assert p_right == pytest.approx(0.8443, abs=5e-5)
    a = np.asarray(t.sample(_key(7), 4000))[:, 0::2].ravel()
    se = math.sqrt(p_right * (1 - p_right) / a.size)
    assert abs(np.mean(a > barrier) - p_right) < Z * se


def test_double_well_log_z_and_inverse_cdf_histogram():
    t = bm.double_well(2, a=0.7, b=-4.0, c=1.0)
    f = lambda s: math.exp(-_quartic(s, 0.7, -4.0, 1.0))
    z1 = integrate.quad(f, -10, 10, epsabs=0, epsrel=1e-12, limit=200)[0]
    assert t.log_Z == pytest.approx(math.log(z1) + 0.5 * math.log(2 * math.pi), abs=1e-8)
    # Chi-square of the sampled x_1 against bin masses from scipy quadrature.
    x1 = np.asarray(t.sample(_key(8), 20_000))[:, 0]
    edges = np.concatenate([[-np.inf], np.linspace(-2.5, 2.5, 21), [np.inf]])
    bins = zip(edges[:-1], edges[1:])
    probs = np.array([integrate.quad(f, max(lo, -10), min(hi, 10))[0] for lo, hi in bins]) / z1
    counts = np.histogram(x1, edges)[0]
    expected = probs * x1.size
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < sstats.chi2.ppf(1 - 1e-5, len(probs) - 1)


def test_mode_weights_of_wells_and_mixtures_match_exact_samples():
    from sbi_kit.diagnostics.metrics import mode_weight_error

    for target in (bm.double_well(2, a=0.5), bm.four_mode(4), bm.gaussian_mixture(
            [[-5.0], [5.0]], weights=[0.3, 0.7])):
        means, weights = bm.mixture_modes(target)
        n = 20_000
        x = target.sample(_key(9), n)
        se = np.sqrt(weights * (1 - weights) / n).max()
        assert mode_weight_error(x, means, weights) < Z * se
    with pytest.raises(ValueError, match="no mode"):
        bm.mixture_modes(bm.many_well(4))


# --- phi^4 ----------------------------------------------------------------------


def _phi4_action_loops(field, kappa, lam):
    """Hopping-form action by explicit loops (independent of the vectorised code)."""
    L = field.shape[0]
    s = 0.0
    for i in range(L):
        for j in range(L):
            p = field[i, j]
            hop = p * field[(i + 1) % L, j] + p * field[i, (j + 1) % L]
            s += -2 * kappa * hop + p * p + lam * (p * p - 1) ** 2
    return s


def test_phi4_action_observables_and_symmetries():
    L, kappa, lam = 4, 0.27, 0.05
    t = bm.phi4(L, kappa, lam)
    assert t.dim == 16 and t.sample is None and t.log_Z is None
    lp = jax.jit(t.log_density)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(10).standard_normal(16))
        field = np.asarray(x).reshape(L, L)
        assert float(lp(x)) == pytest.approx(-_phi4_action_loops(field, kappa, lam), rel=1e-12)
        assert t.to_constrained(x)["phi"].shape == (L, L)
        np.testing.assert_array_equal(t.to_constrained(x)["phi"], field)
        obs = t.observables
        assert float(obs["magnetisation"](x)) == pytest.approx(field.mean())
        assert float(obs["abs_magnetisation"](-x)) == pytest.approx(abs(field.mean()))
        assert float(obs["action"](x)) == pytest.approx(-float(lp(x)))
        # Z2 symmetry and lattice translations leave the action unchanged.
        assert float(lp(-x)) == pytest.approx(float(lp(x)), rel=1e-12)
        shifted = np.roll(field, (1, 2), axis=(0, 1)).ravel()
        assert float(lp(jnp.asarray(shifted))) == pytest.approx(float(lp(x)), rel=1e-12)
    assert t.log_density(jnp.ones(16, jnp.float32)).dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(t.score(jnp.ones(16)))))


def test_phi4_mass_form_is_the_same_theory():
    L, kappa, lam = 4, 0.3, 0.02
    hop = bm.phi4(L, kappa, lam)
    mass = bm.phi4_mass(L, m2=(1 - 2 * lam) / kappa - 4, lam=lam / kappa**2)
    with jax.enable_x64(True):
        xs = jax.random.normal(_key(11), (5, L * L)) * 1.5
        diff = _batched(mass.log_density)(math.sqrt(kappa) * xs) - _batched(hop.log_density)(xs)
    # S_mass(sqrt(kappa) phi) = S_hop(phi) - lam * L^2 for every configuration.
    np.testing.assert_allclose(np.asarray(diff), lam * L * L, rtol=1e-10)


# --- argument validation --------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: bm.gaussian(0), "dim"),
        (lambda: bm.gaussian(2.5), "dim"),
        (lambda: bm.gaussian(2, scale=-1.0), "scale"),
        (lambda: bm.gaussian(2, mean=[0.0, 1.0, 2.0]), "mean"),
        (lambda: bm.gaussian(2, mean=[0.0, np.nan]), "mean"),
        (lambda: bm.ill_conditioned_gaussian(3, 0.5), "condition_number"),
        (lambda: bm.ill_conditioned_gaussian(3, 10.0, rotate=-1), "rotate"),
        (lambda: bm.funnel(1), "dim"),
        (lambda: bm.funnel(5, scale=0.0), "scale"),
        (lambda: bm.banana(1), "dim"),
        (lambda: bm.banana(2, b=np.inf), "b"),
        (lambda: bm.banana(2, sigma1=-2.0), "sigma1"),
        (lambda: bm.gaussian_mixture(np.zeros(3)), "means"),
        (lambda: bm.gaussian_mixture(np.zeros((2, 2)), scales=[1.0, 0.0]), "scales"),
        (lambda: bm.gaussian_mixture(np.zeros((2, 2)), scales=[1.0, 1.0, 1.0]), "scales"),
        (lambda: bm.gaussian_mixture(np.zeros((2, 2)), weights=[1.0, -0.1]), "weights"),
        (lambda: bm.gaussian_mixture(np.zeros((2, 2)), weights=[0.0, 0.0]), "weights"),
        (lambda: bm.four_mode(1), "dim"),
        (lambda: bm.double_well(2, c=0.0), "quartic"),
        (lambda: bm.many_well(5), "even"),
        (lambda: bm.many_well(0), "dim"),
        (lambda: bm.phi4(1), "L"),
        (lambda: bm.phi4(4, lam=-0.1), "lam"),
        (lambda: bm.phi4(4, kappa=0.3, lam=0.0), "kappa"),
        (lambda: bm.phi4_mass(4, m2=-1.0, lam=0.0), "m2"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_sample_count_raises():
    with pytest.raises(ValueError, match="number of samples"):
        bm.gaussian(2).sample(_key(0), -1)
