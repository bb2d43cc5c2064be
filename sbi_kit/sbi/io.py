"""Saving and loading trained SBI posteriors as arrays plus a JSON config (no pickle).

``save_posterior(path, posterior)`` writes ``<path>.json`` (format version,
estimator kind, architecture, the prior's site names and shapes, and the
name, shape and dtype of every array) and ``<path>.npz`` (the arrays, keyed by
pytree path such as ``params/flow/layers/0/net/1/w``). Nothing is pickled, so
files stay readable across library and Python versions.

The prior is code (a numpyro distribution or model), not data, so
`load_posterior` takes it again. The file stores a few prior draws with their
log densities; loading checks that the given prior reproduces them, which
catches passing the wrong prior.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.flows.flow import init_params, stack_layers, unstack_layers
from sbi_kit.sbi import _conditional as cond
from sbi_kit.sbi import _ratio as ratio
from sbi_kit.sbi._networks import init_mlp
from sbi_kit.sbi._posterior import LikelihoodPosterior
from sbi_kit.sbi.npe import NPEPosterior
from sbi_kit.sbi.prior import as_prior

FORMAT = "sbi_kit.sbi_posterior"
FORMAT_VERSION = 1
_NUM_PRIOR_CHECKS = 8


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".npz"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".npz")


def _named_leaves(tree, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join([prefix] + [str(getattr(p, "key", getattr(p, "idx", p))) for p in path])
        out[name] = np.asarray(leaf)
    return out


def _templates(kind: str, spec):
    """Parameter and standardizer pytrees with the right structure, shapes and dtypes."""
    key = jax.random.PRNGKey(0)
    if kind in ("npe", "nle"):
        dt = jnp.dtype(spec.flow.dtype)
        emb = init_mlp(key, spec.context_dim, spec.embedding_hidden, spec.embedding_dim, dt) if spec.embedding_dim else []
        params = {"flow": init_params(spec.flow, key, stacked=False), "embedding": emb}
        std = {"c_loc": jnp.zeros(spec.context_dim, dt), "c_scale": jnp.ones(spec.context_dim, dt)}
    else:
        dt = jnp.dtype(spec.dtype)
        params = init_mlp(key, spec.theta_dim + spec.x_dim, spec.hidden, 1, dt)
        std = {"u_loc": jnp.zeros(spec.theta_dim, dt), "u_scale": jnp.ones(spec.theta_dim, dt),
               "x_loc": jnp.zeros(spec.x_dim, dt), "x_scale": jnp.ones(spec.x_dim, dt)}
    return params, std


def _saved_layout(posterior):
    """The parameters with flow layers as a list (the file layout; see `sbi_kit.flows.io`)."""
    params = posterior.params
    if isinstance(params, dict) and "flow" in params:
        params = {**params, "flow": unstack_layers(params["flow"])}
    return params


def save_posterior(path: str | os.PathLike, posterior) -> tuple[Path, Path]:
    """Write an `NPEPosterior` or `LikelihoodPosterior` to ``<path>.json`` and ``<path>.npz``.

    A trailing ``.json`` or ``.npz`` on ``path`` is dropped. Returns both paths.
    """
    if isinstance(posterior, NPEPosterior):
        kind = "npe"
    elif isinstance(posterior, LikelihoodPosterior):
        kind = posterior.kind
    else:
        raise TypeError(f"expected an NPEPosterior or LikelihoodPosterior, got {type(posterior).__name__}")
    json_path, npz_path = _paths(path)
    prior = posterior.prior
    check_theta = prior.sample(jax.random.PRNGKey(12345), _NUM_PRIOR_CHECKS)
    arrays = {
        **_named_leaves(_saved_layout(posterior), "params"),
        **_named_leaves(posterior.standardizer, "standardizer"),
        "prior_check/theta": np.asarray(check_theta),
        "prior_check/log_prob": np.asarray(prior.log_prob(check_theta)),
    }
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "spec": posterior.spec.to_dict(),
        "prior": {"names": list(prior.names), "shapes": [list(s) for s in prior.shapes], "dim": prior.dim},
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()},
    }
    np.savez(npz_path, **arrays)
    json_path.write_text(json.dumps(meta, indent=1))
    return json_path, npz_path


def load_posterior(path: str | os.PathLike, prior):
    """Read a posterior written by `save_posterior`.

    Args:
      path: the path given to `save_posterior` (with or without suffix).
      prior: the same prior the estimator was trained with (anything `as_prior` accepts).

    Returns:
      An `NPEPosterior` or `LikelihoodPosterior`, bit-identical to the saved one
      (``info`` is None).

    Raises:
      ValueError: unknown format or version; a float64 file while JAX's
        x64 mode is off; arrays missing, extra or of the wrong shape or dtype; a prior with other sites or other log densities
        than the saved one.
    """
    json_path, npz_path = _paths(path)
    meta = json.loads(json_path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{json_path} is not a version-{FORMAT_VERSION} sbi_kit posterior file")
    kind = meta["kind"]
    if kind not in ("npe", "nle", "nre"):
        raise ValueError(f"{json_path}: unknown estimator kind {kind!r}")
    prior = as_prior(prior)
    saved = meta["prior"]
    if list(prior.names) != saved["names"] or [list(s) for s in prior.shapes] != saved["shapes"]:
        raise ValueError(
            f"prior sites {dict(zip(prior.names, prior.shapes))} differ from the saved prior's "
            f"{dict(zip(saved['names'], map(tuple, saved['shapes'])))}"
        )
    spec = (ratio.RatioSpec if kind == "nre" else cond.CondFlowSpec).from_dict(meta["spec"])
    saved_dtype = jnp.dtype(spec.dtype if kind == "nre" else spec.flow.dtype)
    if saved_dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(f"{json_path} was saved as float64; enable jax_enable_x64 "
                         "(jax.config.update('jax_enable_x64', True)) before loading it")
    params_t, std_t = _templates(kind, spec)
    expected = {**_named_leaves(params_t, "params"), **_named_leaves(std_t, "standardizer")}
    with np.load(npz_path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    checks = {k: stored.pop(k, None) for k in ("prior_check/theta", "prior_check/log_prob")}
    if set(stored) != set(expected) or any(v is None for v in checks.values()):
        raise ValueError(
            f"{npz_path} arrays do not match the config: missing {sorted(set(expected) - set(stored))}, "
            f"extra {sorted(set(stored) - set(expected))}"
        )
    for k, v in expected.items():
        if stored[k].shape != v.shape or stored[k].dtype != v.dtype:
            raise ValueError(f"{npz_path}: array {k!r} has shape {stored[k].shape} {stored[k].dtype}, "
                             f"expected {v.shape} {v.dtype}")
    lp = np.asarray(prior.log_prob(jnp.asarray(checks["prior_check/theta"])), np.float64)
    ref = checks["prior_check/log_prob"].astype(np.float64)
    if not np.allclose(lp, ref, rtol=1e-4, atol=1e-4, equal_nan=True):
        raise ValueError(f"the given prior's log densities differ from the saved prior's ({lp} vs {ref}); "
                         "pass the prior the posterior was trained with")

    def fill(template, prefix):
        names = list(_named_leaves(template, prefix))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                            [jnp.asarray(stored[n]) for n in names])

    params, std = fill(params_t, "params"), fill(std_t, "standardizer")
    if kind in ("npe", "nle"):
        params = {**params, "flow": stack_layers(params["flow"], spec.flow)}
    if kind == "npe":
        return NPEPosterior(prior, spec, params, std)
    return LikelihoodPosterior(prior, kind, spec, params, std)
