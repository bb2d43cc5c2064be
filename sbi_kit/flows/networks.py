"""Conditioner networks as plain parameter pytrees.

Two kinds, both pure functions of ``(params, inputs)`` so flows can be
jitted, vmapped, differentiated and saved as arrays without any module
framework:

* ``"mlp"``: a list of ``{"w": (in, out), "b": (out,)}`` dicts with tanh
  hidden units (`init_mlp`, `mlp_apply`);
* ``"resnet"``: an input layer, residual blocks of two relu layers each and
  an output layer (`init_resnet`, `resnet_apply`), the conditioner of the
  neural spline flows used by sbibm and the `sbi` package (nflows'
  ``ResidualNet``). It fits sharp conditional densities (two moons,
  mixtures) better than a tanh MLP of the same width.

`init_net` / `net_apply` dispatch on the kind.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Conditioner inputs are clipped here before the first layer: the coupling
# stays exactly invertible (the conditioner may be any function of the
# unchanged half) and float32 pre-activations cannot overflow for far-tail
# inputs such as 1e30.
INPUT_CLIP = 1e4


def is_typed_key(key) -> bool:
    """True for a typed PRNG key (``jax.random.key``), False for a raw ``uint32`` one."""
    return jnp.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key)


def host_rng(key) -> np.random.Generator:
    """A numpy generator seeded by a JAX PRNG key (typed or raw ``uint32``), or ``key`` itself if it is one.

    Initial weights are drawn on the host: drawn with `jax.random`, each
    weight shape compiles its own small program, about two seconds per new
    architecture on a CPU, which dominated a first small fit.
    """
    if isinstance(key, np.random.Generator):
        return key
    if is_typed_key(key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _normal(rng: np.random.Generator, shape, scale: float, dtype) -> Array:
    return jnp.asarray((rng.standard_normal(shape) * scale).astype(np.dtype(dtype)))


def host_full(shape, value: float, dtype) -> Array:
    """A constant array built in host memory (``jnp.zeros``/``jnp.full`` compile a small program per new shape)."""
    return jnp.asarray(np.full(shape, value, np.dtype(dtype)))


def _zeros(shape, dtype) -> Array:
    return host_full(shape, 0.0, dtype)


def init_mlp(key: Array, in_dim: int, hidden: Sequence[int], out_dim: int, dtype=jnp.float32) -> list[dict]:
    """Parameters of an MLP ``in_dim -> hidden... -> out_dim``.

    Hidden layers use LeCun-normal weights and zero biases. The last layer is
    all zeros so that a freshly built coupling layer is the identity map (a
    fresh flow is then exactly its base distribution).

    Args:
      key: PRNG key (or a numpy Generator, see `host_rng`).
      in_dim: input width, >= 0 (0 gives a network of constant outputs).
      hidden: widths of the hidden layers.
      out_dim: output width, >= 1.
      dtype: floating dtype of every leaf.

    Returns:
      A list of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts.
    """
    rng = host_rng(key)
    sizes = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        if last or n_in == 0:
            w = _zeros((n_in, n_out), dtype)
        else:
            w = _normal(rng, (n_in, n_out), 1.0 / np.sqrt(n_in), dtype)
        params.append({"w": w, "b": _zeros((n_out,), dtype)})
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


NETS = ("mlp", "resnet")


def init_resnet(key: Array, in_dim: int, hidden: Sequence[int], out_dim: int, dtype=jnp.float32) -> dict:
    """Parameters of a residual network ``in_dim -> width -> blocks -> out_dim``.

    ``hidden`` gives one entry per residual block, all equal to the width
    (``(50, 50)``: width 50, two blocks). Each block is
    ``h + (W2 relu(W1 relu(h) + b1) + b2) * sigmoid(Wg x + bg)`` (``x`` the
    network's input) with ``W2 = 0`` at init, so blocks start as the
    identity; the output layer is zero, so a fresh coupling layer is the
    identity map (as with `init_mlp`).

    Returns:
      ``{"inp": {"w", "b"}, "blocks": [{"w1", "b1", "w2", "b2", "wg", "bg"}, ...], "out": {"w", "b"}}``.
    """
    hidden = [int(h) for h in hidden]
    if not hidden or any(h != hidden[0] for h in hidden):
        raise ValueError(f"a resnet conditioner needs equal hidden widths (one per block), got {tuple(hidden)}")
    width = hidden[0]
    rng = host_rng(key)
    scale_in = 1.0 / np.sqrt(max(int(in_dim), 1))
    inp = {"w": _normal(rng, (int(in_dim), width), scale_in, dtype), "b": _zeros((width,), dtype)}
    blocks = []
    for _ in hidden:
        blocks.append({
            "w1": _normal(rng, (width, width), np.sqrt(2.0 / width), dtype),
            "b1": _zeros((width,), dtype),
            "w2": _zeros((width, width), dtype), "b2": _zeros((width,), dtype),
            "wg": _normal(rng, (int(in_dim), width), scale_in, dtype),
            "bg": _zeros((width,), dtype),
        })
    out = {"w": _zeros((width, int(out_dim)), dtype), "b": _zeros((int(out_dim),), dtype)}
    return {"inp": inp, "blocks": blocks, "out": out}


def resnet_apply(params: dict, inputs: Array) -> Array:
    """Evaluate a network from `init_resnet` on ``inputs (..., in_dim)``: ``(..., out_dim)``."""
    x = jnp.clip(inputs, -INPUT_CLIP, INPUT_CLIP)
    h = x @ params["inp"]["w"] + params["inp"]["b"]
    for blk in params["blocks"]:
        t = jax.nn.relu(h) @ blk["w1"] + blk["b1"]
        t = jax.nn.relu(t) @ blk["w2"] + blk["b2"]
        # Gated by the inputs (nflows gates by the context through a GLU):
        # lets the conditioning variables switch whole features on and off.
        h = h + t * jax.nn.sigmoid(x @ blk["wg"] + blk["bg"])
    return h @ params["out"]["w"] + params["out"]["b"]


def init_net(kind: str, key: Array, in_dim: int, hidden: Sequence[int], out_dim: int, dtype=jnp.float32):
    """`init_mlp` or `init_resnet` by ``kind`` (one of `NETS`)."""
    if kind == "mlp":
        return init_mlp(key, in_dim, hidden, out_dim, dtype)
    if kind == "resnet":
        return init_resnet(key, in_dim, hidden, out_dim, dtype)
    raise ValueError(f"unknown conditioner {kind!r}; choose one of {list(NETS)}")


def net_apply(params, inputs: Array) -> Array:
    """Evaluate a network from `init_net` (the kind is read off the parameter structure)."""
    return resnet_apply(params, inputs) if isinstance(params, dict) else mlp_apply(params, inputs)
