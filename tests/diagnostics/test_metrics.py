"""Sample-quality metrics against brute-force dense computations and closed forms.

Exact agreement checks run in float64 (``jax.enable_x64`` as a context, never
globally); statistical checks take their tolerance from replicate spread.
"""

import math

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sstats
from scipy.spatial.distance import cdist, pdist

from sbi_kit.diagnostics import metrics as M
from sbi_kit.targets.benchmarks import gaussian
from sbi_kit.thinning.kernels import GaussianKernel, IMQKernel

Z = 5.0


def _normal(seed, shape, shift=0.0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


# --- brute-force references (numpy, float64) -----------------------------------


def _dense_kernel(name, h):
    return {
        "gaussian": lambda D: np.exp(-0.5 * D**2 / h**2),
        "imq": lambda D: (1.0 + D**2 / h**2) ** -0.5,
        "laplace": lambda D: np.exp(-D / h),
        "matern32": lambda D: (1 + math.sqrt(3) * D / h) * np.exp(-math.sqrt(3) * D / h),
    }[name]


def _dense_mmd2(x, y, name, h):
    k = _dense_kernel(name, h)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k(cdist(x, x)), k(cdist(y, y)), k(cdist(x, y))
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def _dense_energy(x, y, unbiased):
    n, m = len(x), len(y)
    nxx, nyy = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    sq = 2 * cdist(x, y).mean() - cdist(x, x).sum() / nxx - cdist(y, y).sum() / nyy
    return math.sqrt(max(sq, 0.0))


def _autodiff_stein_matrix(k, score, X):
    """Langevin Stein kernel matrix by automatic differentiation (float64)."""

    def kp(x, y):
        sx, sy = score(x), score(y)
        gx = jax.grad(k, 0)(x, y)
        gy = jax.grad(k, 1)(x, y)
        tr = jnp.trace(jax.jacfwd(jax.grad(k, 0), 1)(x, y))
        return sx @ sy * k(x, y) + sx @ gy + sy @ gx + tr

    return np.asarray(jax.jit(jax.vmap(lambda a: jax.vmap(lambda b: kp(a, b))(X)))(X))


# --- MMD -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, block_size",
    [("gaussian", 1), ("gaussian", 7), ("gaussian", 1024), ("imq", 5), ("laplace", 16),
     ("matern32", 3)],
)
def test_mmd_matches_dense_for_any_block_size(name, block_size):
    # 23 and 17 rows: no block size here divides both.
    x, y = _normal(0, (23, 3)), _normal(1, (17, 3), shift=0.3)
    ref = _dense_mmd2(x, y, name, 1.7)
    with jax.enable_x64(True):
        got = M.mmd_squared(x, y, kernel=name, bandwidth=1.7, block_size=block_size)
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-13)
    assert M.mmd(x, y, kernel=name, bandwidth=1.7, block_size=block_size) == pytest.approx(
        math.sqrt(max(ref, 0)), rel=1e-4, abs=1e-5
    )


def test_mmd_default_bandwidth_is_pooled_median_distance():
    x, y = _normal(2, (30, 2)), _normal(3, (25, 2), scale=2.0)
    h = np.median(pdist(np.concatenate([x, y])))
    with jax.enable_x64(True):
        got = M.mmd_squared(x, y, block_size=8)
    assert got == pytest.approx(_dense_mmd2(x, y, "gaussian", h), rel=1e-10)


def test_mmd_accepts_kernel_instances_and_float32():
    x, y = _normal(4, (40, 2)), _normal(5, (33, 2), shift=1.0)
    ref = _dense_mmd2(x, y, "gaussian", 0.8)
    got = M.mmd_squared(x.astype(np.float32), y.astype(np.float32), kernel=GaussianKernel(0.8),
                        block_size=9)
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-6)


def _gaussian_mmd2_closed_form(delta, sigma, h, d):
    """MMD^2 between N(0, s^2 I) and N(delta, s^2 I) for exp(-|x-y|^2 / (2 h^2))."""
    c = (h**2 / (h**2 + 2 * sigma**2)) ** (d / 2)
    return 2 * c * (1 - math.exp(-(delta**2) / (2 * (h**2 + 2 * sigma**2))))


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_mmd_between_gaussians_matches_closed_form(shift):
    d, n, reps, h = 2, 400, 6, 1.5
    vals = []
    for r in range(reps):
        x = _normal(10 + r, (n, d))
        y = _normal(100 + r, (n, d))
        y[:, 0] += shift
        vals.append(M.mmd_squared(x, y, bandwidth=h, block_size=128))
    vals = np.array(vals)
    expected = _gaussian_mmd2_closed_form(shift, 1.0, h, d)
    assert abs(vals.mean() - expected) < Z * vals.std(ddof=1) / math.sqrt(reps)
    if shift:
        assert vals.mean() > Z * vals.std(ddof=1) / math.sqrt(reps)


# --- energy distance --------------------------------------------------------------


def test_energy_distance_matches_scipy_in_1d():
    x, y = _normal(6, 57), _normal(7, 40, shift=0.5, scale=1.3)
    with jax.enable_x64(True):
        got = M.energy_distance(x, y, block_size=10)
    assert got == pytest.approx(sstats.energy_distance(x, y), rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("block_size", [3, 64])
def test_energy_distance_matches_dense(unbiased, block_size):
    x, y = _normal(8, (31, 4)), _normal(9, (26, 4), shift=0.4)
    with jax.enable_x64(True):
        got = M.energy_distance(x, y, block_size=block_size, unbiased=unbiased)
    assert got == pytest.approx(_dense_energy(x, y, unbiased), rel=1e-10)
    got32 = M.energy_distance(x.astype(np.float32), y.astype(np.float32), block_size=block_size,
                              unbiased=unbiased)
    assert got32 == pytest.approx(_dense_energy(x, y, unbiased), rel=1e-4)


# --- KSD ---------------------------------------------------------------------------


def _score_std_normal_shifted(x):
    return -(x - 0.5)


@pytest.mark.parametrize(
    "kernel, k_fn",
    [
        (IMQKernel(1.3, 0.8, -0.7), lambda x, y: (0.8**2 + jnp.sum((x - y) ** 2) / 1.3**2) ** -0.7),
        ("imq", lambda x, y: (1.0 + jnp.sum((x - y) ** 2)) ** -0.5),
        (GaussianKernel(0.9), lambda x, y: jnp.exp(-0.5 * jnp.sum((x - y) ** 2) / 0.81)),
    ],
)
def test_ksd_matches_autodiff_stein_kernel(kernel, k_fn):
    x = _normal(11, (19, 3), scale=1.5)
    with jax.enable_x64(True):
        K = _autodiff_stein_matrix(k_fn, _score_std_normal_shifted, jnp.asarray(x))
        n = len(x)
        u_stat = M.ksd_squared(x, _score_std_normal_shifted, kernel=kernel, block_size=5)
        v_stat = M.ksd_squared(x, _score_std_normal_shifted, kernel=kernel, block_size=5,
                               unbiased=False)
    assert u_stat == pytest.approx((K.sum() - np.trace(K)) / (n * (n - 1)), rel=1e-9, abs=1e-12)
    assert v_stat == pytest.approx(K.mean(), rel=1e-9, abs=1e-12)


def test_ksd_small_on_exact_samples_and_large_on_biased_ones():
    target = gaussian(3, mean=1.0)
    reps, n = 5, 300
    exact, biased = [], []
    for r in range(reps):
        x = np.asarray(target.sample(jax.random.PRNGKey(r), n))
        exact.append(M.ksd_squared(x, target, block_size=128))
        biased.append(M.ksd_squared(1.0 + 1.4 * (x - 1.0), target, block_size=128))
    exact, biased = np.array(exact), np.array(biased)
    se = exact.std(ddof=1) / math.sqrt(reps)
    assert abs(exact.mean()) < Z * se
    assert biased.mean() > exact.mean() + 20 * se
    # A Target and its score function give the same answer.
    assert M.ksd(x, target) == pytest.approx(M.ksd(x, target.score), rel=1e-6)


# --- IS ESS, log Z, modes ------------------------------------------------------------------


def test_is_ess():
    assert M.is_ess(np.zeros(10)) == pytest.approx(1.0)
    assert M.is_ess(np.full(7, 900.0)) == pytest.approx(1.0)  # would overflow as raw weights
    lw = np.array([0.0, -np.inf, -np.inf, -np.inf])
    assert M.is_ess(lw) == pytest.approx(0.25)
    lw = _normal(12, 50)
    w = np.exp(lw)
    assert M.is_ess(lw) == pytest.approx(w.sum() ** 2 / (50 * np.sum(w**2)), rel=1e-5)
    for bad, match in [([], "empty"), ([0.0, np.nan], "NaN"), ([0.0, np.inf], r"\+inf"),
                       ([-np.inf, -np.inf], "zero")]:
        with pytest.raises(ValueError, match=match):
            M.is_ess(np.array(bad))


def test_log_z_error():
    assert M.log_z_error(1.25, 1.0) == pytest.approx(0.25)
    assert M.log_z_error(-0.5, gaussian(2)) == pytest.approx(0.5)
    from sbi_kit.targets.benchmarks import phi4

    with pytest.raises(ValueError, match="no exact log_Z"):
        M.log_z_error(0.0, phi4(4))


def test_mode_weight_error_counts_nearest_modes():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    samples = np.concatenate([np.full((30, 2), 0.1), np.full((70, 2), 9.0)])
    assert M.mode_weight_error(samples, means, [0.5, 0.5]) == pytest.approx(0.2)
    np.testing.assert_allclose(M.mode_weights(samples, means, block_size=7), [0.3, 0.7])
    with pytest.raises(ValueError, match="weights"):
        M.mode_weight_error(samples, means, [0.5, -0.5])
    with pytest.raises(ValueError, match="d=2"):
        M.mode_weight_error(samples, np.zeros((2, 3)), [0.5, 0.5])


# --- input handling and ESS ------------------------------------------------------------


def _idata(with_stats=True):
    rng = np.random.default_rng(13)
    post = {"a": rng.standard_normal((2, 200)), "b": rng.standard_normal((2, 200, 2, 2))}
    stats = {"num_grad_evals": np.full((2, 200), 3.0), "n_steps": np.full((2, 200), 7.0)}
    idata = az.from_dict(posterior=post, sample_stats=stats if with_stats else None)
    return idata, post


def test_draws_as_array_flattens_in_a_consistent_order():
    idata, post = _idata()
    arr = M.draws_as_array(idata)
    assert arr.shape == (400, 5)
    np.testing.assert_array_equal(arr[:, 0], post["a"].reshape(-1))
    np.testing.assert_array_equal(arr[:, 1:], post["b"].reshape(400, 4))
    np.testing.assert_array_equal(M.draws_as_array(idata, var_names=["b"]), arr[:, 1:])
    np.testing.assert_array_equal(M.draws_as_array(np.ones((3, 4, 2))), np.ones((12, 2)))
    assert M.draws_as_array(np.arange(5.0)).shape == (5, 1)
    x3 = _normal(14, (2, 30, 5))
    assert M.mmd_squared(idata, x3, bandwidth=1.0) == pytest.approx(
        M.mmd_squared(arr, x3.reshape(60, 5), bandwidth=1.0), rel=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.mmd(np.zeros((5, 2)), np.zeros((5, 3))), "different dimensions"),
        (lambda: M.mmd(np.zeros((0, 2)), np.zeros((5, 2))), "empty"),
        (lambda: M.mmd(np.zeros((1, 2)), np.zeros((5, 2))), "at least 2"),
        (lambda: M.energy_distance(np.zeros((5, 2)), np.zeros((4, 3))), "different dimensions"),
        (lambda: M.mmd(np.zeros((5, 2)), np.zeros((5, 2)), block_size=0), "block_size"),
        (lambda: M.ksd(np.zeros((5, 2)), "not a score"), "score"),
        (lambda: M.ksd(np.zeros((5, 2)), lambda x: -x, kernel="laplace"), "KSD supports"),
        (lambda: M.ksd(np.zeros((5, 2)), lambda x: x / 0.0), "score is NaN"),
        (lambda: M.draws_as_array(np.zeros((2, 2, 2, 2))), "shape"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nan_rows_are_counted():
    x = _normal(15, (10, 2))
    x[[1, 4, 7], 1] = np.nan
    with pytest.raises(ValueError, match="3 of 10 rows"):
        M.mmd(x, _normal(16, (10, 2)))
    with pytest.raises(ValueError, match="3 of 10 rows"):
        M.ksd(x, lambda v: -v)


def test_ess_per_grad_and_per_second():
    idata, post = _idata()
    ess = az.ess(idata, method="bulk")
    r = M.ess_per_grad(idata)
    assert r.cost == 2 * 200 * 3.0  # num_grad_evals preferred over n_steps
    np.testing.assert_allclose(r.per_parameter["b"], ess["b"].values / r.cost)
    assert r.min == pytest.approx(min(ess["a"].values.min(), ess["b"].values.min()) / r.cost)
    # Fallback to ArviZ's n_steps, and an explicit count.
    no_grads = az.from_dict(posterior=post, sample_stats={"n_steps": np.full((2, 200), 7.0)})
    assert M.ess_per_grad(no_grads).cost == 2 * 200 * 7.0
    assert M.ess_per_grad(idata, num_grad_evals=100).min == pytest.approx(r.min * r.cost / 100)
    arr = M.ess_per_grad(np.stack([post["a"], post["a"] * 2], -1), num_grad_evals=np.ones(50))
    np.testing.assert_allclose(arr.per_parameter["x"][0], ess["a"].values / 50)
    with pytest.raises(ValueError, match="num_grad_evals"):
        M.ess_per_grad(_idata(with_stats=False)[0])
    with pytest.raises(ValueError, match="wall_time"):
        M.ess_per_second(idata)
    idata.sample_stats.attrs["sampling_time"] = 4.0
    assert M.ess_per_second(idata).min == pytest.approx(r.min * r.cost / 4.0)
    assert M.ess_per_second(idata, wall_time=2.0).min == pytest.approx(r.min * r.cost / 2.0)
    with pytest.raises(ValueError, match="wall_time"):
        M.ess_per_second(idata, wall_time=0.0)


def test_trace_inputs_use_positions_and_run_metadata():
    from sbi_kit.diagnostics.trace import Trace

    rng = np.random.default_rng(17)
    positions = rng.standard_normal((2, 150, 2))
    trace = Trace(
        positions=positions,
        stats={"num_grad_evals": np.full((2, 150), 5.0), "lp": np.zeros((2, 150))},
        target=gaussian(2),
        sampler="test",
        info={"sampling_time": 3.0, "warmup_grad_evals": 40.0},
    )
    np.testing.assert_array_equal(M.draws_as_array(trace), positions.reshape(300, 2))
    r = M.ess_per_grad(trace)
    assert r.cost == 2 * 150 * 5.0
    assert M.ess_per_grad(trace, include_warmup=True).cost == r.cost + 40.0
    assert M.ess_per_second(trace).min == pytest.approx(r.min * r.cost / 3.0)


# --- NaN per-parameter ESS and KSD coordinates --------------------------------------------


def test_ess_rate_min_ignores_nan_ess_with_a_warning():
    rng = np.random.default_rng(21)
    # A site with NaN ESS (arviz gives NaN when a site's draws are NaN, and for
    # constant deterministic sites in some versions) must not poison `min`.
    post = {"a": rng.standard_normal((2, 200)), "c": np.full((2, 200), np.nan)}
    idata = az.from_dict(posterior=post, sample_stats={"num_grad_evals": np.full((2, 200), 3.0)})
    ess_a = float(az.ess(az.from_dict(posterior={"a": post["a"]}), method="bulk")["a"])
    with pytest.warns(RuntimeWarning, match=r"NaN for \['c'\]"):
        r = M.ess_per_grad(idata)
    assert np.isnan(r.per_parameter["c"])
    assert r.min == pytest.approx(ess_a / r.cost)
    # Only NaN left: min is NaN, still with the warning.
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert math.isnan(M.ess_per_second(idata, wall_time=1.0, var_names=["c"]).min)


def test_ess_rate_min_nan_from_constant_site(monkeypatch):
    idata, _ = _idata()
    real_ess = az.ess

    def ess_with_nan(*args, **kwargs):  # an arviz that reports NaN for a constant site
        ds = real_ess(*args, **kwargs)
        ds["a"] = ds["a"] * np.nan
        return ds

    monkeypatch.setattr(az, "ess", ess_with_nan)
    with pytest.warns(RuntimeWarning, match=r"\['a'\]"):
        r = M.ess_per_grad(idata)
    assert r.min == pytest.approx(float(np.min(r.per_parameter["b"])))


def test_ksd_rejects_constrained_numpyro_inference_data():
    numpyro = pytest.importorskip("numpyro")
    import numpyro.distributions as dist

    from sbi_kit.diagnostics.trace import Trace
    from sbi_kit.targets import from_numpyro

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("obs", dist.Normal(mu, sigma), obs=y)

    target = from_numpyro(model, y=jnp.array([0.3, -0.2, 0.5]))
    positions = np.random.default_rng(22).standard_normal((2, 60, target.dim)).astype(np.float32)
    trace = Trace(
        positions=positions,
        stats={"num_grad_evals": np.ones((2, 60))},
        target=target,
        sampler="test",
        info={},
    )
    idata = trace.to_arviz()
    for fn in (M.ksd, M.ksd_squared):
        with pytest.raises(ValueError, match="unconstrained"):
            fn(idata, target)
        with pytest.raises(ValueError, match="unconstrained"):
            fn(idata.posterior, target)
    # Unconstrained draws (the Trace, or its positions) are accepted and agree.
    value = M.ksd(trace, target)
    assert math.isfinite(value) and value >= 0.0
    assert M.ksd(positions, target) == pytest.approx(value, rel=1e-6)
