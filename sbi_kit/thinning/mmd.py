"""MMD of a weighted coreset to its (weighted) input, computed in tiles.

Kept next to the thinning code because the thinning tests and benchmarks
need the exact quantity KT minimises (MMD to the *input* empirical measure,
or to the target itself for a mean-zero Stein kernel), in O(n) memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sbi_kit.thinning.kernels import Kernel
from sbi_kit.thinning.tiles import DEFAULT_TILE, kernel_matvec

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("tile",))
def coreset_mmd(
    kernel: Kernel,
    X: Array,
    indices: Array,
    coreset_weights: Array | None = None,
    weights: Array | None = None,
    *,
    tile: int = DEFAULT_TILE,
) -> Array:
    """``MMD_k(sum_j cw_j delta_{x[idx_j]}, sum_i w_i delta_{x_i})``.

    Args:
      kernel: a kernel; a Stein kernel (``mean_zero``) gives the kernel Stein
        discrepancy of the coreset instead (its MMD to the target).
      X: ``(n, d)`` input points.
      indices: ``(s,)`` int indices into X (repeats allowed).
      coreset_weights: ``(s,)`` weights summing to 1 (default ``1/s``).
      weights: ``(n,)`` input weights (default ``1/n``).

    Returns:
      A non-negative scalar, dtype of X. Costs O(n^2 d) time, O(n d) memory.
    """
    n = X.shape[0]
    s = indices.shape[0]
    cw = jnp.full((s,), 1.0 / s, X.dtype) if coreset_weights is None else coreset_weights.astype(X.dtype)
    F, k = kernel.prepare(X)
    signed = jnp.zeros((n,), X.dtype).at[indices].add(cw)
    if not k.mean_zero:
        w = jnp.full((n,), 1.0 / n, X.dtype) if weights is None else weights.astype(X.dtype) / jnp.sum(weights)
        signed = signed - w
    quad = jnp.dot(signed, kernel_matvec(k, F, F, signed, tile))
    return jnp.sqrt(jnp.maximum(quad, 0.0))


@functools.partial(jax.jit, static_argnames=("tile",))
def mmd_between(kernel: Kernel, X: Array, Y: Array, wx: Array | None = None, wy: Array | None = None,
                *, tile: int = DEFAULT_TILE) -> Array:
    """``MMD_k`` between weighted samples ``X (n, d)`` and ``Y (m, d)`` (default uniform weights); scalar."""
    n, m = X.shape[0], Y.shape[0]
    wx = jnp.full((n,), 1.0 / n, X.dtype) if wx is None else wx.astype(X.dtype) / jnp.sum(wx)
    wy = jnp.full((m,), 1.0 / m, X.dtype) if wy is None else wy.astype(X.dtype) / jnp.sum(wy)
    Z = jnp.concatenate([X, Y.astype(X.dtype)], 0)
    F, k = kernel.prepare(Z)
    signed = jnp.concatenate([wx, -wy])
    return jnp.sqrt(jnp.maximum(jnp.dot(signed, kernel_matvec(k, F, F, signed, tile)), 0.0))
