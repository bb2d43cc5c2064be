"""The shared SBI training loop: learning-rate decay on plateaus, and its option checks."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from sbi_kit.sbi import _conditional as cond
from sbi_kit.sbi._train import fit_minibatch
from sbi_kit.sbi.npe import NPE


def _problem():
    key = jax.random.PRNGKey(0)
    theta = jax.random.normal(key, (600, 2))
    x = theta + 0.3 * jax.random.normal(jax.random.PRNGKey(1), theta.shape)
    spec, params, std = cond.init_conditional(
        jax.random.PRNGKey(2), np.asarray(theta), np.asarray(x), flow={**cond.DEFAULT_FLOW, "hidden": (16, 16)},
        embedding_hidden=(), embedding_dim=None, activation="silu", z_score=True, dtype=jnp.float32)
    return cond.NegLogProb(spec), params, std, (theta, x)


def test_lr_decay_continues_from_the_best_parameters_and_never_ends_worse():
    loss, params, std, data = _problem()
    kw = dict(max_epochs=300, batch_size=64, learning_rate=3e-3, validation_fraction=0.2, patience=4)
    _, plain = fit_minibatch(loss, params, std, data, jax.random.PRNGKey(3), **kw)
    _, decayed = fit_minibatch(loss, params, std, data, jax.random.PRNGKey(3), lr_decays=2, **kw)
    assert plain.stopped_early
    n = plain.epochs
    # Identical up to the first plateau (same key stream), then more epochs at smaller steps.
    np.testing.assert_allclose(decayed.val_losses[:n], plain.val_losses, rtol=1e-5, atol=1e-6)
    assert decayed.epochs >= n + 2 * kw["patience"]
    best_plain = plain.val_losses[plain.best_epoch - 1]
    best_decayed = decayed.val_losses[decayed.best_epoch - 1]
    assert best_decayed <= best_plain
    assert best_decayed == decayed.val_losses.min()
    # After a decay the fit restarts from the best parameters: the first epoch at
    # the smaller rate is close to the best validation loss, not to the last one.
    first_after = decayed.val_losses[n]
    assert abs(first_after - best_plain) < abs(plain.val_losses[-1] - best_plain) + 0.05


def test_lr_decay_options_are_checked():
    loss, params, std, data = _problem()
    kw = dict(max_epochs=2, batch_size=64, learning_rate=1e-3, validation_fraction=0.2, patience=2)
    with pytest.raises(ValueError, match="lr_decays must be an int >= 0"):
        fit_minibatch(loss, params, std, data, jax.random.PRNGKey(0), lr_decays=-1, **kw)
    with pytest.raises(ValueError, match=r"lr_decay_factor must be in \(0, 1\)"):
        fit_minibatch(loss, params, std, data, jax.random.PRNGKey(0), lr_decays=1, lr_decay_factor=1.5, **kw)
    with pytest.raises(ValueError, match="lr_decays"):
        NPE(dist.Normal(jnp.zeros(2), 1.0)).fit(jax.random.PRNGKey(0), data[0], data[1], lr_decays=0.5)
