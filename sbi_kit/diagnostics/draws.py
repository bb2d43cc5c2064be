"""Draws as arrays: pooling every supported input to ``(n, d)``, and input checks.

Metrics accept draws as an array ``(n,)``, ``(n, d)`` or ``(chains, draws, d)``
(chains pooled), an ArviZ ``InferenceData`` / posterior ``xarray.Dataset``
(constrained values) or a `Trace` (unconstrained positions). This module turns
each into a numpy array and holds the eager input checks the metrics share.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

Array = jax.Array


def _is_inference_data(obj) -> bool:
    return hasattr(obj, "posterior") and hasattr(obj, "groups")


def _is_arviz_input(obj) -> bool:
    """InferenceData or a posterior ``xarray.Dataset``: constrained values."""
    return _is_inference_data(obj) or hasattr(obj, "data_vars")


def _posterior_as_3d(draws, var_names=None) -> tuple[np.ndarray, list[str]]:
    """Posterior variables of InferenceData / an xarray Dataset as ``(chains, draws, d)``.

    Variables are taken in ``var_names`` order, or the posterior's own
    ``data_vars`` order; each is flattened in C order over its event dims.
    """
    ds = draws.posterior if _is_inference_data(draws) else draws
    names = list(ds.data_vars) if var_names is None else list(var_names)
    if not names:
        raise ValueError("posterior has no variables")
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        raise ValueError(f"variables {missing} not in the posterior {list(ds.data_vars)}")
    blocks = []
    for v in names:
        da = ds[v]
        if "chain" not in da.dims or "draw" not in da.dims:
            raise ValueError(f"posterior variable {v!r} lacks chain/draw dims: {da.dims}")
        other = [dim for dim in da.dims if dim not in ("chain", "draw")]
        arr = np.asarray(da.transpose("chain", "draw", *other).values)
        blocks.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    return np.concatenate(blocks, axis=-1), names


def _as_3d(draws, var_names=None) -> tuple[np.ndarray, list[str] | None]:
    """Draws as a numpy ``(chains, draws, d)`` array; a 2-d array is one chain."""
    if hasattr(draws, "positions") and hasattr(draws, "stats"):
        # A Trace: its unconstrained positions, the coordinates of target.score/sample.
        return np.asarray(draws.positions), None
    if _is_arviz_input(draws):
        return _posterior_as_3d(draws, var_names)
    arr = np.asarray(draws)
    if arr.ndim == 1:
        arr = arr[None, :, None]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(
            f"draws must have shape (n,), (n, d) or (chains, draws, d), got {arr.shape}"
        )
    return arr, None


def draws_as_array(draws, var_names=None) -> np.ndarray:
    """Pool draws into one ``(n, d)`` numpy array.

    Args:
      draws: an array ``(n,)`` (read as ``d = 1``), ``(n, d)`` or
        ``(chains, draws, d)``; a `Trace` (its unconstrained ``positions``,
        the coordinates of ``target.sample`` and ``target.score``); or an
        ArviZ ``InferenceData`` / posterior ``xarray.Dataset`` (constrained
        values). For ArviZ input, variables are concatenated in ``var_names``
        order (default: the posterior's ``data_vars`` order), each flattened
        in C order over its non-(chain, draw) dims, with chains stacked first.
      var_names: optional list of posterior variable names.

    Returns:
      A numpy array of shape ``(chains * draws, d)`` and the input's dtype.
    """
    arr, _ = _as_3d(draws, var_names)
    return arr.reshape(-1, arr.shape[-1])


def _checked(draws, name: str) -> Array:
    """Pooled draws as a float jax array ``(n, d)``; rejects empty and non-finite rows."""
    arr = draws_as_array(draws)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    # Checked in numpy: eager jnp reductions would compile once per input shape.
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
    if bad:
        raise ValueError(f"{name} has {bad} of {arr.shape[0]} rows with NaN or infinite values")
    return jnp.asarray(arr)


def _checked_pair(x, y, min_rows: int = 1) -> tuple[Array, Array]:
    X, Y = _checked(x, "x"), _checked(y, "y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {X.shape[1]} vs {Y.shape[1]}")
    for nm, arr in (("x", X), ("y", Y)):
        if arr.shape[0] < min_rows:
            raise ValueError(f"{nm} needs at least {min_rows} rows, got {arr.shape[0]}")
    dt = jnp.result_type(X.dtype, Y.dtype)
    return X.astype(dt), Y.astype(dt)


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return block_size


__all__ = ["draws_as_array"]
