"""Stochastic blocks of a stochastic normalizing flow and their path log-ratios.

Every stage of an SNF maps one point ``x_{t-1} -> x_t`` (one sample; callers
vmap) and returns ``dS_t = log q_b(x_{t-1} | x_t) - log q_f(x_t | x_{t-1})``,
the stage's contribution to the path log importance weight (Wu, Koehler, Noe
2020, eq. 4-6)::

    log w = log p~(x_T) - log q_0(x_0) + sum_t dS_t.

With ``u_lam = (1 - lam) u_0 + lam u_1`` (``u_0 = |x / s|^2 / 2`` the base
energy, ``u_1 = -log p~`` the target energy), step size ``e``:

* ``"langevin"`` (unadjusted overdamped Langevin, forward and backward kernel
  both Euler-Maruyama steps with the force at their start):
  ``x' = x - e grad u(x) + sqrt(2e) eta`` and
  ``dS = |eta|^2 / 2 - |x - x' + e grad u(x')|^2 / (4e)``.
* ``"mala"`` / ``"rwmh"`` (Metropolis-adjusted; the backward kernel is the
  same kernel, which satisfies detailed balance for ``exp(-u_lam)``):
  ``dS = u_lam(x_t) - u_lam(x_{t-1})``, i.e. 0 on rejection. The accept
  decision is a stop-gradient (straight-through: gradients flow through the
  accepted proposal, none through the decision), as in the paper.
* ``"underdamped"`` (Langevin with velocity ``v``): ``v ~ N(0, I)`` is drawn
  at block start and discarded at the end (the backward path draws the end
  velocity from ``N(0, I)``); each of the ``num_steps`` steps is a leapfrog
  step (B-A-B, volume preserving) followed by the Ornstein-Uhlenbeck refresh
  ``v <- a v + sqrt(1 - a^2) xi``, ``a = exp(-friction e)``, whose backward
  kernel is itself (reversible for ``N(0, I)``). The ratio then telescopes to
  ``dS = -sum_k [K(v after leapfrog k) - K(v before leapfrog k)]`` with
  ``K(v) = |v|^2 / 2`` -- exact, no discretisation error in the weight.
* ``"hmc"`` (Hamiltonian Monte Carlo: a fresh ``N(0, I)`` momentum, ``L``
  leapfrog steps of size ``e``, a Metropolis accept/reject on the total
  energy): reversible for ``exp(-u_lam)`` like MALA, so ``dS = u_lam(x_t) -
  u_lam(x_{t-1})`` on acceptance and 0 on rejection, with the same
  straight-through gradient. Long trajectories move far per target
  evaluation, which is what tempered SMC relies on in high dimensions.
* ``"flow"``: a deterministic bijector, ``dS = log|det dT/dx|``.

Each stochastic stage also has a backward sampler (``x_t -> x_{t-1}``) with
the same ``dS`` as a function of the path; it is used for forward-KL training
from draws of the target. Noise is reparametrised (drawn from keys that do not
depend on parameters), so gradients flow through every step.

Non-finite energies: a Metropolis step rejects a proposal whose energy is
NaN/inf (density zero); any other stage marks the sample invalid (``ok``
False), and the caller gives it log weight ``-inf``. The target's log
density goes through `guarded_log_density` so that such points never produce
NaN gradients for the valid samples of a batch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

STOCHASTIC_KINDS = ("langevin", "mala", "rwmh", "underdamped", "hmc")


class PathState(NamedTuple):
    """One sample travelling along the path.

    Attributes:
      x: position ``(dim,)``.
      delta_s: accumulated ``sum_t dS_t`` (scalar).
      ok: False once any energy or position on the path was non-finite.
      num_accepted: accepted Metropolis proposals so far (float scalar).
    """

    x: Array
    delta_s: Array
    ok: Array
    num_accepted: Array


def guarded_log_density(log_density: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """``log_density`` whose derivatives are zero (never NaN) where its value is not finite.

    Inside a batch, a masked-out sample with a NaN log density would still
    send ``0 * NaN = NaN`` into the gradient of the parameters. The custom JVP
    evaluates the tangent at a sanitised point (the origin) for such samples
    and zeros it, so only valid samples carry gradient. Costs one extra
    evaluation of ``log_density`` when differentiated.
    """

    @jax.custom_jvp
    def f(x):
        return log_density(x)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = log_density(x)
        ok = jnp.isfinite(y) & jnp.all(jnp.isfinite(x))
        x_safe = jnp.where(ok, x, jnp.zeros_like(x))
        _, dy = jax.jvp(log_density, (x_safe,), (jnp.where(ok, t, jnp.zeros_like(t)),))
        # The mask depends on primals only, so the rule stays linear in t (transposable).
        return y, jnp.where(ok, dy, jnp.zeros_like(dy))

    return f


def interpolated_energy(log_target: Callable, base_scale: float, lam: Array) -> Callable[[Array], Array]:
    """``u_lam(x) = (1 - lam) |x / s|^2 / 2 - lam log p~(x)`` (scalar for one ``x``)."""

    def u(x):
        u0 = 0.5 * jnp.sum((x / base_scale) ** 2)
        return (1.0 - lam) * u0 - lam * log_target(x)

    return u


def _finite(*arrays) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def _value_and_grad(u):
    vg = jax.value_and_grad(u)

    def f(x):
        val, g = vg(x)
        ok = _finite(val, g)
        # Zero out a non-finite force so the invalid sample stays a number.
        return jnp.where(ok, val, 0.0), jnp.where(ok, g, 0.0), ok

    return f


def _freeze(ok, new, old):
    """``new`` where ok, else the (finite) old value without gradient."""
    return jnp.where(ok, new, jax.lax.stop_gradient(old))


def _langevin(state: PathState, key, u, eps, num_steps, backward: bool) -> PathState:
    vg = _value_and_grad(u)

    def one(carry, k):
        x, g, ds, ok = carry
        eta = jax.random.normal(k, x.shape, x.dtype)
        y = x - eps * g + jnp.sqrt(2.0 * eps) * eta
        _, gy, ok_y = vg(y)
        # Log density of the reverse Euler-Maruyama step, in units of its noise.
        rev = x - y + eps * gy
        log_ratio = 0.5 * jnp.sum(eta * eta) - jnp.sum(rev * rev) / (4.0 * eps)
        # Backward sampling draws x_{t-1} = y from x_t = x: the same ratio with roles swapped.
        step_ds = -log_ratio if backward else log_ratio
        good = ok_y & _finite(y, step_ds)
        new = (_freeze(good, y, x), jnp.where(good, gy, g), ds + jnp.where(good, step_ds, 0.0), ok & good)
        return new, None

    _, g0, ok0 = vg(state.x)
    keys = jax.random.split(key, num_steps)
    (x, _, ds, ok), _ = jax.lax.scan(one, (state.x, g0, state.delta_s, state.ok & ok0), keys)
    return state._replace(x=x, delta_s=ds, ok=ok)


def _value_only(u):
    """Like `_value_and_grad` but without the gradient (random-walk Metropolis needs none)."""

    def f(x):
        val = u(x)
        ok = jnp.isfinite(val)
        return jnp.where(ok, val, 0.0), jnp.zeros_like(x), ok

    return f


def _mh_block(state: PathState, key, vg, propose, num_steps, backward: bool) -> PathState:
    """``num_steps`` Metropolis-Hastings steps: the accept/reject and path term shared by MALA, RWMH and HMC.

    ``propose(x, gx, key) -> (y, uy, gy, ok_y, log_q_ratio)`` draws a proposal
    from ``x`` (force ``gx``) and returns its energy, force, finiteness and
    ``log q(x | y) - log q(y | x)`` (for HMC the kinetic-energy change).
    """

    def one(carry, k):
        x, ux, gx, ds, ok, acc = carry
        k_prop, k_acc = jax.random.split(k)
        y, uy, gy, ok_y, log_q_ratio = propose(x, gx, k_prop)
        log_alpha = jax.lax.stop_gradient(ux - uy + log_q_ratio)
        log_u = jnp.log(jax.random.uniform(k_acc, (), x.dtype))
        accept = ok_y & _finite(y) & jnp.isfinite(log_alpha) & (log_u < log_alpha)
        # Forward: dS = u(x_t) - u(x_{t-1}) = u(y) - u(x); backward draws x_{t-1} = y from x_t = x.
        step_ds = jnp.where(accept, (ux - uy) if backward else (uy - ux), 0.0)
        x = jnp.where(accept, y, x)
        ux = jnp.where(accept, uy, ux)
        gx = jnp.where(accept, gy, gx)
        return (x, ux, gx, ds + step_ds, ok, acc + accept.astype(x.dtype)), None

    ux, gx, ok0 = vg(state.x)
    keys = jax.random.split(key, num_steps)
    carry = (state.x, ux, gx, state.delta_s, state.ok & ok0, state.num_accepted)
    (x, _, _, ds, ok, acc), _ = jax.lax.scan(one, carry, keys)
    return PathState(x, ds, ok, acc)


def _metropolis(state: PathState, key, u, eps, num_steps, backward: bool, adjusted_langevin: bool) -> PathState:
    # RWMH evaluates the energy only: no wasted gradient, and no rejection for a non-finite gradient.
    vg = _value_and_grad(u) if adjusted_langevin else _value_only(u)

    def propose(x, gx, k):
        eta = jax.random.normal(k, x.shape, x.dtype)
        if not adjusted_langevin:
            y = x + eps * eta
            uy, gy, ok_y = vg(y)
            return y, uy, gy, ok_y, jnp.zeros((), x.dtype)
        y = x - eps * gx + jnp.sqrt(2.0 * eps) * eta
        uy, gy, ok_y = vg(y)
        rev = x - y + eps * gy
        return y, uy, gy, ok_y, 0.5 * jnp.sum(eta * eta) - jnp.sum(rev * rev) / (4.0 * eps)

    return _mh_block(state, key, vg, propose, num_steps, backward)


def _hmc(state: PathState, key, u, eps, num_steps, num_leapfrogs: int, backward: bool) -> PathState:
    vg = _value_and_grad(u)

    def leapfrog(carry, _):
        y, p, g, ok = carry
        p = p - 0.5 * eps * g
        y = y + eps * p
        uy, g, ok_y = vg(y)
        p = p - 0.5 * eps * g
        return (y, p, g, ok & ok_y), uy

    def propose(x, gx, k):
        p0 = jax.random.normal(k, x.shape, x.dtype)
        (y, p1, gy, ok_y), uys = jax.lax.scan(leapfrog, (x, p0, gx, jnp.asarray(True)), None, length=num_leapfrogs)
        # As for MALA: the kernel is its own reversal, so dS is the energy change of the move.
        return y, uys[-1], gy, ok_y & _finite(p1), 0.5 * jnp.sum(p0 * p0) - 0.5 * jnp.sum(p1 * p1)

    return _mh_block(state, key, vg, propose, num_steps, backward)


def _underdamped(state: PathState, key, u, eps, friction, num_steps, backward: bool) -> PathState:
    vg = _value_and_grad(u)
    a = jnp.exp(-friction * eps)
    noise_scale = jnp.sqrt(1.0 - a * a)

    def refresh(v, k):
        return a * v + noise_scale * jax.random.normal(k, v.shape, v.dtype)

    def leapfrog(x, v, g, h):
        v = v - 0.5 * h * g
        x = x + h * v
        _, g, ok = vg(x)
        v = v - 0.5 * h * g
        return x, v, g, ok

    def one(carry, k):
        x, v, g, ds, ok = carry
        if backward:
            # Reverse order: O (its own backward kernel), then the inverse leapfrog.
            v = refresh(v, k)
            k_end = 0.5 * jnp.sum(v * v)
            x2, v2, g2, ok2 = leapfrog(x, v, g, -eps)
            step_ds = -(k_end - 0.5 * jnp.sum(v2 * v2))
        else:
            k_start = 0.5 * jnp.sum(v * v)
            x2, v2, g2, ok2 = leapfrog(x, v, g, eps)
            step_ds = -(0.5 * jnp.sum(v2 * v2) - k_start)
            v2 = refresh(v2, k)
        good = ok2 & _finite(x2, v2, step_ds)
        x2 = _freeze(good, x2, x)
        v2 = _freeze(good, v2, v)
        g2 = jnp.where(good, g2, g)
        return (x2, v2, g2, ds + jnp.where(good, step_ds, 0.0), ok & good), None

    k_v, k_steps = jax.random.split(key)
    v0 = jax.random.normal(k_v, state.x.shape, state.x.dtype)
    _, g0, ok0 = vg(state.x)
    keys = jax.random.split(k_steps, num_steps)
    (x, _, _, ds, ok), _ = jax.lax.scan(one, (state.x, v0, g0, state.delta_s, state.ok & ok0), keys)
    return state._replace(x=x, delta_s=ds, ok=ok)


def stochastic_step(kind: str, state: PathState, key, log_target, base_scale, lam, eps, friction,
                    num_steps: int, backward: bool = False, num_leapfrogs: int = 1) -> PathState:
    """Apply one stochastic block to one sample (``backward``: sample ``x_{t-1}`` given ``x_t``).

    Args:
      kind: one of `STOCHASTIC_KINDS`.
      state: the sample's `PathState`; ``x`` has shape ``(dim,)``.
      key: PRNG key for this block and sample.
      log_target: the (guarded) target log density of one point.
      base_scale: std ``s`` of the ``N(0, s^2 I)`` base.
      lam: interpolation parameter in [0, 1] (scalar).
      eps: step size (Langevin/MALA time step, random-walk proposal std), > 0.
      friction: underdamped friction (ignored otherwise).
      num_steps: repetitions of the kernel inside the block (static).
      backward: sample ``x_{t-1}`` given ``x_t`` instead.
      num_leapfrogs: leapfrog steps per HMC proposal (``"hmc"`` only; static).

    Returns:
      The updated `PathState` (``delta_s`` includes this block's ``dS``).
    """
    u = interpolated_energy(log_target, base_scale, lam)
    if kind == "langevin":
        return _langevin(state, key, u, eps, num_steps, backward)
    if kind == "mala":
        return _metropolis(state, key, u, eps, num_steps, backward, True)
    if kind == "rwmh":
        return _metropolis(state, key, u, eps, num_steps, backward, False)
    if kind == "underdamped":
        return _underdamped(state, key, u, eps, friction, num_steps, backward)
    if kind == "hmc":
        return _hmc(state, key, u, eps, num_steps, num_leapfrogs, backward)
    raise ValueError(f"unknown stochastic block kind {kind!r}; choose one of {list(STOCHASTIC_KINDS)}")


def energy_evals_per_block(kind: str, num_steps: int, num_leapfrogs: int = 1) -> int:
    """Target log-density(-and-gradient) evaluations of one block on one sample (forward)."""
    if kind == "hmc":
        return 1 + num_steps * num_leapfrogs
    if kind in STOCHASTIC_KINDS:
        return 1 + num_steps
    raise ValueError(f"unknown stochastic block kind {kind!r}")

