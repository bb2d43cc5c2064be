r"""Eight schools, centred parametrisation.

Model, for schools :math:`j = 1, \dots, J` (:math:`J = 8`)::

    mu        ~ Normal(0, 5)
    tau       ~ HalfCauchy(5)            (Cauchy(0, 5) truncated to tau > 0)
    theta[j]  ~ Normal(mu, tau)
    y[j]      ~ Normal(theta[j], sigma[j])

Source: the SAT coaching experiment of Rubin (1981), "Estimation in parallel
randomized experiments", J. Educ. Stat. 6(4); Gelman et al., *Bayesian Data
Analysis* (3rd ed.), section 5.5.  Priors as in posteriordb's
``eight_schools_noncentered`` (and ``eight_schools_centered``) Stan programs.

This is the same posterior over ``(mu, tau, theta)`` as
``eight_schools_noncentered``, written in the parametrisation whose funnel
between ``tau`` and ``theta`` gives HMC divergences: a standard hard case for
samplers, kept on purpose.

Sites: latent ``mu`` (scalar), ``tau`` (scalar, positive), ``theta``
(shape ``(J,)``); observed ``y``.
"""

import numpy as np
import numpyro
import numpyro.distributions as dist

data = {
    "J": 8,
    "y": np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]),
    "sigma": np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]),
}


def model(J, sigma, y=None):
    """Centred hierarchical model of ``J`` school effects.

    Args:
        J: number of schools.
        sigma: known standard errors of the school estimates, shape ``(J,)``.
        y: observed school estimates, shape ``(J,)``; ``None`` samples them
            (prior predictive).
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)
