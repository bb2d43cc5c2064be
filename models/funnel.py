r"""Neal's funnel in dimension 10.

Model (``model``, centred)::

    v       ~ Normal(0, 3)                       (x_0 in Neal's notation)
    x[k]    ~ Normal(0, exp(v / 2)),  k = 1, ..., 9, independent given v

Source: R. M. Neal (2003), "Slice sampling", Ann. Statist. 31(3), section 8
(the ten-dimensional funnel).  There are no data (``data = {}``); the target
is the prior itself, so exact draws are available through forward sampling
(``numpyro.infer.Predictive``), and the marginals are ``v ~ N(0, 3^2)`` and
symmetric ``x[k]`` with heavy tails.

``funnel_noncentered`` is the same distribution over ``(v, x)`` written as
``x = exp(v / 2) * x_std`` with ``x_std ~ N(0, I_9)``, which removes the funnel
geometry from the sampled space.

Sites: ``model`` has latent ``v`` (scalar) and ``x`` (shape ``(9,)``);
``funnel_noncentered`` has latent ``v`` and ``x_std`` (shape ``(9,)``) and
deterministic ``x`` (shape ``(9,)``).
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

DIM = 10
data = {}


def model(dim=DIM):
    """Centred funnel of total dimension ``dim`` (``v`` plus ``dim - 1`` coordinates ``x``)."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2.0)).expand([dim - 1]).to_event(1))


def funnel_noncentered(dim=DIM):
    """Non-centred funnel of total dimension ``dim``; same law of ``(v, x)`` as ``model``."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    x_std = numpyro.sample("x_std", dist.Normal(0.0, 1.0).expand([dim - 1]).to_event(1))
    numpyro.deterministic("x", jnp.exp(v / 2.0) * x_std)
