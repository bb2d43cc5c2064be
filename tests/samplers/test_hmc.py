"""NUTS, HMC and MALA (blackjax through sbi_kit) against exact moments.

Tolerances are 5 Monte Carlo standard errors from ArviZ's ESS-based MCSE
(see tests/conftest.py), with fixed seeds.
"""

import importlib.util
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sbi_kit
from sbi_kit.targets.gaussians import gaussian, ill_conditioned_gaussian

REPO = Path(__file__).resolve().parents[2]


def _load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "target, kwargs",
    [
        (gaussian(5, mean=np.arange(5.0), scale=2.0), {}),
        (ill_conditioned_gaussian(10, condition_number=100.0), {}),
        (ill_conditioned_gaussian(10, condition_number=100.0, rotate=True), {"dense_mass": True}),
    ],
    ids=["isotropic", "ill_conditioned_diag", "ill_conditioned_rotated_dense"],
)
def test_nuts_gaussians_exact_moments(target, kwargs, assert_moments):
    trace = sbi_kit.nuts(target, jax.random.PRNGKey(1), num_chains=4, num_warmup=500, num_draws=1000, progress=False, **kwargs)
    assert trace.positions.shape == (4, 1000, target.dim)
    assert int(trace.stats["diverging"].sum()) == 0
    assert_moments(trace.positions, target.mean, target.std)


def test_nuts_funnel_noncentred_model_exact(assert_moments):
    """Neal's funnel (d = 10) written non-centred: NUTS is exact.

    The x_i marginals have kurtosis 3 e^9, so their sample sd is no usable
    statistic; the joint law is pinned down by v ~ N(0, 3^2) and
    x exp(-v / 2) ~ N(0, I) independent of v, which are checked instead.
    """
    module = _load_module(REPO / "models" / "funnel.py")
    target = sbi_kit.from_numpyro(module.funnel_noncentered, **module.data)
    trace = sbi_kit.nuts(target, jax.random.PRNGKey(2), num_chains=4, num_warmup=500, num_draws=1000, progress=False)
    post = trace.constrained()
    standardised = post["x"] * np.exp(-post["v"][..., None] / 2)
    draws = np.concatenate([post["v"][..., None], standardised], axis=-1)
    assert_moments(draws, np.zeros(10), np.array([3.0] + [1.0] * 9))


@pytest.mark.parametrize("method", ["hmc", "mala"])
def test_hmc_and_mala_gaussian(method, assert_moments):
    target = gaussian(3, mean=np.array([1.0, -2.0, 0.5]), scale=1.5)
    trace = sbi_kit.sample(target, jax.random.PRNGKey(3), method=method, num_chains=4, num_warmup=500,
                           num_draws=2000, progress=False)
    assert trace.sampler == method
    assert_moments(trace.positions, target.mean, target.std)
    expected_grads = 1 if method == "mala" else 10
    assert np.all(trace.stats["num_grad_evals"] == expected_grads)


def test_nuts_eight_schools_matches_posteriordb():
    import sys

    sys.path.insert(0, str(REPO / "tests" / "models"))
    from posteriordb import load_reference, reference_mcse

    name = "eight_schools-eight_schools_noncentered"
    ref = load_reference(name)
    ref_mcse = reference_mcse(name)
    module = _load_module(REPO / "models" / "eight_schools_noncentered.py")
    target = sbi_kit.from_numpyro(module.model, **module.data)
    trace = sbi_kit.nuts(target, jax.random.PRNGKey(4), num_chains=4, num_warmup=1000, num_draws=1000, progress=False)
    post = trace.constrained()
    ours = {"mu": post["mu"], "tau": post["tau"], **{f"theta[{j + 1}]": post["theta"][..., j] for j in range(8)}}
    ess = az.ess(az.convert_to_dataset({k: np.asarray(v) for k, v in ours.items()}))
    for k, v in ours.items():
        ref_draws = ref[k]
        se = np.sqrt(ref_draws.std() ** 2 / float(ess[k]) + ref_mcse[k]["mean"] ** 2)
        z = (v.mean() - ref_draws.mean()) / se
        assert abs(z) < 5, f"{k}: posterior mean {v.mean():.3f} vs reference {ref_draws.mean():.3f} ({z:.1f} SE)"
        sd_se = np.sqrt(ref_draws.std() ** 2 / (2 * float(ess[k])) + ref_mcse[k]["sd"] ** 2)
        z_sd = (v.std() - ref_draws.std()) / sd_se
        assert abs(z_sd) < 5, f"{k}: posterior sd {v.std():.3f} vs reference {ref_draws.std():.3f} ({z_sd:.1f} SE)"


# ---------------------------------------------------------------- bad input


TARGET = sbi_kit.from_logdensity(lambda x: -0.5 * x @ x + jnp.log(x[0]), 2, name="half")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"initial_positions": jnp.ones((4, 3))}, r"initial_positions must have shape \(chains, dim\) with dim=2"),
        ({"initial_positions": jnp.array([[1.0, 0.0]] * 3 + [[-1.0, 0.0]])}, "NaN or infinite at 1 of 4"),
        ({"initial_positions": jnp.ones((3, 2))}, "initial_positions has 3 chains but num_chains=4"),
        ({"step_size": -0.1}, "step_size must be positive"),
        ({"step_size": 0.0}, "step_size must be positive"),
        ({"step_size": jnp.ones(4)}, "step_size must be a scalar"),
        ({"num_chains": 0}, "num_chains must be an int >= 1"),
        ({"method": "slice"}, "unknown method 'slice'"),
        ({"num_warmup": 0}, "num_warmup=0 needs an explicit step_size"),
        ({"inverse_mass_matrix": jnp.ones(3)}, r"inverse_mass_matrix must have shape \(2,\)"),
        ({"target_accept": 1.5}, r"target_accept must be in \(0, 1\)"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"checkpoint_every": 0}, "checkpoint_every must be a positive int"),
        ({"checkpoint": "/nonexistent-folder/run.npz"}, "checkpoint folder does not exist"),
        ({"chain_method": "parallel"}, "unknown chain_method 'parallel'"),
        ({"method": "mala", "dense_mass": True}, "MALA has no mass matrix"),
    ],
)
def test_bad_input_raises_before_warmup(kwargs, message, monkeypatch):
    import sbi_kit.samplers.hmc as hmc_module

    def no_warmup(*args, **kw):
        raise AssertionError("warmup started before the input was validated")

    monkeypatch.setattr(hmc_module, "_window_adapt", no_warmup)
    monkeypatch.setattr(hmc_module, "_mala_adapt", no_warmup)
    with pytest.raises(ValueError, match=message):
        sbi_kit.sample(TARGET, jax.random.PRNGKey(0), num_chains=kwargs.pop("num_chains", 4),
                       num_warmup=kwargs.pop("num_warmup", 10), num_draws=10, progress=False, **kwargs)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = str(tmp_path / "run.npz")
    kw = dict(num_chains=2, num_warmup=50, num_draws=20, progress=False, checkpoint=ckpt)
    sbi_kit.nuts(gaussian(2), jax.random.PRNGKey(0), **kw)
    with pytest.raises(ValueError, match="belongs to a different run"):
        sbi_kit.nuts(gaussian(2, mean=np.full(2, 50.0)), jax.random.PRNGKey(0), **kw)
    with pytest.raises(ValueError, match="belongs to a different run"):
        sbi_kit.hmc(gaussian(2), jax.random.PRNGKey(0), **kw)
    again = sbi_kit.nuts(gaussian(2), jax.random.PRNGKey(0), **kw)  # same run: resumes
    assert again.info["resumed"] and again.num_draws == 20


def test_float32_start_under_x64():
    with jax.enable_x64(True):
        target = sbi_kit.from_logdensity(lambda x: -0.5 * jnp.sum(x**2) * jnp.ones((), jnp.float64), 2)
        x0 = jnp.zeros((2, 2), jnp.float32)
        trace = sbi_kit.nuts(target, jax.random.PRNGKey(0), num_chains=2, num_warmup=20, num_draws=10,
                             initial_positions=x0, progress=False)
        assert trace.positions.dtype == np.float64


def test_default_initial_positions_respect_support():
    x0 = sbi_kit.uniform_initial_positions(TARGET, jax.random.PRNGKey(0), 16)
    assert x0.shape == (16, 2) and bool(jnp.all(x0[:, 0] > 0))
    impossible = sbi_kit.from_logdensity(lambda x: jnp.where(x[0] > 10, 0.0, -jnp.inf), 1)
    with pytest.raises(ValueError, match="no starting point with a finite log density"):
        sbi_kit.uniform_initial_positions(impossible, jax.random.PRNGKey(0), 2)
