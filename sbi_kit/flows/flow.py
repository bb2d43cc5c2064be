"""`Flow`: a normalizing flow ``x = T(z)``, ``z ~ N(0, I)``, as config + param pytree.

``T`` is a stack of coupling layers (`sbi_kit.flows.coupling`), each optionally
followed by a learned LU linear map (``lu_layers=True``), then an
elementwise affine map ``x = loc + exp(log_scale) * u`` (which lets a flow
built for unit scale reach targets with other locations and scales). A fresh
flow is the identity, so it starts as its standard normal base.

`Flow` is a pytree: ``params`` are its leaves, the static `FlowConfig` is
auxiliary data. Every method takes one point ``(dim,)`` or a batch
``(n, dim)``; an optional ``context`` (``(context_dim,)``, broadcast over the
batch, or ``(n, context_dim)``) makes the flow conditional, q(x | context),
as needed for simulation-based inference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.flows.coupling import KINDS, alternating_masks, coupling_bijector, init_coupling, init_lu, lu_bijector
from sbi_kit.flows.networks import NETS, host_full, host_rng

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Static description of a flow's architecture (JSON-serialisable).

    Attributes:
      dim: event dimension, >= 1.
      kind: ``"affine"`` (RealNVP) or ``"spline"`` (rational-quadratic).
      num_layers: number of coupling layers, >= 1.
      hidden: hidden widths of each conditioner MLP.
      context_dim: size of the conditioning input (0: unconditional).
      num_bins: spline bins (``kind="spline"``).
      bound: spline box half-width (identity outside ``[-bound, bound]``).
      max_log_scale: soft clamp of each affine layer's log scale.
      masks: per-layer boolean masks (True = kept), see `alternating_masks`.
      dtype: ``"float32"`` or ``"float64"``.
      conditioner: ``"mlp"`` (tanh MLP) or ``"resnet"`` (relu residual blocks,
        one per ``hidden`` entry), see `sbi_kit.flows.networks`.
      lu_layers: a learned invertible linear map ``L U x + b`` after every
        coupling layer (as in nflows/sbi neural spline flows); ignored for dim 1.
    """

    dim: int
    kind: str = "spline"
    num_layers: int = 4
    hidden: tuple[int, ...] = (32, 32)
    context_dim: int = 0
    num_bins: int = 8
    bound: float = 5.0
    max_log_scale: float = 3.0
    masks: tuple[tuple[bool, ...], ...] = ()
    dtype: str = "float32"
    # Added after 0.1 files were written: the defaults reproduce older flows.
    conditioner: str = "mlp"
    lu_layers: bool = False

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists instead of tuples)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["masks"] = [list(m) for m in self.masks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FlowConfig":
        """Inverse of `to_dict`; unknown keys raise ValueError."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown FlowConfig keys {sorted(unknown)}")
        d = dict(d)
        d["hidden"] = tuple(int(h) for h in d.get("hidden", ()))
        d["masks"] = tuple(tuple(bool(v) for v in m) for m in d.get("masks", ()))
        return cls(**d)


def _check_config(c: FlowConfig) -> None:
    def pos_int(v, name, minimum=1):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")

    pos_int(c.dim, "dim")
    pos_int(c.num_layers, "num_layers")
    pos_int(c.context_dim, "context_dim", 0)
    pos_int(c.num_bins, "num_bins", 2)
    for h in c.hidden:
        pos_int(h, "hidden width")
    if c.kind not in KINDS:
        raise ValueError(f"unknown flow kind {c.kind!r}; choose one of {list(KINDS)}")
    for v, name in ((c.bound, "bound"), (c.max_log_scale, "max_log_scale")):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be positive and finite, got {v}")
    if c.conditioner not in NETS:
        raise ValueError(f"unknown conditioner {c.conditioner!r}; choose one of {list(NETS)}")
    if c.conditioner == "resnet" and (not c.hidden or len(set(c.hidden)) != 1):
        raise ValueError(f"conditioner='resnet' needs equal hidden widths (one per residual block), got {c.hidden}")
    if not isinstance(c.lu_layers, (bool, np.bool_)):
        raise ValueError(f"lu_layers must be True or False, got {c.lu_layers!r}")
    if c.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {c.dtype!r}")
    if len(c.masks) != c.num_layers or any(len(m) != c.dim for m in c.masks):
        raise ValueError(f"masks must be {c.num_layers} tuples of length {c.dim}")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Flow:
    """A normalizing flow: static `FlowConfig` plus a parameter pytree.

    ``params = {"layers": ..., "loc": (dim,), "log_scale": (dim,)}``, where
    ``layers`` is either one parameter dict whose leaves are stacked over the
    layers (leading axis ``num_layers``; what `init_params` builds whenever
    `layers_share_body` holds) or a list of per-layer dicts; see `stack_layers`.
    Build one with `make_flow`; change parameters with ``flow.replace(params=...)``.
    """

    config: FlowConfig
    params: Any

    def tree_flatten(self):
        return (self.params,), self.config

    @classmethod
    def tree_unflatten(cls, config, children):
        return cls(config, children[0])

    def replace(self, **changes) -> "Flow":
        return dataclasses.replace(self, **changes)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def dtype(self):
        return jnp.dtype(self.config.dtype)

    # ------------------------------------------------------------ single point

    def _layer_bijectors(self, p, mask, context, changed=None):
        """The bijectors of one layer: its coupling, then its LU map if it has one."""
        c = self.config
        yield coupling_bijector(
            p, mask, context, kind=c.kind, num_bins=c.num_bins, bound=c.bound,
            max_log_scale=c.max_log_scale, changed=changed,
        )
        if "lu" in p:
            yield lu_bijector(p["lu"])

    def _layer_stack(self):
        """``(stacked params, masks bool (L, dim), changed int32 (L, m))``, or None for a list of layers.

        Layers stored stacked (see `stack_layers`) run as one `jax.lax.scan`
        step with their masks as data, so XLA compiles one layer instead of
        ``num_layers`` copies; a list of layers runs as an unrolled loop.
        """
        layers = self.params["layers"]
        if isinstance(layers, (list, tuple)):
            return None
        masks = np.asarray(self.config.masks, bool)
        changed = np.stack([np.flatnonzero(~m) for m in masks]).astype(np.int32)
        return layers, masks, changed

    def _run_layers(self, x, log_det, context, inverse: bool):
        """All coupling (and LU) layers on one point, forward or in reverse; adds to ``log_det``."""

        def one(carry, p, mask, changed=None):
            x, log_det = carry
            bijectors = list(self._layer_bijectors(p, mask, context, changed))
            for bij in reversed(bijectors) if inverse else bijectors:
                x, ld = bij.inverse_and_log_det(x) if inverse else bij.forward_and_log_det(x)
                log_det = log_det + ld
            return x, log_det

        stack = self._layer_stack()
        if stack is None:
            layers = list(zip(self.params["layers"], self.config.masks))
            for p, m in reversed(layers) if inverse else layers:
                x, log_det = one((x, log_det), p, np.asarray(m, bool))
            return x, log_det
        (x, log_det), _ = jax.lax.scan(lambda carry, layer: (one(carry, *layer), None), (x, log_det), stack,
                                       reverse=inverse)
        return x, log_det

    def _forward_one(self, z, context):
        x, log_det = self._run_layers(z, jnp.zeros((), z.dtype), context, inverse=False)
        log_scale = self.params["log_scale"]
        x = self.params["loc"] + jnp.exp(log_scale) * x
        return x, log_det + jnp.sum(log_scale)

    def _inverse_one(self, x, context):
        log_scale = self.params["log_scale"]
        z = (x - self.params["loc"]) * jnp.exp(-log_scale)
        return self._run_layers(z, -jnp.sum(log_scale), context, inverse=True)

    # ------------------------------------------------------------ batching

    def _prepare(self, x, context, what):
        x = jnp.asarray(x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim:
            raise ValueError(f"{what} must have shape (dim,) or (n, dim) with dim={self.dim}, got {x.shape}")
        cdim = self.config.context_dim
        if cdim == 0:
            if context is not None:
                raise ValueError("this flow is unconditional (context_dim=0) but a context was given")
            return x, None
        if context is None:
            raise ValueError(f"this flow is conditional (context_dim={cdim}); pass context")
        context = jnp.asarray(context, self.dtype)
        if context.ndim not in (1, 2) or context.shape[-1] != cdim:
            raise ValueError(f"context must have shape ({cdim},) or (n, {cdim}), got {context.shape}")
        if context.ndim == 2 and (x.ndim == 1 or context.shape[0] != x.shape[0]):
            raise ValueError(f"batched context {context.shape} does not match inputs {x.shape}")
        return x, context

    def _map(self, fn, x, context):
        if x.ndim == 1:
            return fn(x, context)
        ctx_axis = None if context is None or context.ndim == 1 else 0
        return jax.vmap(fn, in_axes=(0, ctx_axis))(x, context)

    # ------------------------------------------------------------ public API

    def forward(self, z: Array, context: Array | None = None) -> tuple[Array, Array]:
        """``x = T(z)`` and ``log|det dT/dz|``.

        Args:
          z: ``(dim,)`` or ``(n, dim)`` latent points.
          context: None, ``(context_dim,)`` or ``(n, context_dim)``.

        Returns:
          ``(x, log_det)`` with shapes ``z.shape`` and ``z.shape[:-1]``, in the flow's dtype.
        """
        z, context = self._prepare(z, context, "z")
        return self._map(self._forward_one, z, context)

    def inverse(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        """``z = T^{-1}(x)`` and ``log|det dT^{-1}/dx|`` (= minus the forward log-det at z)."""
        x, context = self._prepare(x, context, "x")
        return self._map(self._inverse_one, x, context)

    def log_prob(self, x: Array, context: Array | None = None) -> Array:
        """``log q(x [| context])``: shape ``x.shape[:-1]``."""
        z, log_det = self.inverse(x, context)
        return base_log_prob(z) + log_det

    def sample_and_log_prob(self, key: Array, n: int, context: Array | None = None) -> tuple[Array, Array]:
        """``n`` draws ``(n, dim)`` and their log densities ``(n,)``.

        ``context`` is ``(context_dim,)`` (all draws share it) or ``(n, context_dim)``.
        """
        z = jax.random.normal(key, (int(n), self.dim), self.dtype)
        x, log_det = self.forward(z, context)
        return x, base_log_prob(z) - log_det

    def sample(self, key: Array, n: int, context: Array | None = None) -> Array:
        """``n`` draws ``(n, dim)``; see `sample_and_log_prob`."""
        return self.sample_and_log_prob(key, n, context)[0]


def base_log_prob(z: Array) -> Array:
    """Standard normal log density over the last axis: ``(..., dim) -> (...)``.

    ``|z|`` is capped at ``sqrt(max float) / 1e3`` before squaring: beyond
    that ``z^2`` would overflow (float32: ``|z| > 1.8e19``) and its gradient
    turn into NaN. The cap only changes values far below any representable
    probability, and keeps log densities finite and very negative instead.
    """
    d = z.shape[-1]
    cap = float(np.sqrt(np.finfo(z.dtype).max)) / 1e3
    z = jnp.clip(z, -cap, cap)
    return -0.5 * jnp.sum(z * z, axis=-1) - 0.5 * d * jnp.asarray(_LOG_2PI, z.dtype)


def layers_share_body(config: FlowConfig) -> bool:
    """True if the layers can run as one scanned body: >= 2 layers keeping equally many coordinates.

    That holds for the alternating masks of any even dimension and of
    dimension 1; odd dimensions alternate between ``dim // 2`` and
    ``dim - dim // 2`` kept coordinates and run as an unrolled loop.
    """
    return config.num_layers >= 2 and len({int(np.sum(m)) for m in config.masks}) == 1


def stack_layers(params: dict, config: FlowConfig) -> dict:
    """``params`` with a list of layers stacked into one dict (leading axis ``num_layers``) if the config allows.

    The stacked layout is what `init_params` builds; a list of layers (a
    config where `layers_share_body` is False, or flows from older code)
    computes the same map. Arrays are copied, not changed.
    """
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)) or not layers_share_body(config):
        return params
    if len({jax.tree.structure(p) for p in layers}) != 1:
        return params

    def stack(*leaves):
        if any(isinstance(a, jax.core.Tracer) for a in leaves):
            return jnp.stack(leaves)
        return jnp.asarray(np.stack([np.asarray(a) for a in leaves]))  # on the host: nothing to compile

    return {**params, "layers": jax.tree.map(stack, *layers)}


def unstack_layers(params: dict) -> dict:
    """``params`` with stacked layers split into a list of per-layer dicts (the saved-file layout)."""
    layers = params["layers"]
    if isinstance(layers, (list, tuple)):
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda a: a[i], layers) for i in range(n)]}


def init_params(config: FlowConfig, key: Array, *, stacked: bool = True) -> dict:
    """Fresh parameters for ``config``: every layer the identity, loc 0, log_scale 0.

    ``stacked=False`` keeps the layers as a list (the saved-file layout);
    otherwise they are stacked where `layers_share_body` allows.
    """
    dt = jnp.dtype(config.dtype)
    rng = host_rng(key)  # weights drawn on the host: no compilation per weight shape
    layers = [
        init_coupling(rng, config.dim, config.context_dim, config.hidden, config.kind, config.num_bins, dt,
                      config.conditioner)
        for _ in range(config.num_layers)
    ]
    if config.lu_layers and config.dim > 1:
        layers = [{**p, "lu": init_lu(config.dim, dt)} for p in layers]
    params = {"layers": layers, "loc": host_full((config.dim,), 0.0, dt),
              "log_scale": host_full((config.dim,), 0.0, dt)}
    return stack_layers(params, config) if stacked else params


def make_flow(key: Array, dim: int, **options) -> Flow:
    """Build a fresh coupling flow (the identity map on ``N(0, I)``).

    Args:
      key: PRNG key (permutations and hidden-layer weights).
      dim: event dimension, >= 1.
      **options: the architecture, as `flow_config` takes it (``kind``,
        ``num_layers``, ``hidden``, ``context_dim``, ``num_bins``, ``bound``,
        ``max_log_scale``, ``dtype``, ``conditioner``, ``lu_layers``).

    Returns:
      A `Flow`.

    Raises:
      ValueError: on any invalid setting.
    """
    k_mask, k_params = jax.random.split(key)
    config = flow_config(k_mask, dim, **options)
    return Flow(config, init_params(config, k_params))


def flow_config(
    key: Array,
    dim: int,
    *,
    kind: str = "spline",
    num_layers: int = 4,
    hidden: Sequence[int] = (32, 32),
    context_dim: int = 0,
    num_bins: int = 8,
    bound: float = 5.0,
    max_log_scale: float = 3.0,
    dtype=None,
    conditioner: str = "mlp",
    lu_layers: bool = False,
) -> FlowConfig:
    """The validated `FlowConfig` of a coupling flow, without parameters (`make_flow` adds them).

    Args:
      key: PRNG key for the coupling masks' permutations.
      dim: event dimension, >= 1.
      kind: ``"spline"`` (rational-quadratic, more flexible) or ``"affine"`` (RealNVP).
      num_layers: coupling layers; use an even number so every coordinate is transformed.
      hidden: conditioner MLP hidden widths.
      context_dim: conditioning input size (0: unconditional).
      num_bins: spline bins.
      bound: spline box half-width in the standardised coordinates.
      max_log_scale: soft clamp of affine log scales.
      dtype: float32 (default unless x64 is enabled) or float64.
      conditioner: ``"mlp"`` (tanh) or ``"resnet"`` (relu residual blocks;
        ``hidden=(50, 50)`` is width 50 with two blocks).
      lu_layers: add a learned LU linear map after each coupling layer.

    Raises:
      ValueError: on any invalid setting.
    """
    if dtype is None:
        dtype = jnp.result_type(float)
    dim_ok = isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 1
    layers_ok = isinstance(num_layers, (int, np.integer)) and not isinstance(num_layers, bool) and num_layers >= 1
    if not dim_ok:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    if not layers_ok:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    config = FlowConfig(
        dim=int(dim), kind=kind, num_layers=int(num_layers), hidden=tuple(int(h) for h in hidden),
        context_dim=int(context_dim) if not isinstance(context_dim, bool) else context_dim,
        num_bins=num_bins, bound=float(bound), max_log_scale=float(max_log_scale),
        masks=alternating_masks(key, int(dim), int(num_layers)), dtype=jnp.dtype(dtype).name,
        conditioner=conditioner, lu_layers=lu_layers,
    )
    _check_config(config)
    return config


def standardize(flow: Flow, loc, scale) -> Flow:
    """Set the flow's final elementwise affine layer to ``x = loc + scale * u``.

    Used to start a fit from the data's (or a sampler's) mean and standard
    deviation, so the coupling layers only learn the non-Gaussian part.

    Args:
      loc, scale: ``(dim,)``; scale must be positive and finite.
    """
    loc = np.asarray(loc, np.float64)
    scale = np.asarray(scale, np.float64)
    if loc.shape != (flow.dim,) or scale.shape != (flow.dim,):
        raise ValueError(f"loc and scale must have shape ({flow.dim},), got {loc.shape}, {scale.shape}")
    if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError("loc must be finite and scale positive and finite")
    params = dict(flow.params)
    params["loc"] = jnp.asarray(loc, flow.dtype)
    params["log_scale"] = jnp.asarray(np.log(scale), flow.dtype)
    return flow.replace(params=params)


def check_flow_for_target(flow: "Flow", target, purpose: str) -> None:
    """Raise unless ``flow`` is an unconditional `Flow` of ``target``'s dimension.

    Args:
      flow: the flow to check.
      target: a `Target` (anything with ``dim`` and ``name``).
      purpose: what needs the flow, for the error message (e.g. "flow_hmc").

    Raises:
      TypeError: not a `Flow`.
      ValueError: dimension mismatch, or a conditional flow.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be a sbi_kit Flow, got {type(flow).__name__}")
    if flow.dim != target.dim:
        raise ValueError(
            f"flow dimension {flow.dim} differs from target {target.name!r} dimension {target.dim}"
        )
    if flow.config.context_dim:
        raise ValueError(f"{purpose} needs an unconditional flow (context_dim=0)")
