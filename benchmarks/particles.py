"""Particle methods side by side: mean-field Langevin (sbi_kit) vs SVGD (blackjax, numpyro).

For GMM40 (2-d), the banana (2-d) and the 10-d funnel (TARGETS.md), every
method moves the same N particles (default 2000) for the same number of
steps from the same initial particles ``N(0, s^2 I)`` (s = 30 / 10 / 3). We
report the MMD of the final particles to 2000 exact draws (TARGETS.md:
Gaussian kernel, median-heuristic bandwidth, unbiased, square root; a random
2000 particles when N > 2000), the exact-vs-exact floor, the nearest-mode
weight error on GMM40, and the time per step: a jitted ``lax.scan`` of 10 steps
from the initial particles, timed on its second call (compilation excluded).

Methods:
  mfl_underdamped   sbi_kit `mfl` with `kl_functional` (N-particle underdamped MFL,
                    exponential integrator; KL needs no interaction, so this is
                    underdamped Langevin on N independent particles), h, gamma below
  mfl_overdamped    the same, overdamped (Euler-Maruyama)
  mfl_ksd           sbi_kit `mfl` with `ksd_functional` (interacting, O(N^2) per step, tiled)
  svgd_blackjax     blackjax.svgd, RBF kernel with blackjax's median heuristic, optax.adagrad
  svgd_matrix       the same SVGD update written in matrix form (N x N kernel matrix,
                    one score evaluation per particle), same optimiser: reference
  steinvi_numpyro   numpyro.contrib.einstein.SVGD (SteinVI, AutoDelta guide, RBFKernel), Adagrad

Scaling (``--scaling``): per-step time and memory on GMM40 for N up to 10^4
of MFL with the KL functional (no interaction), of interacting MFL (KSD
descent, tiles of 512 partners) and of dense matrix-form SVGD, each N in a
fresh subprocess; memory as XLA's compiled temp buffer size of the 2-step
program and the process' peak RSS (resource.getrusage).

Reproduce:  python benchmarks/particles.py [--quick] [--seed 0 | --seeds 0,2,3,4,5] [--particles 2000]
            [--steps 500] [--targets gmm40,banana,funnel] [--methods ...] [--scaling]
            [--mfl-params h,gamma] [--svgd-lr LR] [--ksd-params h,gamma]
The 2026-11-25 comparison: --steps 100 --seeds 0,2,3,4,5 --targets banana,gmm40,funnel
--methods mfl_underdamped,mfl_overdamped,svgd_blackjax (settings: TARGETS below; their
tuning: benchmarks/particles_tuning.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sbi_kit.diagnostics.metrics import mmd, mode_weight_error
from sbi_kit.samplers.mfl import build_mfl, kl_functional, ksd_functional, mfl
from sbi_kit.targets import banana, funnel, gmm40

N_EVAL = 2000

# target name -> (constructor, init scale s, mfl step size h, friction gamma, svgd learning rate).
# Tuned at the protocol's own size (2000 particles, 100 steps) on seed 1, which is then left
# out of the evaluation seeds, with the same kind of grid for both sides (2026-11-25,
# `results/particles_tuning_2026-11-25.jsonl`): MFL (h, gamma) the best MMD over
# h in {0.02, 0.05, 0.1, 0.2} x gamma in {0.1, 0.2, 0.3, 0.5, 1} (underdamped); the SVGD
# adagrad learning rate the best MMD over {0.5, 1, 2, 4, 8} for svgd_matrix (it makes the
# same updates as blackjax.svgd), used for all SVGD peers. `--mfl-params` / `--svgd-lr`
# override them (the 2026-11-24 rows used 0.1/0.5/0.5, 0.05/1/2 and 0.02/1/2, tuned at
# 500 steps).
TARGETS = {
    "gmm40": (gmm40, 30.0, 0.1, 0.2, 2.0),
    "banana": (lambda: banana(2), 10.0, 0.05, 0.2, 4.0),
    "funnel": (lambda: funnel(10), 3.0, 0.02, 1.0, 2.0),
}


TIMING_STEPS = 10


def _timed_scan(step, state, num_steps):
    """(final state after ``num_steps``, seconds per step).

    The run itself is one jitted scan; the time per step comes from a
    separate jitted scan of ``TIMING_STEPS`` steps from the same start,
    timed on its second call (compilation excluded).
    """

    def scan(s, keys):
        return jax.lax.scan(lambda s, k: (step(k, s), None), s, keys)[0]

    run = jax.jit(scan)
    out = jax.block_until_ready(run(state, jax.random.split(jax.random.PRNGKey(123), num_steps)))
    keys = jax.random.split(jax.random.PRNGKey(124), TIMING_STEPS)
    timer = jax.jit(scan)
    jax.block_until_ready(timer(state, keys))
    t0 = time.perf_counter()
    jax.block_until_ready(timer(state, keys))
    return out, (time.perf_counter() - t0) / TIMING_STEPS


def run_mfl(target, x0, num_steps, h, gamma, dynamics, functional="kl"):
    fn = kl_functional(target) if functional == "kl" else ksd_functional(target)
    # KL: temperature 1 makes the target itself stationary. KSD: F = KSD^2 is
    # already minimised by the target, so the entropy weight must be small
    # (temperature 1 would spread the particles far past it).
    temperature = 1.0 if functional == "kl" else 1e-3
    t0 = time.perf_counter()
    tr = mfl(fn, jax.random.PRNGKey(7), initial_particles=x0, num_steps=num_steps, step_size=h,
             dynamics=dynamics, friction=gamma, temperature=temperature, record_every=max(1, num_steps // 10),
             max_move=None)
    wall = time.perf_counter() - t0
    # Per-step time: the same step function, jitted scan, compile excluded.
    init, step, _ = build_mfl(fn, step_size=float(tr.info["step_size"][0]), dynamics=dynamics, friction=gamma,
                              temperature=temperature)
    state = jax.jit(init)(jax.random.PRNGKey(0), jnp.asarray(tr.positions[0]))
    _, per_step = _timed_scan(lambda k, s: step(k, s)[0], state, 1)
    return tr.positions[0], per_step, wall, {"halvings": int(tr.info["num_halvings"][0])}


def _svgd_optimizer(lr):
    return optax.adagrad(lr)


def run_svgd_blackjax(target, x0, num_steps, lr):
    import blackjax

    svgd = blackjax.svgd(jax.grad(target.log_density), _svgd_optimizer(lr))
    state = svgd.init(x0)
    t0 = time.perf_counter()
    out, per_step = _timed_scan(lambda k, s: svgd.step(s), state, num_steps)
    return np.asarray(out.particles), per_step, time.perf_counter() - t0, {}


def _matrix_svgd_step(score, opt):
    """SVGD in matrix form with blackjax's kernel exp(-|x-y|^2 / l), l = median^2 / log N."""

    def step(state):
        x, opt_state, ell = state
        S = jax.vmap(score)(x)
        sq = jnp.maximum(jnp.sum(x * x, 1)[:, None] + jnp.sum(x * x, 1)[None, :] - 2 * x @ x.T, 0.0)
        K = jnp.exp(-sq / ell)
        n = x.shape[0]
        # phi_i = mean_j [k(x_j, x_i) s(x_j) + grad_{x_j} k(x_j, x_i)]
        repulse = (2.0 / ell) * (x * jnp.sum(K, 1)[:, None] - K @ x)
        phi = (K @ S + repulse) / n
        updates, opt_state = opt.update(-phi, opt_state, x)
        x = optax.apply_updates(x, updates)
        d = jnp.sqrt(jnp.maximum(jnp.sum(x * x, 1)[:, None] + jnp.sum(x * x, 1)[None, :] - 2 * x @ x.T, 0.0))
        med = jnp.median(d[jnp.tril_indices(n, -1)])
        return x, opt_state, med**2 / jnp.log(n)

    return step


def run_svgd_matrix(target, x0, num_steps, lr):
    opt = _svgd_optimizer(lr)
    step = _matrix_svgd_step(target.score, opt)
    state = (x0, opt.init(x0), jnp.asarray(1.0, x0.dtype))
    t0 = time.perf_counter()
    out, per_step = _timed_scan(lambda k, s: step(s), state, num_steps)
    return np.asarray(out[0]), per_step, time.perf_counter() - t0, {}


def run_steinvi(target, x0, num_steps, lr):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.einstein import SVGD, RBFKernel
    from numpyro.optim import Adagrad

    d = target.dim

    # A proper N(0, 10^2) site (so the guide can be initialised) whose log
    # density is subtracted again: the model's joint density is the target's.
    base = dist.Normal(jnp.zeros(d), 10.0).to_event(1)

    def model():
        x = numpyro.sample("x", base)
        numpyro.factor("lp", target.log_density(x) - base.log_prob(x))

    svgd = SVGD(model, Adagrad(step_size=lr), RBFKernel(), num_stein_particles=x0.shape[0])
    state = svgd.init(jax.random.PRNGKey(0))
    # Start from the shared initial particles: rebuild the optimiser state around them.
    params = svgd.get_params(state)
    (name,) = [k for k in params if k.startswith("x")]
    params = {**params, name: x0}
    state = state._replace(optim_state=svgd.optim.init(params))

    t0 = time.perf_counter()
    out, per_step = _timed_scan(lambda k, s: svgd.update(s)[0], state, num_steps)
    x = np.asarray(svgd.get_params(out)[name])
    return x, per_step, time.perf_counter() - t0, {}


def _metrics(name, target, x, exact, seed):
    x = np.asarray(x, np.float64).reshape(-1, target.dim)
    out = {"finite_fraction": float(np.mean(np.all(np.isfinite(x), axis=1)))}
    x = x[np.all(np.isfinite(x), axis=1)]
    if x.shape[0] > N_EVAL:
        x = x[np.random.default_rng(seed).choice(x.shape[0], N_EVAL, replace=False)]
    out["mmd"] = round(mmd(x, exact), 4) if x.shape[0] >= 2 else None
    if name == "gmm40" and x.shape[0]:
        out["mode_weight_error"] = round(mode_weight_error(x, target), 4)
    return out


def _run_method(method, target, x0, args, h, gamma, lr):
    if method == "mfl_underdamped":
        return run_mfl(target, x0, args.steps, h, gamma, "underdamped")
    if method == "mfl_overdamped":
        return run_mfl(target, x0, args.steps, h, gamma, "overdamped")
    if method == "mfl_ksd":
        kh, kg = args.ksd_params
        return run_mfl(target, x0, args.steps, kh, kg, "underdamped", "ksd")
    if method == "svgd_blackjax":
        return run_svgd_blackjax(target, x0, args.steps, lr)
    if method == "svgd_matrix":
        return run_svgd_matrix(target, x0, args.steps, lr)
    if method == "steinvi_numpyro":
        return run_steinvi(target, x0, args.steps, lr)
    raise ValueError(f"unknown method {method}")


def _summaries(records):
    """One line per (target, method) over the seeds: MMD mean and its standard error."""
    out = []
    keys = sorted({(r["target"], r["method"]) for r in records}, key=lambda k: (k[0], k[1]))
    for target, method in keys:
        rows = [r for r in records if (r["target"], r["method"]) == (target, method) and r.get("mmd") is not None]
        if not rows:
            continue
        m = np.array([r["mmd"] for r in rows])
        ms = np.array([r["ms_per_step"] for r in rows])
        rec = {"kind": "summary", "target": target, "method": method, "seeds": [r["seed"] for r in rows],
               "mmd_mean": round(float(m.mean()), 4),
               "mmd_se": round(float(m.std(ddof=1) / np.sqrt(len(m))), 4) if len(m) > 1 else None,
               "ms_per_step_median": round(float(np.median(ms)), 3)}
        if "mode_weight_error" in rows[0]:
            rec["mode_weight_error_mean"] = round(float(np.mean([r["mode_weight_error"] for r in rows])), 4)
        out.append(rec)
    return out


def bench(args):
    methods = args.methods.split(",")
    records = []
    for name in args.targets.split(","):
        make, scale, h, gamma, lr = TARGETS[name]
        if args.mfl_params is not None:
            h, gamma = args.mfl_params
        if args.svgd_lr is not None:
            lr = args.svgd_lr
        target = make()
        exact = np.asarray(target.sample(jax.random.PRNGKey(1000), N_EVAL))
        floor = mmd(np.asarray(target.sample(jax.random.PRNGKey(1001), N_EVAL)), exact)
        for seed in args.seeds:
            x0 = scale * jax.random.normal(jax.random.PRNGKey(seed), (args.particles, target.dim))
            for method in methods:
                t0 = time.perf_counter()
                try:
                    x, per, wall, extra = _run_method(method, target, x0, args, h, gamma, lr)
                except Exception as err:  # noqa: BLE001 - a failing peer is a result too
                    print(json.dumps({"target": name, "method": method, "seed": seed, "error": repr(err)[:300]}),
                          flush=True)
                    continue
                params = ({"h": h, "gamma": gamma} if method in ("mfl_underdamped", "mfl_overdamped")
                          else {"h": args.ksd_params[0], "gamma": args.ksd_params[1]} if method == "mfl_ksd"
                          else {"lr": lr})
                rec = {"target": name, "method": method, "particles": args.particles, "steps": args.steps,
                       "seed": seed, **params, "ms_per_step": round(1e3 * per, 3), "wall_s": round(wall, 2),
                       "floor_mmd": round(floor, 4), **_metrics(name, target, x, exact, seed), **extra,
                       "total_s": round(time.perf_counter() - t0, 1), "loadavg": os.getloadavg()[0]}
                records.append(rec)
                print(json.dumps(rec), flush=True)
    if len(args.seeds) > 1:
        for rec in _summaries(records):
            print(json.dumps(rec), flush=True)


SCALING_CHILD = """
import json, resource, sys, time
import jax, jax.numpy as jnp
from sbi_kit.samplers.mfl import build_mfl, kl_functional, ksd_functional
from sbi_kit.targets import gmm40
n, steps, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
target = gmm40()
fn = ksd_functional(target, tile_size=512) if which == "ksd" else kl_functional(target)
init, step, _ = build_mfl(fn, step_size=0.01)
x0 = 30.0 * jax.random.normal(jax.random.PRNGKey(0), (n, 2))
state = jax.jit(init)(jax.random.PRNGKey(1), x0)
run = jax.jit(lambda s, keys: jax.lax.scan(lambda s, k: (step(k, s)[0], None), s, keys)[0])
keys = jax.random.split(jax.random.PRNGKey(2), steps)
compiled = run.lower(state, keys).compile()
mem = compiled.memory_analysis()
jax.block_until_ready(compiled(state, keys))
t0 = time.perf_counter()
jax.block_until_ready(compiled(state, keys))
per = (time.perf_counter() - t0) / steps
print(json.dumps({"n": n, "ms_per_step": round(1e3 * per, 2),
                  "xla_temp_mb": round(mem.temp_size_in_bytes / 2**20, 2) if mem is not None else None,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""

DENSE_CHILD = """
import json, resource, sys, time
import jax, jax.numpy as jnp, optax
sys.path.insert(0, sys.argv[3])
from particles import _matrix_svgd_step
from sbi_kit.targets import gmm40
n, steps = int(sys.argv[1]), int(sys.argv[2])
target = gmm40()
opt = optax.adagrad(1.0)
step = _matrix_svgd_step(target.score, opt)
x0 = 30.0 * jax.random.normal(jax.random.PRNGKey(0), (n, 2))
state = (x0, opt.init(x0), jnp.asarray(1.0))
run = jax.jit(lambda s: jax.lax.fori_loop(0, steps, lambda i, s: step(s), s))
compiled = run.lower(state).compile()
mem = compiled.memory_analysis()
jax.block_until_ready(compiled(state))
t0 = time.perf_counter()
jax.block_until_ready(compiled(state))
per = (time.perf_counter() - t0) / steps
print(json.dumps({"n": n, "ms_per_step": round(1e3 * per, 2),
                  "xla_temp_mb": round(mem.temp_size_in_bytes / 2**20, 2) if mem is not None else None,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def scaling(args):
    sizes = [500, 1000] if args.quick else [int(n) for n in args.scaling_sizes.split(",")]
    steps = 2
    here = os.path.dirname(os.path.abspath(__file__))
    runs = {"mfl_kl_underdamped": (SCALING_CHILD, "kl"), "mfl_ksd_tiled": (SCALING_CHILD, "ksd"),
            "svgd_matrix_dense": (DENSE_CHILD, "")}
    for label in args.scaling_methods.split(","):
        script, which = runs[label]
        for n in sizes:
            out = subprocess.run([sys.executable, "-c", script, str(n), str(steps), here, which],
                                 capture_output=True, text=True, timeout=3600)
            if out.returncode != 0:
                print(json.dumps({"scaling": label, "n": n, "error": out.stderr[-300:]}), flush=True)
                continue
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"scaling": label, **rec, "loadavg": os.getloadavg()[0]}), flush=True)


def _pair(text, flag):
    try:
        h, gamma = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"{flag} takes 'h,gamma' (two numbers), got {text!r}") from None
    if not (h > 0 and gamma > 0):
        raise SystemExit(f"{flag}: h and gamma must be > 0, got {text!r}")
    return h, gamma


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the initial particles "
                   "(overrides --seed; a summary line per target and method follows)")
    p.add_argument("--mfl-params", default=None, help="h,gamma for the KL-MFL runs (default: tuned, TARGETS)")
    p.add_argument("--svgd-lr", type=float, default=None, help="adagrad learning rate of the SVGD peers")
    p.add_argument("--ksd-params", default="0.1,0.5", help="h,gamma of mfl_ksd (default 0.1,0.5)")
    p.add_argument("--particles", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--targets", default="gmm40,banana,funnel")
    p.add_argument("--methods", default="mfl_underdamped,mfl_overdamped,svgd_matrix,svgd_blackjax,steinvi_numpyro")
    p.add_argument("--scaling", action="store_true", help="also run the 10^4-particle scaling study")
    p.add_argument("--only-scaling", action="store_true")
    p.add_argument("--scaling-sizes", default="1000,2000,5000,10000")
    p.add_argument("--scaling-methods", default="mfl_kl_underdamped,mfl_ksd_tiled,svgd_matrix_dense")
    args = p.parse_args(argv)
    args.seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    args.mfl_params = _pair(args.mfl_params, "--mfl-params") if args.mfl_params else None
    args.ksd_params = _pair(args.ksd_params, "--ksd-params")
    if args.svgd_lr is not None and not args.svgd_lr > 0:
        p.error(f"--svgd-lr must be > 0, got {args.svgd_lr}")
    args.particles = args.particles or (200 if args.quick else 2000)
    args.steps = args.steps or (30 if args.quick else 500)
    if args.quick and args.targets == "gmm40,banana,funnel":
        args.targets = "gmm40"
    print(json.dumps({"command": "python benchmarks/particles.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      "jax": jax.__version__, "backend": jax.default_backend(),
                      "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}), flush=True)
    if not args.only_scaling:
        bench(args)
    if args.scaling or args.only_scaling:
        scaling(args)


if __name__ == "__main__":
    main()
