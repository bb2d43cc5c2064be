r"""Bayesian logistic regression: malignancy of breast tumours from six nucleus features.

Model, for tumours :math:`i = 1, \dots, N` (:math:`N = 569`) and standardised
features :math:`X_{i,k}`, :math:`k = 1, \dots, K` (:math:`K = 6`)::

    alpha       ~ Normal(0, 5)                 (intercept)
    beta[k]     ~ Normal(0, 2.5)               (coefficients, independent)
    y[i]        ~ Bernoulli(logit^{-1}(alpha + X[i] . beta))

The N(0, 2.5) prior on coefficients of unit-scale inputs is the weakly
informative default of Gelman et al. (2008), "A weakly informative default
prior distribution for logistic and other regression models", Ann. Appl. Stat.

Data: the Breast Cancer Wisconsin (Diagnostic) data set (Street, Wolberg and
Mangasarian, 1993; UCI Machine Learning Repository, CC BY 4.0), as bundled with
scikit-learn.  ``data/breast_cancer.csv`` beside this module holds all 569
rows: ``malignant`` (1 malignant, 0 benign) and the standardised features
listed in ``FEATURES``; ``data/make_breast_cancer_csv.py`` regenerates it and
documents the provenance.

Sites: latent ``alpha`` (scalar), ``beta`` (shape ``(K,)``, ordered as
``FEATURES``); observed ``y``.
"""

from pathlib import Path

import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "breast_cancer.csv"


def _load_data(path=DATA_FILE):
    """Return ``(data, feature_names)`` read from the shipped CSV."""
    path = Path(path)
    with path.open() as fh:
        header = fh.readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return {"X": table[:, 1:], "y": table[:, 0]}, tuple(header[1:])


data, FEATURES = _load_data()


def model(X, y=None):
    """Logistic regression of binary ``y`` on the columns of ``X``.

    Args:
        X: standardised features, shape ``(N, K)``.
        y: binary outcomes (0 or 1), shape ``(N,)``; ``None`` samples them.
    """
    n, k = np.shape(X)
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([k]).to_event(1))
    logits = alpha + X @ beta
    with numpyro.plate("tumour", n):
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)
