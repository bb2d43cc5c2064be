r"""Child's test score on mother's IQ (posteriordb ``kidiq-kidscore_momiq``).

Model, for children :math:`i = 1, \dots, N` (:math:`N = 434`)::

    beta[1], beta[2]  ~ flat (improper uniform on the real line)
    sigma             ~ HalfCauchy(2.5)        (Cauchy(0, 2.5) truncated to sigma > 0)
    kid_score[i]      ~ Normal(beta[1] + beta[2] * mom_iq[i], sigma)

Source: Gelman and Hill (2007), *Data Analysis Using Regression and
Multilevel/Hierarchical Models*, chapter 3 (the ``kidiq`` data, a subsample of
the National Longitudinal Survey of Youth).  Model and data are posteriordb's
``kidscore_momiq.stan`` and ``kidiq`` (posterior
``kidiq-kidscore_momiq``): that Stan program gives ``beta`` no prior statement
(flat) and ``sigma ~ cauchy(0, 2.5)`` on ``real<lower=0>``.  The data are a copy
of posteriordb's ``kidiq`` data file, stored in ``data/kidiq.json`` beside
this module (only ``kid_score`` and ``mom_iq`` are used).

Numpyro's ``beta`` is 0-based: ``beta[0]`` is posteriordb's ``beta[1]``
(intercept), ``beta[1]`` its ``beta[2]`` (slope on ``mom_iq``, unstandardised).

Sites: latent ``beta`` (shape ``(2,)``), ``sigma`` (scalar, positive);
observed ``kid_score``.
"""

import json
from pathlib import Path

import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "kidiq.json"


def _load_data(path=DATA_FILE):
    """Return the model's keyword arguments read from posteriordb's ``kidiq`` JSON."""
    raw = json.loads(Path(path).read_text())
    return {
        "N": int(raw["N"]),
        "mom_iq": np.asarray(raw["mom_iq"], dtype=float),
        "kid_score": np.asarray(raw["kid_score"], dtype=float),
    }


data = _load_data()


def model(N, mom_iq, kid_score=None):
    """Linear regression of ``kid_score`` on ``mom_iq`` with a flat prior on ``beta``.

    Args:
        N: number of children.
        mom_iq: mother's IQ score, shape ``(N,)``.
        kid_score: child's test score, shape ``(N,)``; ``None`` samples it.
    """
    beta = numpyro.sample(
        "beta", dist.ImproperUniform(dist.constraints.real, (), event_shape=(2,))
    )
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    with numpyro.plate("child", N):
        numpyro.sample(
            "kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score
        )
