"""Compress and Compress++ (Shetty, Dwivedi & Mackey, ICLR 2022) with KT halving.

Compress(g) builds a 4-ary tree over the input: leaves hold ``4^g``-ish
consecutive points, and every internal node concatenates its four children's
outputs and halves them with kernel thinning, so a node with N inputs below it
returns ``2^g sqrt(N)`` points. Compress++ stops one halving short of the root
and kernel-thins the resulting ``2^(g+1) sqrt(n)`` points to the output size,
for O(4^g n log n) kernel evaluations instead of KT's O(n^2).

Here the tree is processed level by level: all nodes of a level have the same
size, so their halvings are one ``vmap``-ed KT call. Any n works: the input
(or its weight-rounded sequence) is cut to ``4^h * leaf`` points by dropping a
uniformly random handful (fewer than ``4^h``, i.e. under 1/leaf of the input).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sbi_kit.thinning.kernels import Kernel
from sbi_kit.thinning.kt import (
    SPLIT_TILE,
    halve_swaps,
    kt_split,
    kt_swap,
    num_rounds,
    split_children,
    standard_thinning_positions,
    weighted_sequence,
)
from sbi_kit.thinning.tiles import DEFAULT_TILE

Array = jax.Array

NODE_TILE = 128


def kt_halve(
    key: Array,
    kernel: Kernel,
    X: Array,
    seq: Array,
    delta: float,
    *,
    swap: bool = True,
    repeats: bool = False,
    tile: int = SPLIT_TILE,
) -> Array:
    """Halve the points ``X[seq]`` with kernel thinning: ``(L,) -> (L // 2,)`` indices into X.

    With ``swap`` (as goodpoints' Compress), one KT-SPLIT round is followed by
    KT-SWAP against the node's own points (unique output). Without it, the
    halving is *symmetrised*: one of the two KT-SPLIT children, chosen by a
    fair coin, which keeps the halving unbiased. ``repeats`` says ``seq`` may
    hold an index twice (weighted input), so uniqueness is enforced on input
    rows rather than positions.
    """
    L = seq.shape[0]
    k_split, k_coin = jax.random.split(key)
    lm = 2.0 * math.log(2.0 * L / delta)
    u = jax.random.uniform(k_split, (L // 2,), X.dtype)
    second_left = halve_swaps(kernel, X[seq], u, lm, tile)[None, :]
    if not swap:
        children = split_children(seq[None, :], second_left)
        return children[jax.random.bernoulli(k_coin).astype(jnp.int32)]
    # KT-SWAP on the node's points: work on local positions so the target
    # measure is the node's empirical measure, not the whole input; `ids`
    # keeps the output free of repeated input rows.
    local = split_children(jnp.arange(L, dtype=jnp.int32)[None, :], second_left)
    best = kt_swap(
        kernel,
        X[seq],
        local,
        L // 2,
        baseline=standard_thinning_positions(L, L // 2),
        unique=True,
        # Only when needed: with a constant `seq` (unweighted input) XLA would
        # otherwise constant-fold the relabelling sort at compile time.
        ids=seq if repeats else None,
        # Every node of a level is vmapped, so each node's tiles are
        # multiplied by the node count: small tiles keep a level's memory at
        # O(n) rather than O(nodes * tile^2).
        tile=min(NODE_TILE, L),
    )
    return seq[best]


def compress_levels(g: int, N: int, size: int) -> tuple[int, int]:
    """Tree shape for Compress++: ``(h, leaf)`` with ``4^h`` leaves of ``leaf`` points.

    ``h`` is chosen so the intermediate coreset, ``2^(h+1) leaf ~ 2n / 2^h``
    points, is about ``2^(g+1) size``; ``h = 0`` means plain KT.
    """
    h = int(round(math.log2(N / (2**g * size)))) if N > 2**g * size else 0
    while h > 0 and N // 4**h < 2:
        h -= 1
    return max(h, 0), N // 4**h if h > 0 else N


def compress(
    key: Array,
    kernel: Kernel,
    X: Array,
    seq: Array,
    levels: int,
    *,
    delta: float = 0.5,
    swap: bool = True,
    repeats: bool = False,
) -> Array:
    """Compress without the root halving: ``seq (4^levels * leaf,) -> (2^(levels+1) leaf,)``.

    Leaves are consecutive blocks of ``leaf`` entries of ``seq``; level t
    concatenates groups of four and halves them (all groups of a level in
    one ``vmap``); the top level only concatenates (Compress++ thins that).
    For ``leaf = 4^g`` and ``N = 4^(g+levels)`` this is Compress(g) on each of
    the four root children, i.e. ``2^(g+1) sqrt(N)`` points.

    Args:
      key: PRNG key.
      kernel: halving kernel on the rows of X.
      X: points ``(n, d)``.
      seq: ``(N,)`` int32 indices into X, N divisible by ``4^levels``.
      levels: tree depth h >= 1 (static).
      delta: failure probability shared by all halvings.
      swap: KT-SWAP inside each halving.
      repeats: ``seq`` may contain an index more than once (weighted input).

    Returns:
      int32 indices into X.
    """
    N = seq.shape[0]
    leaf = N // 4**levels
    groups = seq.reshape(4**levels, leaf)
    keys = jax.random.split(key, levels)
    for t in range(1, levels + 1):
        groups = groups.reshape(groups.shape[0] // 4, 4 * groups.shape[1])
        if t == levels:
            break
        L = groups.shape[1]
        # As goodpoints' compressc: a halving of L points gets delta
        # proportional to L^2, normalised by the base-halving size, the number
        # of levels under a root child and n.
        delta_t = delta * L * L / (4 * leaf * max(levels - 1, 1) * N)
        ks = jax.random.split(keys[t - 1], groups.shape[0])
        groups = jax.vmap(lambda k, s: kt_halve(k, kernel, X, s, delta_t, swap=swap, repeats=repeats))(ks, groups)
    return groups.reshape(-1)


def compress_pp(
    key: Array,
    X: Array,
    size: int,
    kernel: Kernel,
    *,
    g: int = 4,
    weights: Array | None = None,
    inflate_size: int | None = None,
    delta: float = 0.5,
    swap: bool = True,
    unique: bool = True,
    tile: int = DEFAULT_TILE,
) -> Array:
    """Compress++ with kernel-thinning halving and thinning: ``X (n, d)`` -> ``size`` indices.

    Args:
      key: PRNG key.
      X: ``(n, d)`` float32/float64 points (or kernel features).
      size: output size (static), ``1 <= size <= n``.
      kernel: target kernel (already `prepare`-d for X).
      g: oversampling parameter; larger g is closer to KT and slower
        (the intermediate coreset has about ``2^(g+1) size`` points).
      weights, inflate_size: as in `kt.kernel_thinning`.
      delta: failure probability, split between Compress and the final KT as
        in goodpoints' ``compresspp_kt``.
      swap: KT-SWAP inside each Compress halving (goodpoints' default).
      unique: distinct output indices.

    Returns:
      ``(size,)`` int32 indices into X, sorted.
    """
    n = X.shape[0]
    k_seq, k_drop, k_comp, k_thin = jax.random.split(key, 4)
    weighted = not (weights is None and inflate_size in (None, n))
    if not weighted:
        seq = jnp.arange(n, dtype=jnp.int32)
    else:
        w = jnp.ones((n,), X.dtype) if weights is None else weights.astype(X.dtype)
        seq = weighted_sequence(k_seq, w, inflate_size or n)
    N = seq.shape[0]
    h, leaf = compress_levels(g, N, size)
    if h <= 1:
        # One level has no halving below the (skipped) root: this is plain KT.
        h, inter = 0, seq
    else:
        keep = 4**h * leaf
        if keep < N:
            kept = jnp.sort(jax.random.choice(k_drop, N, (keep,), replace=False))
            seq = seq[kept]
        m_final = num_rounds(2 ** (h + 1) * leaf, size)
        log2_sqrtn = max(h + g, m_final + 1)
        thin_frac = m_final / (m_final + 2**m_final * (log2_sqrtn - m_final)) if m_final > 0 else 1.0
        inter = compress(k_comp, kernel, X, seq, h, delta=delta * (1 - thin_frac), swap=swap,
                         repeats=weighted)
        delta = delta * thin_frac
    # Final kernel thinning of the intermediate coreset, targeting its own
    # empirical measure (the full-input target would cost n^2).
    Xi = X[inter]
    Ni = inter.shape[0]
    m = num_rounds(Ni, size)
    k_split, _ = jax.random.split(k_thin)
    candidates = kt_split(k_split, kernel, Xi, m, delta=delta, tile=min(tile, SPLIT_TILE))
    c = candidates.shape[1]
    if weights is not None and h == 0:
        # No compression happened: target the exact weighted input measure.
        w = weights / jnp.sum(weights)
        cand = inter[candidates]
        return kt_swap(kernel, X, cand, size, weights=w, baseline=inter[standard_thinning_positions(Ni, c)],
                       unique=unique, tile=tile)
    # With weighted input the intermediate coreset can hold the same input row
    # twice; uniqueness is then about input rows (`ids`), not positions.
    local = kt_swap(kernel, Xi, candidates, size, baseline=standard_thinning_positions(Ni, c), unique=unique,
                    ids=inter if weighted else None, tile=min(tile, Ni))
    return jnp.sort(inter[local])
