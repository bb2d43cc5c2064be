# %% [markdown]
# # Quickstart: from a numpyro model to a kernel-thinned posterior
#
# This tutorial takes the eight-schools model (non-centred), turns it into an
# sbi_kit `Target`, samples it with NUTS on several chains at once, looks at
# the result with ArviZ, and compresses the draws to a small coreset with
# kernel thinning. Run it as a script (`python tutorials/quickstart.py`) or
# open it with jupytext. `SBI_KIT_QUICK=1` shrinks the run for CI.

# %%
import os

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import sbi_kit

QUICK = os.environ.get("SBI_KIT_QUICK") == "1"
NUM_WARMUP, NUM_DRAWS = (200, 200) if QUICK else (1000, 1000)

# %% [markdown]
# ## 1. A numpyro model
# Any numpyro model with continuous latent sites works unchanged; the data are
# its arguments. Constrained sites (here `tau > 0`) are sampled in numpyro's
# unconstrained space and mapped back for you.

# %%
def eight_schools(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", J):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


data = dict(J=8, y=np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]),
            sigma=np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]))
target = sbi_kit.from_numpyro(eight_schools, **data)
print(target)

# %% [markdown]
# ## 2. NUTS on four chains
# Chains adapt independently (Stan's window adaptation, from blackjax) and run
# vmapped in one compiled loop; with several devices they are sharded.

# %%
trace = sbi_kit.nuts(target, jax.random.PRNGKey(0), num_chains=4, num_warmup=NUM_WARMUP,
                     num_draws=NUM_DRAWS, progress=False)
print(f"{trace.num_grad_evals} gradient evaluations, {int(trace.stats['diverging'].sum())} divergences")

# %% [markdown]
# ## 3. ArviZ
# `to_arviz()` gives posterior (site names and shapes), sample_stats (ArviZ's
# names) and, because the model has an observed site, log_likelihood and
# observed_data, so `az.loo` works.

# %%
idata = trace.to_arviz()
print(az.summary(idata, var_names=["mu", "tau", "theta"]))
print(az.loo(idata))
assert abs(float(idata.posterior["mu"].mean()) - 4.4) < 1.0  # posteriordb reference: 4.41

# %% [markdown]
# ## 4. Kernel thinning
# Compress the pooled draws to 32 points that keep the distribution: the
# coreset's MMD to all draws is far below that of standard thinning.

# %%
from sbi_kit.thinning import thin

coreset = thin(idata, 32, method="kt", key=jax.random.PRNGKey(1))
print(coreset.posterior["mu"].shape, "coreset draws of mu")
print("mean of mu: all draws %.2f, coreset %.2f" % (float(idata.posterior["mu"].mean()),
                                                  float(coreset.posterior["mu"].mean())))
