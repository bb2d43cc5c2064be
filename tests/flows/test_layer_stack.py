"""Stacked layers (one scanned body) compute the same flow as a list of layers, and save as before."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbi_kit.flows import load_flow, make_flow, save_flow
from sbi_kit.flows.flow import init_params, layers_share_body, stack_layers, unstack_layers
from sbi_kit.flows.networks import host_rng

CONFIGS = [  # (dim, kind, conditioner, lu_layers, num_layers)
    (1, "affine", "mlp", False, 3),
    (2, "spline", "resnet", True, 5),
    (4, "spline", "mlp", True, 4),
    (6, "affine", "resnet", False, 2),
]


def _random_list_flow(dim, kind, conditioner, lu, layers, dtype):
    flow = make_flow(jax.random.PRNGKey(0), dim, kind=kind, conditioner=conditioner, lu_layers=lu,
                     num_layers=layers, hidden=(8, 8), context_dim=2, num_bins=6, dtype=dtype)
    leaves, treedef = jax.tree.flatten(unstack_layers(flow.params))
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(treedef, [v + 0.3 * jax.random.normal(k, v.shape, v.dtype)
                                          for v, k in zip(leaves, keys)])
    return flow.replace(params=params)


@pytest.mark.parametrize("dim,kind,conditioner,lu,layers", CONFIGS)
def test_stacked_layers_compute_the_list_flow(dim, kind, conditioner, lu, layers):
    # float64, so the only differences are rounding (the scan fuses differently).
    with jax.enable_x64(True):
        as_list = _random_list_flow(dim, kind, conditioner, lu, layers, jnp.float64)
        stacked = as_list.replace(params=stack_layers(as_list.params, as_list.config))
        assert isinstance(as_list.params["layers"], list)
        assert isinstance(stacked.params["layers"], dict)
        assert jax.tree.leaves(stacked.params["layers"])[0].shape[0] == layers
        x = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (64, dim), jnp.float64)
        c = jax.random.normal(jax.random.PRNGKey(3), (64, 2), jnp.float64)
        for method in ("forward", "inverse"):
            a, la = getattr(as_list, method)(x, c)
            b, lb = getattr(stacked, method)(x, c)
            np.testing.assert_allclose(b, a, atol=1e-10)
            np.testing.assert_allclose(lb, la, atol=1e-10)
        z, ld = stacked.inverse(x, c)
        assert float(jnp.max(jnp.abs(z - x))) > 0.1  # a real map, not the identity

        # Gradients agree leaf by leaf once the stacked ones are split per layer.
        def loss(flow, p):
            return -jnp.mean(flow.replace(params=p).log_prob(x, c))

        g_list = jax.grad(lambda p: loss(as_list, p))(as_list.params)
        g_stacked = unstack_layers(jax.grad(lambda p: loss(stacked, p))(stacked.params))
        for u, v in zip(jax.tree.leaves(g_list), jax.tree.leaves(g_stacked)):
            np.testing.assert_allclose(v, u, atol=1e-9)


def test_which_configs_stack():
    for dim, kind, conditioner, lu, layers in CONFIGS:
        flow = make_flow(jax.random.PRNGKey(0), dim, kind=kind, conditioner=conditioner, lu_layers=lu,
                         num_layers=layers, hidden=(8, 8))
        assert layers_share_body(flow.config)
        assert isinstance(flow.params["layers"], dict)
    # Odd dimensions alternate between 1 and 2 kept coordinates; one layer needs no scan.
    for dim, layers in ((3, 4), (2, 1)):
        flow = make_flow(jax.random.PRNGKey(0), dim, num_layers=layers)
        assert not layers_share_body(flow.config)
        assert isinstance(flow.params["layers"], list)


def test_saved_files_keep_the_per_layer_layout(tmp_path):
    flow = _random_list_flow(2, "spline", "resnet", True, 5, jnp.float32)
    stacked = flow.replace(params=stack_layers(flow.params, flow.config))
    json_path, _ = save_flow(tmp_path / "f", stacked)
    names = set(json.loads(json_path.read_text())["arrays"])
    assert "layers/0/net/inp/w" in names and "layers/4/lu/diag" in names
    loaded = load_flow(tmp_path / "f")
    assert isinstance(loaded.params["layers"], dict)
    for u, v in zip(jax.tree.leaves(stacked.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # A file written from the list layout (as every earlier version did) reads the same.
    save_flow(tmp_path / "g", flow)
    assert (tmp_path / "g.npz").read_bytes() == (tmp_path / "f.npz").read_bytes()


def test_initialisation_is_a_function_of_the_key():
    flow = make_flow(jax.random.PRNGKey(0), 2, conditioner="resnet", hidden=(8, 8))
    a = init_params(flow.config, jax.random.PRNGKey(7))
    b = init_params(flow.config, jax.random.key(7))  # typed keys seed the same draws as raw ones
    c = init_params(flow.config, jax.random.PRNGKey(8))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    w_a, w_c = a["layers"]["net"]["inp"]["w"], c["layers"]["net"]["inp"]["w"]
    assert w_a.dtype == jnp.float32 and not np.array_equal(np.asarray(w_a), np.asarray(w_c))
    # Layers get different weights (one generator runs through all of them).
    assert not np.array_equal(np.asarray(w_a[0]), np.asarray(w_a[1]))
    unstacked = init_params(flow.config, jax.random.PRNGKey(7), stacked=False)
    for u, v in zip(jax.tree.leaves(unstack_layers(a)), jax.tree.leaves(unstacked)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert isinstance(host_rng(np.random.default_rng(3)), np.random.Generator)
