"""Saving and loading flows as arrays plus a JSON config (no pickle).

``save_flow(path, flow)`` writes ``<path>.json`` (format version, the
`FlowConfig`, and the name, shape and dtype of every parameter array) and
``<path>.npz`` (the arrays, keyed by their pytree path such as
``layers/0/net/1/w``). ``load_flow`` rebuilds the parameter structure from the
config, fills it from the ``.npz`` (read with ``allow_pickle=False``) and
checks every name, shape and dtype, so a loaded flow is bit-identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from sbi_kit.flows.flow import Flow, FlowConfig, _check_config, init_params, stack_layers, unstack_layers

FORMAT_VERSION = 1


def _named_leaves(params) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[name] = np.asarray(leaf)
    return out


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".npz"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".npz")


def save_flow(path: str | os.PathLike, flow: Flow) -> tuple[Path, Path]:
    """Write ``flow`` to ``<path>.json`` and ``<path>.npz``; returns both paths.

    A trailing ``.json`` or ``.npz`` on ``path`` is dropped first.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be a sbi_kit Flow, got {type(flow).__name__}")
    json_path, npz_path = _paths(path)
    # Saved with one entry per layer whatever the in-memory layout, so files
    # from older versions and from this one read the same way.
    arrays = _named_leaves(unstack_layers(flow.params))
    meta = {
        "format": "sbi_kit.flow",
        "version": FORMAT_VERSION,
        "config": flow.config.to_dict(),
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()},
    }
    np.savez(npz_path, **arrays)
    json_path.write_text(json.dumps(meta, indent=1))
    return json_path, npz_path


def load_flow(path: str | os.PathLike) -> Flow:
    """Read a flow written by `save_flow`.

    Raises:
      ValueError: unknown format or version, or arrays missing, extra, or of
        the wrong shape or dtype for the config.
    """
    json_path, npz_path = _paths(path)
    meta = json.loads(json_path.read_text())
    if meta.get("format") != "sbi_kit.flow" or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{json_path} is not a version-{FORMAT_VERSION} sbi_kit flow file")
    config = FlowConfig.from_dict(meta["config"])
    _check_config(config)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{json_path} holds a float64 flow but JAX runs in float32; call "
            "jax.config.update('jax_enable_x64', True) before loading it"
        )
    template = init_params(config, jax.random.PRNGKey(0), stacked=False)
    expected = _named_leaves(template)
    with np.load(npz_path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    if set(stored) != set(expected):
        raise ValueError(
            f"{npz_path} arrays do not match the config: missing "
            f"{sorted(set(expected) - set(stored))}, extra {sorted(set(stored) - set(expected))}"
        )
    for k, v in expected.items():
        if stored[k].shape != v.shape or stored[k].dtype != v.dtype:
            raise ValueError(
                f"{npz_path}: array {k!r} has shape {stored[k].shape} {stored[k].dtype}, "
                f"expected {v.shape} {v.dtype}"
            )
    names = list(expected)
    params = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(template), [jax.numpy.asarray(stored[n]) for n in names]
    )
    return Flow(config, stack_layers(params, config))
