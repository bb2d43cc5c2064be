"""Tests for the numpyro models shipped in ``models/``.

Every model must import (by file path, as the CLI does, and as
``sbi_kit.models.<name>``), initialise under numpyro with a finite log density,
and expose the documented site names.  Where a reference exists the posterior is
checked against it: eight schools (non-centred) and kidiq against posteriordb's
Stan reference draws, with tolerances from Monte Carlo error (ArviZ ESS of our
run plus the reference's own MC error); the funnel against its exact marginals
by forward sampling.  Log densities are also checked pointwise against
hand-written formulas, which catches wrong priors that MC tests are too coarse
to see.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import initialize_model, log_density

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models"


def _load_support():
    """Import the sibling ``posteriordb.py`` whatever pytest's import mode is."""
    spec = importlib.util.spec_from_file_location(
        "sbi_kit_tests_models_posteriordb", Path(__file__).with_name("posteriordb.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pdb = _load_support()

# model file -> {latent or deterministic site: shape} expected in a trace.
EXPECTED_SITES = {
    "eight_schools_centered": {"mu": (), "tau": (), "theta": (8,)},
    "eight_schools_noncentered": {"mu": (), "tau": (), "theta_tilde": (8,), "theta": (8,)},
    "kidiq_momiq": {"beta": (2,), "sigma": ()},
    "logistic_regression": {"alpha": (), "beta": (6,)},
    "funnel": {"v": (), "x": (9,)},
}
# model file -> its observed site ("None" for the funnel, which has no data).
OBSERVED_SITE = {
    "eight_schools_centered": "y",
    "eight_schools_noncentered": "y",
    "kidiq_momiq": "kid_score",
    "logistic_regression": "y",
    "funnel": None,
}
MODEL_NAMES = sorted(EXPECTED_SITES)
# Bound on |estimate - reference| in units of the combined Monte Carlo standard
# error; 5 keeps the family of ~30 comparisons free of false alarms.
Z_MAX = 5.0


def _import_by_path(name):
    spec = importlib.util.spec_from_file_location(
        f"_sbi_kit_model_file_{name}", MODELS_DIR / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_package(name):
    return importlib.import_module(f"sbi_kit.models.{name}")


def _trace(model, kwargs, seed=0):
    """Trace of ``model(**kwargs)`` at numpyro's initial point.

    Latent values come from ``initialize_model`` rather than prior draws, so
    models with improper priors (``ImproperUniform`` cannot be sampled) trace too.
    """
    from numpyro import handlers

    info = initialize_model(jax.random.PRNGKey(seed), model, model_kwargs=kwargs)
    values = info.postprocess_fn(info.param_info.z)
    seeded = handlers.seed(model, jax.random.PRNGKey(seed))
    return handlers.trace(handlers.substitute(seeded, data=values)).get_trace(**kwargs)


# --------------------------------------------------------------------------- import + init


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_imports_both_ways(name):
    """The file imports standalone and as ``sbi_kit.models.<name>``, with equal data."""
    by_path = _import_by_path(name)
    by_package = _import_package(name)
    for module in (by_path, by_package):
        assert callable(module.model)
        assert isinstance(module.data, dict)
        assert module.__doc__ and len(module.__doc__) > 100
    assert by_path.data.keys() == by_package.data.keys()
    for key in by_path.data:
        np.testing.assert_array_equal(np.asarray(by_path.data[key]), np.asarray(by_package.data[key]))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_initialises_with_expected_sites(name):
    """``initialize_model`` succeeds, the log density is finite, sites are as documented."""
    module = _import_package(name)
    info = initialize_model(jax.random.PRNGKey(0), module.model, model_kwargs=module.data)
    potential = info.potential_fn(info.param_info.z)
    assert np.isfinite(float(potential))
    assert np.all(np.isfinite(np.asarray(info.param_info.potential_energy)))

    trace = _trace(module.model, module.data)
    for site, shape in EXPECTED_SITES[name].items():
        assert site in trace, f"{name}: missing site {site!r}"
        assert tuple(np.shape(trace[site]["value"])) == shape
    observed = [k for k, v in trace.items() if v["type"] == "sample" and v["is_observed"]]
    expected_obs = OBSERVED_SITE[name]
    assert observed == ([] if expected_obs is None else [expected_obs])
    if expected_obs is not None:
        np.testing.assert_array_equal(
            np.asarray(trace[expected_obs]["value"]), np.asarray(module.data[expected_obs])
        )


def test_funnel_noncentered_initialises():
    """The optional non-centred funnel initialises and carries ``v``, ``x_std``, ``x``."""
    module = _import_package("funnel")
    info = initialize_model(jax.random.PRNGKey(0), module.funnel_noncentered)
    assert np.isfinite(float(info.potential_fn(info.param_info.z)))
    trace = _trace(module.funnel_noncentered, {})
    assert {k: np.shape(trace[k]["value"]) for k in ("v", "x_std", "x")} == {
        "v": (),
        "x_std": (9,),
        "x": (9,),
    }


def test_data_files_resolve_beside_module():
    """Data paths are computed from the module file, not the working directory."""
    for name in ("kidiq_momiq", "logistic_regression"):
        module = _import_package(name)
        assert module.DATA_FILE.is_file()
        assert module.DATA_FILE.parent == Path(module.__file__).parent / "data"


# --------------------------------------------------------------------------- exact log densities


def _normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _half_cauchy_logpdf(x, scale):
    return np.log(2.0 / (np.pi * scale)) - np.log1p((x / scale) ** 2)


def test_eight_schools_parametrisations_are_one_posterior():
    """Centred log density at (mu, tau, theta) equals the non-centred one at
    (mu, tau, (theta - mu) / tau) minus the Jacobian log tau^J, pointwise."""
    centred = _import_package("eight_schools_centered")
    noncentred = _import_package("eight_schools_noncentered")
    data = centred.data
    rng = np.random.default_rng(1)
    for _ in range(5):
        mu = rng.normal(0, 5)
        tau = float(np.abs(rng.standard_cauchy()) * 5 + 0.1)
        theta = rng.normal(mu, tau, size=8)
        lc, _ = log_density(centred.model, (), data, {"mu": mu, "tau": tau, "theta": theta})
        tt = (theta - mu) / tau
        ln, _ = log_density(noncentred.model, (), data, {"mu": mu, "tau": tau, "theta_tilde": tt})
        expected = (
            _normal_logpdf(mu, 0, 5)
            + _half_cauchy_logpdf(tau, 5)
            + _normal_logpdf(theta, mu, tau).sum()
            + _normal_logpdf(data["y"], theta, data["sigma"]).sum()
        )
        np.testing.assert_allclose(float(lc), expected, rtol=1e-5)
        np.testing.assert_allclose(float(ln) - 8 * np.log(tau), expected, rtol=1e-5)


def test_kidiq_log_density_matches_stan_program():
    """Flat prior on beta, half-Cauchy(2.5) on sigma, normal likelihood: pointwise."""
    module = _import_package("kidiq_momiq")
    d = module.data
    assert d["N"] == 434 == len(d["mom_iq"]) == len(d["kid_score"])
    for beta, sigma in [((26.0, 0.6), 18.3), ((20.0, 0.65), 17.5), ((0.0, 0.0), 40.0)]:
        lp, _ = log_density(module.model, (), d, {"beta": jnp.array(beta), "sigma": sigma})
        expected = _half_cauchy_logpdf(sigma, 2.5) + _normal_logpdf(
            d["kid_score"], beta[0] + beta[1] * d["mom_iq"], sigma
        ).sum()
        np.testing.assert_allclose(float(lp), expected, rtol=1e-5)


def test_logistic_regression_log_density_matches_formula():
    """N(0, 5) intercept, N(0, 2.5) coefficients, Bernoulli-logit likelihood: pointwise."""
    module = _import_package("logistic_regression")
    X, y = module.data["X"], module.data["y"]
    assert X.shape == (len(y), len(module.FEATURES)) and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X.std(0), 1.0, atol=1e-5)
    rng = np.random.default_rng(2)
    for _ in range(3):
        alpha, beta = rng.normal(0, 1), rng.normal(0, 1, size=X.shape[1])
        lp, _ = log_density(module.model, (), module.data, {"alpha": alpha, "beta": beta})
        eta = alpha + X @ beta
        expected = (
            _normal_logpdf(alpha, 0, 5)
            + _normal_logpdf(beta, 0, 2.5).sum()
            + np.sum(y * eta - np.logaddexp(0.0, eta))
        )
        np.testing.assert_allclose(float(lp), expected, rtol=1e-5)


# --------------------------------------------------------------------------- posteriors vs reference


def _run_nuts(model, data, seed, **nuts_kwargs):
    """4 vectorised chains x 1000 draws (1000 warm-up); returns (chains, draws, ...) samples."""
    mcmc = MCMC(
        NUTS(model, **nuts_kwargs),
        num_warmup=1000,
        num_samples=1000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), **data)
    return {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}


def _stan_draws(samples, stan_name):
    """Draws of Stan-named scalar ``"theta[3]"`` (1-based) from numpyro samples, (chains, draws)."""
    if "[" in stan_name:
        site, index = stan_name[:-1].split("[")
        return samples[site][..., int(index) - 1]
    return samples[stan_name]


def _compare_with_reference(samples, posterior_name):
    """Deviations of our means and sds from posteriordb's, in combined MC standard errors.

    Our error uses the reference sd (and, for the sd, its fourth moment) with
    ArviZ's ESS of our draws (``method="mean"`` / ``"sd"``); the reference's own
    error is ArviZ's MCSE of its 10 chains.  Returns ``{name: (z_mean, z_sd)}``.
    """
    ref = pdb.load_reference(posterior_name)
    ref_summary = pdb.reference_summary(posterior_name)
    ref_mcse = pdb.reference_mcse(posterior_name)
    out = {}
    for name, ref_draws in ref.items():
        draws = _stan_draws(samples, name)
        np.testing.assert_allclose(ref_draws.mean(), ref_summary[name]["mean"], rtol=1e-6, atol=1e-9)
        se_mean = math.hypot(
            pdb.mean_mcse(ref_draws, float(az.ess(draws, method="mean"))), ref_mcse[name]["mean"]
        )
        se_sd = math.hypot(
            pdb.sd_mcse(ref_draws, float(az.ess(draws, method="sd"))), ref_mcse[name]["sd"]
        )
        z_mean = (draws.mean() - ref_summary[name]["mean"]) / se_mean
        z_sd = (draws.std(ddof=1) - ref_summary[name]["sd"]) / se_sd
        out[name] = (float(z_mean), float(z_sd))
    return out


def _assert_within_mc_error(z, label):
    report = ", ".join(f"{k}: mean {m:+.2f}, sd {s:+.2f}" for k, (m, s) in z.items())
    print(f"\n{label} deviation / MCSE: {report}")
    bad = {k: v for k, v in z.items() if max(abs(v[0]), abs(v[1])) > Z_MAX}
    assert not bad, f"{label}: outside {Z_MAX} MCSE of posteriordb: {bad}"


def test_eight_schools_noncentered_matches_posteriordb():
    """numpyro NUTS on our model reproduces posteriordb's reference means and sds."""
    module = _import_package("eight_schools_noncentered")
    ref_name = "eight_schools-eight_schools_noncentered"
    pdb.load_reference(ref_name)  # skip before sampling if the reference is absent
    samples = _run_nuts(module.model, module.data, seed=11, target_accept_prob=0.9)
    assert float(az.rhat(samples["mu"])) < 1.05 and float(az.rhat(samples["tau"])) < 1.05
    _assert_within_mc_error(_compare_with_reference(samples, ref_name), ref_name)


def test_kidiq_matches_posteriordb():
    """numpyro NUTS on our kidiq model reproduces posteriordb's reference means and sds."""
    module = _import_package("kidiq_momiq")
    ref_name = "kidiq-kidscore_momiq"
    pdb.load_reference(ref_name)
    # Intercept and slope on unstandardised mom_iq are ~-0.99 correlated: dense mass.
    samples = _run_nuts(module.model, module.data, seed=12, dense_mass=True)
    assert float(az.rhat(samples["sigma"])) < 1.05
    _assert_within_mc_error(_compare_with_reference(samples, ref_name), ref_name)


def _logistic_mle(X, y, iters=50):
    """Unpenalised maximum-likelihood fit by Newton's method; returns (coef, stderr) with intercept first."""
    A = np.column_stack([np.ones(len(y)), X])
    w = np.zeros(A.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-A @ w))
        hess = A.T @ (A * (p * (1 - p))[:, None])
        w = w + np.linalg.solve(hess, A.T @ (y - p))
    p = 1.0 / (1.0 + np.exp(-A @ w))
    cov = np.linalg.inv(A.T @ (A * (p * (1 - p))[:, None]))
    return w, np.sqrt(np.diag(cov))


def test_logistic_regression_posterior_agrees_with_mle_signs():
    """Posterior means carry the sign of every clearly non-zero ML coefficient."""
    module = _import_package("logistic_regression")
    X, y = module.data["X"], module.data["y"]
    mle, se = _logistic_mle(X, y)
    mcmc = MCMC(
        NUTS(module.model),
        num_warmup=300,
        num_samples=300,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(13), **module.data)
    s = mcmc.get_samples(group_by_chain=True)
    post = np.concatenate([[np.mean(s["alpha"])], np.mean(s["beta"], axis=(0, 1))])
    clear = np.abs(mle / se) > 3
    assert clear.sum() >= 3  # the data set is informative about several features
    np.testing.assert_array_equal(np.sign(post[clear]), np.sign(mle[clear]))
    beta = np.asarray(s["beta"])
    assert max(float(az.rhat(beta[..., k])) for k in range(beta.shape[-1])) < 1.05


# --------------------------------------------------------------------------- funnel


@pytest.mark.parametrize("variant", ["model", "funnel_noncentered"])
def test_funnel_forward_samples_have_exact_marginals(variant):
    """Predictive draws: sd(v) = 3 and x / exp(v/2) ~ N(0, 1), within MC error."""
    module = _import_package("funnel")
    n = 20_000
    draws = Predictive(getattr(module, variant), num_samples=n)(jax.random.PRNGKey(14))
    v = np.asarray(draws["v"], dtype=np.float64)
    x = np.asarray(draws["x"], dtype=np.float64)
    assert v.shape == (n,) and x.shape == (n, 9)
    # iid normal draws: se(mean) = sd / sqrt(n), se(sd) = sd / sqrt(2 n).
    assert abs(v.mean()) < Z_MAX * 3.0 / math.sqrt(n)
    assert abs(v.std(ddof=1) - 3.0) < Z_MAX * 3.0 / math.sqrt(2 * n)
    u = x / np.exp(v / 2)[:, None]
    assert np.all(np.abs(u.mean(axis=0)) < Z_MAX / math.sqrt(n))
    assert np.all(np.abs(u.std(axis=0, ddof=1) - 1.0) < Z_MAX / math.sqrt(2 * n))
