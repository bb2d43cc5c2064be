"""`Prior`: a numpyro distribution or latent-only numpyro model as flat vectors.

Simulation-based inference works on one flat parameter vector ``theta`` of
shape ``(dim,)``. `as_prior` turns either a numpyro `Distribution` (a single
site called ``"theta"``) or a numpyro model function whose sites are all
latent into a `Prior` that samples and scores such vectors, and maps them to
and from the prior's unconstrained space with numpyro's own transforms
(``biject_to(support)``), including the log-Jacobian. Estimators that model
the unconstrained vector therefore never put mass outside the prior support.

Flattening follows the model's site order; every site is raveled in C order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _distribution_model(d):
    import numpyro

    def model():
        numpyro.sample("theta", d)

    return model


def _trace_model(model: Callable) -> dict:
    import numpyro.handlers as handlers

    return handlers.trace(handlers.seed(model, rng_seed=0)).get_trace()


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
    """A prior over flat parameter vectors ``theta (dim,)``.

    Build one with `as_prior`. Static (hashed by identity), so it can be closed
    over inside jitted functions.

    Attributes:
      model: a numpyro model with latent sites only (a single distribution is
        wrapped as ``numpyro.sample("theta", d)``).
      names: site names in flattening order.
      shapes: site shapes (same order).
      dim: total flat size ``sum(prod(shape))``.
      distribution: the numpyro distribution when the prior was given as one, else None.
      source: the object `as_prior` was given. Two priors built from the same
        object compare equal, so jitted code keyed on a prior is reused.
    """

    model: Callable
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dim: int
    distribution: object = None
    source: object = None

    def _key(self):
        # Model functions and distributions compare by identity.
        return (id(self.source) if self.source is not None else id(self), self.names, self.shapes)

    def __eq__(self, other):
        return isinstance(other, Prior) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    # ------------------------------------------------------------ flat <-> named

    def unflatten(self, theta: Array) -> dict[str, Array]:
        """``theta (..., dim)`` -> ``{name: (..., *shape)}``."""
        theta = jnp.asarray(theta)
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            out[name] = theta[..., i:i + size].reshape(theta.shape[:-1] + shape)
            i += size
        return out

    def flatten(self, values: dict) -> Array:
        """``{name: (..., *shape)}`` -> ``(..., dim)`` (inverse of `unflatten`)."""
        parts = []
        for name, shape in zip(self.names, self.shapes):
            v = jnp.asarray(values[name])
            batch = v.shape[: v.ndim - len(shape)]
            parts.append(v.reshape(batch + (math.prod(shape),)))
        return jnp.concatenate(parts, axis=-1)

    # ------------------------------------------------------------ one point

    def _log_prob_one(self, theta):
        """Log density and a support indicator of one flat point."""
        import numpyro.handlers as handlers

        values = self.unflatten(theta)
        tr = handlers.trace(handlers.substitute(handlers.seed(self.model, rng_seed=0), data=values)).get_trace()
        lp = jnp.zeros((), theta.dtype)
        inside = jnp.ones((), bool)
        for name in self.names:
            fn, v = tr[name]["fn"], tr[name]["value"]
            lp = lp + jnp.sum(fn.log_prob(v))
            inside = inside & jnp.all(fn.support(v))
        return lp, inside

    def _to_unconstrained_one(self, theta):
        from numpyro.infer.util import unconstrain_fn

        return self.flatten(unconstrain_fn(self.model, (), {}, self.unflatten(theta)))

    def _to_constrained_one(self, u):
        from numpyro.infer.util import constrain_fn

        return self.flatten(constrain_fn(self.model, (), {}, self.unflatten(u)))

    def _log_prob_unconstrained_one(self, u):
        from numpyro.infer.util import potential_energy

        return -potential_energy(self.model, (), {}, self.unflatten(u))

    def _log_prob_checked_one(self, theta):
        lp, inside = self._log_prob_one(theta)
        return jnp.where(inside, lp, -jnp.inf)

    def _log_abs_det_one(self, u):
        return self._log_prob_unconstrained_one(u) - self._log_prob_one(self._to_constrained_one(u))[0]

    def _map(self, name: str, x, what):
        """The per-point method ``name`` over the points ``x (..., dim)``, as one jitted vmap.

        Jitted because run eagerly each of its many small operations compiles a
        program of its own on first use (about half a second per prior).
        """
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"{what} must have shape (..., {self.dim}) for this prior, got {x.shape}")
        cache = self.__dict__.setdefault("_jitted", {})  # per instance (the dataclass is frozen, eq=False)
        if name not in cache:
            cache[name] = jax.jit(jax.vmap(getattr(self, name)))
        out = cache[name](x.reshape((-1, self.dim)))
        return out.reshape(x.shape[:-1] + out.shape[1:])

    # ------------------------------------------------------------ public API

    def sample(self, key: Array, n: int) -> Array:
        """``n`` prior draws, shape ``(n, dim)``, constrained, default float dtype."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        dt = jnp.result_type(float)
        if self.distribution is not None:
            d = self.distribution
            draws = d.sample(key, (int(n),))
            return draws.reshape((int(n), self.dim)).astype(dt)
        import numpyro.handlers as handlers

        def one(k):
            tr = handlers.trace(handlers.seed(self.model, rng_seed=k)).get_trace()
            return self.flatten({name: tr[name]["value"] for name in self.names}).astype(dt)

        return jax.vmap(one)(jax.random.split(key, int(n)))

    def log_prob(self, theta: Array) -> Array:
        """Prior log density of constrained ``theta (..., dim)``; shape ``(...)``.

        ``-inf`` outside the support (numpyro's distributions do not validate
        their arguments by default, so the support is checked explicitly).
        """
        return self._map("_log_prob_checked_one", theta, "theta")

    def to_unconstrained(self, theta: Array) -> Array:
        """Map constrained ``theta (..., dim)`` to the unconstrained space, same shape."""
        return self._map("_to_unconstrained_one", theta, "theta")

    def to_constrained(self, u: Array) -> Array:
        """Map unconstrained ``u (..., dim)`` to constrained ``theta``, same shape."""
        return self._map("_to_constrained_one", u, "u")

    def log_abs_det_jacobian(self, u: Array) -> Array:
        """``log |det d theta / d u|`` at unconstrained ``u (..., dim)``; shape ``(...)``."""
        return self._map("_log_abs_det_one", u, "u")

    def log_prob_unconstrained(self, u: Array) -> Array:
        """Density of the prior pushed to the unconstrained space: ``log p(theta(u)) + log|J|``."""
        return self._map("_log_prob_unconstrained_one", u, "u")

    def __repr__(self) -> str:
        sites = ", ".join(f"{n}{list(s)}" for n, s in zip(self.names, self.shapes))
        return f"Prior(dim={self.dim}, sites: {sites})"


def as_prior(prior) -> Prior:
    """A `Prior` from a numpyro distribution, a latent-only numpyro model, or a `Prior`.

    Args:
      prior: a numpyro ``Distribution`` (batch dimensions are folded into the
        event, so ``dist.Normal(zeros(3), 1.)`` is a 3-d prior; its single site
        is called ``"theta"``), or a numpyro model function taking no
        arguments whose sample sites are all latent and continuous.

    Returns:
      A `Prior`.

    Raises:
      TypeError: anything else.
      ValueError: observed or discrete sites, no sites, or a support whose
        unconstrained space has another size than the constrained one (e.g.
        a simplex), which flat flows cannot represent one to one.
    """
    import numpyro.distributions as dist
    from numpyro.distributions.transforms import biject_to

    if isinstance(prior, Prior):
        return prior
    distribution = None
    if isinstance(prior, dist.Distribution):
        distribution = prior
        if prior.batch_shape:
            distribution = prior.to_event(len(prior.batch_shape))
        model = _distribution_model(distribution)
    elif callable(prior):
        model = prior
    else:
        raise TypeError(
            "prior must be a numpyro Distribution or a numpyro model function with latent "
            f"sites only, got {type(prior).__name__}"
        )
    try:
        trace = _trace_model(model)
    except TypeError as err:
        raise TypeError(f"could not run the prior model without arguments: {err}") from err
    names, shapes = [], []
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            raise ValueError(
                f"prior model has an observed site {name!r}; a prior must have latent sites only "
                "(the simulator produces the data)"
            )
        fn = site["fn"]
        if getattr(fn.support, "is_discrete", False):
            raise ValueError(f"prior site {name!r} is discrete ({type(fn).__name__}); only continuous priors are supported")
        shape = tuple(int(s) for s in np.shape(site["value"]))
        t = biject_to(fn.support)
        if tuple(t.inverse_shape(shape)) != shape:
            raise ValueError(
                f"prior site {name!r} has support {fn.support} whose unconstrained space has shape "
                f"{tuple(t.inverse_shape(shape))} instead of {shape}; such priors (simplex, "
                "correlation matrices, ...) are not supported: reparametrise them with real sites"
            )
        names.append(name)
        shapes.append(shape)
    if not names:
        raise ValueError("prior has no sample sites")
    dim = int(sum(math.prod(s) for s in shapes))
    if dim < 1:
        raise ValueError("prior has zero-size sites only")
    return Prior(model=model, names=tuple(names), shapes=tuple(shapes), dim=dim, distribution=distribution,
                 source=prior)


def check_same_prior(prior: Prior, other: Prior, what: str, num_checks: int = 8) -> None:
    """Raise ``ValueError`` unless ``other`` has the sites and log densities of ``prior``.

    Compares names, shapes and ``log_prob`` on ``num_checks`` fixed draws of
    each prior (both ways, so a narrower or wider support is caught), as
    `sbi_kit.sbi.io.load_posterior` does. ``what`` names ``other`` in the message.
    """
    if other is prior or other == prior:
        return
    if other.names != prior.names or other.shapes != prior.shapes:
        raise ValueError(f"{what} was built for another prior (sites {dict(zip(other.names, other.shapes))}, "
                         f"expected {dict(zip(prior.names, prior.shapes))})")
    key = jax.random.PRNGKey(12345)
    for a in (prior, other):
        theta = a.sample(key, num_checks)
        lp_p = np.asarray(prior.log_prob(theta), np.float64)
        lp_o = np.asarray(other.log_prob(theta), np.float64)
        if not np.allclose(lp_p, lp_o, rtol=1e-4, atol=1e-4, equal_nan=True):
            raise ValueError(f"{what} was built for another prior: its log densities differ from this prior's "
                             f"({lp_o} vs {lp_p}); pass the prior it was trained with")
