"""Flows: invertibility, log-dets, normalisation, tails, conditioning, fitting, I/O, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbi_kit.flows import (
    NonFiniteLossError,
    fit_forward_kl,
    fit_reverse_kl,
    load_flow,
    make_flow,
    save_flow,
    standardize,
)
from sbi_kit.flows.flow import stack_layers, unstack_layers
from sbi_kit.targets.base import Target
from sbi_kit.targets.benchmarks import gaussian

KINDS = ["affine", "spline"]


def perturbed(flow, key, scale=0.3):
    """The flow with random (non-identity) parameters, so tests exercise real maps.

    Drawn for the per-layer layout (the same draws whether the layers are
    held stacked or as a list), then put back in the flow's own layout.
    """
    leaves, treedef = jax.tree.flatten(unstack_layers(flow.params))
    keys = jax.random.split(key, len(leaves))
    params = jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                          for x, k in zip(leaves, keys)])
    if not isinstance(flow.params["layers"], list):
        params = stack_layers(params, flow.config)
    return flow.replace(params=params)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_forward_inverse_and_log_det(kind, context_dim):
    # Moderate random parameters: strongly perturbed splines have slopes near
    # e^-10 somewhere, where inverting is ill-conditioned in float32 (see the
    # float64 test for tight round trips of strongly perturbed flows).
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 4, kind=kind, context_dim=context_dim), jax.random.PRNGKey(1), 0.1)
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (16, 4))
    ctx = None if context_dim == 0 else jax.random.normal(jax.random.PRNGKey(3), (16, context_dim))
    z, ld_inv = flow.inverse(x, ctx)
    x_back, ld_fwd = flow.forward(z, ctx)
    np.testing.assert_allclose(x_back, x, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(ld_fwd, -ld_inv, atol=2e-4, rtol=1e-4)
    # The log-det equals log|det| of the Jacobian from autodiff.
    for i in range(3):
        c = None if ctx is None else ctx[i]
        jac = jax.jacfwd(lambda zz: flow.forward(zz, c)[0])(z[i])
        np.testing.assert_allclose(np.linalg.slogdet(np.asarray(jac, np.float64))[1], ld_fwd[i], atol=1e-3, rtol=1e-4)
    # The flow is not the identity, so the checks above had something to check.
    assert float(jnp.max(jnp.abs(z - x))) > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_flow_is_standard_normal(kind):
    flow = make_flow(jax.random.PRNGKey(0), 3, kind=kind)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    z, ld = flow.inverse(x)
    # Exact for affine layers; the spline's knots are the identity up to round-off.
    np.testing.assert_allclose(z, x, atol=1e-6)
    np.testing.assert_allclose(ld, 0.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_normalised_1d_quadrature(kind):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 1, kind=kind, num_layers=3), jax.random.PRNGKey(4), 0.1)
    flow = standardize(flow, np.array([1.0]), np.array([2.0]))
    grid = jnp.linspace(-80.0, 80.0, 400_001)
    dens = jnp.exp(flow.log_prob(grid[:, None]))
    mass = float(jnp.sum(dens)) * (160.0 / 400_000)  # exact spacing (float32 differences are not)
    # The map is not trivial: the density differs from N(1, 2^2).
    ref = jnp.exp(-0.5 * ((grid - 1.0) / 2.0) ** 2) / (2.0 * jnp.sqrt(2 * jnp.pi))
    assert float(jnp.max(jnp.abs(dens - ref))) > 1e-2
    assert abs(mass - 1.0) < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_normalised_importance_sampling(kind):
    # E_{N(0, s^2 I)}[q(x) / N(x)] = 1 for a normalised q; a wide proposal covers q.
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 2, kind=kind), jax.random.PRNGKey(5), 0.3)
    s, n = 4.0, 400_000
    x = s * jax.random.normal(jax.random.PRNGKey(6), (n, 2))
    log_prop = -0.5 * jnp.sum((x / s) ** 2, -1) - 2 * jnp.log(s) - jnp.log(2 * jnp.pi)
    w = np.asarray(jnp.exp(jax.jit(lambda x: flow.log_prob(x))(x) - log_prop), np.float64)
    se = w.std() / np.sqrt(n)
    assert abs(w.mean() - 1.0) < 5 * se + 1e-3, (w.mean(), se)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_and_log_prob_agree(kind):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 3, kind=kind, context_dim=1), jax.random.PRNGKey(7), 0.1)
    ctx = jnp.array([0.5])
    x, lq = flow.sample_and_log_prob(jax.random.PRNGKey(8), 64, ctx)
    assert x.shape == (64, 3) and lq.shape == (64,)
    np.testing.assert_allclose(flow.log_prob(x, ctx), lq, atol=2e-3, rtol=1e-4)
    np.testing.assert_array_equal(flow.sample(jax.random.PRNGKey(8), 64, ctx), x)


@pytest.mark.parametrize("kind", KINDS)
def test_far_tail_float32_is_finite(kind):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 3, kind=kind), jax.random.PRNGKey(1))
    log_prob = jax.jit(lambda x: flow.log_prob(x))
    inv_log_det = jax.jit(lambda x: flow.inverse(x)[1])
    grad_x = jax.jit(jax.grad(lambda x: flow.log_prob(x)))
    grad_params = jax.jit(jax.grad(lambda p, x: flow.replace(params=p).log_prob(x)))
    for v in (1e6, 1e15, 1e30, 3e38):
        x = jnp.array([[v, -v, 3.0], [v, v, -v]], jnp.float32)
        lp = log_prob(x)
        assert lp.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(lp))), (v, lp)
        assert bool(jnp.all(jnp.isfinite(inv_log_det(x))))
    for v in (1e6, 1e15, 1e30):
        x = jnp.array([v, -v, 3.0], jnp.float32)
        assert bool(jnp.all(jnp.isfinite(grad_x(x)))), v
        gp = grad_params(flow.params, x)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(gp))
    # Far-tail latent draws map to finite points.
    xz, ld = flow.forward(jnp.array([[40.0, -40.0, 1e6]]))
    assert bool(jnp.all(jnp.isfinite(xz))) and bool(jnp.all(jnp.isfinite(ld)))


@pytest.mark.parametrize("kind", KINDS)
def test_float64_flow(kind):
    with jax.enable_x64(True):
        flow = perturbed(make_flow(jax.random.PRNGKey(0), 3, kind=kind, dtype=jnp.float64), jax.random.PRNGKey(1), 0.3)
        x = jax.random.normal(jax.random.PRNGKey(2), (5, 3), jnp.float64)
        z, ld = flow.inverse(x)
        assert z.dtype == jnp.float64
        x2, ld2 = flow.forward(z)
        np.testing.assert_allclose(x2, x, atol=1e-9)
        np.testing.assert_allclose(ld2, -ld, atol=1e-9)
        assert float(jnp.max(jnp.abs(z - x))) > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_conditioning_changes_the_density(kind):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 2, kind=kind, context_dim=3), jax.random.PRNGKey(9))
    x = jax.random.normal(jax.random.PRNGKey(10), (10, 2))
    a = flow.log_prob(x, jnp.zeros(3))
    b = flow.log_prob(x, jnp.ones(3))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2
    # Per-row contexts match one context at a time.
    ctx = jnp.stack([jnp.zeros(3), jnp.ones(3)] * 5)
    mixed = flow.log_prob(x, ctx)
    np.testing.assert_allclose(mixed[::2], a[::2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[1::2], b[1::2], rtol=1e-5, atol=1e-5)


def test_forward_kl_recovers_gaussian_mean_and_cov():
    mean = np.array([1.0, -2.0])
    cov = np.array([[2.0, 1.2], [1.2, 1.5]])
    n = 4000
    draws = np.random.default_rng(0).multivariate_normal(mean, cov, size=n).astype(np.float32)
    flow = make_flow(jax.random.PRNGKey(0), 2, kind="affine", num_layers=4, hidden=(16,))
    flow, info = fit_forward_kl(flow, draws, jax.random.PRNGKey(1), num_steps=1500, learning_rate=3e-3)
    assert info.num_steps > 0 and np.all(np.isfinite(info.losses))
    x = np.asarray(flow.sample(jax.random.PRNGKey(2), 100_000), np.float64)
    # Tolerance: the fit matches the training sample's moments up to the
    # sampling error of n draws (sd / sqrt(n) ~ 0.02) plus fit error.
    np.testing.assert_allclose(x.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.15)


def test_forward_kl_conditional():
    # x | c ~ N(2 c, 0.5^2): the flow must learn the dependence on c.
    rng = np.random.default_rng(1)
    c = rng.uniform(-1, 1, size=(4000, 1)).astype(np.float32)
    x = (2 * c + 0.5 * rng.standard_normal((4000, 1))).astype(np.float32)
    flow = make_flow(jax.random.PRNGKey(0), 1, kind="affine", num_layers=2, hidden=(16,), context_dim=1)
    flow, _ = fit_forward_kl(flow, x, jax.random.PRNGKey(1), context=c, num_steps=1500, learning_rate=3e-3)
    for cv in (-0.8, 0.6):
        s = np.asarray(flow.sample(jax.random.PRNGKey(2), 20_000, jnp.array([cv])))
        assert abs(s.mean() - 2 * cv) < 0.1 and abs(s.std() - 0.5) < 0.1


def test_forward_kl_early_stopping_keeps_best():
    draws = np.random.default_rng(2).standard_normal((60, 2)).astype(np.float32) * 3
    flow = make_flow(jax.random.PRNGKey(0), 2, kind="spline", num_layers=2, hidden=(64,))
    flow2, info = fit_forward_kl(flow, draws, jax.random.PRNGKey(1), num_steps=3000, learning_rate=1e-2,
                                 validation_fraction=0.3, eval_every=20, patience=5)
    assert info.stopped_early and info.num_steps < 3000
    assert info.best_step == 20 * (int(np.argmin(info.val_losses)) + 1)


@pytest.mark.parametrize("anneal", [0, 100])
def test_reverse_kl_recovers_gaussian_target(anneal):
    target = gaussian(2, mean=np.array([3.0, -1.0]), scale=2.0)
    flow = make_flow(jax.random.PRNGKey(0), 2, kind="affine", hidden=(16,))
    flow, info = fit_reverse_kl(flow, target, jax.random.PRNGKey(1), num_steps=600, batch_size=128,
                                learning_rate=1e-2, anneal_steps=anneal)
    assert info.num_target_evals == 600 * 128 and info.num_skipped == 0
    x = np.asarray(flow.sample(jax.random.PRNGKey(2), 50_000), np.float64)
    np.testing.assert_allclose(x.mean(0), [3.0, -1.0], atol=0.1)
    np.testing.assert_allclose(x.std(0), [2.0, 2.0], atol=0.1)
    # Reverse KL + log Z: the final loss estimates KL(q||p) - log Z = KL >= 0, near 0.
    assert abs(np.mean(info.losses[-50:])) < 0.05


def test_reverse_kl_skips_and_counts_nan_target_values():
    base = gaussian(2)

    def log_density(x):
        # NaN on a half-plane the flow's draws hit often.
        return jnp.where(x[0] > 1.0, jnp.nan, base.log_density(x))

    target = Target(log_density, 2, name="half_nan")
    flow = make_flow(jax.random.PRNGKey(0), 2, kind="affine", hidden=(8,))
    fitted, info = fit_reverse_kl(flow, target, jax.random.PRNGKey(1), num_steps=50, batch_size=64)
    assert info.num_skipped > 0
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(fitted.params))
    assert np.all(np.isfinite(info.losses))


def test_non_finite_loss_names_step_and_keeps_last_good_params():
    target = gaussian(2)
    flow = make_flow(jax.random.PRNGKey(0), 2, kind="affine", hidden=(8,))
    # A huge plain-SGD step sends the parameters to overflow after a few steps.
    with pytest.raises(NonFiniteLossError, match=r"step \d+") as err:
        fit_reverse_kl(flow, target, jax.random.PRNGKey(1), num_steps=200, batch_size=32,
                       optimizer=optax.sgd(1e37), chunk_size=7)
    e = err.value
    assert isinstance(e, ValueError) and e.step >= 1
    assert e.info.num_steps == e.step and len(e.info.losses) == e.step
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(e.flow.params))
    # The kept parameters are the ones of the last step with a finite loss.
    x, lq = e.flow.sample_and_log_prob(jax.random.PRNGKey(3), 32)
    assert bool(jnp.all(jnp.isfinite(lq)))


def test_save_load_round_trip(tmp_path):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 3, kind="spline", context_dim=2, hidden=(8, 4)), jax.random.PRNGKey(1))
    json_path, npz_path = save_flow(tmp_path / "f", flow)
    meta = json.loads(json_path.read_text())
    assert meta["config"]["kind"] == "spline" and meta["config"]["context_dim"] == 2
    loaded = load_flow(tmp_path / "f.json")
    assert loaded.config == flow.config
    for a, b in zip(jax.tree.leaves(flow.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    np.testing.assert_array_equal(flow.log_prob(x, jnp.ones(2)), loaded.log_prob(x, jnp.ones(2)))
    # No pickles anywhere.
    with np.load(npz_path, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


def test_load_rejects_mismatched_arrays(tmp_path):
    flow = make_flow(jax.random.PRNGKey(0), 3, hidden=(8,))
    save_flow(tmp_path / "f", flow)
    other = make_flow(jax.random.PRNGKey(0), 3, hidden=(4,))
    save_flow(tmp_path / "g", other)
    # Arrays of g under the config of f.
    (tmp_path / "g.json").write_text((tmp_path / "f.json").read_text())
    with pytest.raises(ValueError, match="shape"):
        load_flow(tmp_path / "g")


def test_bad_input_errors():
    target = gaussian(3)
    flow = make_flow(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="flow dimension 2 differs from target"):
        fit_reverse_kl(flow, target, jax.random.PRNGKey(1), num_steps=1)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        fit_forward_kl(flow, np.zeros((10, 3)), jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="NaN"):
        fit_forward_kl(flow, np.full((10, 2), np.nan), jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="dim=2"):
        flow.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(jnp.zeros(2), jnp.zeros(1))
    cond = make_flow(jax.random.PRNGKey(0), 2, context_dim=1)
    with pytest.raises(ValueError, match="conditional"):
        cond.log_prob(jnp.zeros(2))
    with pytest.raises(ValueError, match="kind"):
        make_flow(jax.random.PRNGKey(0), 2, kind="maf")
    with pytest.raises(ValueError, match="dim"):
        make_flow(jax.random.PRNGKey(0), 0)


def test_reverse_kl_skips_draws_the_flow_sends_to_infinity():
    target = gaussian(2)
    flow = make_flow(jax.random.PRNGKey(0), 2, kind="affine", hidden=(8,))
    # exp(88) * |u| overflows float32 for |u| > ~2: a few draws per batch are inf.
    params = dict(flow.params, log_scale=jnp.full((2,), 88.0, flow.dtype))
    wild = flow.replace(params=params)
    x = wild.sample(jax.random.PRNGKey(2), 256)
    assert 0 < int(jnp.sum(~jnp.all(jnp.isfinite(x), -1))) < 256
    fitted, info = fit_reverse_kl(wild, target, jax.random.PRNGKey(1), num_steps=5, batch_size=64,
                                  optimizer=optax.sgd(1e-6))
    assert info.num_skipped > 0
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(fitted.params))


def test_loading_a_float64_flow_without_x64_names_the_fix(tmp_path):
    json_path, _ = save_flow(tmp_path / "f", make_flow(jax.random.PRNGKey(0), 2, hidden=(4,)))
    meta = json.loads(json_path.read_text())
    meta["config"]["dtype"] = "float64"
    json_path.write_text(json.dumps(meta))
    was = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            load_flow(json_path)
    finally:
        jax.config.update("jax_enable_x64", was)


ARCHS = [("resnet", False), ("mlp", True), ("resnet", True)]


@pytest.mark.parametrize("conditioner,lu", ARCHS)
def test_resnet_conditioner_and_lu_layers_invert_with_exact_log_det(conditioner, lu):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 3, context_dim=2, hidden=(8, 8), conditioner=conditioner,
                               lu_layers=lu), jax.random.PRNGKey(1), 0.1)
    assert ("lu" in flow.params["layers"][0]) == lu
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (16, 3))
    ctx = jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    z, ld_inv = flow.inverse(x, ctx)
    x_back, ld_fwd = flow.forward(z, ctx)
    np.testing.assert_allclose(x_back, x, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(ld_fwd, -ld_inv, atol=2e-4, rtol=1e-4)
    for i in range(3):
        jac = jax.jacfwd(lambda zz: flow.forward(zz, ctx[i])[0])(z[i])
        np.testing.assert_allclose(np.linalg.slogdet(np.asarray(jac, np.float64))[1], ld_fwd[i], atol=1e-3, rtol=1e-4)
    assert float(jnp.max(jnp.abs(z - x))) > 0.1


@pytest.mark.parametrize("conditioner,lu", ARCHS)
def test_resnet_and_lu_flows_start_as_identity_and_are_normalised(conditioner, lu):
    fresh = make_flow(jax.random.PRNGKey(0), 2, conditioner=conditioner, lu_layers=lu, hidden=(16, 16))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    z, ld = fresh.inverse(x)
    np.testing.assert_allclose(z, x, atol=1e-5)
    np.testing.assert_allclose(ld, 0.0, atol=1e-5)
    flow = perturbed(fresh, jax.random.PRNGKey(5), 0.2)
    s, n = 4.0, 400_000
    x = s * jax.random.normal(jax.random.PRNGKey(6), (n, 2))
    log_prop = -0.5 * jnp.sum((x / s) ** 2, -1) - 2 * jnp.log(s) - jnp.log(2 * jnp.pi)
    w = np.asarray(jnp.exp(jax.jit(lambda x: flow.log_prob(x))(x) - log_prop), np.float64)
    se = w.std() / np.sqrt(n)
    assert abs(w.mean() - 1.0) < 5 * se + 1e-3, (w.mean(), se)


def test_resnet_lu_save_load_round_trip_and_old_configs_load(tmp_path):
    flow = perturbed(make_flow(jax.random.PRNGKey(0), 3, context_dim=2, hidden=(8, 8), conditioner="resnet",
                               lu_layers=True), jax.random.PRNGKey(1))
    save_flow(tmp_path / "f", flow)
    loaded = load_flow(tmp_path / "f.json")
    assert loaded.config == flow.config
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    np.testing.assert_array_equal(flow.log_prob(x, jnp.ones(2)), loaded.log_prob(x, jnp.ones(2)))
    # A file written before the two options existed loads as the tanh-MLP flow without LU layers.
    old = make_flow(jax.random.PRNGKey(0), 3, hidden=(4,))
    json_path, _ = save_flow(tmp_path / "old", old)
    meta = json.loads(json_path.read_text())
    del meta["config"]["conditioner"], meta["config"]["lu_layers"]
    json_path.write_text(json.dumps(meta))
    back = load_flow(json_path)
    assert back.config.conditioner == "mlp" and back.config.lu_layers is False
    np.testing.assert_array_equal(old.log_prob(x), back.log_prob(x))


def test_conditioner_options_are_validated():
    with pytest.raises(ValueError, match="unknown conditioner 'transformer'"):
        make_flow(jax.random.PRNGKey(0), 2, conditioner="transformer")
    with pytest.raises(ValueError, match="equal hidden widths"):
        make_flow(jax.random.PRNGKey(0), 2, conditioner="resnet", hidden=(32, 16))
    with pytest.raises(ValueError, match="lu_layers must be True or False"):
        make_flow(jax.random.PRNGKey(0), 2, lu_layers="yes")
