"""How exact is NUTS on Neal's centred funnel (d = 10)? Prints JSON lines.

For several seeds and target acceptance rates, runs sbi_kit NUTS on the
`sbi_kit.targets.curved.funnel(10)` benchmark (exact std(x0) = 3) and reports
std(x0), the z-scores of the mean and sd of x0 in ArviZ Monte Carlo standard
errors, and the divergences. This documents a known limitation of NUTS (the
neck of the funnel is under-explored) that flow-augmented HMC is meant to fix.

Reproduce:  python benchmarks/nuts_funnel_exactness.py [--quick]
"""

import argparse
import json
import time

import arviz as az
import jax
import numpy as np

import sbi_kit
from sbi_kit.targets.curved import funnel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, few draws (smoke run)")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2, 3]
    accepts = [0.8] if args.quick else [0.8, 0.9]
    warmup, draws = (200, 200) if args.quick else (1000, 1500)
    target = funnel(10)
    print(json.dumps({"command": "python benchmarks/nuts_funnel_exactness.py" + (" --quick" if args.quick else "")}))
    for accept in accepts:
        for seed in seeds:
            t0 = time.perf_counter()
            trace = sbi_kit.nuts(target, jax.random.PRNGKey(seed), num_chains=4, num_warmup=warmup,
                                 num_draws=draws, target_accept=accept, progress=False)
            x0 = np.asarray(trace.positions[..., 0], dtype=np.float64)
            ds = az.convert_to_dataset({"x0": x0})
            mcse_mean = float(az.mcse(ds, method="mean")["x0"])
            mcse_sd = float(az.mcse(ds, method="sd")["x0"])
            print(json.dumps({
                "benchmark": "nuts_funnel_exactness", "target_accept": accept, "seed": seed,
                "chains": 4, "warmup": warmup, "draws": draws,
                "std_x0": round(float(x0.std(ddof=1)), 3), "exact_std_x0": 3.0,
                "z_mean_x0": round(float(x0.mean()) / mcse_mean, 2),
                "z_std_x0": round((float(x0.std(ddof=1)) - 3.0) / mcse_sd, 2),
                "ess_bulk_x0": round(float(az.ess(ds)["x0"]), 1),
                "divergences": int(trace.stats["diverging"].sum()),
                "seconds": round(time.perf_counter() - t0, 2),
            }))


if __name__ == "__main__":
    main()
