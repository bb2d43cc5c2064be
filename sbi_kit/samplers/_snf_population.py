"""SNF forward paths of a whole population, with resampling before stochastic blocks.

Without resampling every path of an SNF carries its own importance weight
(`sbi_kit.samplers._snf_model.forward_path`). In high dimensions, or with
well-separated modes, those weights degenerate: on the 32-d many-well one path
in thousands carries the whole estimate. Resampling the population part way,
as sequential Monte Carlo does, removes paths that have already become
improbable and copies the good ones, while the estimate of ``Z`` stays
unbiased. With flow layers between the resampling points this is annealed
flow transport (Arbel, Matthews & Doucet, ICML 2021); with the flows at the
identity it is an SMC sampler with a fixed tempering schedule.

The path's weight telescopes over intermediate densities. Before the
stochastic block at ``lam`` the population targets ``gamma_lam = exp(-u_lam)``
(`interpolated_energy`), and a particle's running log weight is::

    lw = log gamma_lam(x) + anchor + sum of dS since the anchor,

where ``anchor = -log q_0(x_0)`` at the start and ``-log gamma_lam(x)`` right
after a resampling (so every resampled particle starts from weight 1). When
the running weights' effective sample size falls below ``threshold * n`` the
population is resampled (systematic resampling) and ``log mean exp(lw)`` is
added to ``log_z_offset``. At the end ``lw = log p~(x_T) + anchor + dS`` and
``log mean exp(lw + log_z_offset)`` is the SMC estimate of ``log Z``: its
exponential is unbiased for ``Z`` when the resampling points are fixed
(``threshold >= 1``: before every stochastic block), and consistent when they
are chosen by the ESS (Del Moral, Doucet & Jasra 2006).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sbi_kit.samplers._snf_blocks import PathState, interpolated_energy, stochastic_step
from sbi_kit.samplers._snf_model import SNF, StochasticBlock, _base_log_prob, _lam, _step, end_of_path, flow_stage

Array = jax.Array


class PopulationOutput(NamedTuple):
    """A population's end points and weights.

    Attributes:
      x: end points ``(n, dim)``.
      log_weight: ``(n,)`` final log weights including ``log_z_offset``
        (``-inf`` for invalid paths), so ``log mean exp(log_weight)`` is the
        population's log Z estimate.
      log_target: ``(n,)`` target log density at ``x``.
      ok: ``(n,)`` False for invalid paths (non-finite energy on the way).
      num_accepted: ``(n,)`` accepted Metropolis proposals along each particle's ancestry.
      num_resampled: scalar int, how many times the population was resampled.
      num_dropped: scalar int, invalid particles discarded at resampling
        (they had weight zero; counted as invalid paths).
    """

    x: Array
    log_weight: Array
    log_target: Array
    ok: Array
    num_accepted: Array
    num_resampled: Array
    num_dropped: Array


def systematic_indices(key: Array, log_weights: Array) -> Array:
    """``n`` indices ``(n,)`` int32 drawn by systematic resampling from ``log_weights (n,)`` (not all ``-inf``)."""
    n = log_weights.shape[0]
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w).at[-1].set(1.0)
    points = (jax.random.uniform(key, (), w.dtype) + jnp.arange(n, dtype=w.dtype)) / n
    return jnp.minimum(jnp.searchsorted(cdf, points, side="right"), n - 1).astype(jnp.int32)


def _ess_fraction(lw: Array) -> Array:
    """``(sum w)^2 / (n sum w^2)`` of ``lw (n,)``; 0 when every weight is zero."""
    num = 2.0 * jax.nn.logsumexp(lw)
    den = jax.nn.logsumexp(2.0 * lw)
    frac = jnp.exp(num - den) / lw.shape[0]
    return jnp.where(jnp.isfinite(den), frac, 0.0)


def _resample_step(state: PathState, anchor, log_gamma, key, threshold: float):
    """Resample ``state`` if the running weights' ESS is below ``threshold``.

    Returns ``(state, anchor, log_mean_weight_added, resampled, dropped)``.
    """
    n = state.x.shape[0]
    good = state.ok & jnp.isfinite(log_gamma)
    lw = jnp.where(good, log_gamma + anchor + state.delta_s, -jnp.inf)
    any_good = jnp.any(good)
    do = any_good & ((threshold >= 1.0) | (_ess_fraction(lw) < threshold))
    idx = jnp.where(do, systematic_indices(key, jnp.where(any_good, lw, 0.0)), jnp.arange(n, dtype=jnp.int32))
    log_mean = jax.nn.logsumexp(lw) - math.log(n)
    picked = jax.tree.map(lambda a: a[idx], state)
    new = PathState(
        x=picked.x,
        delta_s=jnp.where(do, jnp.zeros_like(state.delta_s), state.delta_s),
        ok=jnp.where(do, True, state.ok),
        num_accepted=picked.num_accepted,
    )
    anchor = jnp.where(do, -log_gamma[idx], anchor)
    dropped = jnp.where(do, jnp.sum(~good), 0)
    return new, anchor, jnp.where(do, log_mean, 0.0), do, dropped


def population_forward(snf: SNF, log_target, key: Array, n: int, threshold: float) -> PopulationOutput:
    """Run ``n`` particles through every stage, resampling before stochastic blocks when their ESS is low.

    Args:
      snf: the `SNF`.
      log_target: guarded target log density of one point (`guarded_target`).
      key: PRNG key.
      n: population size (static).
      threshold: resample when the ESS fraction of the running weights is
        below this, in (0, 1]; ``1`` resamples before every stochastic block.

    Returns:
      A `PopulationOutput`.
    """
    c = snf.config
    k0, k_stages = jax.random.split(key)
    x0 = c.base_scale * jax.random.normal(k0, (n, c.dim), snf.dtype)
    anchor = -jax.vmap(lambda x: _base_log_prob(c, x))(x0)
    zeros = jnp.zeros((n,), snf.dtype)
    state = PathState(x0, zeros, jnp.ones((n,), bool), zeros)
    log_z_offset = jnp.zeros((), snf.dtype)
    num_resampled = jnp.zeros((), jnp.int32)
    num_dropped = jnp.zeros((), jnp.int32)
    for i, (spec, p) in enumerate(zip(c.stages, snf.params)):
        k_stage = jax.random.fold_in(k_stages, i)
        if not isinstance(spec, StochasticBlock):
            state = jax.vmap(lambda s, spec=spec, p=p: flow_stage(spec, p, s))(state)
            continue
        k_res, k_move = jax.random.split(k_stage)
        lam, eps = _lam(c, i, p), _step(c, p)
        u = interpolated_energy(log_target, c.base_scale, lam)
        log_gamma = -jax.vmap(u)(state.x)
        state, anchor, added, did, dropped = _resample_step(state, anchor, log_gamma, k_res, threshold)
        log_z_offset = log_z_offset + added.astype(log_z_offset.dtype)
        num_resampled = num_resampled + did.astype(jnp.int32)
        num_dropped = num_dropped + dropped.astype(jnp.int32)
        state = jax.vmap(
            lambda s, k, spec=spec, lam=lam, eps=eps: stochastic_step(
                spec.kind, s, k, log_target, c.base_scale, lam, eps, spec.friction, spec.num_steps,
                num_leapfrogs=spec.num_leapfrogs)
        )(state, jax.random.split(k_move, n))
    lp, ok, log_w = jax.vmap(lambda s, a: end_of_path(s, log_target, a))(state, anchor)
    return PopulationOutput(state.x, log_w + log_z_offset, lp, ok, state.num_accepted, num_resampled, num_dropped)


@functools.partial(jax.jit, static_argnums=(1, 3, 4))
def sample_populations(snf: SNF, log_target, keys: Array, n: int, threshold: float) -> PopulationOutput:
    """`population_forward` for each key of ``keys (b, 2)``: every output gets a leading batch axis ``b``."""
    return jax.vmap(lambda k: population_forward(snf, log_target, k, n, threshold))(keys)
