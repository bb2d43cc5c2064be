"""Two-sample and Stein discrepancies: MMD, energy distance, KSD.

Pairwise sums are tiled (`sbi_kit.diagnostics.pairwise`): memory is
O((n + m) d + block_size^2) and no ``n x n`` matrix is ever formed. Kernels
come from `sbi_kit.thinning.kernels` and the Langevin Stein kernel from
`sbi_kit.thinning.stein`. Definitions follow TARGETS.md (Gaussian-kernel MMD
with the median heuristic, IMQ-kernel KSD).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from sbi_kit.diagnostics.draws import (
    _check_block_size,
    _checked,
    _checked_pair,
    _is_arviz_input,
)
from sbi_kit.diagnostics.pairwise import (
    _STATIONARY,
    _distance_tile,
    _kernel_tile,
    _median_bandwidth,
    _tile_loop,
    _two_sample_sums,
)
from sbi_kit.targets.base import Target
from sbi_kit.thinning.kernels import GaussianKernel, IMQKernel, Kernel, get_kernel
from sbi_kit.thinning.stein import _SteinFeatureKernel

Array = jax.Array


# ---------------------------------------------------------------------------
# MMD and energy distance
# ---------------------------------------------------------------------------


def _resolve_kernel(kernel, bandwidth, pooled) -> Kernel:
    """A `Kernel` from a name or instance; no bandwidth means the median heuristic."""
    if isinstance(kernel, Kernel):
        return kernel
    if bandwidth is None and isinstance(kernel, str):
        bandwidth = _median_bandwidth(pooled)
    return get_kernel(kernel, bandwidth)


def mmd_squared(x, y, kernel: str | Kernel = "gaussian", bandwidth=None, block_size: int = 1024) -> float:
    """Unbiased estimate of MMD^2 between the samples ``x`` and ``y``.

    ``MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
    - 2 sum_{i, j} k(x_i, y_j) / (n m)``; it can be slightly negative when the
    two distributions agree.

    Args:
      x: draws ``(n, d)``, ``(chains, draws, d)`` or InferenceData; ``n >= 2``.
      y: draws of the same ``d``; ``m >= 2``.
      kernel: a name for `sbi_kit.thinning.kernels.get_kernel` (default
        Gaussian ``exp(-|x-y|^2 / (2 bw^2))``) or a `Kernel` instance (then
        ``bandwidth`` is ignored).
      bandwidth: positive float, or None for the median pairwise distance of
        the pooled sample (an evenly spaced subsample of at most 1000 points).
      block_size: tile edge; memory is O(block_size^2) per tile.

    Returns:
      MMD^2 as a Python float, computed in the (promoted) dtype of the inputs.
    """
    # Not `sbi_kit.thinning.mmd.mmd_between`: that is the biased V-statistic
    # (diagonal included, weighted); this is the U-statistic of TARGETS.md.
    block_size = _check_block_size(block_size)
    X, Y = _checked_pair(x, y, min_rows=2)
    k = _resolve_kernel(kernel, bandwidth, jnp.concatenate([X, Y]))
    n, m = X.shape[0], Y.shape[0]
    kxx, kyy, kxy = _two_sample_sums(
        _kernel_tile, k, X, Y, min(block_size, n), min(block_size, m), isinstance(k, _STATIONARY)
    )
    return float(kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m))


def mmd(x, y, kernel: str | Kernel = "gaussian", bandwidth=None, block_size: int = 1024) -> float:
    """``sqrt(max(MMD^2_u, 0))``: the MMD reported in TARGETS.md (see `mmd_squared`)."""
    return math.sqrt(max(mmd_squared(x, y, kernel, bandwidth, block_size), 0.0))


def energy_distance(x, y, block_size: int = 1024, unbiased: bool = False) -> float:
    """Energy distance ``sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|)`` between two samples.

    With ``unbiased=False`` (default) the expectations are plug-in averages
    over all pairs (V-statistics), matching ``scipy.stats.energy_distance`` in
    one dimension; with ``unbiased=True`` the within-sample terms average over
    ``i != j`` (U-statistics, needs ``n, m >= 2``). Negative estimates of the
    square are clipped at 0.

    Args:
      x: draws ``(n, d)``, ``(chains, draws, d)`` or InferenceData.
      y: draws of the same ``d``.
      block_size: tile edge.

    Returns:
      The energy distance as a Python float.
    """
    block_size = _check_block_size(block_size)
    X, Y = _checked_pair(x, y, min_rows=2 if unbiased else 1)
    n, m = X.shape[0], Y.shape[0]
    # The diagonal |x_i - x_i| is exactly 0, so excluding it changes only the round-off.
    dxx, dyy, dxy = _two_sample_sums(
        _distance_tile, None, X, Y, min(block_size, n), min(block_size, m), True
    )
    nxx, nyy = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    sq = float(2.0 * dxy / (n * m) - dxx / nxx - dyy / nyy)
    return math.sqrt(max(sq, 0.0))


# ---------------------------------------------------------------------------
# Kernel Stein discrepancy
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("block",))
def _stein_sums(kernel, X, S, block: int):
    """Off-diagonal and diagonal sums of the Stein kernel matrix of ``X`` with scores ``S``.

    The Langevin Stein kernel is `sbi_kit.thinning.stein`'s, acting on the
    features ``[x, s(x)]``; the off-diagonal sum is masked exactly per tile
    (U-statistic) and the diagonal is the Stein kernel's closed form at
    ``x = y``.
    """
    # Scores were taken at the raw points; the Stein kernel sees x only via x - y,
    # so centring (for float32 accuracy) leaves it unchanged.
    X = X - jnp.mean(X, axis=0)
    features = jnp.concatenate([X, S], axis=1)
    stein = _SteinFeatureKernel(kernel, X.shape[1])
    off = _tile_loop(_kernel_tile, stein, (features,), (features,), block, block, True)
    return off, jnp.sum(stein.diagonal(features))


@functools.partial(jax.jit, static_argnames=("score", "batch"))
def _scores(score, X, batch: int):
    # Batched lax.map (not SteinKernel.features' vmap over all points): the
    # score's intermediates stay O(batch) whatever n.
    return lax.map(score, X, batch_size=batch)


def _stein_kernel(kernel, bandwidth, X):
    if isinstance(kernel, str):
        if kernel == "imq":
            # TARGETS.md: (1 + |x - y|^2)^(-1/2), i.e. unit bandwidth.
            return IMQKernel(1.0 if bandwidth is None else bandwidth)
        if kernel == "gaussian":
            return _resolve_kernel("gaussian", bandwidth, X)
        raise ValueError(f"KSD supports kernel 'imq' or 'gaussian', got {kernel!r}")
    if isinstance(kernel, (IMQKernel, GaussianKernel)):
        return kernel
    raise ValueError(f"KSD supports IMQKernel or GaussianKernel, got {type(kernel).__name__}")


def _score_fn(score_fn_or_target) -> Callable[[Array], Array]:
    if isinstance(score_fn_or_target, Target):
        return score_fn_or_target.score
    if callable(score_fn_or_target):
        return score_fn_or_target
    raise ValueError(
        f"need a Target or a score function x (d,) -> (d,), got {type(score_fn_or_target).__name__}"
    )


def _check_ksd_coordinates(x, score_fn_or_target) -> None:
    """Reject constrained ArviZ draws paired with a numpyro target's unconstrained score."""
    if (
        _is_arviz_input(x)
        and isinstance(score_fn_or_target, Target)
        and score_fn_or_target.info.get("kind") == "numpyro"
    ):
        raise ValueError(
            f"KSD of numpyro target {score_fn_or_target.name!r}: InferenceData holds "
            "constrained values, but the target's score is taken in its unconstrained "
            "coordinates; pass unconstrained draws instead (the `Trace` itself, or "
            "`trace.positions`)"
        )


def ksd_squared(
    x,
    score_fn_or_target,
    kernel: str | Kernel = "imq",
    bandwidth=None,
    block_size: int = 1024,
    unbiased: bool = True,
) -> float:
    """Kernel Stein discrepancy squared with the Langevin Stein operator.

    ``KSD^2 = mean_{i != j} k_p(x_i, x_j)`` (U-statistic, default; unbiased,
    can be slightly negative) or ``mean_{i, j} k_p(x_i, x_j)`` (V-statistic,
    ``unbiased=False``; always >= 0), where
    ``k_p(x, y) = s(x).s(y) k + s(x).grad_y k + s(y).grad_x k + tr grad_x grad_y k``
    and ``s = grad log p``.

    Args:
      x: draws ``(n, d)``, ``(chains, draws, d)``, a `Trace` or InferenceData;
        ``n >= 2``; they must be in the coordinates of the score (a `Trace`'s
        unconstrained positions; InferenceData only when constrained values
        equal the unconstrained ones, as for benchmark targets). InferenceData
        with a numpyro `Target` raises ValueError: pass the `Trace` or its
        unconstrained positions instead.
      score_fn_or_target: a `Target` (its ``score`` is used) or a function
        ``x (d,) -> (d,)`` returning ``grad log p(x)``.
      kernel: ``"imq"`` (default: ``(1 + |x-y|^2 / bw^2)^(-1/2)`` with
        ``bw = 1`` unless given, as TARGETS.md), ``"gaussian"`` (median
        heuristic bandwidth unless given), or an `IMQKernel` /
        `GaussianKernel` instance.
      bandwidth: kernel bandwidth (see ``kernel``).
      block_size: tile edge; scores are also evaluated in batches of this size.
      unbiased: U-statistic (True) or V-statistic (False).

    Returns:
      KSD^2 as a Python float.
    """
    block_size = _check_block_size(block_size)
    _check_ksd_coordinates(x, score_fn_or_target)
    X = _checked(x, "x")
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"x needs at least 2 rows for KSD, got {n}")
    score = _score_fn(score_fn_or_target)
    S = _scores(score, X, min(block_size, n))
    if S.shape != X.shape:
        raise ValueError(f"score returned shape {S.shape[1:]} per point, expected ({X.shape[1]},)")
    bad = int(jnp.sum(~jnp.all(jnp.isfinite(S), axis=1)))
    if bad:
        raise ValueError(f"score is NaN or infinite at {bad} of {n} draws")
    k = _stein_kernel(kernel, bandwidth, X)
    off_diagonal, diagonal = _stein_sums(k, X, S, min(block_size, n))
    if unbiased:
        return float(off_diagonal / (n * (n - 1)))
    return float((off_diagonal + diagonal) / (n * n))


def ksd(
    x,
    score_fn_or_target,
    kernel: str | Kernel = "imq",
    bandwidth=None,
    block_size: int = 1024,
    unbiased: bool = True,
) -> float:
    """``sqrt(max(KSD^2, 0))`` (see `ksd_squared` for the arguments)."""
    return math.sqrt(
        max(ksd_squared(x, score_fn_or_target, kernel, bandwidth, block_size, unbiased), 0.0)
    )


__all__ = ["energy_distance", "ksd", "ksd_squared", "mmd", "mmd_squared"]
