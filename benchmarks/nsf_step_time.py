"""Time one optimiser step of NPE's default neural spline flow on two_moons (compilation excluded).

Prints one JSON line: milliseconds per step of `sbi_kit.sbi._train._train_chunk`
(32 Adam steps per call, batch 200, 10^4 simulations), the mean of 5 calls after
a first, compiling call. To compare two commits, run it from each checkout in turn
(e.g. `git worktree add /tmp/old REV` and `PYTHONPATH=/tmp/old python benchmarks/nsf_step_time.py`).

Reproduce:  python benchmarks/nsf_step_time.py [--batch 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import sbi_kit
from sbi_kit.models.sbi_tasks import get_task
from sbi_kit.sbi import _conditional as cond
from sbi_kit.sbi import simulate
from sbi_kit.sbi._train import _initial_opt_state, _train_chunk, flatten_params
from sbi_kit.sbi.prior import as_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="accepted for benchmarks/run.py; this script is always quick")
    args = parser.parse_args()
    task = get_task("two_moons")
    sims = simulate(jax.random.PRNGKey(0), task.prior, task.simulator, 10_000)
    u = np.asarray(as_prior(task.prior).to_unconstrained(sims.theta))
    x = np.asarray(sims.x)
    spec, params, std = cond.init_conditional(jax.random.PRNGKey(1), u, x, flow=dict(cond.DEFAULT_FLOW),
                                              embedding_hidden=(), embedding_dim=None, activation="silu",
                                              z_score=True, dtype=jnp.float32)
    loss = cond.NegLogProb(spec)
    flat, layout = flatten_params(params)
    flat = jnp.asarray(flat)
    opt_state = _initial_opt_state(5e-4, 5.0, flat)
    idx = np.random.default_rng(0).integers(0, u.shape[0], (32, args.batch))
    batches = (u[idx], x[idx])
    key = jax.random.PRNGKey(2)

    def call():
        return jax.block_until_ready(_train_chunk(loss, layout, 5e-4, 5.0, flat, opt_state, flat, std, batches, key,
                                                  np.int32(0), np.float32(1.0), np.float32(0.0), np.int32(0)))

    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(5):
        call()
    ms = (time.perf_counter() - t0) / (5 * 32) * 1e3
    print(json.dumps({"benchmark": "nsf_step_time", "ms_per_step": round(ms, 3), "compile_s": round(compile_s, 2),
                      "batch": args.batch, "sbi_kit_path": os.path.dirname(sbi_kit.__file__),
                      "load_average": os.getloadavg(), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
