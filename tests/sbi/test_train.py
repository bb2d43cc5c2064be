"""The shared SBI training loop: learning-rate decay on plateaus, the parameter average, and option checks."""

from typing import NamedTuple

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


class _SquaredError(NamedTuple):
    """Per-example loss (m - y)^2: its minimiser is the mean of y (hashable, as fit_minibatch needs)."""

    def __call__(self, params, standardizer, batch, key):
        (y,) = batch
        return (params["m"] - y[:, 0]) ** 2


def test_ema_of_the_parameters_averages_out_the_minibatch_noise():
    # Adam at a large step keeps the last iterate jittering around the mean of y
    # (about +-0.08 here); the moving average over ~100 steps must be far closer.
    # Without validation the fit returns its final state, so this isolates the average.
    y = 3.0 + jax.random.normal(jax.random.PRNGKey(0), (2000, 1))
    kw = dict(max_epochs=5, batch_size=16, learning_rate=0.1, validation_fraction=0.0, patience=1)
    p0 = {"m": jnp.zeros(())}
    last, avg = [], []
    for seed in range(8):
        last.append(float(fit_minibatch(_SquaredError(), p0, (), (y,), jax.random.PRNGKey(seed), **kw)[0]["m"]))
        # 125 batches -> 128 steps per epoch: 0.8 epochs is an average over about 100 steps.
        avg.append(float(fit_minibatch(_SquaredError(), p0, (), (y,), jax.random.PRNGKey(seed), ema_epochs=0.8,
                                       **kw)[0]["m"]))
    mean = float(jnp.mean(y))
    rms_last = np.sqrt(np.mean((np.array(last) - mean) ** 2))
    rms_avg = np.sqrt(np.mean((np.array(avg) - mean) ** 2))
    assert rms_last > 0.03  # the iterate really is noisy at this step size
    assert rms_avg < 0.3 * rms_last
    assert rms_avg < 0.02


def test_ema_warm_up_forgets_the_untrained_start(monkeypatch):
    # A window far longer than the fit (50 epochs of 128 steps, 2 epochs run):
    # m travels 0 -> 3 in the first few dozen steps. A plain average with
    # weight 1 - 1/6400 would still sit near the start (about 3 (1 - e^-0.04) = 0.1);
    # warmed up, it spans the last ~10% of the steps and lands on the mean.
    import sbi_kit.sbi._train as train

    y = 3.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (2000, 1))
    kw = dict(max_epochs=2, batch_size=16, learning_rate=0.1, validation_fraction=0.0, patience=1, ema_epochs=50)
    p0 = {"m": jnp.zeros(())}
    warm = float(fit_minibatch(_SquaredError(), p0, (), (y,), jax.random.PRNGKey(1), **kw)[0]["m"])
    assert abs(warm - float(jnp.mean(y))) < 0.05, warm
    # The check has power: without the warm-up the same fit returns the dragging average.
    monkeypatch.setattr(train, "ema_weight", lambda decay, t: decay)
    jax.clear_caches()
    plain = float(fit_minibatch(_SquaredError(), p0, (), (y,), jax.random.PRNGKey(1), **kw)[0]["m"])
    jax.clear_caches()
    assert plain < 0.5, plain


def test_ema_weight_schedule():
    from sbi_kit.sbi._train import EMA_WARMUP, ema_weight

    t = jnp.arange(0, 100_000, 997)
    w = np.asarray(ema_weight(jnp.asarray(0.999), t))
    np.testing.assert_allclose(w[0], 1.0 / EMA_WARMUP, rtol=1e-6)
    assert np.all(np.diff(w) >= 0) and w.max() == np.float32(0.999)
    assert float(ema_weight(jnp.asarray(0.0), jnp.asarray(500))) == 0.0  # no average: the iterate itself


def test_ema_epochs_is_checked():
    loss, params, std, data = _problem()
    kw = dict(max_epochs=2, batch_size=64, learning_rate=1e-3, validation_fraction=0.2, patience=2)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "16"):
        with pytest.raises(ValueError, match="ema_epochs must be None or a number > 0"):
            fit_minibatch(loss, params, std, data, jax.random.PRNGKey(0), ema_epochs=bad, **kw)
    with pytest.raises(ValueError, match="ema_epochs"):
        NPE(dist.Normal(jnp.zeros(2), 1.0)).fit(jax.random.PRNGKey(0), data[0], data[1], ema_epochs=-3)

