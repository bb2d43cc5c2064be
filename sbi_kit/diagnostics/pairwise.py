"""Tiled pairwise sums for sample-quality metrics, with exact diagonal masking.

``sum_{i, j} f(a_i, b_j)`` over ``block x block`` tiles walked by one
``lax.fori_loop``, so memory is O((n + m) d + block^2) and no ``n x n`` matrix
is ever formed.

Why not `sbi_kit.thinning.tiles.kernel_matvec` / `quadratic_form`: those
compute full weighted sums ``K(X, Y) @ v`` (V-statistics). The metrics need
U-statistics (``i != j``), which here mask the diagonal terms exactly inside
each tile; subtracting the diagonal from a full sum afterwards would add the
round-off of evaluating the kernel at zero distance (``|x|^2 + |y|^2 - 2 x.y``)
and reduce each tile through a matrix-vector product (reduced precision on
some accelerators) instead of an exact ``sum``. The padding helper is shared.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sbi_kit.thinning.kernels import (
    GaussianKernel,
    IMQKernel,
    LaplaceKernel,
    MaternKernel,
    _sq_dist,
    median_bandwidth,
)
from sbi_kit.thinning.tiles import pad_rows

# Kernels that depend on x - y only; for these we centre the pooled sample
# first, which keeps the |x|^2 + |y|^2 - 2 x.y expansion accurate in float32.
_STATIONARY = (GaussianKernel, IMQKernel, LaplaceKernel, MaternKernel)


def _tile_loop(tile_fn, params, rows, cols, row_block: int, col_block: int, exclude_diagonal: bool):
    """``sum_{i, j} tile_fn(params, rows, cols)[i, j]`` without forming the full matrix.

    ``rows``/``cols`` are tuples of arrays sharing a leading axis (points, or
    features). One ``fori_loop`` walks the ``row_block x col_block``
    tiles; inputs are zero-padded to whole tiles and the padding is masked.
    With ``exclude_diagonal`` (rows and cols the same sample, equal blocks)
    the ``i == j`` terms are masked exactly, which U-statistics need and which
    avoids round-off from evaluating a tile at zero distance.
    """
    n, m = rows[0].shape[0], cols[0].shape[0]
    n_row_blocks, n_col_blocks = -(-n // row_block), -(-m // col_block)

    rows = tuple(pad_rows(a, row_block) for a in rows)
    cols = tuple(pad_rows(a, col_block) for a in cols)

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
