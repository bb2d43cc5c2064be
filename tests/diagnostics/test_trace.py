import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import sbi_kit


def regression(x, y=None):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


X = np.random.default_rng(0).normal(size=(30, 2))
Y = X @ np.array([1.0, -0.5]) + 0.3 * np.random.default_rng(1).normal(size=30)


def test_numpyro_trace_to_arviz_groups_names_and_loo():
    target = sbi_kit.from_numpyro(regression, X, Y)
    trace = sbi_kit.nuts(target, jax.random.PRNGKey(0), num_chains=2, num_warmup=200, num_draws=150, progress=False)
    idata = trace.to_arviz()
    assert set(idata.groups()) >= {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    assert idata.posterior["w"].shape == (2, 150, 2)
    assert idata.posterior["sigma"].shape == (2, 150)
    assert float(idata.posterior["sigma"].min()) > 0
    stats = idata.sample_stats
    for name in ("diverging", "acceptance_rate", "energy", "step_size", "n_steps", "lp", "tree_depth"):
        assert stats[name].shape == (2, 150), name
    assert stats["diverging"].dtype == bool
    assert idata.log_likelihood["y"].shape == (2, 150, 30)
    np.testing.assert_allclose(idata.observed_data["y"].values, Y)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    # lp is the unconstrained log density the sampler used.
    x = trace.positions[0, 0]
    np.testing.assert_allclose(stats["lp"].values[0, 0], target.log_density(jnp.asarray(x)), rtol=1e-5)
    assert idata.posterior.attrs["sampler"] == "nuts"


def test_factor_sites_are_not_likelihood_terms():
    def model(x, y=None):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        numpyro.factor("ridge", -0.5 * jnp.sum(w**2))
        with numpyro.plate("n", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)

    target = sbi_kit.from_numpyro(model, X, Y)
    assert set(target.info["observed"]) == {"y"}
    trace = sbi_kit.nuts(target, jax.random.PRNGKey(1), num_chains=2, num_warmup=100, num_draws=100, progress=False)
    idata = trace.to_arviz()
    assert list(idata.log_likelihood.data_vars) == ["y"]
    assert np.isfinite(az.loo(idata).elpd_loo)


def test_plain_target_trace_and_empty_interrupted_trace():
    target = sbi_kit.from_logdensity(lambda x: -0.5 * x @ x, 3)

    def stop_immediately(steps, state):
        raise KeyboardInterrupt

    import pytest

    with pytest.warns(UserWarning, match="interrupted"):
        trace = sbi_kit.mala(target, jax.random.PRNGKey(0), num_chains=2, num_warmup=20, num_draws=40,
                             chunk_size=10, progress=False, callback=stop_immediately)
    assert trace.interrupted and trace.positions.shape == (2, 10, 3)
    idata = trace.to_arviz()
    assert idata.posterior["x"].shape == (2, 10, 3)
    assert idata.posterior.attrs["interrupted"] == 1
    assert "log_likelihood" not in idata.groups()
