"""sbi_kit NPE / TSNPE / NLE / NRE on the sbibm tasks, scored by C2ST against sbibm's reference posteriors.

For each task (``models/sbi_tasks.py``, the sbibm 1.1.0 definitions), each
simulation budget and each method, we simulate from the prior, train, draw
``--num-samples`` posterior samples for each of sbibm's observations 1..10
and compute the C2ST accuracy (`sbi_kit.sbi.diagnostics.c2st`, sbibm's
protocol: z-scored with the reference, MLP 10d-10d, 5-fold accuracy) against
the first ``--num-samples`` of sbibm's 10,000 reference posterior samples.
0.5 is perfect, 1.0 fully separable. sbibm's published NPE (NSF) means at
10^4 simulations are the targets.

Methods:
  npe     `NPE(prior, flow=FLOW).fit` once on the budget (amortised), one flow draw per observation
  tsnpe   `truncated_snpe` per observation, ``--rounds`` rounds of budget/rounds simulations
  nle     `NLE(prior, flow=FLOW).fit` once, NUTS per observation (``--chains`` chains)
  nre     `NRE(prior).fit` once (10 atoms), NUTS per observation

FLOW = sbi_kit's default NPE/NLE flow, sbibm's NSF: rational-quadratic spline,
5 coupling layers with 10 bins, residual conditioners (2 blocks of 50 units),
an LU linear layer after each coupling (``--flow`` overrides options).
Training: sbi_kit's defaults, batches of 200, 10% validation, at most 500 epochs.
NPE (and TSNPE's rounds): Adam 2e-3, validated and returned as a moving average
of the parameters over 16 epochs, stop after 10 epochs without improvement.
NLE: Adam 5e-4, patience 20, then two restarts from the best parameters at 1/10
the learning rate (``lr_decays=2``). NRE: Adam 5e-4, patience 20, no restarts.
``--fit`` overrides them.

Also ``--c2st-vs-sklearn``: our JAX C2ST against sbibm's sklearn C2ST (needs
scikit-learn) on a few sample pairs, 3 seeds each.

Setup (reference data):  pip download sbibm==1.1.0 --no-deps -d /tmp/sbibm
Reproduce:  python benchmarks/sbi_tasks.py [--quick] [--tasks two_moons,slcp] [--methods npe,tsnpe]
            [--budgets 1000,10000] [--observations 1-10] [--num-samples 10000] [--sbibm-wheel PATH]
            python benchmarks/sbi_tasks.py --c2st-vs-sklearn
"""

from __future__ import annotations

import argparse
import json
import shlex
import os
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _sbibm_reference as ref  # noqa: E402

from sbi_kit.models.sbi_tasks import TASKS, get_task  # noqa: E402
from sbi_kit.sbi.diagnostics import c2st  # noqa: E402

FLOW = {"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10, "conditioner": "resnet", "lu_layers": True}
# sbibm's published NPE (SNPE-C, NSF) mean C2ST at 10^4 simulations (Lueckmann et al. 2021, Fig. 2).
SBIBM_NPE_1E4 = {"two_moons": 0.61, "slcp": 0.90, "gaussian_linear": 0.55, "gaussian_mixture": 0.62,
                 "lotka_volterra": 1.00}
DEFAULT_TASKS = ("two_moons", "slcp", "gaussian_linear", "gaussian_mixture", "lotka_volterra")


def _observations(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def _fit_amortised(method, key, task, budget, flow=FLOW, batch_size=None, fit=None):
    from sbi_kit.sbi import NLE, NPE, NRE, simulate

    k_sim, k_fit = jax.random.split(key)
    t0 = time.perf_counter()
    sims = simulate(k_sim, task.prior, task.simulator, budget)
    t_sim = time.perf_counter() - t0
    fit_kw = {**({} if batch_size is None else {"batch_size": batch_size}), **(fit or {})}
    if method == "npe":
        est = NPE(task.prior, flow=flow)
    elif method == "nle":
        est = NLE(task.prior, flow=flow)
    else:
        est = NRE(task.prior)
    t0 = time.perf_counter()
    post = est.fit(k_fit, sims.theta, sims.x, **fit_kw)
    jax.block_until_ready(jax.tree.leaves(post.params))
    return post, t_sim, time.perf_counter() - t0, int(sims.num_invalid)


def run_task(task_name, method, budget, observations, args, key):
    task = get_task(task_name)
    x_obs = np.stack([ref.observation(task_name, i, args.sbibm_wheel) for i in observations])
    n = args.num_samples
    base = {"benchmark": "sbi_tasks", "task": task_name, "method": method, "num_simulations": budget,
            "num_samples": n, "flow": args.flow, "batch_size": args.batch_size,
            **({"fit": args.fit} if args.fit else {})}
    samples, times = {}, {}
    k_fit, k_draw = jax.random.split(key)
    if method in ("npe", "nle", "nre"):
        post, t_sim, t_train, invalid = _fit_amortised(method, k_fit, task, budget, args.flow, args.batch_size,
                                                       args.fit)
        times.update(simulate_s=round(t_sim, 2), train_s=round(t_train, 2), num_invalid=invalid,
                     epochs=int(post.info.epochs) if getattr(post, "info", None) is not None else None)
        t0 = time.perf_counter()
        if method == "npe":
            draws = np.asarray(post.sample(k_draw, n, jnp.asarray(x_obs, post.dtype)))
            for i, obs in enumerate(observations):
                samples[obs] = draws[i]
        else:
            for obs, k in zip(observations, jax.random.split(k_draw, len(observations))):
                samples[obs] = np.asarray(post.sample(k, n, jnp.asarray(ref.observation(task_name, obs, args.sbibm_wheel),
                                                                         post.dtype), chains=args.chains,
                                                      warmup=args.warmup))
        times["sample_s"] = round(time.perf_counter() - t0, 2)
    else:  # tsnpe, one run per observation
        from sbi_kit.sbi import NPE, truncated_snpe

        per_round = budget // args.rounds
        t_total = 0.0
        for obs, k in zip(observations, jax.random.split(k_fit, len(observations))):
            k_run, k_s = jax.random.split(k)
            t0 = time.perf_counter()
            post = truncated_snpe(k_run, task.prior, task.simulator,
                                  jnp.asarray(ref.observation(task_name, obs, args.sbibm_wheel)),
                                  num_rounds=args.rounds, simulations_per_round=per_round,
                                  estimator=NPE(task.prior, flow=args.flow))
            samples[obs] = np.asarray(post.sample(k_s, n, jnp.asarray(ref.observation(task_name, obs, args.sbibm_wheel),
                                                                        post.dtype)))
            t_total += time.perf_counter() - t0
        times.update(total_s=round(t_total, 2), rounds=args.rounds, simulations_per_round=per_round)

    scores = []
    for obs, k in zip(observations, jax.random.split(jax.random.fold_in(key, 7), len(observations))):
        reference = ref.reference_samples(task_name, obs, args.sbibm_wheel)[:n]
        draws = samples[obs]
        finite = np.all(np.isfinite(draws), axis=1)
        t0 = time.perf_counter()
        score = c2st(reference, draws[finite], k) if finite.all() else float("nan")
        scores.append(score)
        _emit({**base, "observation": obs, "c2st": round(score, 4), "c2st_s": round(time.perf_counter() - t0, 2),
               "nonfinite_draws": int((~finite).sum())})
    summary = {**base, "kind": "summary", "observations": observations, "c2st_mean": round(float(np.mean(scores)), 4),
               "c2st_sd": round(float(np.std(scores)), 4), **times,
               "sbibm_npe_1e4": SBIBM_NPE_1E4.get(task_name)}
    _emit(summary)
    return summary


def c2st_vs_sklearn(args):
    """Our C2ST vs sbibm 1.1.0's sklearn c2st on fixed sample pairs (3 seeds each)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    def sk(x, y, seed):
        mean, std = x.mean(0), x.std(0, ddof=1)
        x, y = (x - mean) / std, (y - mean) / std
        d = x.shape[1]
        clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * d, 10 * d), max_iter=10000, solver="adam",
                            random_state=seed)
        data, target = np.concatenate([x, y]), np.concatenate([np.zeros(len(x)), np.ones(len(y))])
        return float(np.mean(cross_val_score(clf, data, target, cv=KFold(5, shuffle=True, random_state=seed))))

    rng = np.random.default_rng(1)
    n = 1000 if args.quick else 2000
    angle = rng.uniform(0, np.pi, n)
    cases = {
        "gauss2d_shift0.6": (rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + [0.6, 0.0]),
        "moon_vs_gauss2d": (np.c_[np.cos(angle), np.sin(angle)] + 0.1 * rng.normal(size=(n, 2)),
                            rng.normal(size=(n, 2)) * [0.7, 0.4] + [0.0, 0.6]),
        "gauss3d_scale1.3": (rng.normal(size=(n, 3)), 1.3 * rng.normal(size=(n, 3))),
        "gauss5d_same": (rng.normal(size=(n, 5)), rng.normal(size=(n, 5))),
    }
    if not args.quick:
        r = ref.reference_samples("two_moons", 1, args.sbibm_wheel)
        cases["two_moons_ref_vs_jittered"] = (r[:n], r[n:2 * n] + 0.02 * rng.normal(size=(n, 2)))
        s = ref.reference_samples("slcp", 1, args.sbibm_wheel)
        cases["slcp_ref_vs_ref_obs2"] = (s[:n], ref.reference_samples("slcp", 2, args.sbibm_wheel)[:n])
    for name, (x, y) in cases.items():
        t0 = time.perf_counter()
        theirs = [sk(x, y, s) for s in (1, 2, 3)]
        t_sk = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = [c2st(x, y, jax.random.key(s)) for s in (1, 2, 3)]
        t_ours = time.perf_counter() - t0
        _emit({"benchmark": "sbi_tasks", "kind": "c2st_vs_sklearn", "case": name, "n_per_sample": n,
               "dim": x.shape[1], "sklearn": [round(v, 4) for v in theirs], "sbi_kit": [round(v, 4) for v in ours],
               "mean_diff": round(float(np.mean(ours) - np.mean(theirs)), 4), "sklearn_s": round(t_sk, 1),
               "sbi_kit_s": round(t_ours, 1)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--methods", default="npe")
    parser.add_argument("--budgets", default="1000,10000")
    parser.add_argument("--observations", default="1-10")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4, help="TSNPE rounds")
    parser.add_argument("--chains", type=int, default=10, help="NUTS chains for NLE/NRE")
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up steps for NLE/NRE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow", default="{}", help="JSON of flow options over the default FLOW, "
                        'e.g. \'{"conditioner": "mlp", "lu_layers": false}\'')
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: NPE's)")
    parser.add_argument("--fit", default="{}", help="JSON of keyword arguments for the amortised "
                        "estimators' fit (NPE/NLE/NRE), e.g. '{\"learning_rate\": 1e-3}'")
    parser.add_argument("--sbibm-wheel", default=None,
                        help=f"path of the sbibm 1.1.0 wheel (default ${ref.ENV_VAR} or {ref.DEFAULT_WHEEL})")
    parser.add_argument("--quick", action="store_true", help="smoke run: two_moons, NPE, 1000 sims, 2 obs, 1000 samples")
    parser.add_argument("--c2st-vs-sklearn", action="store_true")
    args = parser.parse_args(argv)
    ref.wheel_path(args.sbibm_wheel)  # fail early with the setup command
    args.flow = {**FLOW, **json.loads(args.flow)}
    args.fit = json.loads(args.fit)
    if args.quick:
        args.tasks, args.budgets, args.observations, args.num_samples = "two_moons", "1000", "1-2", 1000
    _emit({"benchmark": "sbi_tasks", "kind": "command", "command": "python benchmarks/sbi_tasks.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), "devices": str(jax.devices()), "load_average": os.getloadavg(),
        "x64": bool(jax.config.jax_enable_x64)})
    if args.c2st_vs_sklearn:
        c2st_vs_sklearn(args)
        return
    tasks = args.tasks.split(",")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected some of {TASKS}")
    methods = args.methods.split(",")
    for m in methods:
        if m not in ("npe", "tsnpe", "nle", "nre"):
            raise ValueError(f"unknown method {m!r}")
    observations = _observations(args.observations)
    key = jax.random.key(args.seed)
    for budget in [int(b) for b in args.budgets.split(",")]:
        for method in methods:
            for task_name in tasks:
                k = jax.random.fold_in(jax.random.fold_in(key, budget), zlib.crc32(f"{method}/{task_name}".encode()) % 2**31)
                row = run_task(task_name, method, budget, observations, args, k)
                _emit({"benchmark": "sbi_tasks", "kind": "load", "load_average": os.getloadavg(),
                       "after": [task_name, method, budget]})
                del row


if __name__ == "__main__":
    main()
