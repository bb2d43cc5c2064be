"""Stochastic normalizing flows (Wu, Koehler, Noe, NeurIPS 2020) with exact importance weights.

An SNF alternates deterministic invertible layers (coupling flows from
`sbi_kit.flows`, distrax bijectors) with stochastic blocks -- unadjusted
Langevin, MALA, random-walk Metropolis, underdamped Langevin -- each at its
own point ``lam`` of the path of energies ``u_lam = (1 - lam) u_base + lam
u_target`` from the ``N(0, s^2 I)`` base to the target. Each forward path
``x_0 -> x_1 -> ... -> x_T`` comes with the exact log importance weight::

    log w = log p~(x_T) - log q_0(x_0) + sum_t [log q_b(x_{t-1}|x_t) - log q_f(x_t|x_{t-1})],

where a flow layer contributes its log-Jacobian, a Langevin step the ratio
of its backward and forward Gaussian transition densities, a Metropolis
step the energy change ``u_lam(x_t) - u_lam(x_{t-1})`` (detailed balance),
and an underdamped block minus the kinetic-energy changes of its leapfrog
steps (see `sbi_kit.samplers._snf_blocks` for the exact forms). So
``E[w] = Z`` for any parameters: a badly trained SNF is inefficient, never
biased; training only improves the weights' spread.

Public API:

* `make_snf(key, target, blocks, ...)` builds an `SNF` from `FlowBlock`,
  `Flow` and `StochasticBlock` specifications (validated up front);
* `train_snf(snf, target, key, loss="reverse_kl" | "forward_kl" | "mixed")`
  trains it with optax;
* `sample_snf(snf, target, key, num_samples, num_batches)` draws weighted
  samples in one pass (vmapped, sample axis sharded over devices) and returns
  an `SNFResult`: a `Trace` with ``log_weight``, IS ESS, ``log Z`` with its
  standard error, Pareto k, the count of invalid (NaN-energy) paths, and
  ``resample``;
* `snf(target, key, ...)` does all three.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.diagnostics.metrics import is_ess as _is_ess
from sbi_kit.diagnostics.trace import Trace
from sbi_kit.flows.fit import _check_int
from sbi_kit.run import chain_mesh, shard_chains
from sbi_kit.samplers._snf_model import (
    SNF,
    FlowBlock,
    SNFConfig,
    StochasticBlock,
    check_snf_for_target,
    forward_path,
    guarded_target,
    make_snf,
)
from sbi_kit.samplers._snf_population import sample_populations
from sbi_kit.samplers._snf_train import LOSSES, train_snf
from sbi_kit.samplers._snf_weights import (
    log_z_and_se,
    pareto_k,
    resampled_log_z_and_se,
    systematic_resample_indices,
    weighted_mean_and_se,
)
from sbi_kit.targets.base import Target

Array = jax.Array

__all__ = [
    "FlowBlock", "LOSSES", "SNF", "SNFConfig", "SNFResult", "StochasticBlock", "default_blocks",
    "make_snf", "sample_snf", "snf", "train_snf",
]


class SNFResult(NamedTuple):
    """Weighted draws of an SNF and their importance-sampling summaries.

    Attributes:
      trace: `Trace` with positions ``(num_batches, n, dim)`` and stats
        ``log_weight`` (``-inf`` for invalid paths), ``lp`` (target log
        density at the draw), ``num_grad_evals`` and, with Metropolis blocks,
        ``acceptance_rate``; ``to_arviz()`` puts ``log_weight`` in sample_stats.
      log_weights: ``(num_batches, n)`` numpy float64.
      log_z: ``log mean w`` over all draws (float).
      log_z_se: its standard error (delta method; with several batches, the
        larger of that and the batch-means error). With resampling, the
        batch-means error alone (NaN for a single batch: resampled weights
        have no per-draw error formula).
      is_ess: normalised IS effective sample size ``(sum w)^2 / (n sum w^2)``.
      pareto_k: PSIS shape estimate of the weights: above 0.5 the weights'
        variance is infinite and ``log_z_se`` understates the error (log Z
        tends to come out low); above 0.7 the estimates are unreliable.
      num_invalid: paths that met a non-finite energy (weight zero).
      num_target_evals: target evaluations of the sampling pass.
      snf: the `SNF` that was sampled.
      num_resampled: resampling steps per batch, numpy ``(num_batches,)``
        (all 0 without ``resample_threshold``).
    """

    trace: Trace
    log_weights: np.ndarray
    log_z: float
    log_z_se: float
    is_ess: float
    pareto_k: float
    num_invalid: int
    num_target_evals: int
    snf: SNF
    num_resampled: np.ndarray | None = None

    def resample(self, key: Array, n: int) -> np.ndarray:
        """``n`` equally weighted draws ``(n, dim)`` by systematic resampling of all batches."""
        n = _check_int(n, "n", 1)
        u0 = float(jax.random.uniform(key, ()))
        idx = systematic_resample_indices(u0, self.log_weights, n)
        flat = np.asarray(self.trace.positions).reshape(-1, self.trace.positions.shape[-1])
        return flat[idx]

    def weighted_mean(self, fn=None) -> tuple[np.ndarray, np.ndarray]:
        """Self-normalised estimate of ``E_p[fn(x)]`` (default ``x``) and its delta-method SE."""
        flat = np.asarray(self.trace.positions).reshape(-1, self.trace.positions.shape[-1])
        values = flat if fn is None else np.asarray(jax.vmap(fn)(jnp.asarray(flat)))
        return weighted_mean_and_se(values, self.log_weights)


def default_blocks(num_flow_blocks: int = 2, layers_per_block: int = 2, hidden=(64, 64),
                   kind: str = "mala", step_size: float = 0.05, num_steps: int = 5) -> list:
    """Flow stacks alternating with stochastic blocks on an evenly spaced ``lam`` schedule ending at 1."""
    _check_int(num_flow_blocks, "num_flow_blocks", 1)
    blocks = []
    for i in range(num_flow_blocks):
        blocks.append(FlowBlock(layers_per_block, "affine", tuple(hidden)))
        blocks.append(StochasticBlock(kind, (i + 1) / num_flow_blocks, step_size, num_steps))
    return blocks


def _check_threshold(resample_threshold) -> float | None:
    if resample_threshold is None:
        return None
    ok = isinstance(resample_threshold, (int, float, np.floating)) and not isinstance(resample_threshold, bool)
    if not ok or not (0.0 < float(resample_threshold) <= 1.0):
        raise ValueError(f"resample_threshold must be None or a number in (0, 1], got {resample_threshold!r}")
    return float(resample_threshold)


def sample_snf(snf_model: SNF, target: Target, key: Array, num_samples: int, *, num_batches: int = 1,
               resample_threshold: float | None = None) -> SNFResult:
    """Weighted draws of an SNF: positions and log weights from the same forward pass.

    Args:
      snf_model: an `SNF` of ``target``'s dimension.
      target: the `Target`.
      key: PRNG key.
      num_samples: draws per batch, >= 2.
      num_batches: independent batches (the Trace's chain axis), >= 1; with
        more than one, ``log_z_se`` also checks the batch-to-batch spread.
      resample_threshold: None (default: every path keeps its own importance
        weight), or a number in (0, 1]: each batch is then a population that
        is resampled before a stochastic block whenever the effective sample
        size of its running weights is below ``resample_threshold *
        num_samples`` (1: before every stochastic block). This is the SMC
        form of the SNF (annealed flow transport): far less weight
        degeneracy on multimodal or high-dimensional targets, ``log Z`` still
        unbiased (exactly so with 1, consistent with an ESS trigger), at one
        extra target evaluation per particle and stochastic block. Use
        ``num_batches >= 2`` to get ``log_z_se``.

    Returns:
      An `SNFResult`. Paths meeting a NaN/inf energy get weight zero and are
      counted in ``num_invalid``; estimates never contain NaN.
    """
    check_snf_for_target(snf_model, target)
    n = _check_int(num_samples, "num_samples", 2)
    b = _check_int(num_batches, "num_batches", 1)
    threshold = _check_threshold(resample_threshold)
    log_target = guarded_target(target, snf_model.dtype.name)
    evals_per = snf_model.target_evals_per_sample(resampling=threshold is not None)
    t0 = time.perf_counter()
    if threshold is None:
        keys = jax.random.split(key, n * b)
        # The sample axis is the "chain" axis of sbi_kit.run: split over devices when there are several.
        mesh = chain_mesh(n * b) if len(jax.devices()) > 1 else None
        keys = shard_chains(keys, mesh)
        out = jax.tree.map(np.asarray, _sample_fn(snf_model, log_target, keys))
        num_resampled = np.zeros(b, np.int64)
        num_invalid = int(np.sum(~out.ok))
    else:
        keys = jax.random.split(key, b)
        # Populations interact through resampling: the batch axis is what devices split.
        mesh = chain_mesh(b) if len(jax.devices()) > 1 else None
        out = jax.tree.map(np.asarray, sample_populations(snf_model, log_target, shard_chains(keys, mesh), n,
                                                          threshold))
        num_resampled = out.num_resampled.astype(np.int64)
        num_invalid = int(np.sum(~out.ok) + np.sum(out.num_dropped))
    elapsed = time.perf_counter() - t0

    lw = out.log_weight.astype(np.float64).reshape(b, n)
    ok = out.ok.reshape(b, n)
    stats = {
        "log_weight": lw,
        "lp": np.where(ok, out.log_target.reshape(b, n), -np.inf),
        "num_grad_evals": np.full((b, n), evals_per, np.int64),
    }
    num_mh = sum(s.num_steps for s in snf_model.config.stages
                 if isinstance(s, StochasticBlock) and s.kind in ("mala", "rwmh", "hmc"))
    if num_mh:
        stats["acceptance_rate"] = (out.num_accepted / num_mh).reshape(b, n)
    positions = out.x.reshape(b, n, snf_model.dim)
    if not np.any(ok):
        log_z, se, ess, k = -math.inf, math.inf, 0.0, math.nan
    else:
        log_z, se = log_z_and_se(lw) if threshold is None else resampled_log_z_and_se(lw)
        ess = _is_ess(lw)
        k = pareto_k(lw)
    trace = Trace(positions, stats, target, "snf",
                  {"sampling_time": elapsed, "num_invalid": num_invalid, "log_z": log_z, "log_z_se": se,
                   "is_ess": ess, "pareto_k": k, "num_target_evals": n * b * evals_per,
                   "resample_threshold": threshold, "num_resampled": num_resampled.tolist()})
    return SNFResult(trace, lw, log_z, se, ess, k, num_invalid, n * b * evals_per, snf_model, num_resampled)


@functools.partial(jax.jit, static_argnums=1)
def _sample_fn(snf_model: SNF, log_target, keys):
    """Forward paths for every key ``(m, 2)``, vmapped (partitioned over devices when sharded)."""
    return jax.vmap(lambda k: forward_path(snf_model, log_target, k))(keys)


def snf(
    target: Target,
    key: Array,
    *,
    blocks: Sequence | None = None,
    base_scale: float = 1.0,
    num_train_steps: int = 1000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    loss: str = "reverse_kl",
    alpha: float = 0.5,
    draws: Array | None = None,
    num_samples: int = 2000,
    num_batches: int = 1,
    train_lambdas: bool = False,
    train_step_sizes: bool = True,
    resample_threshold: float | None = None,
) -> SNFResult:
    """Build, train and sample a stochastic normalizing flow for ``target``.

    Args:
      target: the `Target`.
      key: PRNG key.
      blocks: `FlowBlock` / `Flow` / `StochasticBlock` sequence (default:
        `default_blocks()`: two 2-layer RealNVP stacks, each followed by 5
        MALA steps, at ``lam = 0.5`` and ``1``).
      base_scale: std of the ``N(0, s^2 I)`` base.
      num_train_steps, batch_size, learning_rate, loss, alpha, draws: see `train_snf`.
      num_samples, num_batches, resample_threshold: see `sample_snf` (training
        runs without resampling: its paths are differentiated end to end).
      train_lambdas, train_step_sizes: see `make_snf`.

    Returns:
      An `SNFResult`; ``result.trace.info`` also holds ``train_losses`` and
      ``train_target_evals``.
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a sbi_kit Target, got {type(target).__name__}")
    k_make, k_train, k_sample = jax.random.split(key, 3)
    model = make_snf(k_make, target, default_blocks() if blocks is None else blocks, base_scale=base_scale,
                     train_lambdas=train_lambdas, train_step_sizes=train_step_sizes)
    # Check the sampling settings before the (long) training.
    _check_int(num_samples, "num_samples", 2)
    _check_int(num_batches, "num_batches", 1)
    _check_threshold(resample_threshold)
    t0 = time.perf_counter()
    model, info = train_snf(model, target, k_train, num_steps=num_train_steps, batch_size=batch_size,
                            learning_rate=learning_rate, loss=loss, alpha=alpha, draws=draws)
    train_time = time.perf_counter() - t0
    result = sample_snf(model, target, k_sample, num_samples, num_batches=num_batches,
                        resample_threshold=resample_threshold)
    result.trace.info.update(train_losses=info.losses, train_target_evals=info.num_target_evals,
                             warmup_time=train_time)
    return result
