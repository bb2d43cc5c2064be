"""Conditioner networks as plain parameter pytrees.

An MLP is a list of ``{"w": (in, out), "b": (out,)}`` dicts; `mlp_apply` is a
pure function of ``(params, inputs)``, so flows can be jitted, vmapped,
differentiated and saved as arrays without any module framework.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# Conditioner inputs are clipped here before the first layer: the coupling
# stays exactly invertible (the conditioner may be any function of the
# unchanged half) and float32 pre-activations cannot overflow for far-tail
# inputs such as 1e30.
INPUT_CLIP = 1e4


def init_mlp(key: Array, in_dim: int, hidden: Sequence[int], out_dim: int, dtype=jnp.float32) -> list[dict]:
    """Parameters of an MLP ``in_dim -> hidden... -> out_dim``.

    Hidden layers use LeCun-normal weights and zero biases. The last layer is
    all zeros so that a freshly built coupling layer is the identity map (a
    fresh flow is then exactly its base distribution).

    Args:
      key: PRNG key.
      in_dim: input width, >= 0 (0 gives a network of constant outputs).
      hidden: widths of the hidden layers.
      out_dim: output width, >= 1.
      dtype: floating dtype of every leaf.

    Returns:
      A list of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts.
    """
    sizes = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        if last or n_in == 0:
            w = jnp.zeros((n_in, n_out), dtype)
        else:
            w = jax.random.normal(k, (n_in, n_out), dtype) / jnp.sqrt(jnp.asarray(n_in, dtype))
        params.append({"w": w, "b": jnp.zeros((n_out,), dtype)})
    return params


def mlp_apply(params: list[dict], inputs: Array) -> Array:
    """Evaluate an MLP from `init_mlp` on ``inputs (..., in_dim)``.

    tanh hidden activations keep every hidden unit in [-1, 1], so the output
    is finite for any finite input (together with `INPUT_CLIP`).

    Returns:
      ``(..., out_dim)`` in the parameters' dtype.
    """
    h = jnp.clip(inputs, -INPUT_CLIP, INPUT_CLIP)
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]
