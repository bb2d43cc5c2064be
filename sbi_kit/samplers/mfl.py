"""Mean-field Langevin dynamics (MFL): N interacting particles minimise
``F(mu) + lambda * Ent(mu)`` over probability measures.

* `mfl`: run overdamped or underdamped N-particle MFL (underdamped: a
  frozen-gradient exponential integrator on the N-particle system, in the
  spirit of Fu & Wilson, ICML 2024, whose algorithm text we could not
  consult; see `sbi_kit.samplers._mfl_dynamics` for the exact scheme and
  what may differ) for any `Functional`, with step-size
  control and divergence detection, on one or several independent particle
  systems, the particle axis sharded over the local devices.
* functionals (`sbi_kit.samplers._mfl_functionals`): `kl_functional` (KL to a
  `Target`: ordinary Langevin), `mmd_functional` (MMD^2 to a data sample, any
  kernel), `ksd_functional` (kernel Stein discrepancy to a target), and
  `mean_field_network` (squared loss of a mean-field two-layer network whose
  neurons are the particles). A custom `Functional` only needs ``grad``.
* `mfl_minimax`: MFL-AG (Kim et al., ICLR 2024) for zero-sum games between two
  particle systems, and plain descent-ascent for comparison
  (`sbi_kit.samplers._mfl_minimax`).

The output is a `Trace` whose draw axis holds the particles: ``positions``
has shape ``(num_systems, num_particles, dim)`` (like `ensemble_score`:
"chains" are independent particle systems, "draws" their particles at the
final time), plus the objective's trajectory in ``info``.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sbi_kit.diagnostics.trace import Trace
from sbi_kit.run import chain_mesh
from sbi_kit.samplers._ensemble_common import check_int, check_positive
from sbi_kit.samplers._mfl_dynamics import DYNAMICS, MFLInfo, MFLState, build_mfl, underdamped_coefficients
from sbi_kit.samplers._mfl_functionals import (
    Functional,
    kernel_grad_sum,
    ksd_functional,
    kl_functional,
    mean_field_network,
    mmd_functional,
)
from sbi_kit.samplers._mfl_minimax import MinimaxPayoff, MinimaxResult, bilinear_game, mfl_minimax
from sbi_kit.targets.base import Target

Array = jax.Array

__all__ = [
    "Functional", "MFLDivergenceError", "MFLInfo", "MFLState", "MinimaxPayoff", "MinimaxResult",
    "bilinear_game", "build_mfl", "kernel_grad_sum", "kl_functional", "ksd_functional",
    "mean_field_network", "mfl", "mfl_minimax", "mmd_functional", "underdamped_coefficients",
]


class MFLDivergenceError(RuntimeError):
    """A mean-field Langevin run diverged: the step size was halved ``max_halvings`` times.

    Attributes:
      particles: numpy ``(num_systems, num_particles, dim)``, the last finite
        particles of every system (diverged systems are frozen at their last
        accepted state).
      step: the number of steps run when the divergence was detected.
      diverged: bool ``(num_systems,)``, which systems diverged.
      step_size: ``(num_systems,)`` float64 ``step_size * 0.5**halvings``
        (for a diverged system: half the smallest step size it tried).
      halvings: int ``(num_systems,)`` step-size halvings per system (None
        for `mfl_minimax`, which does not halve).
    """

    def __init__(self, message, particles, step, diverged, step_size, halvings=None):
        super().__init__(message)
        self.halvings = halvings
        self.particles = particles
        self.step = step
        self.diverged = diverged
        self.step_size = step_size


class _ChunkOut(NamedTuple):
    accepted: Array
    objective: Array


def _initial_particles(key, functional, num_systems, num_particles, initial_particles, init_mean, init_scale):
    dtype = jnp.result_type(float)
    if initial_particles is not None:
        x = jnp.asarray(initial_particles)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(dtype)
        if x.ndim == 2:
            x = jnp.broadcast_to(x, (num_systems,) + x.shape)
        if x.ndim != 3 or x.shape[0] != num_systems or x.shape[1] < 1:
            raise ValueError(
                "initial_particles must have shape (num_particles, dim) or (num_systems, num_particles, dim) "
                f"with num_systems={num_systems}; got {tuple(np.shape(initial_particles))}"
            )
        if functional.dim is not None and x.shape[2] != functional.dim:
            raise ValueError(
                f"initial_particles have dim {x.shape[2]} but functional {functional.name!r} expects dim {functional.dim}"
            )
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError("initial_particles contains NaN or infinite values")
        return x
    if functional.dim is None:
        raise ValueError(f"functional {functional.name!r} has no fixed dim: pass initial_particles")
    d = functional.dim
    mean = np.broadcast_to(np.asarray(0.0 if init_mean is None else init_mean, float), (d,))
    scale = np.broadcast_to(np.asarray(init_scale, float), (d,))
    if not np.all(np.isfinite(mean)):
        raise ValueError("init_mean must be finite")
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(f"init_scale must be positive and finite, got {init_scale!r}")
    z = jax.random.normal(key, (num_systems, num_particles, d), dtype)
    return jnp.asarray(mean, dtype) + jnp.asarray(scale, dtype) * z


def _check_gradient_shape(functional, x):
    """Evaluate shapes only (no FLOPs): the gradient must map (N, d) to (N, d)."""
    one = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    try:
        aux = jax.eval_shape(functional.init_aux, jax.random.PRNGKey(0), one)
        out = jax.eval_shape(functional.grad, one, aux)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"functional {functional.name!r} cannot be evaluated on particles of shape {tuple(one.shape)}: {err}"
        ) from err
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(one.shape):
        raise ValueError(
            f"functional {functional.name!r} returns a gradient of shape {getattr(out, 'shape', type(out))} "
            f"for particles of shape {tuple(one.shape)}; it must return one gradient per particle, shape (N, d)"
        )


def _placeholder_target(functional: Functional, dim: int) -> Target:
    if functional.target is not None:
        return functional.target
    kw = {}
    if functional.to_constrained is not None:
        kw["to_constrained"] = functional.to_constrained
    return Target(log_density=lambda x: jnp.zeros((), x.dtype), dim=dim, name=functional.name, **kw)


def _shard(tree, mesh):
    """Split every particle array (leading axes: systems, particles) over the mesh's particle axis."""
    if mesh is None:
        return tree
    spec = NamedSharding(mesh, PartitionSpec(None, "chains"))
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.device_put(a, spec if np.ndim(a) >= 2 else rep), tree)


def _chunk_runner(step, refresh, value, refresh_every: int, length: int):
    """jit: ``length`` steps of every system, then the objective of every system."""

    def run(keys, states, start):
        def body(st, t):
            if refresh_every:
                rkeys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, t), 1))(keys)
                st = jax.lax.cond(
                    (t % refresh_every == 0) & (t > 0), lambda s: jax.vmap(refresh)(rkeys, s), lambda s: s, st
                )
            skeys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, t), 0))(keys)
            st, info = jax.vmap(step)(skeys, st)
            return st, info.accepted

        states, accepted = jax.lax.scan(body, states, start + jnp.arange(length))
        if value is None:
            obj = jnp.full((keys.shape[0],), jnp.nan, states.particles.dtype)
        else:
            obj = jax.vmap(value)(states.particles, states.aux)
        return states, _ChunkOut(accepted.T, obj)

    return jax.jit(run)


def run_particles(functional, init, step, refresh, x0, key, num_steps, record_every, mesh, progress, desc,
                  step_size=math.nan):
    """Drive ``num_steps`` steps of every system in jitted chunks of ``record_every``.

    Returns ``(state, accepted (S, steps), objective (S, records), steps (records,))``
    or raises `MFLDivergenceError` after the chunk in which a system diverged.
    """
    num_systems = x0.shape[0]
    k_init, k_run = jax.random.split(key)
    x0 = _shard(x0, mesh)
    state = jax.jit(jax.vmap(init))(jax.random.split(k_init, num_systems), x0)
    if not bool(jnp.all(jnp.isfinite(state.grad))):
        # Every step would be rejected and the run would only end as a
        # "divergence" after max_halvings wasted chunks: say what is wrong now.
        raise ValueError(
            f"functional {functional.name!r} returns a non-finite (NaN/inf) gradient at the initial particles; "
            "check the functional or move the initial particles into its domain"
        )
    state = _shard(state, mesh)
    keys = jax.random.split(k_run, num_systems)
    value = functional.value
    obj0 = (np.full((num_systems,), np.nan) if value is None
            else np.asarray(jax.jit(jax.vmap(value))(state.particles, state.aux)))
    objective, steps, accepted = [obj0], [0], []
    runners = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc=desc, unit="step", leave=False)
    done = 0
    while done < num_steps:
        length = min(record_every, num_steps - done)
        if length not in runners:
            runners[length] = _chunk_runner(step, refresh, value, functional.refresh_every, length)
        new_state, out = runners[length](keys, state, done)
        diverged = np.asarray(new_state.diverged)
        state = new_state
        done += length
        accepted.append(np.asarray(out.accepted))
        objective.append(np.asarray(out.objective))
        steps.append(done)
        if bar is not None:
            bar.update(length)
        if diverged.any():
            if bar is not None:
                bar.close()
            halvings = np.asarray(state.halvings)
            h = step_size * 0.5 ** halvings.astype(np.float64)
            raise MFLDivergenceError(
                f"mean-field Langevin diverged in {int(diverged.sum())} of {num_systems} particle system(s) "
                f"by step {done}: the step size was halved more than the allowed number of times "
                "(non-finite particles/gradients, locally unstable steps, a particle moving farther than "
                "max_move, or exploding kinetic energy). Use a smaller step_size, check the functional's gradient, or raise "
                "max_halvings. The error's .particles hold the last finite particles.",
                particles=np.asarray(state.particles), step=done, diverged=diverged, step_size=h,
                halvings=halvings,
            )
    if bar is not None:
        bar.close()
    acc = np.concatenate(accepted, axis=1) if accepted else np.zeros((num_systems, 0), bool)
    return state, acc, np.stack(objective, axis=1), np.asarray(steps)


def check_dynamics_args(step_size, temperature, friction, dynamics, max_halvings, max_move, energy_limit):
    """Validate the dynamics' settings; raises ValueError naming the bad one."""
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {list(DYNAMICS)}, got {dynamics!r}")
    step_size = check_positive(step_size, "step_size")
    temperature = check_positive(temperature, "temperature")
    friction = check_positive(friction, "friction")
    max_halvings = check_int(max_halvings, "max_halvings", 0)
    if max_move is None:
        max_move = math.inf
    try:
        max_move = float(max_move)
    except (TypeError, ValueError):
        raise ValueError(f"max_move must be a positive number or None, got {max_move!r}") from None
    if not max_move > 0:
        raise ValueError(f"max_move must be positive, got {max_move!r}")
    energy_limit = check_positive(energy_limit, "energy_limit")
    return step_size, temperature, friction, max_halvings, max_move, energy_limit


def mfl(
    functional: Functional,
    key: Array,
    *,
    num_particles: int = 1000,
    num_systems: int = 1,
    num_steps: int = 1000,
    step_size: float = 0.01,
    temperature: float = 1.0,
    dynamics: str = "underdamped",
    friction: float = 1.0,
    initial_particles=None,
    init_mean=None,
    init_scale=1.0,
    record_every: int | None = None,
    max_halvings: int = 10,
    max_move: float | None = None,
    energy_limit: float = 100.0,
    devices=None,
    progress: bool = False,
) -> Trace:
    """Minimise ``F(mu) + temperature * Ent(mu)`` with N-particle mean-field Langevin dynamics.

    Args:
      functional: a `Functional` (e.g. `kl_functional(target)`,
        `mmd_functional(data)`, `ksd_functional(target)`,
        `mean_field_network(x, y)`, or your own with a ``grad``).
      key: PRNG key; split internally, never reused.
      num_particles: particles ``N`` per system (ignored with ``initial_particles``).
      num_systems: independent particle systems (the trace's chains), >= 1.
      num_steps: steps, >= 1.
      step_size: initial step ``h > 0`` (halved when a step is rejected: non-finite
        values, local instability ``h L > 2`` / ``h^2 L > 4``, ``max_move``,
        ``energy_limit``; see `sbi_kit.samplers._mfl_dynamics`; never regrown).
      temperature: entropy weight ``lambda > 0``; with `kl_functional`,
        1.0 targets the target itself.
      dynamics: ``"underdamped"`` (N-particle exponential integrator,
        exact OU part; see `sbi_kit.samplers._mfl_dynamics`) or ``"overdamped"`` (Euler-Maruyama).
      friction: ``gamma > 0`` (underdamped only). A direction of curvature
        ``k`` relaxes in time about ``gamma / k`` when ``gamma^2 > 4k`` and about
        ``2 / gamma`` below that, so weakly confined directions (a banana's arms,
        a wide mixture) need a friction near ``2 sqrt(k)``, well below 1; too little
        friction leaves the kinetic energy released by a bad start ringing for
        long (on the banana of `benchmarks/particles.py`, 100 steps of
        ``h = 0.05``: gamma 0.2 beats 1.0 by MMD, 0.1 halves its step 5 times).
      initial_particles: ``(N, d)`` (copied to every system) or
        ``(num_systems, N, d)``; default ``N(init_mean, init_scale^2 I)``.
      init_mean, init_scale: scalar or ``(d,)``.
      record_every: steps between objective records (one jitted chunk);
        default ``max(1, num_steps // 50)``.
      max_halvings: step-size halvings allowed before the run is declared diverged.
      max_move: reject (and halve) a step that moves some particle farther
        than this in sup-norm; None: no limit.
      energy_limit: reject an underdamped step that multiplies the mean squared
        velocity by more than this (relative to ``max(mean v^2, temperature)``).
      devices: devices over which the particle axis is split (default all
        local devices; the largest number dividing ``N`` is used).
      progress: tqdm progress bar.

    Returns:
      A `Trace` with ``positions (num_systems, N, d)``: the draw axis holds
      the particles at the final step. ``stats`` (each ``(num_systems, N)``):
      ``lp`` (the target's log density for KL/KSD functionals, else 0),
      ``step_size`` (final), ``num_grad_evals`` (first-variation gradient
      evaluations per particle: ``num_steps + 1`` plus one per aux refresh). ``info``: ``objective``
      ``(num_systems, R)`` = ``F(mu_N)`` at ``objective_steps (R,)``,
      ``acceptance`` ``(num_systems,)``, ``num_halvings``, ``step_size``
      ``(num_systems,)``, ``velocities`` (underdamped, ``(num_systems, N, d)``),
      ``predictor`` (network functionals: ``inputs (m, d_in) -> (m,)``, the
      mean of the systems' networks), settings and ``sampling_time``.

    Raises:
      ValueError: non-positive step size, friction or temperature, bad
        counts, NaN initial particles, a functional whose gradient does
        not have the particles' shape or is not finite at the initial
        particles — all before any step runs.
      MFLDivergenceError: the step size was halved more than ``max_halvings``
        times; the error holds the last finite particles.
    """
    if not isinstance(functional, Functional):
        raise TypeError(f"functional must be an sbi_kit Functional, got {type(functional).__name__}")
    step_size, temperature, friction, max_halvings, max_move, energy_limit = check_dynamics_args(
        step_size, temperature, friction, dynamics, max_halvings, max_move, energy_limit)
    num_systems = check_int(num_systems, "num_systems", 1)
    num_steps = check_int(num_steps, "num_steps", 1)
    if initial_particles is None:
        num_particles = check_int(num_particles, "num_particles", 1)
    record_every = max(1, num_steps // 50) if record_every is None else check_int(record_every, "record_every", 1)

    k_init, k_run = jax.random.split(key)
    x0 = _initial_particles(k_init, functional, num_systems, num_particles, initial_particles, init_mean, init_scale)
    _check_gradient_shape(functional, x0)
    n, d = x0.shape[1], x0.shape[2]

    init, step, refresh = build_mfl(
        functional, step_size=step_size, temperature=temperature, dynamics=dynamics, friction=friction,
        max_halvings=max_halvings, max_move=max_move, energy_limit=energy_limit,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a particle count not divisible by the devices: fewer devices, fine
        mesh = chain_mesh(n, devices)
    t0 = time.perf_counter()
    state, accepted, objective, steps = run_particles(
        functional, init, step, refresh, x0, k_run, num_steps, record_every, mesh, progress, "mfl", step_size)
    wall = time.perf_counter() - t0

    x = np.asarray(state.particles)
    every = functional.refresh_every
    num_grad_evals = num_steps + 1 + (((num_steps - 1) // every) if every else 0)
    target = _placeholder_target(functional, d)
    lp = (np.asarray(jax.jit(jax.vmap(jax.vmap(target.log_density)))(state.particles))
          if functional.target is not None else np.zeros((num_systems, n), x.dtype))
    h = step_size * 0.5 ** np.asarray(state.halvings, np.float64)
    stats = {
        "lp": lp,
        "step_size": np.repeat(h[:, None], n, axis=1),
        "num_grad_evals": np.full((num_systems, n), num_grad_evals, np.int64),
    }
    info = {
        "objective": objective,
        "objective_steps": steps,
        "acceptance": accepted.mean(axis=1),
        "num_halvings": np.asarray(state.halvings),
        "step_size": h,
        "dynamics": dynamics,
        "temperature": temperature,
        "friction": friction,
        "num_devices": 1 if mesh is None else int(mesh.devices.size),
        "sampling_time": wall,
        "draw_axis": "particles",
    }
    if state.velocities is not None:
        info["velocities"] = np.asarray(state.velocities)
    if functional.predictor is not None:
        pooled = jnp.asarray(x.reshape(-1, d))
        info["predictor"] = jax.jit(lambda inputs: functional.predictor(pooled, inputs))
    return Trace(positions=x, stats=stats, target=target, sampler=f"mfl_{dynamics}", info=info)
