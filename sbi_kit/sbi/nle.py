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

from sbi_kit.sbi import _conditional as cond
from sbi_kit.sbi._posterior import LikelihoodPosterior
from sbi_kit.sbi._train import check_training_settings

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

        def check_initial(init, x_dim):
            if (not isinstance(init, LikelihoodPosterior) or init.kind != "nle"
                    or init.prior.dim != self.prior.dim or init.x_dim != x_dim):
                raise ValueError("initial must be an NLE posterior with the same parameter and data dimensions")

        spec, params, standardizer, info = self._fit_flow(
            key, theta, x, what="NLE", model_data=True, check_initial=check_initial, initial=initial,
            settings=settings, validation_mask=validation_mask, lr_decays=lr_decays,
        )
        return LikelihoodPosterior(self.prior, "nle", spec, params, standardizer, info)
