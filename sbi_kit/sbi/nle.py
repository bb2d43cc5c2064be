"""Neural likelihood estimation (NLE): a conditional flow q(x | theta), posterior by MCMC.

NLE fits a conditional normalizing flow to simulated pairs by maximum
likelihood of ``x`` given ``theta`` (the flow's context is the prior's
unconstrained, z-scored parameter vector). The posterior for an observation,
``q(x_obs | theta) p(theta)``, is a `LikelihoodPosterior`: an sbi_kit `Target`
sampled with NUTS on many chains. Unlike NPE, NLE is not amortised over
observations, but it handles several iid observations of one parameter
directly (their log likelihoods add up).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.sbi import _conditional as cond
from sbi_kit.sbi._data import check_pairs
from sbi_kit.sbi._posterior import LikelihoodPosterior
from sbi_kit.sbi._train import check_training_settings, fit_minibatch, kept_validation_mask
from sbi_kit.sbi.prior import check_same_prior

Array = jax.Array


class NLE(cond.ConditionalFlowEstimator):
    """Neural likelihood estimation with a conditional flow on the data.

    Args:
      prior: anything `as_prior` accepts.
      flow: `make_flow` options as a dict or `FlowConfig` (default: 4-layer
        spline flow, (50, 50) conditioners).
      embedding: None, or hidden widths of an MLP applied to the z-scored
        parameters before they condition the flow.
      embedding_dim: the embedding's output width (default ``min(dim, 20)``).
      activation: embedding activation.
      z_score: standardise x and theta (unconstrained) with the training moments.
      dtype: float32 or float64 (default: JAX's default float).
    """

    def fit(
        self,
        key: Array,
        theta: Array,
        x: Array,
        *,
        max_epochs: int = 500,
        batch_size: int = 200,
        learning_rate: float = 5e-4,
        validation_fraction: float = 0.1,
        patience: int = 20,
        initial: LikelihoodPosterior | None = None,
        validation_mask=None,
        lr_decays: int = 2,
    ) -> LikelihoodPosterior:
        """Train on ``theta (n, dim)`` (constrained) and ``x (n, x_dim)``.

        NaN or inf rows of ``x`` are refused (dropping them would bias the
        likelihood); see `simulate`'s ``drop_invalid``. Other arguments as in
        `NPE.fit`; ``initial`` continues training a previous NLE posterior.

        Returns:
          A `LikelihoodPosterior` (kind ``"nle"``).
        """
        settings = check_training_settings(max_epochs, batch_size, learning_rate, validation_fraction, patience)
        validation_mask = kept_validation_mask(validation_mask, x)
        theta, x = check_pairs(self.prior, theta, x, drop_invalid_x=False, what="NLE")
        u = np.asarray(self.prior.to_unconstrained(jnp.asarray(theta, self.dtype)))
        if not np.all(np.isfinite(u)):
            raise ValueError("some theta map to non-finite unconstrained values (on the edge of the prior support)")
        k_init, k_fit = jax.random.split(key)
        if initial is not None:
            if (not isinstance(initial, LikelihoodPosterior) or initial.kind != "nle"
                    or initial.prior.dim != self.prior.dim or initial.x_dim != x.shape[1]):
                raise ValueError("initial must be an NLE posterior with the same parameter and data dimensions")
            check_same_prior(self.prior, initial.prior, "initial")
            spec, params, standardizer = initial.spec, initial.params, initial.standardizer
        else:
            spec, params, standardizer = cond.init_conditional(
                k_init, x, u, flow=self.flow, embedding_hidden=self.embedding_hidden,
                embedding_dim=self.embedding_dim, activation=self.activation, z_score=self.z_score,
                dtype=self.dtype,
            )
        dt = jnp.dtype(spec.flow.dtype)
        max_epochs, batch_size, lr, vf, patience = settings
        params, info = fit_minibatch(
            cond.NegLogProb(spec), params, standardizer, (jnp.asarray(x, dt), jnp.asarray(u, dt)), k_fit,
            max_epochs=max_epochs,
            batch_size=batch_size, learning_rate=lr, validation_fraction=vf, patience=patience,
            validation_mask=validation_mask, lr_decays=lr_decays,
        )
        return LikelihoodPosterior(self.prior, "nle", spec, params, standardizer, info)
