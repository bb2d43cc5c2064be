"""Spread of NPE's error on tests/sbi/test_npe.py's conjugate problem over training seeds.

The 3-d gaussian_linear problem of the test (theta ~ N(0, 0.1 I), x | theta ~ N(theta,
0.1 I), 5000 simulations, posterior N(x / 2, 0.05 I)) fitted with NPE's defaults (or the
``NPE.fit`` settings given as JSON) for training seeds 10, 11, 12; for each of the test's
two observations it prints the largest mean error in posterior sds, the variance ratios and
KL(q || p) from 20000 draws: the spread behind the test's tolerances.

Reproduce:  python benchmarks/npe_gaussian_linear_spread.py ['{"learning_rate": 1e-3}'] [--quick]
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "sbi"))
from test_npe import POST_VAR, PRIOR, X_OBS, analytic_log_prob, gaussian_linear  # noqa: E402

from sbi_kit.sbi.npe import NPE  # noqa: E402
from sbi_kit.sbi.simulate import simulate  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if a != "--quick"]
    quick = "--quick" in sys.argv[1:]  # benchmarks/run.py smoke run: one seed, two epochs
    settings = json.loads(args[0]) if args else {}
    if quick:
        settings = {**settings, "max_epochs": 2}
    sims = simulate(jax.random.PRNGKey(0), PRIOR, gaussian_linear, 5000)
    for seed in (10,) if quick else (10, 11, 12):
        post = NPE(PRIOR).fit(jax.random.PRNGKey(seed), sims.theta, sims.x, **settings)
        draws = post.sample(jax.random.PRNGKey(1), 20000, X_OBS)
        for i, (x, d) in enumerate(zip(X_OBS, draws)):
            z = (np.asarray(d.mean(0)) - np.asarray(x) / 2) / np.sqrt(POST_VAR)
            ratio = np.asarray(d.var(0)) / POST_VAR
            kl = float(jnp.mean(post.log_prob(d, x) - analytic_log_prob(d, x)))
            print(json.dumps({"benchmark": "npe_gaussian_linear_spread", "settings": settings, "seed": seed,
                              "observation": i, "epochs": int(post.info.epochs), "best_epoch": int(post.info.best_epoch),
                              "max_abs_mean_error_sd": round(float(np.abs(z).max()), 3),
                              "var_ratio": [round(float(v), 3) for v in ratio], "kl": round(kl, 4)}), flush=True)


if __name__ == "__main__":
    main()
