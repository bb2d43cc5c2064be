"""Neural posterior estimation (NPE): a conditional flow q(theta | x).

NPE fits a conditional normalizing flow to simulated pairs ``(theta_i, x_i)``
by maximum likelihood, so that ``q(theta | x_obs)`` approximates the
posterior for any observation (amortised). The flow models the prior's
*unconstrained* parameters ``u = T^{-1}(theta)`` (numpyro's
``biject_to(support)``), so every draw ``theta = T(u)`` lies in the prior
support without rejection, and

    log q(theta | x) = log q_u(T^{-1}(theta) | x) - log|det dT/du|.

A posterior draw is one jitted flow pass; sampling and ``log_prob`` take
many observations at once.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.sbi import _conditional as cond
from sbi_kit.sbi._data import check_observation
from sbi_kit.sbi._train import TrainInfo, check_int, check_training_settings
from sbi_kit.sbi.prior import Prior

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("spec", "prior", "n"))
def _sample(spec, prior, params, standardizer, key, n, x_obs):
    """``x_obs (m, x_dim)`` -> constrained draws ``(m, n, dim)``."""
    keys = jax.random.split(key, x_obs.shape[0])

    def one(k, x):
        u, _ = cond.sample_and_log_prob(spec, params, standardizer, k, n, x)
        return prior.to_constrained(u)

    return jax.vmap(one)(keys, x_obs)


@functools.partial(jax.jit, static_argnames=("spec", "prior"))
def _log_prob(spec, prior, params, standardizer, theta, x):
    """``theta (n, dim)``, ``x (n, x_dim)`` -> ``log q(theta | x)`` ``(n,)`` (-inf outside the support)."""
    u = prior.to_unconstrained(theta)
    lq = cond.log_prob(spec, params, standardizer, u, x) - prior.log_abs_det_jacobian(u)
    inside = jnp.isfinite(prior.log_prob(theta))
    return jnp.where(inside, lq, -jnp.inf)


class NPEPosterior:
    """A trained NPE posterior ``q(theta | x)``; returned by `NPE.fit`.

    Attributes:
      prior: the `Prior`.
      spec: static architecture (`CondFlowSpec`, y = unconstrained theta, context = x).
      params: trained arrays ``{"flow", "embedding"}``.
      standardizer: ``{"c_loc", "c_scale"}`` z-scoring of x.
      x_dim: size of one observation.
      info: `TrainInfo` of the last fit (None after loading).
    """

    kind = "npe"

    def __init__(self, prior: Prior, spec: cond.CondFlowSpec, params: Any, standardizer: dict,
                 info: TrainInfo | None = None):
        self.prior = prior
        self.spec = spec
        self.params = params
        self.standardizer = standardizer
        self.info = info

    @property
    def x_dim(self) -> int:
        return self.spec.context_dim

    @property
    def dtype(self):
        return jnp.dtype(self.spec.flow.dtype)

    def sample(self, key: Array, n: int, x_obs: Array) -> Array:
        """Posterior draws for one or many observations.

        Args:
          key: PRNG key.
          n: draws per observation, >= 1.
          x_obs: ``(x_dim,)`` or ``(m, x_dim)``.

        Returns:
          Constrained draws ``(n, dim)`` for one observation, ``(m, n, dim)`` for ``m``.
        """
        n = check_int(n, "n", 1)
        x, batched = check_observation(x_obs, self.x_dim, self.dtype)
        draws = _sample(self.spec, self.prior, self.params, self.standardizer, key, n, x)
        return draws if batched else draws[0]

    def log_prob(self, theta: Array, x_obs: Array) -> Array:
        """Posterior log density ``log q(theta | x_obs)`` (normalised, in the constrained space).

        Args:
          theta: ``(dim,)`` or ``(n, dim)``.
          x_obs: ``(x_dim,)`` (shared by all ``theta``) or ``(n, x_dim)`` paired with ``theta``.

        Returns:
          ``()`` or ``(n,)``; ``-inf`` outside the prior support.
        """
        theta = jnp.asarray(theta, self.dtype)
        if theta.ndim not in (1, 2) or theta.shape[-1] != self.prior.dim:
            raise ValueError(f"theta must have shape ({self.prior.dim},) or (n, {self.prior.dim}), got {theta.shape}")
        single = theta.ndim == 1
        theta = jnp.atleast_2d(theta)
        x, batched = check_observation(x_obs, self.x_dim, self.dtype)
        if batched and x.shape[0] != theta.shape[0]:
            raise ValueError(f"x_obs {x.shape} must be (x_dim,) or pair with theta {theta.shape}")
        x = jnp.broadcast_to(x, (theta.shape[0], self.x_dim))
        out = _log_prob(self.spec, self.prior, self.params, self.standardizer, theta, x)
        return out[0] if single else out

    def to_arviz(self, key: Array, n: int, x_obs: Array):
        """``n`` posterior draws for one observation as ``arviz.InferenceData``.

        The posterior group holds one chain of ``n`` draws per prior site,
        with the site's name and shape; ``observed_data`` holds ``x_obs``.
        """
        x_obs = jnp.asarray(x_obs)
        if x_obs.ndim != 1:
            raise ValueError(f"to_arviz takes one observation (x_dim,), got shape {x_obs.shape}")
        return draws_to_arviz(self.prior, self.sample(key, n, x_obs)[None], x_obs, method="npe")

    def save(self, path) -> None:
        """Write ``<path>.json`` + ``<path>.npz`` (see `sbi_kit.sbi.io`)."""
        from sbi_kit.sbi.io import save_posterior

        save_posterior(path, self)

    def __repr__(self) -> str:
        return f"NPEPosterior(dim={self.prior.dim}, x_dim={self.x_dim}, flow={self.spec.flow.kind})"


def draws_to_arviz(prior: Prior, draws, x_obs, *, method: str, sample_stats: dict | None = None):
    """Constrained flat draws ``(chains, n, dim)`` -> ``InferenceData`` with the prior's site names."""
    import arviz as az

    named = {k: np.asarray(v) for k, v in prior.unflatten(jnp.asarray(draws)).items()}
    dims = {k: [f"{k}_dim_{i}" for i in range(v.ndim - 2)] for k, v in named.items()}
    dims["x_obs"] = ["x_obs_dim_0"]
    groups = {"posterior": named, "observed_data": {"x_obs": np.asarray(x_obs)}}
    if sample_stats:
        groups["sample_stats"] = sample_stats
    idata = az.from_dict(**groups, dims=dims)
    idata.posterior.attrs.update({"inference_library": "sbi_kit", "sbi_method": method})
    return idata


class NPE(cond.ConditionalFlowEstimator):
    """Neural posterior estimation with a conditional flow.

    Args:
      prior: anything `as_prior` accepts.
      flow: `make_flow` options (``kind``, ``num_layers``, ``hidden``,
        ``num_bins``, ``bound``, ``max_log_scale``, ``conditioner``,
        ``lu_layers``) as a dict or a `FlowConfig`; default the neural spline
        flow of sbibm and the `sbi` package: 5 rational-quadratic coupling
        layers with 10 bins, residual conditioners with two blocks of 50
        units, and an LU linear layer after each coupling.
      embedding: None (the z-scored x is the flow's context), or hidden widths
        of an MLP embedding network trained jointly with the flow.
      embedding_dim: output width of the embedding (default ``min(x_dim, 20)``).
      activation: embedding activation (``"silu"``, ``"relu"``, ``"tanh"``, ``"elu"``).
      z_score: standardise theta (unconstrained) and x with the training data's
        mean and standard deviation.
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
        learning_rate: float = 2e-3,
        validation_fraction: float = 0.1,
        patience: int = 10,
        initial: NPEPosterior | None = None,
        validation_mask=None,
        lr_decays: int = 0,
        ema_epochs: float | None = 16,
        min_delta: float = 0.0,
    ) -> NPEPosterior:
        """Train on pairs ``theta (n, dim)`` (constrained, in the prior support), ``x (n, x_dim)``.

        Rows with NaN or inf ``x`` are dropped with a warning (unbiased for NPE).

        Args:
          key: PRNG key (initialisation, split, minibatches).
          theta, x: the simulations (e.g. from `simulate`).
          max_epochs: epoch limit, >= 1.
          batch_size: minibatch size.
          learning_rate: Adam learning rate.
          validation_fraction: held-out share for early stopping, in [0, 1).
          patience: epochs without validation improvement before stopping.
          initial: a previous `NPEPosterior` of this prior to continue training
            from (keeps its architecture and z-scoring; used by sequential rounds).
          validation_mask: optional boolean ``(n,)`` fixing which pairs are held
            out (instead of a random ``validation_fraction``); sequential rounds
            pass it so a simulation stays in its split across refits.
          lr_decays: at a validation plateau (``patience`` epochs without
            improvement), restart from the best parameters at a tenth of the
            learning rate, up to this many times, before stopping (default 0:
            stop at the first plateau). Without the moving average, 2 restarts
            give markedly sharper posteriors (two_moons: best validation loss
            -0.89 / -0.95 nats vs -0.79 / -0.69 without, two training seeds).
          ema_epochs: validate and return the exponential moving average of
            the parameters over about this many epochs (warmed up, see
            `sbi_kit.sbi._train.fit_minibatch`); None: the last iterate. The
            defaults (16 epochs, ``learning_rate=2e-3, patience=10,
            lr_decays=0``) replaced ``learning_rate=5e-4, patience=20,
            lr_decays=2`` without an average on 2026-12-06: at 10^4
            simulations C2ST two_moons 0.552, slcp 0.856, gaussian_linear
            0.530, gaussian_mixture 0.585, lotka_volterra 0.953 against 0.612,
            0.888, 0.520, 0.615, 0.981, in fewer optimiser steps on four of the
            five (``benchmarks/RESULTS_sbi.md``).
          min_delta: validation improvement (nats per example) that counts
            as progress for ``patience`` (see `sbi_kit.sbi._train.fit_minibatch`).

        Returns:
          An `NPEPosterior` with the best-validation parameters.
        """
        settings = check_training_settings(max_epochs, batch_size, learning_rate, validation_fraction, patience)

        def check_initial(init, x_dim):
            if not isinstance(init, NPEPosterior) or init.prior.dim != self.prior.dim or init.x_dim != x_dim:
                raise ValueError("initial must be an NPEPosterior with the same parameter and data dimensions")

        spec, params, standardizer, info = self._fit_flow(
            key, theta, x, what="NPE", model_data=False, check_initial=check_initial, initial=initial,
            settings=settings, validation_mask=validation_mask, lr_decays=lr_decays, ema_epochs=ema_epochs,
            min_delta=min_delta,
        )
        return NPEPosterior(self.prior, spec, params, standardizer, info)
