"""The tempering levels that blackjax's adaptive tempered SMC picks on the 32-d many-well.

Same SMC as `benchmarks/snf_vs_smc.py --smc-hmc 5,0.1,10` (2000 particles, N(0, 2^2 I)
reference, 5 HMC steps of 10 leapfrogs of 0.1 per level, target ESS 0.5); prints one JSON
line per seed with the levels. Used to set the SNF's fixed schedule lam_k = (k / 16)^2
(benchmarks/RESULTS_snf.md, section 3).

Reproduce:  python benchmarks/smc_levels.py [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json

import blackjax
import jax
import jax.numpy as jnp
from blackjax.smc import resampling

from sbi_kit.targets import many_well


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--quick", action="store_true", help="accepted for benchmarks/run.py; one seed")
    args = parser.parse_args()
    target, scale, d = many_well(32), 2.0, 32

    def logprior(x):
        return -0.5 * jnp.sum((x / scale) ** 2)

    def loglik(x):
        return target.log_density(x) - logprior(x)

    params = {"step_size": jnp.full((1,), 0.1), "inverse_mass_matrix": jnp.ones((1, d)),
              "num_integration_steps": jnp.full((1,), 10, jnp.int32)}
    smc = blackjax.adaptive_tempered_smc(logprior, loglik, blackjax.hmc.build_kernel(), blackjax.hmc.init, params,
                                         resampling.systematic, 0.5, num_mcmc_steps=5)
    step = jax.jit(smc.step)
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    for seed in seeds:
        # The same key use as benchmarks/ensemble.py's tempered_smc.
        k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
        state = smc.init(scale * jax.random.normal(k0, (2000, d)))
        levels = []
        while float(state.tempering_param) < 1:
            k1, sub = jax.random.split(k1)
            state, _ = step(sub, state)
            levels.append(round(float(state.tempering_param), 4))
        print(json.dumps({"benchmark": "smc_levels", "target": "many_well", "seed": seed, "levels": levels,
                          "schedule_k_over_16_squared": [round((k / 16) ** 2, 4) for k in range(1, 17)]}))


if __name__ == "__main__":
    main()
