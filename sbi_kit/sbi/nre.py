"""Neural ratio estimation (NRE), contrastive with K atoms (SNRE-B, Durkan et al. 2020).

A classifier ``g(theta, x)`` learns to pick, for each simulated ``x_i``, its
own parameter ``theta_i`` among ``K`` candidates (``theta_i`` plus ``K - 1``
parameters of other pairs in the minibatch), by minimising the softmax cross
entropy ``-g(theta_i, x_i) + logsumexp_k g(theta_k, x_i)``. Its optimum is
``g = log p(x | theta) - log p(x) + c(x)`` — the likelihood up to a factor
that does not depend on theta, also when the parameters came from a proposal
rather than the prior — so ``g + log p(theta)`` is the log posterior up to a
constant, sampled by MCMC as for NLE (`LikelihoodPosterior`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.sbi import _ratio as ratio
from sbi_kit.sbi._data import check_pairs
from sbi_kit.sbi._posterior import LikelihoodPosterior
from sbi_kit.sbi._train import check_int, check_training_settings, fit_minibatch, kept_validation_mask
from sbi_kit.sbi.prior import as_prior, check_same_prior

Array = jax.Array


def contrastive_loss(spec, params, standardizer, u: Array, x: Array, key: Array, num_atoms: int) -> Array:
    """Per-example K-atom softmax cross entropy ``(b,)`` over a minibatch ``u (b, d)``, ``x (b, x_dim)``.

    The ``K - 1`` contrasting parameters of pair ``i`` are ``K - 1`` distinct
    other pairs' (drawn without replacement, never ``theta_i`` itself).
    """
    b = u.shape[0]
    # K - 1 distinct non-zero offsets per row (without replacement): the top
    # K - 1 of b - 1 uniform scores is a uniformly random subset.
    _, picks = jax.lax.top_k(jax.random.uniform(key, (b, b - 1)), num_atoms - 1)
    offsets = picks + 1
    idx = jnp.concatenate([jnp.arange(b)[:, None], (jnp.arange(b)[:, None] + offsets) % b], axis=1)
    logits = ratio.log_ratio(spec, params, standardizer, u[idx], x[:, None, :])  # (b, K)
    return jax.nn.logsumexp(logits, axis=1) - logits[:, 0]


@dataclasses.dataclass(frozen=True)
class ContrastiveLoss:
    """Hashable training loss of NRE (see `contrastive_loss`); ``batch = (u, x)``."""

    spec: ratio.RatioSpec
    num_atoms: int

    def __call__(self, params, standardizer, batch, key):
        u, x = batch
        return contrastive_loss(self.spec, params, standardizer, u, x, key, min(self.num_atoms, u.shape[0]))


class NRE:
    """Contrastive neural ratio estimation.

    Args:
      prior: anything `as_prior` accepts.
      num_atoms: candidates per example ``K`` (>= 2; 2 is binary-like, more
        atoms give a sharper ratio), at most the batch size.
      hidden: classifier MLP hidden widths.
      activation: classifier activation (``"silu"`` keeps the log ratio smooth for NUTS).
      z_score: standardise theta (unconstrained) and x with the training moments.
      dtype: float32 or float64 (default: JAX's default float).
    """

    def __init__(self, prior, *, num_atoms: int = 10, hidden: Sequence[int] = (64, 64), activation: str = "silu",
                 z_score: bool = True, dtype=None):
        self.prior = as_prior(prior)
        self.num_atoms = check_int(num_atoms, "num_atoms", 2)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.z_score = bool(z_score)
        self.dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)

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
        lr_decays: int = 0,
    ) -> LikelihoodPosterior:
        """Train the classifier on ``theta (n, dim)`` and ``x (n, x_dim)``; arguments as in `NLE.fit`.

        ``lr_decays`` defaults to 0 here (stop at the first plateau): the
        learning-rate restarts were measured for the flow estimators, not yet
        for the ratio classifier.

        Returns:
          A `LikelihoodPosterior` (kind ``"nre"``).
        """
        settings = check_training_settings(max_epochs, batch_size, learning_rate, validation_fraction, patience)
        validation_mask = kept_validation_mask(validation_mask, x)
        if settings[1] < self.num_atoms:
            raise ValueError(f"batch_size {batch_size} must be at least num_atoms={self.num_atoms}")
        theta, x = check_pairs(self.prior, theta, x, drop_invalid_x=False, what="NRE")
        u = np.asarray(self.prior.to_unconstrained(jnp.asarray(theta, self.dtype)))
        if not np.all(np.isfinite(u)):
            raise ValueError("some theta map to non-finite unconstrained values (on the edge of the prior support)")
        k_init, k_fit = jax.random.split(key)
        if initial is not None:
            if (not isinstance(initial, LikelihoodPosterior) or initial.kind != "nre"
                    or initial.prior.dim != self.prior.dim or initial.x_dim != x.shape[1]):
                raise ValueError("initial must be an NRE posterior with the same parameter and data dimensions")
            check_same_prior(self.prior, initial.prior, "initial")
            spec, params, standardizer = initial.spec, initial.params, initial.standardizer
        else:
            spec, params, standardizer = ratio.init_ratio(
                k_init, u, x, hidden=self.hidden, activation=self.activation, z_score=self.z_score, dtype=self.dtype
            )
        dt = jnp.dtype(spec.dtype)
        max_epochs, batch_size, lr, vf, patience = settings
        # With fewer pairs than a batch, batches shrink; keep K <= batch size.
        n_val = (int(validation_mask.sum()) if validation_mask is not None
                 else max(1, round(vf * len(theta))) if vf > 0 else 0)
        num_atoms = min(self.num_atoms, max(2, len(theta) - n_val))
        params, info = fit_minibatch(
            ContrastiveLoss(spec, num_atoms), params, standardizer, (jnp.asarray(u, dt), jnp.asarray(x, dt)),
            k_fit, max_epochs=max_epochs,
            batch_size=batch_size, learning_rate=lr, validation_fraction=vf, patience=patience,
            validation_mask=validation_mask, exact_validation_batches=True, lr_decays=lr_decays,
        )
        return LikelihoodPosterior(self.prior, "nre", spec, params, standardizer, info)
