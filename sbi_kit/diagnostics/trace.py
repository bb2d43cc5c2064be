"""`Trace`: the draws of a run, and their conversion to ArviZ."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# sbi_kit stat name -> ArviZ sample_stats name (identical where ArviZ has one).
_ARVIZ_STATS = {
    "lp": "lp",
    "acceptance_rate": "acceptance_rate",
    "diverging": "diverging",
    "energy": "energy",
    "step_size": "step_size",
    "n_steps": "n_steps",
    "tree_depth": "tree_depth",
    "num_grad_evals": "num_grad_evals",
    "log_weight": "log_weight",
}


class Trace(NamedTuple):
    """Draws of many chains with per-draw statistics.

    Attributes:
      positions: unconstrained draws, numpy array ``(chains, draws, dim)``.
      stats: per-draw statistics, each ``(chains, draws)``: ``lp``,
        ``acceptance_rate``, ``diverging``, ``energy``, ``step_size``,
        ``n_steps``, ``num_grad_evals``, optionally ``tree_depth`` and
        ``log_weight``.
      target: the `Target` that was sampled (maps draws to named values).
      sampler: the method's name.
      info: run metadata (tuned parameters, warmup and sampling seconds, ...).
      interrupted: True if the run stopped early (Ctrl-C) and holds fewer draws.
    """

    positions: Any
    stats: dict
    target: Any
    sampler: str = ""
    info: dict = {}
    interrupted: bool = False

    @property
    def num_chains(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.positions.shape[1])

    @property
    def num_grad_evals(self) -> int:
        """Total gradient evaluations of the kept draws over all chains (warmup excluded)."""
        if "num_grad_evals" not in self.stats:
            return 0
        return int(np.sum(self.stats["num_grad_evals"]))

    def constrained(self) -> dict[str, np.ndarray]:
        """Named constrained values, each ``(chains, draws, *site_shape)``."""
        if self.num_draws == 0:
            one = jax.eval_shape(self.target.to_constrained, jax.ShapeDtypeStruct((self.target.dim,), self.positions.dtype))
            return {k: np.zeros((self.num_chains, 0) + v.shape, v.dtype) for k, v in one.items()}
        fn = jax.jit(jax.vmap(jax.vmap(self.target.to_constrained)))
        return {k: np.asarray(v) for k, v in fn(jnp.asarray(self.positions)).items()}

    def to_arviz(self):
        """An ``arviz.InferenceData`` of this trace.

        Groups: ``posterior`` (constrained values with the target's names and
        shapes), ``sample_stats`` (ArviZ names: lp, acceptance_rate,
        diverging, energy, step_size, n_steps, tree_depth, plus
        num_grad_evals), and for numpyro targets with observed sites
        ``log_likelihood`` and ``observed_data`` (so ``az.loo`` works).
        Run metadata (sampler, timings) goes into the posterior's attrs.
        """
        return trace_to_arviz(self)


def _dims_for(name: str, shape: tuple) -> list[str]:
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def trace_to_arviz(trace: Trace):
    """Convert a `Trace` to ``arviz.InferenceData``; see `Trace.to_arviz`."""
    import arviz as az

    from sbi_kit.targets.numpyro_bridge import log_likelihood

    posterior = trace.constrained()
    dims = {k: _dims_for(k, v.shape[2:]) for k, v in posterior.items()}
    stats = {}
    for name, value in trace.stats.items():
        value = np.asarray(value)
        if name == "diverging":
            value = value.astype(bool)
        stats[_ARVIZ_STATS.get(name, name)] = value

    groups: dict[str, Any] = {"posterior": posterior, "sample_stats": stats}
    if trace.target.info.get("kind") == "numpyro" and trace.num_draws > 0:
        loglik = log_likelihood(trace.target, posterior, batch_ndims=2)
        if loglik:
            groups["log_likelihood"] = {k: np.asarray(v) for k, v in loglik.items()}
            groups["observed_data"] = {k: np.asarray(v) for k, v in trace.target.info["observed"].items()}
            for k, v in trace.target.info["observed"].items():
                dims[k] = _dims_for(k, np.shape(v))

    attrs = {"inference_library": "sbi_kit", "sampler": trace.sampler, "interrupted": int(trace.interrupted)}
    for k in ("warmup_time", "sampling_time", "num_warmup", "warmup_grad_evals"):
        if k in trace.info:
            attrs[k] = float(trace.info[k])
    idata = az.from_dict(**groups, dims=dims)
    for group in ("posterior", "sample_stats"):
        idata[group].attrs.update(attrs)
    return idata
