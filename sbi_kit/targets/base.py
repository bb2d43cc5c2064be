"""The `Target` contract: a log density on a flat unconstrained vector.

Every sampler in sbi_kit consumes a `Target`. It is an immutable pytree with no
array leaves (everything it holds is static), so it can be closed over or passed
through `jax.jit` freely; two targets compare equal only if they are the same
object, which keeps jit caches honest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _identity_constrained(x: Array) -> dict[str, Array]:
    return {"x": x}


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """A differentiable log density over a flat unconstrained vector.

    Attributes:
      log_density: ``x (dim,) -> scalar``; unnormalised log density of one
        unconstrained vector (including log-Jacobians of any constraining
        transform). Callers vmap it; it never vmaps itself.
      dim: number of unconstrained coordinates.
      to_constrained: ``x (dim,) -> dict[str, Array]``, named constrained values
        with their natural shapes (``{"x": x}`` for plain targets).
      name: a short human-readable name.
      sample: optional ``(key, n) -> (n, dim)`` exact sampler in the
        unconstrained coordinates (benchmark targets only).
      log_Z: optional exact log normalising constant of ``exp(log_density)``.
      mean, std: optional exact moments of the unconstrained coordinates,
        shape ``(dim,)`` each.
      observables: optional named functions ``x (dim,) -> scalar`` for targets
        with no exact samples (e.g. magnetisation of a lattice field).
      info: free-form static metadata; the numpyro bridge stores the model,
        its arguments and observed sites here for ArviZ export.
    """

    log_density: Callable[[Array], Array]
    dim: int
    to_constrained: Callable[[Array], Mapping[str, Array]] = _identity_constrained
    name: str = "target"
    sample: Callable[[Array, int], Array] | None = None
    log_Z: float | None = None
    mean: Any = None
    std: Any = None
    observables: Mapping[str, Callable[[Array], Array]] = dataclasses.field(
        default_factory=dict
    )
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.dim, np.integer):
            object.__setattr__(self, "dim", int(self.dim))
        if not callable(self.log_density):
            raise TypeError(
                f"Target.log_density must be callable, got {type(self.log_density).__name__}"
            )
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise ValueError(f"Target.dim must be a positive int, got {self.dim!r}")

    def score(self, x: Array) -> Array:
        """Gradient of `log_density` at one point ``x`` of shape ``(dim,)``."""
        return jax.grad(self.log_density)(x)

    def replace(self, **changes) -> "Target":
        """A copy of this target with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        extras = []
        if self.sample is not None:
            extras.append("exact samples")
        if self.log_Z is not None:
            extras.append(f"log_Z={self.log_Z:.4f}")
        extra = (", " + ", ".join(extras)) if extras else ""
        return f"Target(name={self.name!r}, dim={self.dim}{extra})"


# A pytree with no children: the whole target is static auxiliary data, hashed
# by identity (eq=False above), so jit retraces only for a different target.
jax.tree_util.register_pytree_node(
    Target, lambda t: ((), t), lambda aux, _: aux
)


def check_position(target: Target, position: Array, *, batched: bool, what: str = "position") -> Array:
    """Validate initial positions against a target and return them as an array.

    Args:
      target: the target the positions belong to.
      position: shape ``(dim,)`` when ``batched`` is False, ``(chains, dim)``
        when True.
      batched: whether a leading chain axis is expected.
      what: the argument's name, used in error messages.

    Returns:
      The positions as a floating-point jax array.

    Raises:
      ValueError: on a wrong shape, zero chains, or a non-finite log density.
    """
    position = jnp.asarray(position)
    if not jnp.issubdtype(position.dtype, jnp.floating):
        position = position.astype(jnp.result_type(float))
    expected = "(chains, dim)" if batched else "(dim,)"
    ndim = 2 if batched else 1
    if position.ndim != ndim or position.shape[-1] != target.dim:
        raise ValueError(
            f"{what} must have shape {expected} with dim={target.dim} for target "
            f"{target.name!r}, got shape {tuple(position.shape)}"
        )
    if batched and position.shape[0] == 0:
        raise ValueError(f"{what} has zero chains; need at least one")
    if not bool(jnp.all(jnp.isfinite(position))):
        raise ValueError(f"{what} contains NaN or infinite values")
    # Match the log density's precision (e.g. float32 starts under x64 with a
    # float64 model): samplers' branches need one dtype throughout.
    out = jax.eval_shape(target.log_density, jax.ShapeDtypeStruct((target.dim,), position.dtype))
    position = position.astype(jnp.result_type(position.dtype, out.dtype))
    logp = jax.vmap(target.log_density)(position) if batched else target.log_density(position)
    bad = ~jnp.isfinite(logp)
    if bool(jnp.any(bad)):
        n_bad = int(jnp.sum(bad))
        raise ValueError(
            f"initial log density of target {target.name!r} is NaN or infinite at "
            f"{n_bad} of {logp.size} initial {what}(s); choose starting points "
            "inside the support"
        )
    return position
