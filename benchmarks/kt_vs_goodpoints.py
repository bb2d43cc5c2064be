"""sbi_kit kernel thinning vs goodpoints (Cython and JAX back-ends), side by side.

Same inputs (i.i.d. N(0, I_d) and a 2-mode mixture 0.5 N(-2 e1, I) + 0.5 N(2 e1, I)),
same kernel (Gaussian, bandwidth^2 = 2d: exp(-|x - y|^2 / (4 d)), which is
goodpoints' Cython ``b"gaussian"`` kernel with ``k_params = [4 d]``), output
size sqrt(n). For each run it reports wall time after warm-up, compile time
(first call minus warm call, JAX back-ends), peak resident memory above the
pre-call level, and MMD of the coreset to the input (all MMDs by the same
tiled float32 evaluator).

Implementations:
  ours_kt / ours_cpp       sbi_kit.thin(method="kt" / "compress++", g=4)
  gp_cython_kt             goodpoints.kt.thin_K on a precomputed n x n matrix
                           (matrix time included), target KT, unique=True
  gp_cython_cpp            goodpoints.compress.compresspp_kt(g=4)
  gp_jax_kt                goodpoints.jax.kt.kernel_split + kernel_swap(mean_zero=False)
  gp_jax_cpp               goodpoints.jax.compress.compresspp(g=4) + kernel_swap on the
                           Compress output (the near-linear analogue of the Cython path)

Extra runs: ``--only big`` (ours KT at n = 2^18, peak RSS of a fresh process)
and ``--only batch`` (16 problems of n = 2^12 in one call vs 16 calls).

Prints one JSON object per line. Reproduce (2-core CPU):
  python benchmarks/kt_vs_goodpoints.py                 # main grid
  python benchmarks/kt_vs_goodpoints.py --only batch
  python benchmarks/kt_vs_goodpoints.py --only big
  python benchmarks/kt_vs_goodpoints.py --only quality --dims 2 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sbi_kit.thinning import GaussianKernel, coreset_mmd, thin  # noqa: E402


# --------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) on Linux >= 4.0.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn):
    """Run ``fn()``; return (result, seconds, peak RSS MB above the pre-call RSS, absolute peak RSS MB)."""
    ok = _reset_peak()
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = _status_kb("VmHWM") if ok else -1
    return out, dt, (peak - before) / 1024.0 if ok else None, peak / 1024.0 if ok else None


def make_input(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal((n, d))
    comp = rng.integers(0, 2, n)
    X = rng.standard_normal((n, d))
    X[:, 0] += np.where(comp == 1, 2.0, -2.0)
    return X


def mmd(X32: jax.Array, idx, d: int) -> float:
    k = GaussianKernel(math.sqrt(2.0 * d))
    return float(coreset_mmd(k, X32, jnp.asarray(np.asarray(idx), jnp.int32)))


# --------------------------------------------------------------------------
# implementations: each returns a function (seed) -> indices
# --------------------------------------------------------------------------


def ours(method, X, size, d):
    k = GaussianKernel(math.sqrt(2.0 * d))
    X32 = np.asarray(X, np.float32)

    def run(seed):
        idx, _ = thin(X32, size, k, method, key=jax.random.key(seed), g=4)
        return np.asarray(jax.block_until_ready(idx))

    return run


def gp_cython_kt(X, size, d):
    from goodpoints import kt

    m = int(round(math.log2(X.shape[0] / size)))

    def run(seed):
        sq = np.sum(X * X, 1)
        K = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0) / (4.0 * d))
        return kt.thin_K(K, K, m, seed=seed, unique=True)

    return run


def gp_cython_cpp(X, size, d):
    from goodpoints import compress

    def run(seed):
        return compress.compresspp_kt(X, b"gaussian", k_params=np.array([4.0 * d]), g=4, seed=seed)

    return run


class _GPGauss:
    """goodpoints-JAX style kernel: broadcastable over SliceablePoints."""

    def __init__(self, d):
        self.scale = 1.0 / (4.0 * d)

    def __hash__(self):
        return hash(self.scale)

    def __eq__(self, other):
        return isinstance(other, _GPGauss) and other.scale == self.scale

    def __call__(self, px, py):
        x, y = px.get("p"), py.get("p")
        return jnp.exp(-jnp.sum((x - y) ** 2, -1) * self.scale)


def gp_jax_kt(X, size, d):
    from goodpoints.jax.kt import kernel_split, kernel_swap
    from goodpoints.jax.sliceable_points import SliceablePoints

    k = _GPGauss(d)
    pts = SliceablePoints({"p": jnp.asarray(X, jnp.float32)})
    m = int(round(math.log2(X.shape[0] / size)))

    def run(seed):
        rng = np.random.default_rng(seed)
        cs = kernel_split(k, pts, m, 0.5, rng)
        return np.asarray(kernel_swap(k, pts, cs, rng, mean_zero=False, baseline=True))

    return run


def gp_jax_cpp(X, size, d):
    from goodpoints.jax.compress import compresspp
    from goodpoints.jax.kt import kernel_swap
    from goodpoints.jax.sliceable_points import SliceablePoints

    k = _GPGauss(d)
    pts = SliceablePoints({"p": jnp.asarray(X, jnp.float32)})

    def run(seed):
        rng = np.random.default_rng(seed)
        cs = compresspp(k, pts, 4, 0.5, rng)
        inter = np.concatenate(cs)
        local = [np.searchsorted(np.sort(inter), c) for c in cs]
        inter = np.sort(inter)
        sub = pts.subset(inter)
        best = kernel_swap(k, sub, local, rng, mean_zero=False, baseline=True)
        return inter[np.asarray(best)]

    return run


IMPLS = {
    "ours_kt": lambda X, s, d: ours("kt", X, s, d),
    "ours_cpp": lambda X, s, d: ours("compress++", X, s, d),
    "gp_cython_kt": gp_cython_kt,
    "gp_cython_cpp": gp_cython_cpp,
    "gp_jax_kt": gp_jax_kt,
    "gp_jax_cpp": gp_jax_cpp,
}
JAX_IMPLS = {"ours_kt", "ours_cpp", "gp_jax_kt", "gp_jax_cpp"}
# KT with goodpoints needs an n x n float64 matrix (Cython) or is O(n^2) in
# Python-driven JAX loops; beyond 2^14 it does not fit the machine / time box.
MAX_LOG2N = {"gp_cython_kt": 14, "gp_jax_kt": 14}


def header(args):
    return {
        "kind": "header",
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "jax": jax.__version__,
        "argv": " ".join(["python", "benchmarks/kt_vs_goodpoints.py"] + sys.argv[1:]),
    }


def emit(rec):
    print(json.dumps(rec), flush=True)


def run_grid(args):
    for log2n in args.sizes:
        n = 2**log2n
        size = int(round(math.sqrt(n)))
        for d in args.dims:
            for kind in args.inputs:
                X = make_input(kind, n, d, seed=log2n * 100 + d)
                X32 = jnp.asarray(X, jnp.float32)
                for name in args.impls:
                    if log2n > MAX_LOG2N.get(name, 99):
                        continue
                    run = IMPLS[name](X, size, d)
                    rec = {"kind": "run", "impl": name, "n": n, "log2n": log2n, "d": d, "input": kind, "size": size}
                    try:
                        idx, t_first, _, _ = measure(lambda: run(0))
                        times, peaks = [], []
                        reps = 3 if n <= 2**12 else 1
                        for r in range(reps):
                            idx, t, dpeak, _ = measure(lambda: run(r + 1))
                            times.append(t)
                            peaks.append(dpeak)
                        rec["time_s"] = min(times)
                        rec["compile_s"] = max(t_first - min(times), 0.0) if name in JAX_IMPLS else None
                        rec["first_call_s"] = t_first
                        rec["peak_mem_mb_above_start"] = max(p for p in peaks if p is not None) if peaks[0] is not None else None
                        rec["mmd"] = mmd(X32, idx, d)
                        rec["unique"] = int(len(np.unique(idx)))
                    except Exception as e:  # report, don't hide
                        rec["error"] = f"{type(e).__name__}: {e}"
                    rec["loadavg"] = os.getloadavg()[0]
                    emit(rec)


def run_batch(args):
    B, n, d = 16, 2**12, 2
    size = 64
    k = GaussianKernel(math.sqrt(2.0 * d))
    Xs = np.stack([make_input("gauss", n, d, seed=500 + b) for b in range(B)]).astype(np.float32)
    one = lambda b, s: np.asarray(jax.block_until_ready(thin(Xs[b], size, k, "kt", key=jax.random.key(s))[0]))
    batched = lambda s: np.asarray(jax.block_until_ready(thin(Xs, size, k, "kt", key=jax.random.key(s))[0]))
    one(0, 0)
    batched(0)
    t_sep = min(measure(lambda: [one(b, 1 + r) for b in range(B)])[1] for r in range(3))
    out, t_bat, _, _ = measure(lambda: batched(1))
    t_bat = min(t_bat, min(measure(lambda: batched(2 + r))[1] for r in range(2)))
    mm = [mmd(jnp.asarray(Xs[b]), out[b], d) for b in range(B)]
    emit({"kind": "batch", "problems": B, "n": n, "d": d, "size": size, "separate_calls_s": t_sep,
          "one_batched_call_s": t_bat, "speedup": t_sep / t_bat, "mean_mmd_batched": float(np.mean(mm)),
          "loadavg": os.getloadavg()[0]})


def run_big(args):
    n, d = 2**18, 2
    size = 512
    X = make_input("gauss", n, d, seed=18)
    k = GaussianKernel(math.sqrt(2.0 * d))
    start = _status_kb("VmRSS") / 1024.0
    idx, t, dpeak, peak = measure(lambda: np.asarray(jax.block_until_ready(
        thin(np.asarray(X, np.float32), size, k, "kt", key=jax.random.key(0))[0])))
    rec = {"kind": "big", "impl": "ours_kt", "n": n, "d": d, "size": size, "time_incl_compile_s": t,
           "peak_rss_mb": peak, "rss_before_mb": start, "peak_mem_mb_above_start": dpeak,
           "unique": int(len(np.unique(idx))), "loadavg": os.getloadavg()[0]}
    if args.big_mmd:
        rec["mmd"] = mmd(jnp.asarray(X, jnp.float32), idx, d)
    emit(rec)


def run_quality(args):
    """MMD over several seeds (fresh input per seed) at the two goal sizes.

    A single KT run's MMD varies by +-20% across seeds, so the "within 10% of
    goodpoints" goals are judged on the mean over seeds.
    """
    cases = [("kt", 14, "ours_kt", "gp_cython_kt"), ("compress++", 16, "ours_cpp", "gp_cython_cpp")]
    for label, log2n, mine, theirs in cases:
        if label not in args.cases:
            continue
        n = 2**log2n
        size = int(round(math.sqrt(n)))
        for d in args.dims:
            for kind in args.inputs:
                res = {mine: [], theirs: []}
                for seed in range(args.seeds):
                    X = make_input(kind, n, d, seed=10_000 + seed)
                    X32 = jnp.asarray(X, jnp.float32)
                    for name in (mine, theirs):
                        res[name].append(mmd(X32, IMPLS[name](X, size, d)(seed), d))
                emit({"kind": "quality", "method": label, "n": n, "d": d, "input": kind, "seeds": args.seeds,
                      "mmd_" + mine: res[mine], "mmd_" + theirs: res[theirs],
                      "mean_ratio_ours_over_goodpoints": float(np.mean(res[mine]) / np.mean(res[theirs])),
                      "loadavg": os.getloadavg()[0]})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,12,14,16", help="comma-separated log2 n")
    p.add_argument("--dims", default="2,10")
    p.add_argument("--inputs", default="gauss,mix")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--only", choices=["grid", "batch", "big", "quality"], default="grid")
    p.add_argument("--seeds", type=int, default=5, help="seeds per case for --only quality")
    p.add_argument("--cases", default="kt,compress++", help="methods for --only quality")
    p.add_argument("--big-mmd", action="store_true", help="also compute the n=2^18 MMD (O(n^2), slow)")
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.dims = [int(s) for s in args.dims.split(",")]
    args.inputs = args.inputs.split(",")
    args.impls = args.impls.split(",")
    args.cases = args.cases.split(",")
    emit(header(args))
    {"grid": run_grid, "batch": run_batch, "big": run_big, "quality": run_quality}[args.only](args)


if __name__ == "__main__":
    main()
