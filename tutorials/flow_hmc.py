# %% [markdown]
# # Flow-augmented HMC: funnels and multimodal targets
#
# HMC and NUTS struggle in two situations: when the scale of the posterior
# changes from place to place (a funnel: no single step size fits the neck
# and the mouth), and when the posterior has well-separated modes (local
# dynamics almost never cross). A normalizing flow `x = T(z)` that maps a
# standard normal to (roughly) the target helps with both:
#
# * **neutra** — run NUTS on the pulled-back density `log p(T(z)) + log|det dT/dz|`
#   in the flow's latent space, where the funnel has been straightened out;
# * **proposal** — mix local steps with independence Metropolis-Hastings
#   proposals drawn from the flow, which jump between modes;
# * **both** — latent dynamics plus independence proposals.
#
# In every variant the flow is frozen after warm-up, so the production chain
# is exactly invariant: a poor flow makes mixing slower, never the answer wrong.
# Run this file as a script or open it with jupytext; `SBI_KIT_QUICK=1`
# shrinks every run for CI.

# %%
import os

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import sbi_kit
from sbi_kit.flows import load_flow, save_flow
from sbi_kit.samplers.flow_hmc import flow_hmc
from sbi_kit.targets.benchmarks import four_mode

QUICK = os.environ.get("SBI_KIT_QUICK") == "1"
SIZE = dict(num_chains=2, num_warmup=60, num_draws=100) if QUICK else dict(num_chains=4, num_warmup=500, num_draws=1000)
TRAIN_STEPS = 20 if QUICK else 800
FLOW = dict(flow_kind="affine", flow_layers=2, flow_hidden=(8,)) if QUICK else dict(flow_kind="affine", flow_layers=6, flow_hidden=(64, 64))

# %% [markdown]
# ## 1. A funnel-shaped numpyro model
# Neal's funnel: `v ~ N(0, 3)`, `x_k | v ~ N(0, exp(v / 2))` for nine `x_k`.
# Written centred, as here, it is the classic failure case of NUTS: in the
# narrow neck (v very negative) the adapted step size is far too large, the
# sampler diverges and under-explores, and the reported std of `v` falls short of 3.

# %%
def funnel(dim=10):
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jax.numpy.exp(v / 2.0)).expand([dim - 1]).to_event(1))


target = sbi_kit.from_numpyro(funnel)
nuts_trace = sbi_kit.nuts(target, jax.random.PRNGKey(0), progress=False, **SIZE)
v = nuts_trace.constrained()["v"]
print(f"NUTS: std(v) = {v.std():.2f} (exact 3), {int(nuts_trace.stats['diverging'].sum())} divergences, "
      f"{nuts_trace.num_grad_evals} gradients")

# %% [markdown]
# ## 2. NeuTra: NUTS in the flow's latent space
# `flow_hmc` first fits a RealNVP flow to the target by reverse KL (each step
# costs `train_batch_size` target gradients, counted separately in
# `trace.info["train_grad_evals"]`), then adapts NUTS in latent space and samples.

# %%
trace = flow_hmc(target, jax.random.PRNGKey(1), variant="neutra", num_train_steps=TRAIN_STEPS,
                 train_batch_size=128, num_refits=0, **FLOW, **SIZE)
v = trace.constrained()["v"]
print(f"NeuTra: std(v) = {v.std():.2f}, {int(trace.stats['diverging'].sum())} divergences, "
      f"{trace.num_grad_evals} sampling + {trace.info['train_grad_evals']} training gradients")
idata = trace.to_arviz()  # the usual ArviZ object: constrained names, sample_stats
print(idata.posterior["v"].shape)

# %% [markdown]
# ## 3. A multimodal target: flow proposals
# Four equal-weight Gaussians at `(+-8, +-8, 0, ..., 0)` in ten dimensions.
# NUTS chains stay in the mode they start near, so the mode weights they
# report are whatever the initialisation happened to give. With annealed
# reverse-KL training the flow covers all four modes, and its independence
# proposals move chains between them. The mode-weight error is the largest
# absolute difference to the true weights (1/4 each).

# %%
mixture = four_mode(10)
means = mixture.info["mode_means"]


def mode_weights(trace):
    x = trace.positions.reshape(-1, mixture.dim)
    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=len(means)) / len(nearest)


nuts_mix = sbi_kit.nuts(mixture, jax.random.PRNGKey(2), progress=False, **SIZE)
flow_mix = flow_hmc(mixture, jax.random.PRNGKey(3), variant="proposal", local="mala",
                    num_train_steps=TRAIN_STEPS, anneal_steps=TRAIN_STEPS // 2, train_batch_size=128,
                    num_refits=0 if QUICK else 1, refit_steps=300, **FLOW, **SIZE)
for name, tr in (("NUTS", nuts_mix), ("flow proposals", flow_mix)):
    w = mode_weights(tr)
    print(f"{name:>15}: mode weights {np.round(w, 3)}, max error {np.abs(w - 0.25).max():.3f}")
print(f"flow proposals accepted {flow_mix.stats['flow_accepted'].mean():.0%} of the time")

# %% [markdown]
# ## 4. Reusing the flow
# `sbi_kit.flows` is a shared module: the trained flow comes back in
# `trace.info["flow"]`; you can also fit one yourself (`fit_reverse_kl`
# against a target, `fit_forward_kl` on draws), pass it to
# `flow_hmc(..., flow=...)`, and save it as arrays plus a JSON config.

# %%
flow = flow_mix.info["flow"]
save_flow("mixture_flow", flow)  # mixture_flow.json + mixture_flow.npz, no pickle
restored = load_flow("mixture_flow")
x = flow.sample(jax.random.PRNGKey(4), 5)
assert np.array_equal(np.asarray(restored.log_prob(x)), np.asarray(flow.log_prob(x)))
fit = flow_mix.info["fits"].get("reverse_kl")
if fit is not None:
    print(f"reverse-KL fit: {fit.num_steps} steps, {fit.num_target_evals} target gradients, "
          f"{fit.num_skipped} skipped draws, final loss {fit.losses[-1]:.2f}")
