"""The SNF object: block specifications, validation, parameters, and the path passes.

An `SNF` is a pytree (parameters as leaves, the static `SNFConfig` as aux
data) holding a sequence of stages: coupling-flow stacks (`sbi_kit.flows`
`Flow`s, distrax bijectors) and stochastic blocks (`_snf_blocks`). The base
is ``N(0, s^2 I)``. `forward_path` draws ``x_0`` from the base, runs every
stage and returns ``x_T`` with its path log weight in the same pass;
`backward_path` starts from a given ``x_T`` and samples the backward path
(for forward-KL training from draws).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.flows.flow import Flow, base_log_prob, make_flow
from sbi_kit.samplers._snf_blocks import (
    STOCHASTIC_KINDS,
    PathState,
    energy_evals_per_block,
    guarded_log_density,
    stochastic_step,
)
from sbi_kit.targets.base import Target

Array = jax.Array


class FlowBlock(NamedTuple):
    """A stack of coupling layers to be built by `make_snf` (see `sbi_kit.flows.make_flow`).

    Attributes:
      num_layers: coupling layers, an even int >= 2 (so every coordinate is
        transformed; `make_snf` raises ValueError otherwise).
      kind: ``"affine"`` (RealNVP) or ``"spline"``.
      hidden: conditioner MLP widths.
    """

    num_layers: int = 2
    kind: str = "affine"
    hidden: tuple = (64, 64)


class StochasticBlock(NamedTuple):
    """A stochastic block at interpolation ``lam`` between base (0) and target (1).

    Attributes:
      kind: ``"langevin"`` (unadjusted), ``"mala"``, ``"rwmh"``, ``"underdamped"`` or ``"hmc"``.
      lam: interpolation parameter in [0, 1]; the last stochastic block must have 1.
      step_size: Langevin/MALA/underdamped time step, or random-walk proposal std; > 0.
      num_steps: kernel repetitions inside the block, >= 1.
      friction: underdamped Langevin friction ``gamma`` > 0 (refresh ``a = exp(-gamma eps)``).
      num_leapfrogs: leapfrog steps per HMC proposal, >= 1 (``"hmc"`` only;
        each costs one gradient evaluation).
    """

    kind: str
    lam: float = 1.0
    step_size: float = 0.1
    num_steps: int = 1
    friction: float = 1.0
    num_leapfrogs: int = 10


@dataclasses.dataclass(frozen=True)
class SNFConfig:
    """Static description of an SNF.

    Attributes:
      dim: event dimension.
      base_scale: std ``s`` of the ``N(0, s^2 I)`` base.
      stages: per stage a `FlowConfig` (flow stack) or a `StochasticBlock`.
      train_lambdas: whether the interpolation parameters are trained (the
        last stochastic block stays at 1).
      train_step_sizes: whether the step sizes are trained (log-parametrised).
      dtype: ``"float32"`` or ``"float64"``.
    """

    dim: int
    base_scale: float
    stages: tuple
    train_lambdas: bool
    train_step_sizes: bool
    dtype: str

    @property
    def last_stochastic(self) -> int:
        idx = [i for i, s in enumerate(self.stages) if isinstance(s, StochasticBlock)]
        return idx[-1] if idx else -1


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class SNF:
    """A stochastic normalizing flow: static `SNFConfig` plus parameters.

    ``params`` is a list with one entry per stage: a flow's parameter dict,
    or ``{"lam": scalar, "log_step_size": scalar}`` for a stochastic block.
    """

    config: SNFConfig
    params: Any

    def tree_flatten(self):
        return (self.params,), self.config

    @classmethod
    def tree_unflatten(cls, config, children):
        return cls(config, children[0])

    def replace(self, **changes) -> "SNF":
        return dataclasses.replace(self, **changes)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def dtype(self):
        return jnp.dtype(self.config.dtype)

    def schedule(self) -> dict:
        """Current interpolation parameters and step sizes of the stochastic blocks (numpy)."""
        lams, steps = [], []
        for i, (spec, p) in enumerate(zip(self.config.stages, self.params)):
            if isinstance(spec, StochasticBlock):
                lams.append(float(_lam(self.config, i, p)))
                steps.append(float(jnp.exp(p["log_step_size"])))
        return {"lam": np.asarray(lams), "step_size": np.asarray(steps)}

    def target_evals_per_sample(self, resampling: bool = False) -> int:
        """Target evaluations per forward path (stochastic blocks plus the final ``log p(x_T)``).

        ``resampling``: add the evaluation of the intermediate density that a
        resampled population makes before each stochastic block.
        """
        blocks = [s for s in self.config.stages if isinstance(s, StochasticBlock)]
        per_block = sum(energy_evals_per_block(s.kind, s.num_steps, s.num_leapfrogs) for s in blocks)
        return 1 + per_block + (len(blocks) if resampling else 0)


def _is_int(v, minimum) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _check_block(i: int, b: StochasticBlock) -> None:
    if b.kind not in STOCHASTIC_KINDS:
        raise ValueError(f"block {i}: unknown stochastic block kind {b.kind!r}; choose one of {list(STOCHASTIC_KINDS)}")
    for name in ("lam", "step_size", "friction"):
        v = getattr(b, name)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"block {i}: {name} must be a finite number, got {v!r}")
    if not 0.0 <= b.lam <= 1.0:
        raise ValueError(f"block {i}: lam must be in [0, 1], got {b.lam}")
    if b.step_size <= 0:
        raise ValueError(f"block {i}: step_size must be > 0, got {b.step_size}")
    if b.friction <= 0:
        raise ValueError(f"block {i}: friction must be > 0, got {b.friction}")
    if not _is_int(b.num_steps, 1):
        raise ValueError(f"block {i}: num_steps must be an int >= 1, got {b.num_steps!r}")
    if not _is_int(b.num_leapfrogs, 1):
        raise ValueError(f"block {i}: num_leapfrogs must be an int >= 1, got {b.num_leapfrogs!r}")


def make_snf(
    key: Array,
    target: Target,
    blocks: Sequence[Any],
    *,
    base_scale: float = 1.0,
    train_lambdas: bool = False,
    train_step_sizes: bool = True,
    dtype=None,
) -> SNF:
    """Build an SNF for ``target`` from a sequence of blocks.

    Args:
      key: PRNG key (flow initialisation).
      target: the `Target` (only its ``dim`` is used here).
      blocks: sequence of `FlowBlock` (a fresh coupling flow, the identity at
        init), `Flow` (an existing, e.g. pre-trained, unconditional flow of
        dimension ``target.dim``) and `StochasticBlock`. If there are
        stochastic blocks, the last one must have ``lam == 1``.
      base_scale: std ``s`` of the ``N(0, s^2 I)`` base, > 0.
      train_lambdas: train the interpolation parameters (clipped to [0, 1]).
      train_step_sizes: train the step sizes.
      dtype: float32 / float64 (default: JAX's default float).

    Returns:
      An `SNF`.

    Raises:
      TypeError: target is not a `Target`, or an unknown block type.
      ValueError: empty ``blocks``, unknown kind, odd ``FlowBlock.num_layers``,
        ``dtype=float64`` without ``jax_enable_x64``, non-positive step size or
        friction, ``lam`` outside [0, 1], a schedule not ending at ``lam = 1``,
        a flow of another dimension, a conditional flow, bad ``base_scale``.
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a sbi_kit Target, got {type(target).__name__}")
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks is empty; give at least one FlowBlock, Flow or StochasticBlock")
    if isinstance(base_scale, bool) or not (isinstance(base_scale, (int, float, np.floating)) and math.isfinite(base_scale) and base_scale > 0):
        raise ValueError(f"base_scale must be positive and finite, got {base_scale!r}")
    dt = jnp.dtype(dtype if dtype is not None else jnp.result_type(float))
    if dt.name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    if dt.name == "float64" and not jax.config.jax_enable_x64:
        # Without x64, JAX silently makes every array float32: the SNF would claim float64 and compute in float32.
        raise ValueError(
            "dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "(or use `with jax.enable_x64(True):`) before make_snf, or pass dtype=float32"
        )
    stochastic = [(i, b) for i, b in enumerate(blocks) if isinstance(b, StochasticBlock)]
    for i, b in enumerate(blocks):
        if isinstance(b, StochasticBlock):
            _check_block(i, b)
        elif isinstance(b, Flow):
            if b.dim != target.dim:
                raise ValueError(f"block {i}: flow dimension {b.dim} differs from target {target.name!r} dimension {target.dim}")
            if b.config.context_dim:
                raise ValueError(f"block {i}: an SNF needs unconditional flows (context_dim=0)")
        elif isinstance(b, FlowBlock):
            if not _is_int(b.num_layers, 2) or b.num_layers % 2:
                raise ValueError(
                    f"block {i}: num_layers must be an even int >= 2 (so every coordinate is transformed), "
                    f"got {b.num_layers!r}"
                )
        else:
            raise TypeError(f"block {i}: expected FlowBlock, Flow or StochasticBlock, got {type(b).__name__}")
    if stochastic and stochastic[-1][1].lam != 1.0:
        i, b = stochastic[-1]
        raise ValueError(
            f"the schedule must end at the target: the last stochastic block (block {i}) has lam={b.lam}, needs 1.0"
        )

    stages, params = [], []
    keys = jax.random.split(key, len(blocks))
    for k, b in zip(keys, blocks):
        if isinstance(b, StochasticBlock):
            stages.append(b._replace(lam=float(b.lam), step_size=float(b.step_size), friction=float(b.friction),
                                     num_steps=int(b.num_steps), num_leapfrogs=int(b.num_leapfrogs)))
            params.append({"lam": jnp.asarray(b.lam, dt), "log_step_size": jnp.asarray(math.log(b.step_size), dt)})
        else:
            flow = b if isinstance(b, Flow) else make_flow(
                k, target.dim, kind=b.kind, num_layers=int(b.num_layers), hidden=tuple(b.hidden), dtype=dt
            )
            if flow.dtype != dt:
                flow = flow.replace(params=jax.tree.map(lambda a: jnp.asarray(a, dt), flow.params),
                                    config=dataclasses.replace(flow.config, dtype=dt.name))
            stages.append(flow.config)
            params.append(flow.params)
    config = SNFConfig(dim=target.dim, base_scale=float(base_scale), stages=tuple(stages),
                       train_lambdas=bool(train_lambdas), train_step_sizes=bool(train_step_sizes), dtype=dt.name)
    return SNF(config, params)


def check_snf_for_target(snf: SNF, target: Target) -> None:
    """Raise TypeError/ValueError unless ``snf`` is an `SNF` of ``target``'s dimension."""
    if not isinstance(snf, SNF):
        raise TypeError(f"snf must be an SNF (from make_snf), got {type(snf).__name__}")
    if not isinstance(target, Target):
        raise TypeError(f"target must be a sbi_kit Target, got {type(target).__name__}")
    if snf.dim != target.dim:
        raise ValueError(f"SNF dimension {snf.dim} differs from target {target.name!r} dimension {target.dim}")


def _lam(config: SNFConfig, i: int, p) -> Array:
    if i == config.last_stochastic:
        return jnp.ones((), p["lam"].dtype)
    lam = jnp.clip(p["lam"], 0.0, 1.0)
    return lam if config.train_lambdas else jax.lax.stop_gradient(lam)


def _step(config: SNFConfig, p) -> Array:
    eps = jnp.exp(p["log_step_size"])
    return eps if config.train_step_sizes else jax.lax.stop_gradient(eps)


def _base_log_prob(config: SNFConfig, x: Array) -> Array:
    s = config.base_scale
    return base_log_prob(x / s) - config.dim * math.log(s)


class PathOutput(NamedTuple):
    """One sample's path: end point ``x (dim,)``, ``log_weight``, ``log_target`` at x, ``ok``, ``num_accepted``."""

    x: Array
    log_weight: Array
    log_target: Array
    ok: Array
    num_accepted: Array


def _finite(*arrays) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def flow_stage(spec, p, state: PathState, backward: bool = False) -> PathState:
    """One flow stack (config ``spec``, params ``p``) applied to one sample; ``dS`` is its log-Jacobian.

    A non-finite output or log-det leaves the sample where it was (without
    gradient) and marks it invalid.
    """
    flow = Flow(spec, p)
    if backward:
        x, ld_inv = flow._inverse_one(state.x, None)
        ld = -ld_inv
    else:
        x, ld = flow._forward_one(state.x, None)
    good = _finite(x, ld)
    return state._replace(
        x=jnp.where(good, x, jax.lax.stop_gradient(state.x)),
        delta_s=state.delta_s + jnp.where(good, ld, 0.0), ok=state.ok & good,
    )


def _run_stages(snf: SNF, log_target, state: PathState, key, backward: bool) -> PathState:
    c = snf.config
    order = range(len(c.stages))
    keys = jax.random.split(key, len(c.stages))
    if backward:
        order = reversed(order)
    for i in order:
        spec, p = c.stages[i], snf.params[i]
        if isinstance(spec, StochasticBlock):
            state = stochastic_step(spec.kind, state, keys[i], log_target, c.base_scale, _lam(c, i, p),
                                    _step(c, p), spec.friction, spec.num_steps, backward, spec.num_leapfrogs)
        else:
            state = flow_stage(spec, p, state, backward)
    return state


def end_of_path(state: PathState, log_target, anchor: Array) -> tuple[Array, Array, Array]:
    """``(log p~(x_T), ok, log_weight)`` at the end of one sample's forward path.

    ``log_weight = log p~(x_T) + anchor + sum_t dS_t`` (``anchor = -log q_0(x_0)``
    for a plain path), ``-inf`` for an invalid path.
    """
    lp = log_target(state.x)
    ok = state.ok & _finite(lp, state.x, state.delta_s)
    return lp, ok, jnp.where(ok, jnp.where(ok, lp, 0.0) + anchor + state.delta_s, -jnp.inf)


def forward_path(snf: SNF, log_target, key: Array) -> PathOutput:
    """Draw ``x_0 ~ N(0, s^2 I)``, push it through every stage, return ``x_T`` and its log weight.

    ``log_weight = log p~(x_T) - log q_0(x_0) + sum_t dS_t`` (``-inf`` for an
    invalid path: any non-finite energy, force or position).
    ``log_target`` must be guarded (`guarded_log_density`).
    """
    c = snf.config
    k0, k1 = jax.random.split(key)
    x0 = c.base_scale * jax.random.normal(k0, (c.dim,), snf.dtype)
    log_q0 = _base_log_prob(c, x0)
    zero = jnp.zeros((), snf.dtype)
    state = _run_stages(snf, log_target, PathState(x0, zero, jnp.asarray(True), zero), k1, False)
    lp, ok, log_w = end_of_path(state, log_target, -log_q0)
    return PathOutput(state.x, log_w, lp, ok, state.num_accepted)


def backward_path(snf: SNF, log_target, x_end: Array, key: Array) -> PathOutput:
    """Sample the backward path from a given ``x_T (dim,)`` down to ``x_0``; same log-weight formula.

    Returns a `PathOutput` whose ``x`` is ``x_0``.
    """
    lp = log_target(x_end)
    zero = jnp.zeros((), snf.dtype)
    state = PathState(x_end, zero, jnp.isfinite(lp), zero)
    state = _run_stages(snf, log_target, state, key, True)
    log_q0 = _base_log_prob(snf.config, state.x)
    ok = state.ok & _finite(lp, log_q0, state.delta_s)
    log_w = jnp.where(ok, jnp.where(ok, lp, 0.0) - jnp.where(ok, log_q0, 0.0) + state.delta_s, -jnp.inf)
    return PathOutput(state.x, log_w, lp, ok, state.num_accepted)


@functools.lru_cache(maxsize=32)
def guarded_target(target: Target, dtype_name: str):
    """The target's log density, cast to ``dtype_name`` and guarded against NaN gradients.

    Cached per (target, dtype) so compiled samplers are reused across calls.
    """
    fn = guarded_log_density(target.log_density)
    dt = jnp.dtype(dtype_name)
    return lambda x: fn(x).astype(dt)
