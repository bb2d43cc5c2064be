"""Validation of training pairs and observations shared by the estimators."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.sbi.prior import Prior

Array = jax.Array


def check_pairs(prior: Prior, theta, x, *, drop_invalid_x: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``theta (n, dim)`` and ``x (n, x_dim)``; returns numpy arrays.

    Rows whose ``x`` is NaN or inf are dropped with a warning when
    ``drop_invalid_x`` (NPE: unbiased), else refused (NLE/NRE: dropping them
    would bias the posterior).

    Raises:
      ValueError: wrong shapes, mismatched lengths, non-finite or out-of-support theta.
    """
    theta = np.asarray(theta)
    x = np.asarray(x)
    if theta.ndim != 2 or theta.shape[1] != prior.dim:
        raise ValueError(f"theta must have shape (n, {prior.dim}) for this prior, got {theta.shape}")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, x_dim) (flatten multi-dimensional data), got {x.shape}")
    if x.shape[0] != theta.shape[0]:
        raise ValueError(f"theta and x must pair up: got {theta.shape[0]} parameters and {x.shape[0]} simulations")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains NaN or infinite values")
    bad = ~np.all(np.isfinite(x), axis=1)
    if bad.all():
        raise ValueError(f"all {x.shape[0]} simulations in x are NaN or infinite")
    if bad.any():
        if not drop_invalid_x:
            raise ValueError(
                f"{int(bad.sum())} of {x.shape[0]} simulations in x are NaN or infinite. {what} models "
                "the likelihood, and dropping failed simulations would ignore how the failure rate depends "
                "on theta; remove them knowingly (simulate(..., drop_invalid=True) does) or fix the simulator"
            )
        warnings.warn(f"{int(bad.sum())} of {x.shape[0]} simulations in x are NaN or infinite and were dropped",
                      stacklevel=3)
        theta, x = theta[~bad], x[~bad]
    lp = np.asarray(prior.log_prob(jnp.asarray(theta)))
    if not np.all(np.isfinite(lp)):
        raise ValueError(f"{int(np.sum(~np.isfinite(lp)))} parameter vectors in theta lie outside the prior support")
    return theta, x


def check_observation(x_obs, x_dim: int, dtype) -> tuple[Array, bool]:
    """``x_obs (x_dim,)`` or ``(m, x_dim)`` -> ``((m, x_dim) array, batched)``.

    Raises:
      ValueError: wrong shape or non-finite values.
    """
    host = np.asarray(x_obs)  # checked on the host: no device program to compile
    if host.ndim not in (1, 2) or host.shape[-1] != x_dim:
        raise ValueError(
            f"x_obs must have shape ({x_dim},) or (m, {x_dim}) to match the training data, got {host.shape}"
        )
    if not np.all(np.isfinite(host)):
        raise ValueError("x_obs contains NaN or infinite values")
    x_obs = jnp.asarray(host, dtype)
    batched = x_obs.ndim == 2
    return (x_obs if batched else x_obs[None]), batched
