# %% [markdown]
# # Stochastic normalizing flows on the double well
#
# A normalizing flow maps a Gaussian to (roughly) the target, and importance
# weights `p(x) / q(x)` correct what it gets wrong. A flow is a smooth,
# invertible map, so it struggles to split one Gaussian blob into two
# separated wells: it leaves a bridge of probability over the barrier, and
# its weights become heavy-tailed.
#
# A **stochastic normalizing flow** (SNF; Wu, Koehler and Noe, NeurIPS 2020)
# interleaves the flow layers with a few steps of a sampler (Langevin, MALA,
# random-walk Metropolis, underdamped Langevin), each targeting a point
# `lam` on the path `u_lam = (1 - lam) u_base + lam u_target`. The samplers
# push probability off the barrier into the wells, and every path still comes
# with an **exact** importance weight from the ratio of backward to forward
# transition probabilities, so reweighted estimates stay unbiased.
#
# This tutorial reproduces the paper's double-well experiment: a plain
# RealNVP flow against an SNF with the same RealNVP layers plus Metropolis
# blocks, same training. `SBI_KIT_QUICK=1` shrinks every run for CI.

# %%
import os

import jax
import numpy as np

from sbi_kit.samplers.snf import FlowBlock, StochasticBlock, make_snf, sample_snf, train_snf
from sbi_kit.targets.wells import double_well

QUICK = os.environ.get("SBI_KIT_QUICK") == "1"
STEPS, BATCH, HIDDEN, N = (40, 32, (8,), 4_000) if QUICK else (1500, 128, (64, 64), 200_000)

# %% [markdown]
# ## 1. The target
# The paper's energy `u(x) = x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2` (in kT): two
# wells along `x1`, the right one deeper (84% of the mass), a barrier of about
# 9.5 kT between them. `double_well` knows `log Z` and the marginal of `x1`
# by quadrature and has an exact sampler, which we use as training data.

# %%
target = double_well(2, a=-0.5, b=-6.0, c=1.0)
well = target.info["well"]
print(f"log Z = {target.log_Z:.4f}, right-well mass = {target.info['right_well_mass']:.4f}")
data = np.asarray(target.sample(jax.random.PRNGKey(0), 10_000))

# %% [markdown]
# ## 2. Two models with the same flow layers
# Both are built by `make_snf` from blocks: `FlowBlock` is a stack of RealNVP
# coupling layers (`sbi_kit.flows`), `StochasticBlock(kind, lam, step_size,
# num_steps)` a sampler at interpolation `lam`. The last stochastic block must
# sit at `lam = 1` (the target); `make_snf` checks this and every step size
# before anything runs.

# %%
def blocks(with_mc):
    out = []
    for i in range(3):
        out.append(FlowBlock(2, "affine", HIDDEN))
        if with_mc:
            out.append(StochasticBlock("rwmh", lam=(i + 1) / 3, step_size=0.25, num_steps=10))
    return out


models = {name: make_snf(jax.random.PRNGKey(1), target, blocks(name == "SNF")) for name in ("RealNVP", "SNF")}

# %% [markdown]
# ## 3. Training
# `train_snf` minimises a mix of the forward KL (maximum likelihood of the data
# through the backward path) and the reverse KL (energy based); gradients flow
# through the reparametrised noise of every block. Both models get the same
# optimiser, steps and batch size.

# %%
trained = {}
for name, model in models.items():
    trained[name], info = train_snf(model, target, jax.random.PRNGKey(2), num_steps=STEPS, batch_size=BATCH,
                                    learning_rate=1e-3, loss="mixed", alpha=0.5, draws=data)
    print(f"{name:>8}: loss {info.losses[0]:.2f} -> {info.losses[-1]:.2f}, "
          f"{info.num_target_evals} target evaluations")

# %% [markdown]
# ## 4. Weighted samples, log Z and the free energy along x1
# `sample_snf` returns an `SNFResult`: a `Trace` (with `log_weight` in its
# sample stats), the log Z estimate with its standard error, the IS ESS, the
# Pareto k of the weights and the number of paths that hit a non-finite energy
# (weight zero). The free energy `F(x1) = -log p(x1)` from the reweighted
# histogram is compared with the exact one; the bias is the paper's: the mean
# difference over `-2.25 < x1 < 2.25` after shifting both to zero at their minimum.
#
# In quick mode (40 training steps, 4000 draws) these numbers are noise. With
# the full settings, `benchmarks/snf_double_well.py` measured over ten seeds
# 0.105 +- 0.023 kT for the SNF and 0.249 +- 0.033 kT for the RealNVP (mean +-
# SE); the SNF was better on 9 of 10 seeds (paired t = -3.29, p = 0.009; see
# `benchmarks/RESULTS_snf.md`).

# %%
bins = np.linspace(-3, 3, 101)
centers = 0.5 * (bins[1:] + bins[:-1])
region = (centers > -2.25) & (centers < 2.25)
f_exact = well.energy(centers) - well.energy(centers).min()

results = {}
for name, model in trained.items():
    res = sample_snf(model, target, jax.random.PRNGKey(3), N // 4, num_batches=4)
    results[name] = res
    x1 = res.trace.positions.reshape(-1, 2)[:, 0]
    w = np.exp(res.log_weights.ravel() - res.log_weights.max())
    with np.errstate(divide="ignore"):
        f_hat = -np.log(np.histogram(x1, bins, weights=w)[0])
    f_hat -= f_hat[np.isfinite(f_hat)].min()
    diff = (f_exact - f_hat)[region]
    bias = abs(np.mean(diff[np.isfinite(diff)]))
    print(f"{name:>8}: log Z = {res.log_z:.4f} +- {res.log_z_se:.4f} (exact {target.log_Z:.4f}), "
          f"IS ESS {res.is_ess:.2f}, Pareto k {res.pareto_k:.2f}, free-energy bias {bias:.2f} kT")

# %% [markdown]
# ## 5. Using the weighted draws
# `result.resample(key, n)` gives `n` equally weighted draws (systematic
# resampling); `result.weighted_mean(fn)` a self-normalised estimate with its
# standard error; `result.trace.to_arviz()` an `InferenceData` whose
# sample_stats carry `log_weight`.

# %%
snf_result = results["SNF"]
draws = snf_result.resample(jax.random.PRNGKey(4), 2000)
p_right, se = snf_result.weighted_mean(lambda x: (x[0] > well.barrier).astype(x.dtype))
print(f"right-well mass {p_right[0]:.3f} +- {se[0]:.3f} (exact {target.info['right_well_mass']:.3f}); "
      f"resampled: {np.mean(draws[:, 0] > well.barrier):.3f}")
idata = snf_result.trace.to_arviz()
print(idata.sample_stats["log_weight"].shape)

# %% [markdown]
# ## 6. Many wells: resampling the population
# Per-path weights degenerate when the target is a product of many bimodal
# factors: on `many_well(8)` (four double-well pairs, 16 modes) a path must
# land in the right well of every pair at once. `resample_threshold` turns each
# batch into a population that is resampled before a stochastic block
# whenever its effective sample size falls below that fraction (the SMC form
# of an SNF, also called annealed flow transport); `log Z` stays unbiased and
# its standard error comes from the spread over batches. Here both runs use
# the same HMC blocks (`kind="hmc"`: fresh momentum, `num_leapfrogs` leapfrog
# steps, Metropolis correction) and the same number of target evaluations.
# On the 32-d many-well this is what brings the SNF level with tempered SMC
# (`benchmarks/RESULTS_snf.md`).

# %%
from sbi_kit.targets import many_well  # noqa: E402

wells = many_well(8)
K = 8 if QUICK else 16
hmc_blocks = [StochasticBlock("hmc", lam=k / K, step_size=0.1, num_steps=2, num_leapfrogs=10) for k in range(1, K + 1)]
model = make_snf(jax.random.PRNGKey(5), wells, hmc_blocks, base_scale=2.0)
n_pop = 250 if QUICK else 2000
pop = sample_snf(model, wells, jax.random.PRNGKey(6), n_pop, num_batches=4, resample_threshold=0.5)
# The same evaluations spent on more paths without resampling (no extra evaluation per block there).
plain = sample_snf(model, wells, jax.random.PRNGKey(6), pop.num_target_evals // (4 * model.target_evals_per_sample()),
                   num_batches=4)
for name, res in (("per-path weights", plain), ("resampled", pop)):
    print(f"{name:>16}: log Z error {abs(res.log_z - wells.log_Z):.3f} (SE {res.log_z_se:.3f}), "
          f"final IS ESS {res.is_ess:.3f}, Pareto k {res.pareto_k:.2f}, {res.num_target_evals} evaluations")
