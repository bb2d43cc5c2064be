"""Black-box log densities: a batched NumPy/Python function as a `Target`.

The function is called from JAX through `jax.pure_callback` with
``vmap_method="expand_dims"``: a sampler that vmaps ``target.log_density``
over an ensemble (and over several ensembles) produces ONE host call with all
points of that step, which the wrapper cuts into batches of ``batch_size``.
It is never called one point at a time by the samplers of this package.

Every point handed to the function is counted by an `EvalCounter` kept in
``target.info["eval_counter"]``.
"""

from __future__ import annotations

import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.targets.base import Target


class EvalCounter:
    """Thread-safe count of the points a black-box function was evaluated at.

    Attributes:
      count: number of points evaluated so far.
      calls: number of calls of the user function (batches).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.calls = 0

    def add(self, points: int) -> None:
        with self._lock:
            self.count += int(points)
            self.calls += 1

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.calls = 0

    def __repr__(self) -> str:
        return f"EvalCounter(count={self.count}, calls={self.calls})"


def _check_output(out, n: int, what: str) -> np.ndarray:
    arr = np.asarray(out)
    if arr.shape != (n,):
        raise ValueError(
            f"{what} returned shape {arr.shape} for a batch of {n} points; it must return "
            f"one log density per point, shape ({n},)"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} returned dtype {arr.dtype}; expected real numbers")
    return arr.astype(np.float64)


def from_blackbox(
    fn_batched: Callable[[np.ndarray], np.ndarray],
    dim: int,
    batch_size: int | None = None,
    *,
    name: str = "blackbox",
    probe: np.ndarray | None = None,
    **ground_truth,
) -> Target:
    """A `Target` whose log density is a batched NumPy/Python function.

    Args:
      fn_batched: ``x (n, dim) float64 numpy -> (n,)`` unnormalised log
        densities. It may return NaN (or +inf) at points where it fails; the
        ensemble samplers give those points zero weight and count them.
        ``-inf`` means zero density (outside the support).
      dim: the dimension, a positive int.
      batch_size: the most points per call of ``fn_batched`` (None: all the
        points of a step in one call).
      name: the target's name.
      probe: optional ``(n, dim)`` points used to check the output shape at
        construction (default: two points, zeros and ones). The probe
        evaluations are counted.
      **ground_truth: optional `Target` fields (``sample``, ``log_Z``,
        ``mean``, ``std``, ``to_constrained``, ...).

    Returns:
      A `Target` whose ``log_density(x (dim,)) -> scalar`` (dtype of ``x``)
      is a ``jax.pure_callback``; vmapping it batches the points into one host
      call. It has no gradient (``jax.grad`` through it raises). ``info``
      holds ``kind="blackbox"``, ``eval_counter`` (an `EvalCounter`),
      ``batched_log_density`` (the host function ``(..., dim) -> (...)``) and
      ``batch_size``.

    Raises:
      ValueError: bad ``dim``/``batch_size``, or ``fn_batched`` returning a
        wrong shape on the probe batch (checked here, before any sampling).
    """
    if not callable(fn_batched):
        raise TypeError(f"fn_batched must be callable, got {type(fn_batched).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    dim = int(dim)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    counter = EvalCounter()
    what = f"black-box log density {name!r}"

    def host(x) -> np.ndarray:
        x = np.asarray(x)
        lead = x.shape[:-1]
        flat = np.asarray(x, np.float64).reshape(-1, dim)
        n = flat.shape[0]
        step = n if batch_size is None else int(batch_size)
        outs = []
        for start in range(0, n, max(step, 1)):
            chunk = flat[start : start + step]
            outs.append(_check_output(fn_batched(chunk), chunk.shape[0], what))
            counter.add(chunk.shape[0])
        out = np.concatenate(outs) if outs else np.zeros((0,))
        return out.reshape(lead).astype(x.dtype)

    probe_pts = np.stack([np.zeros(dim), np.ones(dim)]) if probe is None else np.asarray(probe, np.float64)
    if probe_pts.ndim != 2 or probe_pts.shape[1] != dim:
        raise ValueError(f"probe must have shape (n, {dim}), got {probe_pts.shape}")
    host(probe_pts)  # raises ValueError on a wrong output shape

    def log_density(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        if x.shape[-1:] != (dim,):
            raise ValueError(f"{what} expects points of shape ({dim},), got {x.shape}")
        out = jax.ShapeDtypeStruct(x.shape[:-1], x.dtype)
        # expand_dims: under vmap the host sees the whole batch in one call.
        return jax.pure_callback(host, out, x, vmap_method="expand_dims")

    info = {
        "kind": "blackbox",
        "eval_counter": counter,
        "batched_log_density": host,
        "batch_size": batch_size,
    }
    info.update(ground_truth.pop("info", {}))
    return Target(log_density=log_density, dim=dim, name=name, info=info, **ground_truth)


def eval_counter_of(target: Target) -> EvalCounter | None:
    """The `EvalCounter` of a black-box target, or None for a JAX target."""
    return target.info.get("eval_counter") if isinstance(target.info, dict) else None
