"""C2ST of NPE's default fit on two_moons if it had stopped by another early-stopping rule.

Early stopping does not change the training trajectory, only where it ends: with
``lr_decays=0`` the parameters after epoch ``e`` are the same whatever the rule. So
one default fit (``min_delta=0``) of the `sbi` comparison's data (the 10^4 simulations
of `benchmarks/sbi_vs_sbi_package.py --seed S`, same fit and draw keys), with the
validated moving average recorded after every epoch, tells where each rule
``patience:min_delta`` would have stopped and which epoch's parameters it would have
returned; those are then scored like the comparison (10^4 draws for each of sbibm's
observations 1..10, the same C2ST keys). Rules with a patience above NPE's default
(10) need ``--patience`` at least that large for the recorded fit.

Prints one JSON line per rule: the stopping and returned epochs, the optimiser steps
to the stop, the validation loss and the C2ST mean and per observation.

The parameters are recorded by wrapping the training loop's validation-loss function
(``sbi_kit.sbi._train._weighted_loss_sum``, private), which receives them once per
validation batch; the wrapper only copies them, so the fit is unchanged.

Reproduce:  python benchmarks/npe_stopping_rules.py --seed 0 --rules 10:0,10:0.005
            [--sbibm-wheel /tmp/sbibm/sbibm-1.1.0-py2.py3-none-any.whl] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
FLOW = {"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10, "conditioner": "resnet",
        "lu_layers": True}


def stopping_epochs(val_losses, patience: int, min_delta: float) -> tuple[int, int]:
    """``(stop epoch, returned epoch)``, 1-based, of `fit_minibatch`'s rule (no restarts) on a validation trace."""
    from sbi_kit.sbi._train import patience_count

    best_epoch, reference, since = int(np.nanargmin(val_losses)) + 1, np.inf, 0
    for epoch, v in enumerate(val_losses, 1):
        reference, since = patience_count(float(v), reference, since, min_delta)
        if since >= patience:
            return epoch, int(np.nanargmin(val_losses[:epoch])) + 1
    return len(val_losses), best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", default="10:0,10:0.005", help="comma-separated patience:min_delta pairs")
    parser.add_argument("--patience", type=int, default=10, help="patience of the recorded fit (min_delta 0)")
    parser.add_argument("--sbibm-wheel", default=None)
    parser.add_argument("--quick", action="store_true", help="2,000 simulations, 1,000 draws, 2 observations")
    args = parser.parse_args()
    rules = [(int(p), float(d)) for p, d in (r.split(":") for r in args.rules.split(","))]
    if any(p > args.patience for p, _ in rules):
        parser.error("every rule's patience must be <= --patience (the recorded fit ends at its own plateau)")

    sys.path.insert(0, str(HERE))
    import _sbibm_reference as ref

    from sbi_kit.models.sbi_tasks import get_task
    from sbi_kit.sbi import NPE, _train, simulate
    from sbi_kit.sbi.diagnostics import c2st

    ref.wheel_path(args.sbibm_wheel)
    num_sims, num_samples, num_obs = (2000, 1000, 2) if args.quick else (10_000, 10_000, 10)
    print(json.dumps({"benchmark": "npe_stopping_rules", "kind": "command",
                      "command": "python benchmarks/npe_stopping_rules.py " + shlex.join(sys.argv[1:]),
                      "load_average": os.getloadavg()}), flush=True)
    task = get_task("two_moons")
    # The comparison's data: simulated from key seed + 1000 and stored as float32.
    sims = simulate(jax.random.key(args.seed + 1000), task.prior, task.simulator, num_sims)
    theta = np.asarray(sims.theta, np.float32)
    x = np.asarray(sims.x, np.float32)
    x_obs = np.stack([ref.observation("two_moons", i, args.sbibm_wheel) for i in range(1, num_obs + 1)])
    x_obs = x_obs.astype(np.float32)

    recorded = []
    original = _train._weighted_loss_sum

    def recording(loss, layout, flat, standardizer, batch, weights, key, index):
        if int(index) == 0:  # once per validation pass, i.e. per epoch
            recorded.append(np.asarray(flat))
        return original(loss, layout, flat, standardizer, batch, weights, key, index)

    _train._weighted_loss_sum = recording
    try:
        k_fit, k_draw = jax.random.split(jax.random.key(args.seed))
        t0 = time.perf_counter()
        post = NPE(task.prior, flow=FLOW).fit(k_fit, jnp.asarray(theta), jnp.asarray(x), patience=args.patience)
        fit_s = time.perf_counter() - t0
    finally:
        _train._weighted_loss_sum = original
    _, layout = _train.flatten_params(post.params)
    val = np.asarray(post.info.val_losses)
    steps_per_epoch = post.info.num_steps // post.info.epochs
    references = [ref.reference_samples("two_moons", i + 1, args.sbibm_wheel)[:num_samples] for i in range(num_obs)]
    for patience, min_delta in rules:
        stop, best = stopping_epochs(val, patience, min_delta)
        post.params = _train.unflatten_params(recorded[best - 1], layout)
        draws = np.asarray(post.sample(k_draw, num_samples, jnp.asarray(x_obs)))
        scores = [float(c2st(references[i], draws[i], jax.random.key(100 + i))) for i in range(num_obs)]
        print(json.dumps({"benchmark": "npe_stopping_rules", "seed": args.seed, "patience": patience,
                          "min_delta": min_delta, "stop_epoch": stop, "returned_epoch": best,
                          "steps": stop * steps_per_epoch, "val_loss": round(float(val[best - 1]), 4),
                          "c2st_mean": round(float(np.mean(scores)), 4),
                          "c2st_per_obs": [round(s, 4) for s in scores],
                          "recorded_fit": {"epochs": int(post.info.epochs), "fit_s": round(fit_s, 2)}}),
              flush=True)


if __name__ == "__main__":
    main()
