"""Argument checks and dtype helpers shared by the benchmark targets.

Benchmark constructors run in plain Python on concrete numbers, so every
check here raises an early ValueError naming the offending argument instead of
letting a bad value surface later as NaNs inside a sampler.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

LOG_2PI = math.log(2.0 * math.pi)


def positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int, raising ValueError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def finite_float(value, name: str) -> float:
    """``value`` as a finite Python float, else ValueError naming ``name``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def positive_float(value, name: str) -> float:
    """``value`` as a finite float > 0, else ValueError naming ``name``."""
    out = finite_float(value, name)
    if out <= 0:
        raise ValueError(f"{name} must be positive, got {out}")
    return out


def finite_array(value, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``value`` as a float64 numpy array, checked finite and (optionally) shaped."""
    out = np.asarray(value, dtype=np.float64)
    if shape is not None and out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def sample_count(n) -> int:
    """Number of draws requested from an exact sampler; must be a static int >= 0."""
    return positive_int(n, "number of samples n", minimum=0)


def float_input(x) -> Array:
    """``x`` as a jax array of floating dtype, keeping float32/float64 as given.

    Integer inputs are promoted to the default float dtype (float32 unless x64
    is enabled), so ``log_density`` computes in the precision of its input.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def default_float():
    """The default float dtype of the current JAX mode (float64 under x64)."""
    return jnp.result_type(float)


def jit_sampler(sample_fn):
    """Wrap ``sample_fn(key, n) -> (n, dim)`` so ``n`` is checked eagerly and static under jit.

    One compiled program per ``n`` (and per x64 mode, which jit keys on)
    replaces many small op-by-op dispatches when samplers are called eagerly.
    """
    compiled = jax.jit(sample_fn, static_argnums=1)

    def sample(key, n):
        return compiled(key, sample_count(n))

    sample.__doc__ = sample_fn.__doc__
    return sample
