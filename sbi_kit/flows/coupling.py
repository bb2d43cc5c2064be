"""Coupling layers: RealNVP affine and rational-quadratic spline, on distrax.

A coupling layer leaves the coordinates where ``mask`` is True unchanged and
transforms the others elementwise with parameters computed by an MLP from the
unchanged half (and an optional context vector). The elementwise transforms
are `distrax.ScalarAffine` and the rational-quadratic spline of
`sbi_kit.flows.spline` (distrax's map, evaluated on whole arrays), applied by
`PartialCoupling` (a distrax bijector) to the changed coordinates only; this
module supplies that layer, the conditioner and the numerically safe
parametrisations:

* affine: ``log_scale = c * tanh(raw / c)`` (a soft clamp to ``(-c, c)``),
  so one layer can never blow a point up or collapse it by more than ``e^c``;
* spline: ``boundary_slopes="identity"`` with range ``[-bound, bound]``: the
  map is the identity outside the box, so far-tail inputs pass through
  unchanged and stay finite in float32; raw bin and slope parameters are
  soft-clamped to ``(-3, 3)`` so the float32 inverse stays accurate.
"""

from __future__ import annotations

from typing import Sequence

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.flows.networks import host_full, host_rng, init_net, net_apply
from sbi_kit.flows.spline import rqs_forward, rqs_inverse

Array = jax.Array

KINDS = ("affine", "spline")

# Soft bound on the raw spline parameters (see `coupling_bijector`).
SPLINE_PARAM_CLAMP = 3.0

# Smallest diagonal entry of an LU layer's U (keeps it invertible in float32).
LU_MIN_DIAG = 1e-3


def params_per_dim(kind: str, num_bins: int) -> int:
    """Conditioner outputs per transformed coordinate: 2 (affine) or 3 K + 1 (spline)."""
    if kind == "affine":
        return 2
    if kind == "spline":
        return 3 * num_bins + 1
    raise ValueError(f"unknown coupling kind {kind!r}; choose one of {list(KINDS)}")


def init_coupling(key: Array, dim: int, context_dim: int, hidden: Sequence[int], kind: str, num_bins: int, dtype,
                  conditioner: str = "mlp") -> dict:
    """Parameters ``{"net": network}`` of one coupling layer (the identity map at init).

    The network (`sbi_kit.flows.networks`, kind ``conditioner``) maps
    ``(dim + context_dim,)`` to ``(dim * params_per_dim,)``. ``key`` is a
    PRNG key or a numpy Generator (`sbi_kit.flows.networks.host_rng`).
    """
    out = dim * params_per_dim(kind, num_bins)
    return {"net": init_net(conditioner, key, dim + context_dim, hidden, out, dtype)}


def init_lu(dim: int, dtype) -> dict:
    """Parameters of an identity `lu_bijector`: ``{"lower", "upper": (dim, dim), "diag", "bias": (dim,)}``."""
    return {
        "lower": host_full((dim, dim), 0.0, dtype),
        "upper": host_full((dim, dim), 0.0, dtype),
        # softplus(raw) + LU_MIN_DIAG = 1 at init.
        "diag": host_full((dim,), np.log(np.expm1(1.0 - LU_MIN_DIAG)), dtype),
        "bias": host_full((dim,), 0.0, dtype),
    }


def lu_bijector(params: dict) -> distrax.Bijector:
    """``x -> L U x + b``: a learned invertible linear map between coupling layers (nflows' ``LULinear``).

    ``L`` is unit lower triangular, ``U`` upper triangular with diagonal
    ``softplus(diag) + LU_MIN_DIAG > 0``, so the map is invertible for any
    parameters and ``log|det| = sum(log diag(U))``. It mixes all coordinates,
    which fixed coupling masks alone do slowly.
    """
    diag = jax.nn.softplus(params["diag"]) + LU_MIN_DIAG
    matrix = jnp.tril(params["lower"], -1) + jnp.triu(params["upper"], 1) + jnp.diag(diag)
    return distrax.LowerUpperTriangularAffine(matrix, params["bias"])


class PartialCoupling(distrax.Bijector):
    """A coupling layer that transforms only the coordinates where ``mask`` is False.

    The same map as ``distrax.MaskedCoupling`` with an elementwise inner
    bijector (the conditioner sees ``where(mask, x, 0)``), but the elementwise
    transform is evaluated on the transformed coordinates alone rather than on
    all of them and then masked: half the spline work of an alternating-mask
    flow. Works on ``(..., dim)`` arrays; the log-det sums over the last axis.

    ``mask`` is static (numpy) unless ``changed`` is given: then ``mask``
    (bool ``(dim,)``) and ``changed`` (int ``(m,)``, the indices where ``mask``
    is False) may be traced arrays, as in a `jax.lax.scan` over a stack of
    layers that differ only in their masks.
    """

    def __init__(self, mask, conditioner, transform, changed=None):
        super().__init__(event_ndims_in=1)
        if changed is None:
            self._mask = np.asarray(mask, bool)
            self._changed = np.flatnonzero(~self._mask)  # static indices
        else:
            self._mask, self._changed = mask, changed
        self._conditioner = conditioner
        self._transform = transform  # (theta (..., m, p), v (..., m), inverse) -> (out, log_det)

    def _apply(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        masked = jnp.where(self._mask, x, jnp.zeros_like(x))
        theta = self._conditioner(masked)[..., self._changed, :]
        out, log_det = self._transform(theta, x[..., self._changed], inverse)
        return x.at[..., self._changed].set(out), jnp.sum(log_det, axis=-1)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return self._apply(x, inverse=False)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return self._apply(y, inverse=True)


def coupling_bijector(
    params: dict,
    mask,
    context: Array | None,
    *,
    kind: str,
    num_bins: int,
    bound: float,
    max_log_scale: float,
    changed: Array | None = None,
) -> distrax.Bijector:
    """A `PartialCoupling` for one unbatched point of shape ``(dim,)``.

    Args:
      params: from `init_coupling`.
      mask: boolean ``(dim,)`` (numpy or a tuple: it is static); True marks
        the coordinates left unchanged. With ``changed`` it may be a traced array.
      context: ``(context_dim,)`` or None.
      kind: ``"affine"`` or ``"spline"``.
      num_bins: spline bins.
      bound: spline box half-width ``B`` (identity outside ``[-B, B]``).
      max_log_scale: affine soft clamp ``c``.
      changed: None (``mask`` is static), or the int indices ``(m,)`` where
        ``mask`` is False, for a traced ``mask`` (see `PartialCoupling`).
    """
    if changed is None:
        mask = np.asarray(mask, bool)
    dim = mask.shape[0]
    p = params_per_dim(kind, num_bins)

    def conditioner(masked_x):
        inputs = masked_x if context is None else jnp.concatenate([masked_x, context.astype(masked_x.dtype)])
        out = net_apply(params["net"], inputs)
        return out.reshape(out.shape[:-1] + (dim, p))

    if kind == "affine":
        def transform(theta, v, inverse):
            log_scale = max_log_scale * jnp.tanh(theta[..., 1] / max_log_scale)
            affine = distrax.ScalarAffine(shift=theta[..., 0], log_scale=log_scale)
            return affine.inverse_and_log_det(v) if inverse else affine.forward_and_log_det(v)
    else:
        def transform(theta, v, inverse):
            # Soft clamp of the raw bin widths, heights and slopes: bin-size
            # ratios stay below e^(2 c) and interior knot slopes in about
            # (0.08, 3.6) for c = 3 (softplus(+-c + log(e - 1))), which keeps
            # the float32 inverse (a quadratic root) accurate to ~1e-5 instead
            # of ~1e-2 for extreme splines.
            theta = SPLINE_PARAM_CLAMP * jnp.tanh(theta / SPLINE_PARAM_CLAMP)
            return (rqs_inverse if inverse else rqs_forward)(theta, v, bound)

    return PartialCoupling(mask, conditioner, transform, changed)


def alternating_masks(key: Array, dim: int, num_layers: int) -> tuple[tuple[bool, ...], ...]:
    """Coupling masks with random permutations, as static tuples.

    Layers come in pairs: a random half of the coordinates (a fresh random
    permutation per pair) is kept in the first layer and transformed in the
    second, so every coordinate is transformed and every pair of coordinates
    can interact. With ``dim == 1`` nothing can be conditioned on: every mask
    is all False and each layer is a learned elementwise map.
    """
    masks = []
    rng = host_rng(key)  # drawn on the host: no device program to compile for a static result
    perms = [rng.permutation(dim) for _ in range(max(1, (num_layers + 1) // 2))]
    for layer in range(num_layers):
        if dim == 1:
            masks.append((False,))
            continue
        perm = [int(i) for i in perms[layer // 2]]
        keep = set(perm[: dim // 2])
        m = tuple((i in keep) for i in range(dim))
        if layer % 2 == 1:
            m = tuple(not v for v in m)
        masks.append(m)
    return tuple(masks)
