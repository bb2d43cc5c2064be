"""Flow-augmented HMC against NUTS, numpyro NeuTra and flowMC, side by side.

Targets (TARGETS.md definitions): Neal's funnel (d = 10), the banana (d = 2),
the 4-mode mixture (d = 10, modes at +-8 e1 +- 8 e2), eight schools (centred,
numpyro model, unconstrained coordinates) and phi^4 on an 8 x 8 lattice
(hopping form, lam = 0.022, kappa = 0.27: a NUTS scan over kappa = 0.22 ..
0.28 put the peak of the connected susceptibility 64 (<m^2> - <|m|>^2) of
the 8 x 8 lattice between 0.26 and 0.28, so 0.27 is near criticality).

Samplers, 4 chains each, all on the same unconstrained log density:

* ``blackjax_nuts``: ``sbi_kit.nuts`` (blackjax NUTS, window adaptation);
* ``sbi_kit_neutra`` / ``sbi_kit_proposal`` / ``sbi_kit_both``: ``sbi_kit.samplers.flow_hmc``
  (RealNVP flow trained by reverse KL, then NUTS in latent space / MALA +
  flow proposals / both);
* ``numpyro_neutra``: numpyro ``AutoIAFNormal`` fitted by SVI (``Trace_ELBO``,
  one particle), ``NeuTraReparam``, then numpyro NUTS;
* ``flowmc``: flowMC's ``RQSpline_MALA_Bundle`` (MALA + RQ-spline proposals,
  trained on the chains during its training loops).

Metrics: ``ess`` is the smallest ArviZ bulk ESS over all coordinates (phi^4:
the ESS of the magnetisation, and ``iat`` = draws / ESS, its integrated
autocorrelation time in draws); gradient evaluations are counted as target
log-density-and-gradient calls: ``grads_train`` (reverse-KL / SVI / none),
``grads_warmup`` (adaptation and, for flowMC, its training loops),
``grads_sample`` (kept draws). ``ess_per_grad_incl`` divides by all three,
``ess_per_grad_excl`` by warm-up + sampling. ``ess_per_s`` divides by the
whole wall time (compilation included; the machine is shared, timings are
noisy). For the 4-mode mixture ``mode_weight_error`` is the largest absolute
error of the nearest-mode weights (true 1/4 each).

Output: one JSON object per line on stdout, then a line with the command to
reproduce. Reproduce::

    /tmp/venv/bin/python benchmarks/flow_hmc.py            # full
    /tmp/venv/bin/python benchmarks/flow_hmc.py --quick    # smoke run
    /tmp/venv/bin/python benchmarks/flow_hmc.py --targets funnel --samplers blackjax_nuts,sbi_kit_neutra
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import arviz as az
import jax
import numpy as np

import sbi_kit
from sbi_kit.samplers.flow_hmc import flow_hmc
from sbi_kit.targets.benchmarks import banana, four_mode, funnel, mixture_modes, phi4

NUM_CHAINS = 4


def make_target(name: str):
    if name == "funnel":
        return funnel(10)
    if name == "banana":
        return banana(2)
    if name == "four_mode":
        return four_mode(10)
    if name == "phi4":
        return phi4(8, kappa=0.27, lam=0.022)
    if name == "eight_schools_centered":
        from sbi_kit.models import eight_schools_centered as m

        return sbi_kit.from_numpyro(m.model, **m.data)
    raise ValueError(f"unknown target {name!r}")


# ------------------------------------------------------------------ metrics


def metrics(target, name, positions, grads_train, grads_warmup, grads_sample, wall, extra=None):
    x = np.asarray(positions, np.float64)
    if name == "phi4":
        m = x.mean(-1)  # magnetisation per site, (chains, draws)
        ess = float(az.ess(az.convert_to_dataset({"m": m}), method="bulk")["m"].values)
        out = {"ess": ess, "iat": x.shape[0] * x.shape[1] / ess, "mean_abs_m": float(np.abs(m).mean())}
    else:
        ess_all = az.ess(az.convert_to_dataset({"x": x}), method="bulk")["x"].values
        out = {"ess": float(np.min(ess_all))}
    total = grads_train + grads_warmup + grads_sample
    out.update(
        grads_train=int(grads_train), grads_warmup=int(grads_warmup), grads_sample=int(grads_sample),
        ess_per_grad_incl=out["ess"] / max(total, 1),
        ess_per_grad_excl=out["ess"] / max(grads_warmup + grads_sample, 1),
        wall_s=wall, ess_per_s=out["ess"] / wall,
    )
    if name == "four_mode":
        means, w = mixture_modes(target)
        flat = x.reshape(-1, x.shape[-1])
        nearest = np.argmin(((flat[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        weights = np.bincount(nearest, minlength=len(w)) / len(nearest)
        out["mode_weights"] = [round(float(v), 4) for v in weights]
        out["mode_weight_error"] = float(np.max(np.abs(weights - w)))
    if name == "funnel":
        out["std_x0"] = float(x[..., 0].std())
    if extra:
        out.update(extra)
    return out


# ------------------------------------------------------------------ samplers


def run_blackjax_nuts(target, key, cfg):
    t0 = time.perf_counter()
    tr = sbi_kit.nuts(target, key, num_chains=NUM_CHAINS, num_warmup=cfg["warmup"], num_draws=cfg["draws"], progress=False)
    wall = time.perf_counter() - t0
    extra = {"divergences": int(tr.stats["diverging"].sum())}
    return tr.positions, 0, tr.info["warmup_grad_evals"], tr.num_grad_evals, wall, extra


def run_flow_variant(variant):
    def run(target, key, cfg):
        local = "mala" if variant == "proposal" else "nuts"
        t0 = time.perf_counter()
        tr = flow_hmc(
            target, key, variant=variant, local=local, num_chains=NUM_CHAINS,
            num_warmup=cfg["warmup"], num_draws=cfg["draws"], num_train_steps=cfg["train_steps"],
            train_batch_size=cfg["batch"], anneal_steps=cfg["anneal"], num_refits=cfg["refits"],
            refit_steps=cfg["refit_steps"], flow_layers=cfg["layers"], flow_hidden=cfg["hidden"],
        )
        wall = time.perf_counter() - t0
        extra = {
            "divergences": int(np.sum(tr.stats["diverging"])),
            "acceptance_rate": tr.info["acceptance_rate"],
            "flow_acceptance_rate": tr.info["flow_acceptance_rate"],
            "train_s": tr.info["train_time"], "sampling_s": tr.info["sampling_time"],
        }
        return tr.positions, tr.info["train_grad_evals"], tr.info["warmup_grad_evals"], tr.num_grad_evals, wall, extra

    return run


def _numpyro_model(target):
    import numpyro
    import numpyro.distributions as dist

    # block: a numpyro-backed Target runs its own model inside log_density;
    # its sites must not leak into this model's trace.
    log_density = numpyro.handlers.block(target.log_density)

    def model():
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (target.dim,)))
        numpyro.factor("lp", log_density(x))

    return model


def run_numpyro_neutra(target, key, cfg):
    import numpyro
    from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoIAFNormal
    from numpyro.infer.reparam import NeuTraReparam

    model = _numpyro_model(target)
    k_svi, k_mcmc = jax.random.split(key)
    t0 = time.perf_counter()
    guide = AutoIAFNormal(model, num_flows=2, hidden_dims=[cfg["hidden"][0]] * 2)
    svi = SVI(model, guide, numpyro.optim.Adam(5e-3), Trace_ELBO(num_particles=cfg["batch"]))
    svi_result = svi.run(k_svi, cfg["train_steps"], progress_bar=False)
    neutra = NeuTraReparam(guide, svi_result.params)
    mcmc = MCMC(NUTS(neutra.reparam(model)), num_warmup=cfg["warmup"], num_samples=cfg["draws"],
                num_chains=NUM_CHAINS, chain_method="vectorized", progress_bar=False)
    mcmc.warmup(k_mcmc, collect_warmup=True, extra_fields=("num_steps",))
    warm_grads = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    sample_grads = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    zs = mcmc.get_samples(group_by_chain=True)
    # Map latent draws back to x through the guide's transform.
    latent = zs["auto_shared_latent"]
    transform = guide.get_transform(svi_result.params)
    x = np.asarray(jax.vmap(jax.vmap(transform))(latent))
    wall = time.perf_counter() - t0
    return x, cfg["train_steps"] * cfg["batch"], warm_grads, sample_grads, wall, {}


def run_flowmc(target, key, cfg):
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    n_local, n_global = cfg["flowmc_local"], cfg["flowmc_global"]
    n_train_loops, n_prod_loops = cfg["flowmc_train_loops"], cfg["flowmc_prod_loops"]
    k_bundle, k_sampler, k_init = jax.random.split(key, 3)
    t0 = time.perf_counter()
    bundle = RQSpline_MALA_Bundle(
        k_bundle, NUM_CHAINS, target.dim, lambda x, data: target.log_density(x),
        n_local_steps=n_local, n_global_steps=n_global, n_training_loops=n_train_loops,
        n_production_loops=n_prod_loops, n_epochs=cfg["flowmc_epochs"], batch_size=1000,
        n_max_examples=5000, n_NFproposal_batch_size=1000, verbose=False,
    )
    sampler = Sampler(n_dim=target.dim, n_chains=NUM_CHAINS, rng_key=k_sampler,
                      resource_strategy_bundles=bundle, checkpoint_interval=0, outdir="/tmp/flowmc_out/")
    init = jax.random.uniform(k_init, (NUM_CHAINS, target.dim), minval=-2, maxval=2)
    sampler.sample(init, {})
    x = np.asarray(sampler.resources["positions_production"].data)
    wall = time.perf_counter() - t0
    # One log density (+ gradient for MALA) per local and per global step and chain.
    per_loop = NUM_CHAINS * (n_local + n_global)
    return x, 0, n_train_loops * per_loop, n_prod_loops * per_loop, wall, {}


SAMPLERS = {
    "blackjax_nuts": run_blackjax_nuts,
    "sbi_kit_neutra": run_flow_variant("neutra"),
    "sbi_kit_proposal": run_flow_variant("proposal"),
    "sbi_kit_both": run_flow_variant("both"),
    "numpyro_neutra": run_numpyro_neutra,
    "flowmc": run_flowmc,
}

FULL = dict(warmup=500, draws=1000, train_steps=600, batch=128, anneal=0, refits=0, refit_steps=300,
            layers=6, hidden=(64, 64), flowmc_local=20, flowmc_global=20, flowmc_train_loops=10,
            flowmc_prod_loops=25, flowmc_epochs=20)
QUICK = dict(FULL, warmup=100, draws=200, train_steps=50, batch=32, layers=2, hidden=(16, 16),
             flowmc_train_loops=2, flowmc_prod_loops=5, flowmc_epochs=2)
# Multimodal: annealed training and one re-fit, so the flow finds all modes.
PER_TARGET = {"four_mode": dict(anneal=300, refits=1), "phi4": dict(refits=1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--targets", default="funnel,eight_schools_centered,four_mode,banana,phi4")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for tname in args.targets.split(","):
        target = make_target(tname)
        cfg = dict(base, **({} if args.quick else PER_TARGET.get(tname, {})))
        for sname in args.samplers.split(","):
            key = jax.random.PRNGKey(args.seed)
            print(f"# {tname} / {sname}", file=sys.stderr, flush=True)
            try:
                pos, gt, gw, gs, wall, extra = SAMPLERS[sname](target, key, cfg)
                row = metrics(target, tname, pos, gt, gw, gs, wall, extra)
                row.update(kind="run", target=tname, sampler=sname, ok=True)
            except Exception as e:  # record failures instead of losing the other rows
                row = {"kind": "run", "target": tname, "sampler": sname, "ok": False,
                       "error": f"{type(e).__name__}: {e}"[:500]}
            print(json.dumps(row, default=float), flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(json.dumps({
        "kind": "summary", "machine": platform.machine(), "nproc": os.cpu_count(), "loadavg": load,
        "jax": jax.__version__, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()},
        "reproduce": "/tmp/venv/bin/python benchmarks/flow_hmc.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }), flush=True)


if __name__ == "__main__":
    main()
