"""Targets from a plain log density or an energy function."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.targets.base import Target


def _check_scalar_fn(fn: Callable, dim: int, what: str) -> None:
    # Trace once with abstract values: catches wrong output shapes before sampling.
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    if isinstance(dim, np.integer):
        dim = int(dim)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct((dim,), jnp.result_type(float)))
    if out.shape != ():
        raise ValueError(
            f"{what} must return a scalar for one point of shape ({dim},), "
            f"got output shape {out.shape}"
        )


def from_logdensity(fn: Callable[[jax.Array], jax.Array], dim: int, *, name: str = "logdensity", **ground_truth) -> Target:
    """A `Target` from an unnormalised log density.

    Args:
      fn: ``x (dim,) -> scalar`` log density (unnormalised is fine).
      dim: the dimension of ``x``.
      name: the target's name.
      **ground_truth: optional `Target` fields (``sample``, ``log_Z``,
        ``mean``, ``std``, ``observables``, ``to_constrained``).

    Raises:
      ValueError: if ``fn`` does not return a scalar for an input of shape ``(dim,)``.
    """
    _check_scalar_fn(fn, dim, "log density")
    return Target(log_density=fn, dim=int(dim), name=name, **ground_truth)


def from_energy(fn: Callable[[jax.Array], jax.Array], dim: int, beta: float = 1.0, *, name: str = "energy", **ground_truth) -> Target:
    """A `Target` with density proportional to ``exp(-beta * U(x))``.

    Args:
      fn: the energy ``U: x (dim,) -> scalar``.
      dim: the dimension of ``x``.
      beta: inverse temperature, positive and finite.
      name: the target's name.
      **ground_truth: optional `Target` fields, as in `from_logdensity`.

    Raises:
      ValueError: for a non-positive or non-finite ``beta`` or a non-scalar energy.
    """
    beta = float(beta)
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"inverse temperature beta must be positive and finite, got {beta}")
    _check_scalar_fn(fn, dim, "energy")

    def log_density(x):
        return -beta * fn(x)

    return Target(log_density=log_density, dim=int(dim), name=name, info={"energy": fn, "beta": beta}, **ground_truth)
