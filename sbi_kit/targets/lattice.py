"""Lattice phi^4 field theory on a periodic L x L lattice (2 dimensions).

Two standard parametrisations, each a `Target` with ``log_density = -S``:

* hopping form (Lüscher-Weisz; used by e.g. Nicoli et al. 2021 for flows):
  ``S(phi) = sum_x [-2 kappa sum_mu phi_x phi_{x+mu} + phi_x^2 + lam (phi_x^2 - 1)^2]``;
* mass form (Albergo et al. 2019; Kanwar et al.'s flow tutorial):
  ``S(phi) = sum_x [sum_mu (phi_{x+mu} - phi_x)^2 + m2 phi_x^2 + lam phi_x^4]``.

``mu`` runs over the two forward directions. The two are the same theory:
with ``phi_mass = sqrt(kappa) phi_hop``, ``m2 = (1 - 2 lam_hop) / kappa - 4``
and ``lam_mass = lam_hop / kappa^2`` the actions agree up to the constant
``lam_hop * L^2`` (and the Jacobian, also constant). There are no exact samples
and ``log_Z`` is unknown; ``observables`` gives the magnetisation per site,
its absolute value and the action of one flat configuration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sbi_kit.targets import _checks
from sbi_kit.targets.base import Target


def _neighbour_sum(field: jax.Array) -> jax.Array:
    """``sum_mu phi_x phi_{x+mu}`` over both forward directions, per site, periodic."""
    return field * (jnp.roll(field, -1, axis=0) + jnp.roll(field, -1, axis=1))


def _lattice_target(L: int, site_action, name: str, info: dict) -> Target:
    """Wrap a per-site action ``field (L, L) -> (L, L)`` into a `Target` on flat vectors."""

    def action(x):
        x = _checks.float_input(x)
        return jnp.sum(site_action(x.reshape(L, L)))

    def log_density(x):
        return -action(x)

    def magnetisation(x):
        return jnp.mean(_checks.float_input(x))

    return Target(
        log_density=log_density,
        dim=L * L,
        to_constrained=lambda x: {"phi": jnp.reshape(x, (L, L))},
        name=name,
        observables={
            "magnetisation": magnetisation,
            "abs_magnetisation": lambda x: jnp.abs(magnetisation(x)),
            "action": action,
        },
        info={"L": L, **info},
    )


def phi4(L: int = 8, kappa: float = 0.3, lam: float = 0.022) -> Target:
    """phi^4 theory in the hopping parametrisation (see module docstring).

    Args:
      L: lattice extent, >= 2; ``dim = L * L``, flat index ``x = row * L + col``.
      kappa: hopping parameter (finite). Larger kappa strengthens the
        ferromagnetic coupling and drives the field into the broken phase
        (two-peaked magnetisation); in mean field the transition sits at
        ``kappa = (1 - 2 lam) / 4``, and fluctuations move it higher.
      lam: quartic coupling, >= 0; ``lam = 0`` needs ``|kappa| < 1/4`` for a
        normalisable (Gaussian) density.

    Returns:
      A `Target` with ``log_density = -S`` in the dtype of ``x``,
      ``to_constrained(x) = {"phi": (L, L)}`` and observables
      ``magnetisation`` (site mean), ``abs_magnetisation`` and ``action``.
    """
    L = _checks.positive_int(L, "L", minimum=2)
    kappa = _checks.finite_float(kappa, "kappa")
    lam = _checks.finite_float(lam, "lam")
    if lam < 0:
        raise ValueError(f"lam must be >= 0 for a normalisable density, got {lam}")
    # Gaussian case: the quadratic form 1 - 2 kappa sum_mu cos(p_mu) must stay
    # positive at p = 0 and p = (pi, pi).
    if lam == 0 and not abs(kappa) < 0.25:
        raise ValueError(f"with lam = 0 the density is normalisable only for |kappa| < 1/4, got {kappa}")

    def site_action(f):
        return -2.0 * kappa * _neighbour_sum(f) + f * f + lam * (f * f - 1.0) ** 2

    return _lattice_target(
        L, site_action, f"phi4_L{L}_kappa{kappa:g}_lam{lam:g}",
        {"parametrisation": "hopping", "kappa": kappa, "lam": lam},
    )


def phi4_mass(L: int = 8, m2: float = -4.0, lam: float = 8.0) -> Target:
    """phi^4 theory in the ``m^2 / lambda`` parametrisation (see module docstring).

    Defaults ``m2 = -4, lam = 8`` are those of Kanwar et al.'s normalizing-flow
    tutorial for lattice field theory (the setup of Albergo et al. 2019).

    Args:
      L: lattice extent, >= 2; ``dim = L * L``.
      m2: bare mass squared (finite, may be negative).
      lam: quartic coupling, >= 0; ``lam = 0`` needs ``m2 > 0``.

    Returns:
      A `Target` like `phi4`'s, with the same observables.
    """
    L = _checks.positive_int(L, "L", minimum=2)
    m2 = _checks.finite_float(m2, "m2")
    lam = _checks.finite_float(lam, "lam")
    if lam < 0:
        raise ValueError(f"lam must be >= 0 for a normalisable density, got {lam}")
    if lam == 0 and not m2 > 0:
        raise ValueError(f"with lam = 0 the density is normalisable only for m2 > 0, got {m2}")

    def site_action(f):
        # sum_mu (phi_{x+mu} - phi_x)^2 = 4 phi_x^2 - 2 sum_mu phi_x phi_{x+mu} after summing over x.
        return -2.0 * _neighbour_sum(f) + (4.0 + m2) * f * f + lam * f**4

    return _lattice_target(
        L, site_action, f"phi4_L{L}_m2{m2:g}_lam{lam:g}",
        {"parametrisation": "mass", "m2": m2, "lam": lam},
    )
