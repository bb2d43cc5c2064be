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
    # 32 seeds: over blocks of 8 seeds the RMS of the average alone ranged 0.007-0.023,
    # too noisy an estimate for the 0.02 bound; over 32 it is 0.015 (iterate: 0.075).
    y = 3.0 + jax.random.normal(jax.random.PRNGKey(0), (2000, 1))
    kw = dict(max_epochs=5, batch_size=16, learning_rate=0.1, validation_fraction=0.0, patience=1)
    p0 = {"m": jnp.zeros(())}
    last, avg = [], []
    for seed in range(32):
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



def test_min_delta_stops_a_creeping_fit_and_keeps_the_lowest_loss():
    # The same fit (same key stream) with and without a tolerance: identical
    # until the tolerance stops it, and it returns the lowest validation loss seen.
    loss, params, std, data = _problem()
    kw = dict(max_epochs=300, batch_size=64, learning_rate=1e-3, validation_fraction=0.2, patience=4)
    _, plain = fit_minibatch(loss, params, std, data, jax.random.PRNGKey(3), **kw)
    best, tolerant = fit_minibatch(loss, params, std, data, jax.random.PRNGKey(3), min_delta=0.01, **kw)
    assert tolerant.stopped_early and tolerant.epochs < plain.epochs
    n = tolerant.epochs
    np.testing.assert_allclose(tolerant.val_losses, plain.val_losses[:n], rtol=1e-5, atol=1e-6)
    assert tolerant.val_losses[tolerant.best_epoch - 1] == tolerant.val_losses.min()
    # The stop is the tolerance rule's: `patience` epochs without falling 0.01 below the last reset.
    ref, since, stop = np.inf, 0, None
    for e, v in enumerate(plain.val_losses, 1):
        if v < ref - 0.01:
            ref, since = v, 0
        else:
            since += 1
            if since >= kw["patience"]:
                stop = e
                break
    assert stop == n
    with pytest.raises(ValueError, match="min_delta must be a finite number >= 0"):
        fit_minibatch(loss, params, std, data, jax.random.PRNGKey(3), min_delta=-0.1, **kw)


def test_chunk_length_wastes_few_steps_and_few_compilations():
    from sbi_kit.sbi._train import MAX_CHUNK, _chunk_length

    lengths = set()
    for nb in range(1, 600):
        c = _chunk_length(nb)
        lengths.add(c)
        assert c & (c - 1) == 0 and c <= min(nb, MAX_CHUNK)
        per_epoch = -(-nb // c) * c
        if nb >= MAX_CHUNK:
            # At most half a chunk of padding per epoch (32 would pad 45 batches to 64).
            assert per_epoch - nb < MAX_CHUNK // 2, (nb, c)
            assert c in (MAX_CHUNK, MAX_CHUNK // 2)
    assert _chunk_length(45) == 16 and _chunk_length(64) == 32


def test_flat_parameters_round_trip_and_refuse_mixed_dtypes():
    from sbi_kit.sbi._train import flatten_params, unflatten_params

    _, params, _, _ = _problem()
    flat, layout = flatten_params(params)
    assert flat.ndim == 1 and flat.size == sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    back = unflatten_params(flat, layout)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Inside jit the layout is static and the leaves are slices of the traced vector.
    total = jax.jit(lambda f: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(unflatten_params(f, layout))))(flat)
    np.testing.assert_allclose(float(total), float(flat.sum()), rtol=1e-5)
    with pytest.raises(ValueError, match="one floating dtype"):
        flatten_params({"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.int32)})


def test_training_accepts_typed_and_raw_keys_alike():
    # Subkeys are derived on the host for both kinds of key; the same key data gives the same fit.
    loss, params, std, data = _problem()
    kw = dict(max_epochs=3, batch_size=64, learning_rate=1e-3, validation_fraction=0.2, patience=2)
    p_raw, info_raw = fit_minibatch(loss, params, std, data, jax.random.PRNGKey(5), **kw)
    p_typed, info_typed = fit_minibatch(loss, params, std, data, jax.random.wrap_key_data(jax.random.PRNGKey(5)),
                                        **kw)
    np.testing.assert_allclose(info_raw.val_losses, info_typed.val_losses, rtol=1e-6)
    _, info_other = fit_minibatch(loss, params, std, data, jax.random.PRNGKey(6), **kw)
    assert not np.allclose(info_other.val_losses, info_raw.val_losses)
