"""Sample-quality metrics: MMD, energy distance, KSD, ESS rates, IS ESS, mode weights.

Every metric accepts draws as an array ``(n, d)``, an array
``(chains, draws, d)`` (chains pooled), an ArviZ ``InferenceData`` (its
posterior group flattened by `draws_as_array`) or a `Trace`. Pairwise
metrics are computed in ``block_size x block_size`` tiles (one
``lax.fori_loop`` over (row block, column block) pairs, all three sums of a
two-sample statistic in one compiled program), so memory is
O((n + m) d + block_size^2) and no ``n x n`` matrix is ever formed.
Metrics are reporting tools: they validate their inputs eagerly and return
Python floats.

Definitions follow TARGETS.md (Gaussian-kernel MMD with the median heuristic,
IMQ-kernel KSD, IS ESS normalised to (0, 1]).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from sbi_kit.targets.base import Target
from sbi_kit.thinning.kernels import (
    GaussianKernel,
    IMQKernel,
    Kernel,
    LaplaceKernel,
    MaternKernel,
    _sq_dist,
    get_kernel,
    median_bandwidth,
)

Array = jax.Array

# Kernels that depend on x - y only; for these we centre the pooled sample
# first, which keeps the |x|^2 + |y|^2 - 2 x.y expansion accurate in float32.
_STATIONARY = (GaussianKernel, IMQKernel, LaplaceKernel, MaternKernel)


# ---------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------


def _is_inference_data(obj) -> bool:
    return hasattr(obj, "posterior") and hasattr(obj, "groups")


def _posterior_as_3d(draws, var_names=None) -> tuple[np.ndarray, list[str]]:
    """Posterior variables of InferenceData / an xarray Dataset as ``(chains, draws, d)``.

    Variables are taken in ``var_names`` order, or the posterior's own
    ``data_vars`` order; each is flattened in C order over its event dims.
    """
    ds = draws.posterior if _is_inference_data(draws) else draws
    names = list(ds.data_vars) if var_names is None else list(var_names)
    if not names:
        raise ValueError("posterior has no variables")
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        raise ValueError(f"variables {missing} not in the posterior {list(ds.data_vars)}")
    blocks = []
    for v in names:
        da = ds[v]
        if "chain" not in da.dims or "draw" not in da.dims:
            raise ValueError(f"posterior variable {v!r} lacks chain/draw dims: {da.dims}")
        other = [dim for dim in da.dims if dim not in ("chain", "draw")]
        arr = np.asarray(da.transpose("chain", "draw", *other).values)
        blocks.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    return np.concatenate(blocks, axis=-1), names


def _as_3d(draws, var_names=None) -> tuple[np.ndarray, list[str] | None]:
    """Draws as a numpy ``(chains, draws, d)`` array; a 2-d array is one chain."""
    if hasattr(draws, "positions") and hasattr(draws, "stats"):
        # A Trace: its unconstrained positions, the coordinates of target.score/sample.
        return np.asarray(draws.positions), None
    if _is_inference_data(draws) or hasattr(draws, "data_vars"):
        return _posterior_as_3d(draws, var_names)
    arr = np.asarray(draws)
    if arr.ndim == 1:
        arr = arr[None, :, None]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(
            f"draws must have shape (n,), (n, d) or (chains, draws, d), got {arr.shape}"
        )
    return arr, None


def draws_as_array(draws, var_names=None) -> np.ndarray:
    """Pool draws into one ``(n, d)`` numpy array.

    Args:
      draws: an array ``(n,)`` (read as ``d = 1``), ``(n, d)`` or
        ``(chains, draws, d)``; a `Trace` (its unconstrained ``positions``,
        the coordinates of ``target.sample`` and ``target.score``); or an
        ArviZ ``InferenceData`` / posterior ``xarray.Dataset`` (constrained
        values). For ArviZ input, variables are concatenated in ``var_names``
        order (default: the posterior's ``data_vars`` order), each flattened
        in C order over its non-(chain, draw) dims, with chains stacked first.
      var_names: optional list of posterior variable names.

    Returns:
      A numpy array of shape ``(chains * draws, d)`` and the input's dtype.
    """
    arr, _ = _as_3d(draws, var_names)
    return arr.reshape(-1, arr.shape[-1])


def _checked(draws, name: str) -> Array:
    """Pooled draws as a float jax array ``(n, d)``; rejects empty and non-finite rows."""
    arr = draws_as_array(draws)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    # Checked in numpy: eager jnp reductions would compile once per input shape.
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
    if bad:
        raise ValueError(f"{name} has {bad} of {arr.shape[0]} rows with NaN or infinite values")
    return jnp.asarray(arr)


def _checked_pair(x, y, min_rows: int = 1) -> tuple[Array, Array]:
    X, Y = _checked(x, "x"), _checked(y, "y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {X.shape[1]} vs {Y.shape[1]}")
    for nm, arr in (("x", X), ("y", Y)):
        if arr.shape[0] < min_rows:
            raise ValueError(f"{nm} needs at least {min_rows} rows, got {arr.shape[0]}")
    dt = jnp.result_type(X.dtype, Y.dtype)
    return X.astype(dt), Y.astype(dt)


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return block_size


# ---------------------------------------------------------------------------
# Tiled pairwise sums
# ---------------------------------------------------------------------------


def _tile_loop(tile_fn, params, rows, cols, row_block: int, col_block: int, exclude_diagonal: bool):
    """``sum_{i, j} tile_fn(params, rows, cols)[i, j]`` without forming the full matrix.

    ``rows``/``cols`` are tuples of arrays sharing a leading axis (points, and
    scores for KSD). One ``fori_loop`` walks the ``row_block x col_block``
    tiles; inputs are zero-padded to whole tiles and the padding is masked.
    With ``exclude_diagonal`` (rows and cols the same sample, equal blocks)
    the ``i == j`` terms are masked exactly, which U-statistics need and which
    avoids round-off from evaluating a tile at zero distance.
    """
    n, m = rows[0].shape[0], cols[0].shape[0]
    n_row_blocks, n_col_blocks = -(-n // row_block), -(-m // col_block)

    def pad(arrays, total):
        return tuple(jnp.pad(a, [(0, total - a.shape[0])] + [(0, 0)] * (a.ndim - 1)) for a in arrays)

    rows = pad(rows, n_row_blocks * row_block)
    cols = pad(cols, n_col_blocks * col_block)

    def body(t, acc):
        i, j = t // n_col_blocks, t % n_col_blocks
        r = tuple(lax.dynamic_slice_in_dim(a, i * row_block, row_block) for a in rows)
        c = tuple(lax.dynamic_slice_in_dim(a, j * col_block, col_block) for a in cols)
        row_ids = i * row_block + jnp.arange(row_block)
        col_ids = j * col_block + jnp.arange(col_block)
        mask = (row_ids[:, None] < n) & (col_ids[None, :] < m)
        if exclude_diagonal:
            mask = mask & (row_ids[:, None] != col_ids[None, :])
        return acc + jnp.sum(jnp.where(mask, tile_fn(params, r, c), 0.0))

    return lax.fori_loop(0, n_row_blocks * n_col_blocks, body, jnp.zeros((), rows[0].dtype))


@functools.partial(jax.jit, static_argnames=("tile_fn", "bx", "by", "centre"))
def _two_sample_sums(tile_fn, params, X, Y, bx: int, by: int, centre: bool):
    """Off-diagonal sums over (X, X) and (Y, Y) and the full (X, Y) sum, in one program."""
    if centre:
        # Stationary kernels and distances see only x - y; centring on the
        # pooled mean keeps the |x|^2 + |y|^2 - 2 x.y expansion accurate in float32.
        mu = (jnp.sum(X, axis=0) + jnp.sum(Y, axis=0)) / (X.shape[0] + Y.shape[0])
        X, Y = X - mu, Y - mu
    sxx = _tile_loop(tile_fn, params, (X,), (X,), bx, bx, True)
    syy = _tile_loop(tile_fn, params, (Y,), (Y,), by, by, True)
    sxy = _tile_loop(tile_fn, params, (X,), (Y,), bx, by, False)
    return sxx, syy, sxy


def _kernel_tile(kernel, rows, cols):
    return kernel.matrix(rows[0], cols[0])


def _distance_tile(_, rows, cols):
    return jnp.sqrt(_sq_dist(rows[0], cols[0]))


# The median heuristic jitted: one compile instead of many eager dispatches.
_median_bandwidth = jax.jit(median_bandwidth, static_argnames="max_points")



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


def _imq_stein_tile(k: IMQKernel, rows, cols):
    """Langevin Stein kernel of ``(c^2 + |r|^2 / h^2)^beta``, ``r = x - y``, on a tile.

    ``k_p = (s_x . s_y) k + (2 beta / h^2) u^(beta-1) (s_y - s_x) . r
    - 2 beta d u^(beta-1) / h^2 - 4 beta (beta-1) u^(beta-2) |r|^2 / h^4``.
    """
    X, S = rows
    Y, T = cols
    d = X.shape[1]
    h2 = k.bandwidth**2
    sq = _sq_dist(X, Y)
    u = k.c**2 + sq / h2
    du = k.beta * u ** (k.beta - 1.0)
    sx_r = jnp.sum(S * X, axis=1)[:, None] - S @ Y.T
    sy_r = X @ T.T - jnp.sum(T * Y, axis=1)[None, :]
    return (
        (S @ T.T) * u**k.beta
        + (2.0 / h2) * du * (sy_r - sx_r)
        - (2.0 * d / h2) * du
        - (4.0 * k.beta * (k.beta - 1.0) / h2**2) * u ** (k.beta - 2.0) * sq
    )


def _gaussian_stein_tile(k: GaussianKernel, rows, cols):
    """Langevin Stein kernel of ``exp(-|r|^2 / (2 h^2))`` on a tile.

    ``k_p = k [s_x . s_y + (s_x - s_y) . r / h^2 + d / h^2 - |r|^2 / h^4]``.
    """
    X, S = rows
    Y, T = cols
    d = X.shape[1]
    h2 = k.bandwidth**2
    sq = _sq_dist(X, Y)
    base = jnp.exp(-0.5 * sq / h2)
    sx_r = jnp.sum(S * X, axis=1)[:, None] - S @ Y.T
    sy_r = X @ T.T - jnp.sum(T * Y, axis=1)[None, :]
    return base * (S @ T.T + (sx_r - sy_r) / h2 + d / h2 - sq / h2**2)


@functools.partial(jax.jit, static_argnames=("tile_fn", "block"))
def _stein_sums(tile_fn, kernel, X, S, block: int):
    """Off-diagonal and diagonal sums of the Stein kernel matrix of ``X`` with scores ``S``."""
    # Scores were taken at the raw points; the Stein kernel sees x only via x - y,
    # so centring (for float32 accuracy) leaves it unchanged.
    X = X - jnp.mean(X, axis=0)
    off = _tile_loop(tile_fn, kernel, (X, S), (X, S), block, block, True)
    diag = jax.vmap(lambda x, s: tile_fn(kernel, (x[None], s[None]), (x[None], s[None]))[0, 0])(X, S)
    return off, jnp.sum(diag)


@functools.partial(jax.jit, static_argnames=("score", "batch"))
def _scores(score, X, batch: int):
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
        equal the unconstrained ones, as for benchmark targets).
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
    tile = _imq_stein_tile if isinstance(k, IMQKernel) else _gaussian_stein_tile
    off_diagonal, diagonal = _stein_sums(tile, k, X, S, min(block_size, n))
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


# ---------------------------------------------------------------------------
# Effective sample size rates
# ---------------------------------------------------------------------------


class EssRate(NamedTuple):
    """Effective sample size per unit cost.

    Attributes:
      min: smallest ``ESS / cost`` over all scalar parameters.
      per_parameter: ``{name: ESS / cost}`` arrays shaped like each variable.
      ess: ``{name: ESS}`` the raw ESS arrays.
      cost: the total cost the ESS is divided by (gradient evaluations or seconds).
    """

    min: float
    per_parameter: dict[str, np.ndarray]
    ess: dict[str, np.ndarray]
    cost: float


def _ess(draws, method: str, var_names) -> dict[str, np.ndarray]:
    import arviz as az

    if _is_inference_data(draws):
        names = list(draws.posterior.data_vars) if var_names is None else list(var_names)
        ds = az.ess(draws, method=method, var_names=names)
        return {v: np.asarray(ds[v].values) for v in names}
    arr, _ = _as_3d(draws)
    if arr.size == 0:
        raise ValueError(f"draws are empty (shape {arr.shape})")
    ds = az.ess(az.convert_to_dataset(arr), method=method)
    return {"x": np.asarray(ds["x"].values)}


def _rate(ess: dict[str, np.ndarray], cost: float, what: str) -> EssRate:
    if not (math.isfinite(cost) and cost > 0):
        raise ValueError(f"{what} must be positive and finite, got {cost}")
    per = {k: v / cost for k, v in ess.items()}
    return EssRate(
        min=float(min(np.min(v) for v in per.values())), per_parameter=per, ess=ess, cost=cost
    )


def _to_idata(draws):
    if hasattr(draws, "to_arviz") and not _is_inference_data(draws):
        return draws.to_arviz()
    return draws


def ess_per_grad(
    draws,
    num_grad_evals=None,
    *,
    method: str = "bulk",
    var_names=None,
    include_warmup: bool = False,
) -> EssRate:
    """ArviZ ESS divided by the total number of gradient evaluations.

    Args:
      draws: InferenceData (a `Trace` is converted with ``to_arviz()``), or an array
        ``(chains, draws, d)`` / ``(n, d)`` (one chain) with ``num_grad_evals``.
      num_grad_evals: the total count (scalar, or an array that is summed).
        None reads ``sample_stats["num_grad_evals"]``, falling back to
        ArviZ's ``sample_stats["n_steps"]`` (leapfrog steps, one gradient
        each), summed over chains and draws.
      method: ``arviz.ess`` method (default ``"bulk"``).
      var_names: posterior variables to include (default: all).
      include_warmup: also count ``warmup_sample_stats`` (or, without that
        group, the ``"warmup_grad_evals"`` run attribute) when reading counts
        from InferenceData.

    Returns:
      An `EssRate`; ``min`` is the minimum over parameters.

    Raises:
      ValueError: when no gradient count is given or found, or it is not positive.
    """
    draws = _to_idata(draws)
    if num_grad_evals is None:
        num_grad_evals = _grad_count(draws, include_warmup)
    cost = float(np.sum(np.asarray(num_grad_evals, dtype=np.float64)))
    return _rate(_ess(draws, method, var_names), cost, "num_grad_evals")


def _grad_count(idata, include_warmup: bool) -> float:
    if not _is_inference_data(idata) or not hasattr(idata, "sample_stats"):
        raise ValueError("pass num_grad_evals, or InferenceData with sample_stats")
    groups = [idata.sample_stats]
    total = 0.0
    if include_warmup:
        if hasattr(idata, "warmup_sample_stats"):
            groups.append(idata.warmup_sample_stats)
        else:
            # sbi_kit's Trace.to_arviz stores the warmup count as a run attribute.
            total += float(_run_attr(idata, "warmup_grad_evals", 0.0))
    for group in groups:
        for key in ("num_grad_evals", "n_steps"):
            if key in group.data_vars:
                total += float(np.sum(group[key].values))
                break
        else:
            raise ValueError(
                "sample_stats has neither 'num_grad_evals' nor 'n_steps'; pass num_grad_evals"
            )
    return total


def _run_attr(idata, key: str, default):
    """A run attribute from ``sample_stats.attrs``, the InferenceData's own
    ``attrs`` (where `Trace.to_arviz` puts run metadata) or ``posterior.attrs``."""
    sources = [
        getattr(getattr(idata, "sample_stats", None), "attrs", None),
        getattr(idata, "attrs", None),
        getattr(getattr(idata, "posterior", None), "attrs", None),
    ]
    for attrs in sources:
        if attrs and key in attrs:
            return attrs[key]
    return default


def ess_per_second(
    draws, wall_time: float | None = None, *, method: str = "bulk", var_names=None
) -> EssRate:
    """ArviZ ESS divided by the wall time in seconds.

    Args:
      draws: as for `ess_per_grad`.
      wall_time: seconds; None reads the ``"sampling_time"`` attribute of
        ``sample_stats``, else of the InferenceData itself (where
        `Trace.to_arviz` puts it), else of ``posterior``.
      method, var_names: as for `ess_per_grad`.

    Returns:
      An `EssRate` with ``cost`` in seconds.
    """
    draws = _to_idata(draws)
    if wall_time is None:
        wall_time = _run_attr(draws, "sampling_time", None)
        if wall_time is None:
            raise ValueError(
                "pass wall_time, or InferenceData with a 'sampling_time' attribute"
            )
    return _rate(_ess(draws, method, var_names), float(wall_time), "wall_time")


# ---------------------------------------------------------------------------
# Importance weights, log Z, modes
# ---------------------------------------------------------------------------


def is_ess(log_weights) -> float:
    """Normalised importance-sampling ESS ``(sum w)^2 / (n sum w^2)`` in (0, 1].

    Computed in float64 after subtracting ``max(lw)`` (the ratio is
    shift-invariant), so log weights in the thousands do not overflow.

    Args:
      log_weights: shape ``(n,)`` (any shape is flattened); ``-inf`` entries
        are zero weights, at least one must be finite.

    Raises:
      ValueError: empty input, NaN or ``+inf`` entries, or all weights zero.
    """
    # float64 numpy: a scalar summary, so precision is cheap and no compile is needed.
    lw = np.ravel(np.asarray(log_weights, dtype=np.float64))
    n = lw.shape[0]
    if n == 0:
        raise ValueError("log_weights is empty")
    n_bad = int(np.sum(np.isnan(lw) | (lw == np.inf)))
    if n_bad:
        raise ValueError(f"log_weights has {n_bad} of {n} NaN or +inf entries")
    if not np.any(np.isfinite(lw)):
        raise ValueError("all log_weights are -inf (every weight is zero)")
    # Shifting by the max leaves the ratio unchanged and keeps exp() in range.
    w = np.exp(lw - np.max(lw))
    return min(float(np.sum(w) ** 2 / (n * np.sum(w * w))), 1.0)


def log_z_error(log_z_estimate, log_z_true) -> float:
    """``|log Z_hat - log Z|``; ``log_z_true`` may be a number or a `Target` with ``log_Z``."""
    if isinstance(log_z_true, Target):
        if log_z_true.log_Z is None:
            raise ValueError(f"target {log_z_true.name!r} has no exact log_Z")
        log_z_true = log_z_true.log_Z
    est, true = float(log_z_estimate), float(log_z_true)
    if math.isnan(est) or math.isnan(true):
        raise ValueError(f"log Z values must not be NaN, got {est} and {true}")
    return abs(est - true)


def _mode_inputs(means, weights):
    if isinstance(means, Target):
        from sbi_kit.targets.mixtures import mixture_modes

        target_means, target_weights = mixture_modes(means)
        means = target_means
        weights = target_weights if weights is None else weights
    mu = np.asarray(means, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] < 1:
        raise ValueError(f"means must have shape (k, d) with k >= 1, got {mu.shape}")
    return mu, weights


@functools.partial(jax.jit, static_argnames="batch")
def _nearest_mode(X, M, batch):
    """Index of the nearest row of ``M (k, d)`` for each row of ``X (n, d)``."""
    return lax.map(lambda xi: jnp.argmin(jnp.sum((xi - M) ** 2, axis=1)), X, batch_size=batch)


def mode_weights(samples, means, block_size: int = 4096) -> np.ndarray:
    """Fraction of draws nearest (Euclidean) to each mode.

    Args:
      samples: draws ``(n, d)``, ``(chains, draws, d)`` or InferenceData.
      means: mode locations ``(k, d)``, or a mixture `Target` (its ``info``).
      block_size: rows assigned per batch.

    Returns:
      Float64 numpy array ``(k,)`` summing to 1.
    """
    mu, _ = _mode_inputs(means, None)
    X = _checked(samples, "samples")
    if X.shape[1] != mu.shape[1]:
        raise ValueError(f"samples have d={X.shape[1]} but means have d={mu.shape[1]}")
    batch = min(_check_block_size(block_size), X.shape[0])
    nearest = _nearest_mode(X, jnp.asarray(mu, X.dtype), batch)
    counts = np.bincount(np.asarray(nearest), minlength=mu.shape[0])
    return counts / counts.sum()


def mode_weight_error(samples, means, weights=None, block_size: int = 4096) -> float:
    """Largest absolute error of the nearest-mode weights (TARGETS.md).

    Args:
      samples: draws ``(n, d)``, ``(chains, draws, d)`` or InferenceData.
      means: true mode locations ``(k, d)``, or a mixture `Target` (then
        ``weights`` defaults to its true mode weights).
      weights: true weights ``(k,)``, nonnegative with positive sum
        (normalised here).
      block_size: rows assigned per batch.

    Returns:
      ``max_k |fraction of draws nearest mode k - w_k|`` as a Python float.
    """
    mu, weights = _mode_inputs(means, weights)
    if weights is None:
        raise ValueError("weights are required unless means is a mixture Target")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (mu.shape[0],):
        raise ValueError(f"weights must have shape ({mu.shape[0]},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be finite, nonnegative and have a positive sum")
    est = mode_weights(samples, mu, block_size)
    return float(np.max(np.abs(est - w / w.sum())))


__all__ = [
    "EssRate",
    "draws_as_array",
    "energy_distance",
    "ess_per_grad",
    "ess_per_second",
    "is_ess",
    "ksd",
    "ksd_squared",
    "log_z_error",
    "mmd",
    "mmd_squared",
    "mode_weight_error",
    "mode_weights",
]
