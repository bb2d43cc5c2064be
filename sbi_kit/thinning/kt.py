"""Kernel thinning: KT-SPLIT, KT-SWAP and their composition.

References: Dwivedi & Mackey, "Kernel Thinning" (COLT 2021) and "Generalized
Kernel Thinning" (ICLR 2022). The adaptive thresholds follow goodpoints'
``ktc.halve_K`` so results are comparable with that reference code.

Everything here is a pure function of fixed-shape arrays: one ``jit`` per
(n, d, size) covers all rounds, and the whole pipeline can be ``vmap``-ed over
independent problems. Memory is O(n d + tile^2); no n x n matrix is formed.

Indices and sequences: KT-SPLIT runs on a *sequence* ``seq (N,)`` of row
indices into ``X`` (``arange(n)`` for plain input; a weight-rounded sequence
with repeats for weighted input), so weighted and repeated inputs go through
the very same code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sbi_kit.thinning.kernels import Kernel
from sbi_kit.thinning.tiles import DEFAULT_TILE, kernel_matvec, pad_rows

Array = jax.Array

SPLIT_TILE = 256


# --------------------------------------------------------------------------
# KT-SPLIT
# --------------------------------------------------------------------------


def segmented_halve_swaps(
    kernel: Kernel, P: Array, seg_len, uniforms: Array, log_multiplier, tile: int = SPLIT_TILE
) -> Array:
    """Kernel halving of every length-``seg_len`` segment of ``P (N, d)`` at once.

    Each segment (a coreset) is halved independently: its points are taken in
    consecutive pairs ``(x1, x2)``; a self-balancing signed walk sends one
    point of each pair left and the other right, keeping
    ``psi = sum_right k(x, .) - sum_left k(x, .)`` small in the RKHS. Pair i
    sends ``x2`` left with probability ``(1 - alpha_i / a_i) / 2``, with
    ``alpha_i = <psi, k(x1, .) - k(x2, .)>`` and ``a_i`` the adaptive
    threshold with sub-Gaussian parameter sigma^2, reset at each segment start
    (goodpoints' ``halve_K``).

    The walk's inner products are computed blockwise over ``tile``-point
    blocks: a block's inner products with all earlier points of its segment
    are kernel tiles times those points' signs (a triangular sweep, about
    ``N * seg_len / 2`` kernel values), and only the pairs inside the block
    are walked one at a time. ``seg_len`` may be a traced integer, so all
    rounds of KT-SPLIT share one compiled body.

    Args:
      kernel: the split kernel.
      P: points ``(N, d)``; ``N`` a multiple of ``seg_len``, ``seg_len`` even.
      seg_len: segment length (int or traced int32 scalar).
      uniforms: ``(N // 2,)`` uniforms in [0, 1), one per pair.
      log_multiplier: ``2 log(2 seg_len / delta)`` (scalar, may be traced).
      tile: points per block (rounded to an even number <= N).

    Returns:
      ``(N // 2,)`` bool: True where the pair's second point goes left.
    """
    N, d = P.shape
    npairs = N // 2
    dtype = P.dtype
    T = max(2, min(tile, 2 * npairs))
    T -= T % 2
    Pb = pad_rows(P[: 2 * npairs], T)
    nb = Pb.shape[0] // T
    Pb = Pb.reshape(nb, T, d)
    up = pad_rows(uniforms.astype(dtype), T // 2).reshape(nb, T // 2)
    lm = jnp.asarray(log_multiplier, dtype)
    seg_len = jnp.asarray(seg_len, jnp.int32)
    local = jnp.arange(T, dtype=jnp.int32)

    def block(b, carry):
        signs, sig_sqd = carry  # signs (nb, T): +1 right, -1 left, 0 not yet assigned
        xb = Pb[b]
        seg_b = (b * T + local) // seg_len
        # Earlier blocks that can share a segment with this block.
        first = (seg_b[0] * seg_len) // T

        def from_earlier(c, acc):
            same = seg_b[:, None] == ((c * T + local) // seg_len)[None, :]
            return acc + jnp.where(same, kernel.matrix(xb, Pb[c]), 0.0) @ signs[c]

        cross = jax.lax.fori_loop(first, b, from_earlier, jnp.zeros((T,), dtype))
        Kin = jnp.where(seg_b[:, None] == seg_b[None, :], kernel.matrix(xb, xb), 0.0)

        def pair(i, st):
            v, sig_sqd, sb = st
            p, q = 2 * i, 2 * i + 1
            pos = b * T + p
            sig_sqd = jnp.where(pos % seg_len == 0, 0.0, sig_sqd)
            b2 = jnp.maximum(Kin[p, p] + Kin[q, q] - 2.0 * Kin[p, q], 0.0)
            a = jnp.maximum(jnp.sqrt(sig_sqd * b2 * lm), b2)
            a_safe = jnp.where(a > 0, a, 1.0)
            upd = jnp.maximum(1.0 + (b2 / a_safe - 2.0) * sig_sqd / a_safe, 0.0)
            valid = pos < 2 * npairs
            sig_sqd = jnp.where((a > 0) & valid, sig_sqd + b2 * upd, sig_sqd)
            alpha = (cross[p] - cross[q]) + (v[p] - v[q])
            second_left = up[b, i] < 0.5 * (1.0 - alpha / a_safe)
            s_p = jnp.where(valid, jnp.where(second_left, 1.0, -1.0), 0.0).astype(dtype)
            v = v + s_p * (Kin[p] - Kin[q])
            sb = sb.at[p].set(s_p).at[q].set(-s_p)
            return v, sig_sqd, sb

        _, sig_sqd, sb = jax.lax.fori_loop(
            0, T // 2, pair, (jnp.zeros((T,), dtype), sig_sqd, jnp.zeros((T,), dtype))
        )
        return signs.at[b].set(sb), sig_sqd

    signs, _ = jax.lax.fori_loop(0, nb, block, (jnp.zeros((nb, T), dtype), jnp.zeros((), dtype)))
    return (signs.reshape(-1)[0 : 2 * npairs : 2] > 0)[:npairs]


def halve_swaps(kernel: Kernel, P: Array, uniforms: Array, log_multiplier, tile: int = SPLIT_TILE) -> Array:
    """One kernel halving of all of ``P (L, d)`` (a trailing odd point is ignored).

    ``uniforms (L // 2,)``, ``log_multiplier = 2 log(2 L / delta)``. Returns
    ``(L // 2,)`` bool, True where the pair's second point goes left; see
    `segmented_halve_swaps`.
    """
    L = P.shape[0] - P.shape[0] % 2
    return segmented_halve_swaps(kernel, P[:L], L, uniforms, log_multiplier, tile)


def split_children(seqs: Array, second_left: Array) -> Array:
    """Children of each coreset after one halving.

    Args:
      seqs: ``(C, L)`` integer indices, one coreset per row.
      second_left: ``(C, L // 2)`` bool from `halve_swaps`.

    Returns:
      ``(2 C, L // 2)``: rows ``2c`` (left) and ``2c + 1`` (right) are the
      children of row c, each keeping the input order of its pairs.
    """
    C, L = seqs.shape
    pairs = seqs[:, : 2 * (L // 2)].reshape(C, L // 2, 2)
    left = jnp.where(second_left, pairs[..., 1], pairs[..., 0])
    right = jnp.where(second_left, pairs[..., 0], pairs[..., 1])
    return jnp.stack([left, right], axis=1).reshape(2 * C, L // 2)


def kt_split(
    key: Array,
    kernel: Kernel,
    X: Array,
    rounds: int,
    *,
    seq: Array | None = None,
    delta: float = 0.5,
    tile: int = SPLIT_TILE,
) -> Array:
    """KT-SPLIT: ``2^rounds`` candidate coresets of size ``c = floor(N / 2^rounds)``.

    Round j halves each of the ``2^j`` current coresets with failure
    probability ``delta 2^j / rounds`` (as goodpoints' ``split_K``). The
    coresets of a round sit side by side in one flat array and are halved by
    one `segmented_halve_swaps` call; rounds run in a ``fori_loop``, so the
    compiled program does not grow with the number of rounds. When N is not a
    multiple of ``2^rounds``, the first ``N - c 2^rounds`` entries of the
    sequence (the earliest draws) are left out of the split; KT-SWAP still
    sees every point.

    Args:
      key: PRNG key.
      kernel: split kernel (target kernel, power kernel or KT+ sum kernel).
      X: points ``(n, d)``, float32 or float64.
      rounds: number of halving rounds m >= 0 (static).
      seq: ``(N,)`` int32 row indices into X to split, in order
        (default ``arange(n)``).
      delta: failure probability parameter.
      tile: block size of the tiled walk.

    Returns:
      ``(2^rounds, c)`` int32 indices into ``X``.
    """
    if seq is None:
        seq = jnp.arange(X.shape[0], dtype=jnp.int32)
    seq = seq.astype(jnp.int32)
    N = seq.shape[0]
    c = N >> rounds
    if c < 1:
        raise ValueError(f"{rounds} halving rounds need at least {2**rounds} points, got {N}")
    if rounds == 0:
        return seq[None, :]
    Nm = c << rounds
    seq = seq[N - Nm :]
    m = jnp.asarray(rounds, X.dtype)
    pair = jnp.arange(Nm // 2, dtype=jnp.int32)

    def one_round(j, seq):
        L = jnp.asarray(Nm, jnp.int32) >> j
        delta_j = delta * (2.0 ** j.astype(X.dtype)) / m
        lm = 2.0 * jnp.log(2.0 * L.astype(X.dtype) / delta_j)
        u = jax.random.uniform(jax.random.fold_in(key, j), (Nm // 2,), X.dtype)
        second_left = segmented_halve_swaps(kernel, X[seq], L, u, lm, tile)
        first, second = seq[0::2], seq[1::2]
        left = jnp.where(second_left, second, first)
        right = jnp.where(second_left, first, second)
        # Pair i of segment s goes to position r of child 2s (left) / 2s + 1 (right).
        half = L // 2
        s, r = (2 * pair) // L, pair % half
        dest_left = s * L + r
        return seq.at[dest_left].set(left).at[dest_left + half].set(right)

    seq = jax.lax.fori_loop(0, rounds, one_round, seq)
    return seq.reshape(2**rounds, c)


# --------------------------------------------------------------------------
# KT-SWAP
# --------------------------------------------------------------------------


def relative_mmd2(kernel: Kernel, X: Array, coreset: Array, mean_k: Array, tile: int = DEFAULT_TILE) -> Array:
    """``MMD^2(coreset, target) - const``: ``mean K[S, S] - 2 mean(mean_k[S])``.

    ``coreset (s,)`` int indices into ``X (n, d)``; ``mean_k (n,)`` holds
    ``E_target k(x_i, .)`` (zeros for a mean-zero kernel). Scalar, dtype of X.
    Tiled, so memory is O(s d + tile^2) for any s.
    """
    Xs = X[coreset]
    s = coreset.shape[0]
    ones = jnp.full((s,), 1.0 / s, X.dtype)
    return jnp.dot(ones, kernel_matvec(kernel, Xs, Xs, ones, tile)) - 2.0 * jnp.mean(mean_k[coreset])


def shrink_coreset(kernel: Kernel, X: Array, coreset: Array, mean_k: Array, size: int,
                   tile: int = DEFAULT_TILE) -> Array:
    """Greedily drop points from ``coreset (c,)`` until ``size`` remain.

    Each step removes the point whose removal lowers the (equal-weight) MMD to
    the target most. Used when the input size is not ``size * 2^m``, so KT-SPLIT
    candidates are larger than asked (c < 2 size). Kernel columns are computed
    when needed, so memory is O(c d + tile^2). Returns ``(size,)`` int32
    indices, in input order.
    """
    c = coreset.shape[0]
    if c == size:
        return coreset
    Xs = X[coreset]
    diag = kernel.diagonal(Xs)
    ms = mean_k[coreset]

    def drop(t, st):
        active, rows, total, msum = st
        cnt = (c - t).astype(X.dtype)
        # MMD^2 - const after removing j, for every active j.
        new = (total - 2.0 * rows + diag) / (cnt - 1.0) ** 2 - 2.0 * (msum - ms) / (cnt - 1.0)
        j = jnp.argmin(jnp.where(active, new, jnp.inf))
        col = kernel.matrix(Xs, Xs[j][None, :])[:, 0]
        return active.at[j].set(False), rows - col, total - 2.0 * rows[j] + diag[j], msum - ms[j]

    rows = kernel_matvec(kernel, Xs, Xs, jnp.ones((c,), X.dtype), tile)
    init = (jnp.ones((c,), bool), rows, rows.sum(), ms.sum())
    active = jax.lax.fori_loop(0, c - size, drop, init)[0]
    return coreset[jnp.nonzero(active, size=size)[0]]


def refine_coreset(
    kernel: Kernel,
    X: Array,
    coreset: Array,
    mean_k: Array,
    *,
    unique: bool = True,
    ids: Array | None = None,
    tile: int = DEFAULT_TILE,
) -> Array:
    """KT-SWAP's greedy refinement: replace each coreset point in turn by the best input point.

    For each position t, the point there is removed and replaced by the input
    point that makes the equal-weight coreset's MMD to the target smallest
    (one coordinate-descent sweep, as goodpoints' ``refine``). With
    ``unique``, points already in the coreset are never chosen, so the output
    has distinct indices.

    Args:
      kernel, X: target kernel and points ``(n, d)``.
      coreset: ``(s,)`` int indices into X.
      mean_k: ``(n,)`` target means ``E k(x_i, .)`` (zeros if mean-zero kernel).
      unique: never insert a point whose id is already in the coreset.
      ids: ``(n,)`` int ids in ``[0, n_ids)`` defining "the same point"
        (default: the row index); used when X holds repeated rows.

    Returns:
      ``(s,)`` int32 indices.
    """
    n = X.shape[0]
    s = coreset.shape[0]
    two_s = 2.0 / s
    core_sum = kernel_matvec(kernel, X, X[coreset], jnp.ones((s,), X.dtype), tile)
    stat = kernel.diagonal(X) / s - 2.0 * mean_k + two_s * core_sum
    if ids is None:
        ids = jnp.arange(n, dtype=jnp.int32)
    else:
        # Dense relabelling into [0, n) so the count table has a static size.
        ids = jnp.unique(ids, return_inverse=True, size=n, fill_value=-1)[1].reshape(n)
    count = jnp.zeros((n,), jnp.int32).at[ids[coreset]].add(1)

    def row(i):
        return kernel.matrix(X[i][None, :], X)[0]

    def step(t, st):
        coreset, stat, count = st
        old = coreset[t]
        stat = stat - two_s * row(old)
        count = count.at[ids[old]].add(-1)
        cand = jnp.where(count[ids] > 0, jnp.inf, stat) if unique else stat
        new = jnp.argmin(cand).astype(coreset.dtype)
        return coreset.at[t].set(new), stat + two_s * row(new), count.at[ids[new]].add(1)

    coreset, _, _ = jax.lax.fori_loop(0, s, step, (coreset.astype(jnp.int32), stat, count))
    return coreset


def kt_swap(
    kernel: Kernel,
    X: Array,
    candidates: Array,
    size: int,
    *,
    weights: Array | None = None,
    baseline: Array | None = None,
    unique: bool = True,
    ids: Array | None = None,
    tile: int = DEFAULT_TILE,
) -> Array:
    """KT-SWAP: pick the best candidate coreset, shrink it to ``size``, refine it greedily.

    Args:
      kernel: target kernel; if ``kernel.mean_zero`` (a Stein kernel), MMD is
        measured to the zero measure, i.e. to the target itself.
      X: points ``(n, d)``.
      candidates: ``(C, c)`` int indices into X with ``c >= size``.
      size: output size (static).
      weights: ``(n,)`` target weights summing to 1 (default uniform).
      baseline: optional ``(c,)`` extra candidate (standard thinning), compared
        like the others so KT never does worse than it before refinement.
      unique: never repeat an index (or an id, see below) in the output.
      ids: optional ``(n,)`` ids saying which rows are the same point, for
        uniqueness when X holds repeated rows (default: row index).

    Returns:
      ``(size,)`` int32 indices into X, sorted.
    """
    n = X.shape[0]
    if kernel.mean_zero:
        mean_k = jnp.zeros((n,), X.dtype)
    else:
        w = jnp.full((n,), 1.0 / n, X.dtype) if weights is None else weights.astype(X.dtype)
        mean_k = kernel_matvec(kernel, X, X, w, tile)
    if baseline is not None:
        candidates = jnp.concatenate([candidates, baseline[None, :].astype(candidates.dtype)], 0)
    scores = jax.lax.map(lambda c: relative_mmd2(kernel, X, c, mean_k, tile), candidates)
    best = candidates[jnp.argmin(scores)]
    # Candidates can hold repeated indices (weighted input); with `unique` the
    # refinement sweep replaces every repeat, since it only ever inserts
    # points not already present.
    best = shrink_coreset(kernel, X, best, mean_k, size, tile)
    return jnp.sort(refine_coreset(kernel, X, best, mean_k, unique=unique, ids=ids, tile=tile))


# --------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------


def standard_thinning_positions(N: int, c: int) -> Array:
    """``(c,)`` positions ``N-1, N-1-t, ...`` (reversed to increasing), ``t = N // c``: every t-th from the end."""
    t = max(N // c, 1)
    return (N - 1 - t * jnp.arange(c, dtype=jnp.int32))[::-1]


def num_rounds(N: int, size: int) -> int:
    """Largest m with ``size * 2^m <= N`` (so KT-SPLIT candidates have >= size points)."""
    return max(int(math.floor(math.log2(N / size) + 1e-12)), 0)


def weighted_sequence(key: Array, weights: Array, N: int) -> Array:
    """Systematic (stratified) rounding of ``weights (n,)`` to ``N`` draws.

    Returns ``(N,)`` int32 non-decreasing row indices, index i appearing
    ``floor`` or ``ceil`` of ``N w_i`` times. When every ``N w_i`` is an
    integer the result is ``repeat(arange(n), N w)`` exactly, so weighted
    input behaves as the equivalent repeated input.
    """
    w = weights / jnp.sum(weights)
    cum = jnp.cumsum(w) * N
    u = jax.random.uniform(key, (), cum.dtype)
    pos = jnp.arange(N, dtype=cum.dtype) + u
    idx = jnp.searchsorted(cum, pos, side="right")
    return jnp.minimum(idx, weights.shape[0] - 1).astype(jnp.int32)


def kernel_thinning(
    key: Array,
    X: Array,
    size: int,
    split_kernel: Kernel,
    swap_kernel: Kernel,
    *,
    weights: Array | None = None,
    inflate_size: int | None = None,
    delta: float = 0.5,
    unique: bool = True,
    tile: int = DEFAULT_TILE,
) -> Array:
    """Generalized kernel thinning (KT-SPLIT then KT-SWAP) of ``X (n, d)`` to ``size`` points.

    Target KT uses ``split_kernel = swap_kernel = k``; root/power KT splits
    with a power kernel; KT+ with the normalised sum of both (`kernels.SumKernel`).
    The caller passes kernels already `prepare`-d for ``X`` (features).

    Args:
      key: PRNG key.
      X: ``(n, d)`` float32/float64 points (or kernel features).
      size: output size, ``1 <= size <= N`` (static).
      split_kernel, swap_kernel: kernels on the rows of X.
      weights: optional ``(n,)`` non-negative input weights; the split then
        runs on a systematic rounding of them to ``inflate_size`` draws and the
        swap targets the weighted measure exactly.
      inflate_size: length N of that rounded sequence (default n).
      delta: KT-SPLIT failure probability.
      unique: distinct output indices.

    Returns:
      ``(size,)`` int32 indices into X, sorted.
    """
    n = X.shape[0]
    k_seq, k_split = jax.random.split(key)
    if weights is None and inflate_size in (None, n):
        seq = jnp.arange(n, dtype=jnp.int32)
    else:
        w = jnp.ones((n,), X.dtype) if weights is None else weights.astype(X.dtype)
        seq = weighted_sequence(k_seq, w, inflate_size or n)
    N = seq.shape[0]
    m = num_rounds(N, size)
    candidates = kt_split(k_split, split_kernel, X, m, seq=seq, delta=delta, tile=min(tile, SPLIT_TILE))
    c = candidates.shape[1]
    baseline = seq[standard_thinning_positions(N, c)]
    w = None if weights is None else weights / jnp.sum(weights)
    return kt_swap(swap_kernel, X, candidates, size, weights=w, baseline=baseline, unique=unique, tile=tile)
