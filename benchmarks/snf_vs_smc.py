"""SNF vs blackjax adaptive tempered SMC: log Z error and MMD on GMM40 and the 32-d many-well.

SMC: `blackjax.adaptive_tempered_smc` with the settings of benchmarks/ensemble.py
(2000 particles, 10 random-walk MH steps per level, systematic resampling,
target ESS 0.5, Gaussian reference N(0, s^2 I) as the prior; s = 30 / rw 1.0 on
GMM40, s = 2 / rw 0.3 on many-well). Its log Z is the sum of the per-level
log-likelihood increments plus the prior's normaliser ``d/2 log(2 pi s^2)``.

SNF (`sbi_kit.samplers.snf`): the same ``N(0, s^2 I)`` reference as base and
the same tempering path ``u_lam = (1 - lam) u_ref + lam u_target``; K
stochastic blocks (MALA, m steps each) on a ``lam_k = (k / K)^p`` schedule (step ``step / curvature of u_lam``) with
a 2-layer RealNVP block in front of every ``flow_every``-th stochastic block,
trained by reverse KL (step sizes and flows), then sampled. Without training
this is annealed importance sampling; training moves the flows and step sizes.

Budget: target evaluations (each log density or log density + gradient
counts one). SNF evaluations = training + sampling; we size the SNF so its
total is at most SMC's (measured on the same seed), and report both.

Metrics: |log Z_hat - log Z|; MMD to 2000 exact draws (TARGETS.md: Gaussian
kernel, median bandwidth, unbiased, sqrt; `sbi_kit.diagnostics.metrics.mmd`)
of 2000 equally weighted draws (SNF: systematic resampling of its weighted
draws; SMC: its final particles); the exact-vs-exact MMD floor; IS ESS and
Pareto k for the SNF; wall time (compile included, shared CPU, noisy).

``--smc-hmc M,h,L`` replaces SMC's random-walk moves by M HMC steps (step h, L
leapfrogs, identity mass; L gradient evaluations each) per level: on the many-well
the random-walk SMC is a weak baseline (3.1-3.8 nats off), the HMC one is not.

``--budget-factor F`` gives the SNF F times SMC's evaluations (to show what it
takes to catch up; the equal-budget rows have factor 1).

Reproduce:  python benchmarks/snf_vs_smc.py [--quick] [--seeds 0] [--targets gmm40,many_well] [--budget-factor 1]
            [--train-fraction 0.5] [--smc-hmc 5,0.1,10] [--resample-threshold 0.5] [--snf-config JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import jax
import numpy as np

from ensemble import tempered_smc  # noqa: E402  (benchmarks/ is the script's folder)
from sbi_kit.diagnostics.metrics import mmd
from sbi_kit.samplers.snf import FlowBlock, StochasticBlock, make_snf, sample_snf, train_snf
from sbi_kit.targets import gmm40, many_well

N_EVAL = 2000

# name -> (constructor, reference scale s, SMC random-walk std, SNF settings)
TARGETS = {
    "gmm40": (gmm40, 30.0, 1.0, dict(K=4, m=2, step=0.3, curvature=1.0, power=2.0, flow_every=2, kind="mala")),
    "many_well": (lambda: many_well(32), 2.0, 0.3, dict(K=4, m=2, step=0.15, curvature=24.0, power=1.0, flow_every=1,
                                                        kind="mala", max_train_steps=1000, lr=3e-3)),
}


def run_smc(target, key, scale, rw_scale, quick, hmc=None):
    """benchmarks/ensemble.py's adaptive tempered SMC (random-walk or HMC moves), with its log Z."""
    x, log_z, evals, levels = tempered_smc(target, key, scale, rw_scale, quick, hmc=hmc)
    return x, log_z, evals, {"levels": levels, "smc_moves": "rw" if hmc is None else f"hmc{list(hmc)}"}


def snf_blocks(cfg, scale):
    """Flow blocks and MALA blocks; the step of block k is ``step / curvature(lam_k)``,
    with the curvature of u_lam interpolated between the reference (1 / s^2) and the
    target's typical curvature (``cfg["curvature"]``)."""
    blocks = []
    K = cfg["K"]
    for k in range(1, K + 1):
        if (k - 1) % cfg["flow_every"] == 0:
            blocks.append(FlowBlock(2, "affine", (32, 32)))
        lam = (k / K) ** cfg["power"]
        curv = (1 - lam) / scale**2 + lam * cfg["curvature"]
        # MALA's time step scales as 1 / curvature; an HMC leapfrog step (SMC's rule) stays fixed.
        step = cfg["step"] if cfg["kind"] == "hmc" else cfg["step"] / curv
        blocks.append(StochasticBlock(cfg["kind"], lam, step, cfg["m"], num_leapfrogs=cfg.get("leapfrogs", 10)))
    return blocks


def run_snf(target, key, scale, cfg, budget, quick, train_fraction=0.5, resample_threshold=None):
    # Four independent keys up front: the resampling key must not be derived from the sampling key
    # (fold_in(k, 1) equals split(k, n)[1], one of the path keys).
    k_make, k_train, k_sample, k_resample = jax.random.split(key, 4)
    model = make_snf(k_make, target, snf_blocks(cfg, scale), base_scale=scale)
    per_path = model.target_evals_per_sample()
    per_sample_path = model.target_evals_per_sample(resampling=resample_threshold is not None)
    batch = 32 if quick else 64
    batches = cfg.get("batches", 4)
    # Without resampling at least N_EVAL weighted draws (as the earlier rows); with resampling the
    # budget alone sets the population (resampled populations give N_EVAL equally weighted draws anyway).
    n_samples = N_EVAL if resample_threshold is None else 2 * batches
    # A share of the budget (default half, at most max_train_steps) for training, the rest for sampling.
    train_budget = int(train_fraction * budget)
    train_steps = min(20, train_budget // (batch * per_path)) if quick else max(
        0, min(cfg.get("max_train_steps", 300), train_budget // (batch * per_path)))
    n_samples = max(n_samples, (budget - train_steps * batch * per_path) // per_sample_path)
    model, info = train_snf(model, target, k_train, num_steps=train_steps, batch_size=batch,
                            learning_rate=cfg.get("lr", 1e-3), loss="reverse_kl", chunk_size=max(1, min(50, train_steps)))
    res = sample_snf(model, target, k_sample, int(n_samples // batches), num_batches=batches,
                     resample_threshold=resample_threshold)
    draws = res.resample(k_resample, N_EVAL)
    extra = {"train_steps": train_steps, "num_samples": int(res.log_weights.size), "is_ess": res.is_ess,
             "pareto_k": res.pareto_k, "log_z_se": res.log_z_se, "num_invalid": res.num_invalid,
             "train_target_evals": info.num_target_evals, "sample_target_evals": res.num_target_evals,
             "step_sizes": [round(v, 4) for v in model.schedule()["step_size"].tolist()],
             "resample_threshold": resample_threshold, "num_resampled": res.num_resampled.tolist()}
    return draws, res.log_z, info.num_target_evals + res.num_target_evals, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--targets", default="gmm40,many_well")
    parser.add_argument("--methods", default="smc,snf")
    parser.add_argument("--train-fraction", type=float, default=0.5,
                        help="share of the SNF budget spent on training (0: untrained SNF = annealed IS)")
    parser.add_argument("--resample-threshold", type=float, default=None,
                        help="SNF with resampling (annealed flow transport): resample each of the 4 populations "
                             "before a stochastic block when its ESS fraction is below this (1: always)")
    parser.add_argument("--smc-hmc", default=None,
                        help="SMC moves: 'M,h,L' = M HMC steps of step size h and L leapfrogs per level "
                             "(default: 10 random-walk steps)")
    parser.add_argument("--budget-factor", type=float, default=1.0,
                        help="SNF budget = factor x SMC's target evaluations (default 1: equal budgets)")
    parser.add_argument("--snf-config", default=None,
                        help="JSON merged over the target's SNF settings, e.g. '{\"K\": 16, \"m\": 10}' "
                             "(K stochastic blocks of m steps, flow_every, step, curvature, power, kind "
                             "(mala|hmc|...), leapfrogs (hmc), batches (independent populations, default 4), lr, "
                             "max_train_steps)")
    args = parser.parse_args()
    overrides = json.loads(args.snf_config) if args.snf_config else {}
    unknown = set(overrides) - {"K", "m", "step", "curvature", "power", "flow_every", "kind", "lr", "max_train_steps",
                                "leapfrogs", "batches"}
    if unknown:
        parser.error(f"--snf-config: unknown keys {sorted(unknown)}")
    hmc = None
    if args.smc_hmc:
        m, h, leap = args.smc_hmc.split(",")
        hmc = (int(m), float(h), int(leap))
    # Every output line is JSON (the file is valid JSONL): the command goes into the environment line.
    print(json.dumps({"benchmark": "snf_vs_smc", "kind": "env",
                      "reproduce": "python benchmarks/snf_vs_smc.py " + shlex.join(sys.argv[1:]),
                      "loadavg": os.getloadavg(), "jax": jax.__version__, "backend": jax.default_backend()}),
          flush=True)
    for name in args.targets.split(","):
        ctor, scale, rw, cfg = TARGETS[name]
        cfg = {**cfg, **overrides}
        target = ctor()
        exact = np.asarray(target.sample(jax.random.PRNGKey(1000), N_EVAL))
        floor = mmd(np.asarray(target.sample(jax.random.PRNGKey(2000), N_EVAL)), exact)
        for seed in [int(s) for s in args.seeds.split(",")]:
            budget = None
            for method in args.methods.split(","):
                key = jax.random.PRNGKey(seed)
                t0 = time.perf_counter()
                if method == "smc":
                    x, log_z, evals, extra = run_smc(target, key, scale, rw, args.quick, hmc)
                    budget = evals
                else:
                    b = budget if budget is not None else (400_000 if not args.quick else 50_000)
                    b = int(args.budget_factor * b)
                    x, log_z, evals, extra = run_snf(target, key, scale, cfg, b, args.quick, args.train_fraction,
                                                     args.resample_threshold)
                wall = time.perf_counter() - t0
                finite = np.all(np.isfinite(x), axis=1)
                row = {"benchmark": "snf_vs_smc", "target": name, "method": method, "seed": seed,
                       "budget_factor": args.budget_factor if method == "snf" else 1.0,
                       "train_fraction": args.train_fraction if method == "snf" else None,
                       "resample_threshold": args.resample_threshold if method == "snf" else None,
                       "quick": args.quick, "log_z": log_z, "log_z_true": target.log_Z,
                       "log_z_error": abs(log_z - target.log_Z) if np.isfinite(log_z) else None,
                       "mmd": round(mmd(x[finite][:N_EVAL], exact), 4), "mmd_floor": round(floor, 4),
                       "target_evals": int(evals), "wall_s": round(wall, 1),
                       **({"snf_config": cfg} if method == "snf" else {}), **extra}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
