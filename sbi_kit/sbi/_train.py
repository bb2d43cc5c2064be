"""The training loop shared by NPE, NLE and NRE.

Each estimator supplies a *loss object*: a hashable (frozen dataclass)
callable ``loss(params, standardizer, batch, key) -> (b,)`` per-example
losses. The loop holds out a validation split, runs optimiser steps as one
jitted `jax.lax.scan` over a chunk of shuffled minibatches (one dispatch per
chunk, so small networks train fast on a CPU), and stops once the validation
loss has not improved for ``patience`` epochs, returning the parameters with
the best validation loss.

Compilation, not arithmetic, dominates small fits on a CPU. The compiled
step chunk depends only on the loss object, the minibatch shape and the
chunk length (a power of two), never on the number of simulations, so it is
compiled once per architecture and reused by every later fit — sequential
rounds, refits, tests.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sbi_kit.flows.networks import host_rng, is_typed_key

Array = jax.Array

MAX_CHUNK = 32  # optimiser steps per compiled chunk (at most)


class TrainInfo(NamedTuple):
    """Diagnostics of one fit.

    Attributes:
      train_losses: mean training loss per epoch, numpy ``(epochs,)``.
      val_losses: validation loss per epoch, numpy ``(epochs,)`` (NaN without validation).
      best_epoch: epoch (1-based) whose parameters were returned.
      epochs: epochs run.
      stopped_early: True if early stopping ended the fit.
      num_train, num_val: training and validation set sizes.
      num_steps: optimiser steps taken.
    """

    train_losses: np.ndarray
    val_losses: np.ndarray
    best_epoch: int
    epochs: int
    stopped_early: bool
    num_train: int
    num_val: int
    num_steps: int


def check_int(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def check_training_settings(max_epochs, batch_size, learning_rate, validation_fraction, patience):
    """Validate the shared keyword arguments of every ``fit``; returns them normalised."""
    max_epochs = check_int(max_epochs, "max_epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    patience = check_int(patience, "patience", 1)
    lr = float(learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate}")
    vf = float(validation_fraction)
    if not 0.0 <= vf < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    return max_epochs, batch_size, lr, vf, patience


def _optimizer(learning_rate: float, clip_norm: float) -> optax.GradientTransformation:
    # Clipping keeps one unlucky batch from wrecking the fit.
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))


# EMA warm-up: the weight of the old average at step t is at most
# (1 + t) / (EMA_WARMUP + t), so the average spans about the last 1 / (EMA_WARMUP - 1)
# of the steps taken until it reaches its full window. Without it a fit that
# converges in fewer epochs than the window returns an average still dragging
# its untrained start (gaussian_linear: C2ST 0.56 instead of 0.52).
EMA_WARMUP = 10.0


def ema_weight(decay: Array, t: Array) -> Array:
    """The weight of the old average at step ``t`` (0-based): ``min(decay, (1 + t) / (EMA_WARMUP + t))``."""
    t = t.astype(decay.dtype)
    return jnp.minimum(decay, (1.0 + t) / (EMA_WARMUP + t))


class FlatLayout(NamedTuple):
    """How a parameter pytree is laid out in one flat vector (hashable: a static jit argument)."""

    treedef: object
    shapes: tuple
    dtype: str


def flatten_params(params) -> tuple[np.ndarray, FlatLayout]:
    """One host vector ``(P,)`` holding every leaf of ``params`` (all of one floating dtype), and its layout.

    Flattening on the host (numpy) rather than with `ravel_pytree` keeps the
    training loop free of small eagerly compiled programs.
    """
    leaves, treedef = jax.tree.flatten(params)
    dtypes = {np.dtype(leaf.dtype) for leaf in leaves}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        raise ValueError(f"trainable parameters must share one floating dtype, got {sorted(map(str, dtypes))}")
    host = [np.asarray(leaf) for leaf in leaves]
    flat = np.concatenate([h.ravel() for h in host]) if host else np.zeros(0, next(iter(dtypes)))
    return flat, FlatLayout(treedef, tuple(h.shape for h in host), str(flat.dtype))


def unflatten_params(flat, layout: FlatLayout):
    """The pytree of `flatten_params`: jnp leaves inside jit, device arrays for a host ``flat``."""
    on_host = isinstance(flat, np.ndarray)
    leaves, start = [], 0
    for shape in layout.shapes:
        size = math.prod(shape)
        leaf = flat[start:start + size].reshape(shape)
        leaves.append(jnp.asarray(leaf) if on_host else leaf)
        start += size
    return jax.tree.unflatten(layout.treedef, leaves)


@functools.partial(jax.jit, static_argnames=("learning_rate", "clip_norm"))
def _initial_opt_state(learning_rate, clip_norm, flat):
    return _optimizer(learning_rate, clip_norm).init(flat)


@functools.partial(jax.jit, static_argnames=("loss", "layout", "learning_rate", "clip_norm"))
def _train_chunk(loss, layout, learning_rate, clip_norm, flat, opt_state, flat_ema, standardizer, batches, key,
                 step0, lr_factor, ema_decay, ema_step0):
    """``len(batches[0])`` Adam steps over pre-gathered minibatches ``batches`` (tuple of ``(steps, b, ...)``).

    The parameters ``flat`` and their moving average ``flat_ema`` are flat
    vectors of `FlatLayout` ``layout``: the optimiser and the average then
    run as a few elementwise kernels instead of several per parameter
    array, each of which XLA would compile on its own. Step ``i`` of the
    chunk gets the loss key ``fold_in(key, step0 + i)``. ``lr_factor``
    (traced scalar) multiplies the Adam step, so lowering the learning rate
    during a fit needs no recompilation. The average has weight
    ``ema_weight(ema_decay, step - ema_step0)`` (traced; ``ema_decay = 0``
    makes it the parameters themselves).
    """
    opt = _optimizer(learning_rate, clip_norm)
    steps = batches[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(step0 + jnp.arange(steps))

    def step(carry, inp):
        p, s, e, t = carry
        batch, k = inp
        # Differentiate with respect to the pytree, then flatten the gradient
        # with one concatenation: differentiating through the slices of
        # `unflatten_params` would add one padded full-length vector per leaf.
        value, grads = jax.value_and_grad(
            lambda q: jnp.mean(loss(q, standardizer, batch, k)))(unflatten_params(p, layout))
        grads = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
        updates, s = opt.update(grads, s, p)
        p = p + updates * lr_factor.astype(p.dtype)
        w = ema_weight(ema_decay, t).astype(e.dtype)
        e = p + w * (e - p)
        return (p, s, e, t + 1), value

    (flat, opt_state, flat_ema, _), values = jax.lax.scan(step, (flat, opt_state, flat_ema, ema_step0),
                                                          (batches, keys))
    return flat, opt_state, flat_ema, values


@functools.partial(jax.jit, static_argnames=("loss", "layout"))
def _weighted_loss_sum(loss, layout, flat, standardizer, batch, weights, key, index):
    """``sum(loss * weights)`` of one validation batch at parameters ``flat``; the loss key is ``fold_in(key, index)``."""
    values = loss(unflatten_params(flat, layout), standardizer, batch, jax.random.fold_in(key, index))
    return jnp.sum(values * weights)


def _host_subkey(rng: np.random.Generator, like):
    """A fresh PRNG key of the same kind as ``like`` (typed or raw ``uint32``) from ``rng``, without a device op."""
    typed = is_typed_key(like)
    bits = rng.integers(0, 2**32, size=np.shape(jax.random.key_data(like) if typed else like), dtype=np.uint32)
    return jax.random.wrap_key_data(bits, impl=jax.random.key_impl(like)) if typed else bits


def patience_count(value: float, reference: float, since: int, min_delta: float) -> tuple[float, int]:
    """Early stopping's bookkeeping after an epoch with validation loss ``value``.

    ``reference`` is the loss where the count last reset and ``since`` the
    epochs counted since then; returns both updated: the count resets when
    ``value`` is finite and below ``reference - min_delta``, else it grows by
    one. The fit stops (or restarts) once the count reaches ``patience``.
    """
    if math.isfinite(value) and value < reference - min_delta:
        return value, 0
    return reference, since + 1


def _chunk_length(num_batches: int) -> int:
    """Steps per compiled chunk for an epoch of ``num_batches`` minibatches.

    The largest power of two <= min(num_batches, MAX_CHUNK), or half of
    ``MAX_CHUNK`` where that makes the epoch shorter: an epoch runs whole
    chunks, ``ceil(num_batches / chunk) * chunk`` steps, so 45 batches take 3
    chunks of 16 (48 steps) instead of 2 of 32 (64). Only these lengths are
    used because each new one is a new compilation (seconds).
    """
    chunk = 1 << int(math.floor(math.log2(max(1, min(num_batches, MAX_CHUNK)))))
    half = MAX_CHUNK // 2
    if chunk == MAX_CHUNK and math.ceil(num_batches / half) * half < math.ceil(num_batches / chunk) * chunk:
        return half
    return chunk


def fit_minibatch(
    loss: Callable,
    params,
    standardizer,
    data: tuple,
    key: Array,
    *,
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    validation_fraction: float,
    patience: int,
    clip_norm: float = 5.0,
    validation_mask=None,
    exact_validation_batches: bool = False,
    lr_decays: int = 0,
    lr_decay_factor: float = 0.1,
    ema_epochs: float | None = None,
    min_delta: float = 0.0,
):
    """Minimise the mean per-example ``loss`` with Adam and early stopping.

    Args:
      loss: hashable ``(params, standardizer, batch tuple of (b, ...), key) -> (b,)``.
      params: initial parameter pytree (trained).
      standardizer: fixed array pytree passed to ``loss``.
      data: tuple of arrays with a common leading size ``n``.
      key: PRNG key (split, shuffles, loss randomness).
      max_epochs, batch_size, learning_rate, validation_fraction, patience:
        as validated by `check_training_settings`. One epoch is about one
        pass over the training set (rounded up to whole compiled chunks).
      clip_norm: global gradient-norm clip.
      validation_mask: optional boolean ``(n,)`` marking the validation rows
        (overrides ``validation_fraction``); sequential rounds pass it so a
        simulation never moves between the splits across refits.
      exact_validation_batches: validation batches of ``min(batch, n_val)``
        rows, never padded with copies of the same rows (for losses that mix
        rows of a batch, like NRE's contrastive atoms).
      lr_decays: when the validation loss has not improved for ``patience``
        epochs, restart from the best parameters with the learning rate
        multiplied by ``lr_decay_factor``, up to this many times, before
        stopping (0: stop at the first plateau). A lower rate lets the fit
        settle into the sharp optimum that a constant rate keeps jumping over.
      lr_decay_factor: the factor, in (0, 1).
      ema_epochs: if given (> 0): validate, keep and return the exponential
        moving average of the parameters over about this many epochs (weight
        ``1 - 1 / (ema_epochs * steps per epoch)`` per step, warmed up by
        `ema_weight` so that early on it averages only the most recent tenth
        of the steps) instead of the last iterate, which smooths the
        minibatch noise of the fit; restarts continue from the best average
        (and warm up again). Counting in epochs keeps the window the same
        share of the data for 10^3 or 10^5 simulations.
      min_delta: validation improvement (in loss units, nats per example for
        the flows) that resets the patience count: the count runs until the
        loss falls ``min_delta`` below where it last reset, so a loss creeping
        down by less than ``min_delta`` per ``patience`` epochs ends the fit
        (or triggers a restart). The parameters returned are still those of
        the lowest validation loss. 0 (default): any improvement resets.

    Returns:
      ``(best params, TrainInfo)``.

    Raises:
      ValueError: too few data, or a non-finite training loss.
    """
    n = int(data[0].shape[0])
    lr_decays = check_int(lr_decays, "lr_decays", 0)
    if ema_epochs is not None and not (isinstance(ema_epochs, (int, float)) and not isinstance(ema_epochs, bool)
                                       and math.isfinite(ema_epochs)
                                       and ema_epochs > 0):
        raise ValueError(f"ema_epochs must be None or a number > 0, got {ema_epochs!r}")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
            math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    if not 0.0 < float(lr_decay_factor) < 1.0:
        raise ValueError(f"lr_decay_factor must be in (0, 1), got {lr_decay_factor}")
    if validation_mask is not None:
        validation_mask = np.asarray(validation_mask)
        if validation_mask.shape != (n,) or validation_mask.dtype != bool:
            raise ValueError(f"validation_mask must be a boolean array of shape ({n},), "
                             f"got {validation_mask.dtype} {validation_mask.shape}")
        n_val = int(validation_mask.sum())
    else:
        n_val = max(1, int(round(validation_fraction * n))) if validation_fraction > 0 else 0
    n_train = n - n_val
    if n_train < 2:
        raise ValueError(f"need at least 2 training pairs after the validation split, got {n_train} of {n}")
    b = min(batch_size, n_train)
    num_batches = max(1, n_train // b)
    chunk = _chunk_length(num_batches)
    chunks_per_epoch = math.ceil(num_batches / chunk)
    # Weight of the old average per step (0: the average is the iterate itself).
    decay = 0.0 if ema_epochs is None else 1.0 - 1.0 / max(1.0, ema_epochs * chunk * chunks_per_epoch)

    # Everything outside the compiled chunks runs on the host (numpy): each
    # eager device op here would compile a program of its own, tens of
    # milliseconds apiece, paid again by every new data or batch shape.
    rng = host_rng(key)
    k_train, k_val = _host_subkey(rng, key), _host_subkey(rng, key)
    perm = rng.permutation(n)
    if validation_mask is not None:
        # Validation rows first, as the random split would put them.
        perm = np.concatenate([np.flatnonzero(validation_mask), np.flatnonzero(~validation_mask)])
    data = tuple(np.asarray(a) for a in data)
    train = tuple(a[perm[n_val:]] for a in data)
    val = tuple(a[perm[:n_val]] for a in data)

    # Validation in padded, weighted batches of the training batch size
    # (one compiled shape however large the validation set). Padding repeats
    # rows, harmless for per-row losses but not for losses mixing rows of a
    # batch: those get batches of at most n_val rows, so no row meets itself.
    vb = min(b, n_val) if exact_validation_batches and n_val else b
    val_batches = []
    for start in range(0, n_val, vb):
        idx = np.arange(start, start + vb) % n_val
        w = (np.arange(start, start + vb) < n_val).astype(train[0].dtype)
        val_batches.append((tuple(jnp.asarray(a[idx]) for a in val), jnp.asarray(w)))

    # One validation key for all epochs: a randomised validation loss (NRE's
    # atoms) then changes only with the parameters, so early stopping compares like with like.
    def validation_loss(flat_p):
        total = 0.0
        for i, (batch, w) in enumerate(val_batches):
            total += float(_weighted_loss_sum(loss, layout, flat_p, standardizer, batch, w, k_val, np.int32(i)))
        return total / n_val if n_val else float("nan")

    flat, layout = flatten_params(params)
    flat = jnp.asarray(flat)
    opt_state = _initial_opt_state(learning_rate, clip_norm, flat)
    ema = flat
    real = np.dtype(layout.dtype).type  # scalars passed in the parameters' precision
    stream = np.zeros(0, np.int64)  # running stream of shuffled training indices
    best, best_val, best_epoch, since = flat, np.inf, 0, 0
    reference = np.inf  # the validation loss where the patience count last reset
    train_losses, val_losses = [], []
    stopped, steps = False, 0
    lr_factor, decays_left = 1.0, lr_decays
    ema_start = 0  # the step where the running average (re)started
    for epoch in range(1, max_epochs + 1):
        values = []
        for _ in range(chunks_per_epoch):
            need = chunk * b
            while stream.size < need:
                stream = np.concatenate([stream, rng.permutation(n_train)])
            idx, stream = stream[:need].reshape(chunk, b), stream[need:]
            batches = tuple(a[idx] for a in train)
            flat, opt_state, ema, v = _train_chunk(loss, layout, learning_rate, clip_norm, flat, opt_state, ema,
                                                   standardizer, batches, k_train, np.int32(steps),
                                                   real(lr_factor), real(decay), np.int32(steps - ema_start))
            values.append(v)
            steps += chunk
        tl = float(np.mean(np.concatenate([np.asarray(v) for v in values])))
        if not math.isfinite(tl):
            raise ValueError(
                f"training loss became {tl} in epoch {epoch}; lower learning_rate or check the data "
                "(z_score=True helps with badly scaled parameters or data)"
            )
        current = flat if ema_epochs is None else ema
        vl = validation_loss(current)
        train_losses.append(tl)
        val_losses.append(vl)
        if n_val == 0:
            best, best_epoch = current, epoch
            continue
        if math.isfinite(vl) and vl < best_val:
            best, best_val, best_epoch = current, vl, epoch
        reference, since = patience_count(vl, reference, since, min_delta)
        if since >= patience:
            if decays_left == 0:
                stopped = True
                break
            # Plateau: go back to the best parameters and take smaller steps.
            decays_left -= 1
            lr_factor *= float(lr_decay_factor)
            flat, ema, since, reference = best, best, 0, best_val
            ema_start = steps
            opt_state = _initial_opt_state(learning_rate, clip_norm, flat)
    best_params = unflatten_params(np.asarray(best), layout)
    info = TrainInfo(np.asarray(train_losses), np.asarray(val_losses), best_epoch, len(train_losses),
                     stopped, n_train, n_val, steps)
    return best_params, info


def kept_validation_mask(validation_mask, x) -> np.ndarray | None:
    """``validation_mask (n,)`` restricted to the rows of ``x (n, x_dim)`` that `check_pairs` keeps (finite ones)."""
    if validation_mask is None:
        return None
    mask = np.asarray(validation_mask)
    x = np.asarray(x)
    if mask.dtype != bool or mask.shape != (x.shape[0],):
        raise ValueError(f"validation_mask must be a boolean array of shape ({x.shape[0]},), "
                         f"got {mask.dtype} {mask.shape}")
    return mask[np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)]
