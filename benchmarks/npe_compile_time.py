"""Compilation time of a first NPE fit and draw on two_moons (10^4 simulations, one epoch).

On a CPU, compiling dominates small fits: this prints the seconds XLA spends
compiling each jitted function (from JAX's compile log) during
``NPE(prior, flow=sbibm NSF).fit(..., max_epochs=1)`` and one draw of 10^4
samples for 10 observations, in a fresh process, plus the wall times. Run it
at two commits to compare (e.g. ``git worktree add /tmp/old <commit>`` and run
the copy of this script with ``PYTHONPATH=/tmp/old``).

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/npe_compile_time.py
"""
import collections
import json
import logging
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


class _CompileLog(logging.Handler):
    """Collects 'Finished XLA compilation of jit(f) in S sec' records."""

    def __init__(self):
        super().__init__()
        self.seconds = collections.defaultdict(float)
        self.count = 0

    def emit(self, record):
        m = re.search(r"Finished XLA compilation of (.*) in ([0-9.eE+-]+) sec", record.getMessage())
        if m:
            self.seconds[m.group(1)] += float(m.group(2))
            self.count += 1


def main():
    from sbi_kit.models.sbi_tasks import get_task
    from sbi_kit.sbi import NPE, simulate

    task = get_task("two_moons")
    flow = {"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10, "conditioner": "resnet",
            "lu_layers": True}
    sims = simulate(jax.random.key(1000), task.prior, task.simulator, 10_000)
    theta = jnp.asarray(np.asarray(sims.theta, np.float32))
    x = jnp.asarray(np.asarray(sims.x, np.float32))
    x_obs = x[:10]
    jax.block_until_ready(x_obs)
    log = _CompileLog()
    logging.getLogger("jax").addHandler(log)  # the compile records propagate up to it
    jax.config.update("jax_log_compiles", True)
    t0 = time.perf_counter()
    post = NPE(task.prior, flow=flow).fit(jax.random.key(0), theta, x, max_epochs=1)
    jax.block_until_ready(jax.tree.leaves(post.params))
    t1 = time.perf_counter()
    jax.block_until_ready(post.sample(jax.random.key(1), 10_000, x_obs))
    t2 = time.perf_counter()
    jax.config.update("jax_log_compiles", False)
    top = dict(sorted(((k, round(v, 3)) for k, v in log.seconds.items()), key=lambda kv: -kv[1])[:int(os.environ.get("TOP", "6"))])
    print(json.dumps({
        "benchmark": "npe_compile_time", "command": "python benchmarks/npe_compile_time.py",
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "fit_one_epoch_s": round(t1 - t0, 2),
        "first_sample_s": round(t2 - t1, 2), "compile_s_total": round(sum(log.seconds.values()), 2),
        "compilations": log.count, "compile_s_top": top, "load_average": os.getloadavg(),
        "sbi_kit": os.path.dirname(sys.modules["sbi_kit"].__file__),
    }), flush=True)


if __name__ == "__main__":
    main()
