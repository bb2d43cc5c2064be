"""Baselines for kernel thinning: standard thinning and i.i.d. subsampling.

Both return the same ``(indices, weights)`` pair as the kernel methods, so
they drop into any comparison. Their coreset MMD to the input decays like
``size^-1/2`` (i.e. ``n^-1/4`` at ``size = sqrt(n)``), the rate KT improves on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def standard_thin(n: int, size: int) -> tuple[Array, Array]:
    """Every ``t``-th of ``n`` draws, counted back from the last (``t = n // size``).

    Counting from the end keeps the latest (most burnt-in) draws, as
    goodpoints does. Returns ``(size,)`` int32 sorted indices and ``(size,)``
    float32 weights ``1 / size``.
    """
    t = max(n // size, 1)
    idx = (n - 1 - t * jnp.arange(size, dtype=jnp.int32))[::-1]
    return idx, jnp.full((size,), 1.0 / size, jnp.float32)


def iid_subsample(key: Array, n: int, size: int, weights: Array | None = None, *, replace: bool = False) -> tuple[Array, Array]:
    """A random subset of ``size`` of ``n`` draws (probabilities ``weights`` if given).

    Without replacement by default (distinct indices). Returns ``(size,)``
    int32 sorted indices and ``(size,)`` float32 weights ``1 / size``.
    """
    p = None if weights is None else weights / jnp.sum(weights)
    idx = jax.random.choice(key, n, (size,), replace=replace, p=p)
    return jnp.sort(idx).astype(jnp.int32), jnp.full((size,), 1.0 / size, jnp.float32)
