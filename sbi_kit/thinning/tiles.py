"""Tiled kernel reductions: kernel-matrix products without the kernel matrix.

Every O(n^2) quantity kernel thinning needs is a kernel matrix times a vector
(row means, coreset sums, MMD). These helpers compute ``K(X, Y) @ v`` tile by
tile so that memory stays O((n + m) d + tile^2) whatever n and m.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sbi_kit.thinning.kernels import Kernel

Array = jax.Array

DEFAULT_TILE = 512


def pad_rows(X: Array, multiple: int) -> Array:
    """``X (n, ...)`` padded with zero rows to a multiple of ``multiple`` rows."""
    n = X.shape[0]
    extra = (-n) % multiple
    if extra == 0:
        return X
    return jnp.concatenate([X, jnp.zeros((extra,) + X.shape[1:], X.dtype)], axis=0)


def kernel_matvec(kernel: Kernel, X: Array, Y: Array, v: Array, tile: int = DEFAULT_TILE) -> Array:
    """``K(X, Y) @ v`` with ``X (n, d)``, ``Y (m, d)``, ``v (m,)`` -> ``(n,)``, dtype of X.

    Memory O(tile^2): rows of X go through ``lax.map`` one tile at a time and,
    for each, the columns are accumulated with a ``scan`` over tiles of Y.
    Padding rows of Y carry weight 0, so they never contribute.
    """
    n, m = X.shape[0], Y.shape[0]
    if n <= tile and m <= tile:
        # One tile: no loops, which also keeps compile times down.
        return kernel.matrix(X, Y) @ v.astype(X.dtype)
    tr, tc = min(tile, n), min(tile, m)
    Xb = pad_rows(X, tr).reshape(-1, tr, X.shape[-1])
    Yb = pad_rows(Y, tc).reshape(-1, tc, Y.shape[-1])
    vb = pad_rows(v.astype(X.dtype), tc).reshape(-1, tc)

    def one_row_tile(xb):
        def body(acc, yv):
            yb, w = yv
            return acc + kernel.matrix(xb, yb) @ w, None

        return jax.lax.scan(body, jnp.zeros((tr,), X.dtype), (Yb, vb))[0]

    return jax.lax.map(one_row_tile, Xb).reshape(-1)[:n]


def quadratic_form(kernel: Kernel, X: Array, w: Array, tile: int = DEFAULT_TILE) -> Array:
    """``w^T K(X, X) w`` for ``X (n, d)``, ``w (n,)``: a scalar, O(tile^2) memory."""
    return jnp.dot(w.astype(X.dtype), kernel_matvec(kernel, X, X, w, tile))
