"""Test support: posteriordb reference posteriors and Monte Carlo error bounds.

The reference draws live outside the repository, in the ``shared/posteriordb``
folder beside the clone (``<clone>/../shared/posteriordb``), or wherever the
environment variable ``SBI_KIT_POSTERIORDB`` points.  They are not shipped, so
every loader here calls ``pytest.skip`` with the missing path as the reason when
the folder (or one posterior in it) is absent.

Each posterior folder holds ``draws.json.zip`` (one JSON file: a list with one
object per chain, mapping Stan names such as ``"theta[1]"`` to that chain's
draws) and ``info.json``; the folder itself holds ``summary.json`` (reference
means and standard deviations per posterior).

This module is imported by tests; it is not a test file.
"""

from __future__ import annotations

import json
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

ENV_VAR = "SBI_KIT_POSTERIORDB"


def posteriordb_dir() -> Path:
    """Return the posteriordb folder, or skip the calling test if it is absent.

    ``$SBI_KIT_POSTERIORDB`` wins when set; otherwise the folder is
    ``shared/posteriordb`` beside the repository clone.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
    else:
        # tests/models/posteriordb.py -> parents[2] is the clone, parents[3] holds it.
        root = Path(__file__).resolve().parents[3] / "shared" / "posteriordb"
    if not root.is_dir():
        pytest.skip(
            f"posteriordb reference folder not found at {root} "
            f"(set {ENV_VAR} to a folder holding <name>/draws.json.zip)"
        )
    return root


def _posterior_dir(name: str) -> Path:
    folder = posteriordb_dir() / name
    if not (folder / "draws.json.zip").is_file():
        pytest.skip(f"posteriordb reference draws missing: {folder / 'draws.json.zip'}")
    return folder


@lru_cache(maxsize=None)
def _load_chains(folder: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(Path(folder) / "draws.json.zip") as zf:
        (member,) = [m for m in zf.namelist() if m.endswith(".json")]
        chains = json.loads(zf.read(member))
    names = list(chains[0])
    return {n: np.asarray([c[n] for c in chains], dtype=np.float64) for n in names}


def load_reference_chains(name: str) -> dict[str, np.ndarray]:
    """Reference draws of posterior ``name`` kept per chain.

    Returns:
        Stan parameter name (1-based, e.g. ``"theta[1]"``) -> array of shape
        ``(chains, draws)`` (10 x 1000 for posteriordb references).
    """
    chains = _load_chains(str(_posterior_dir(name)))
    return {k: v.copy() for k, v in chains.items()}


def load_reference(name: str) -> dict[str, np.ndarray]:
    """Reference draws of posterior ``name`` pooled over chains.

    Returns:
        Stan parameter name (e.g. ``"theta[1]"``, ``"mu"``) -> array of shape
        ``(chains * draws,)``.
    """
    return {k: v.reshape(-1) for k, v in load_reference_chains(name).items()}


def reference_summary(name: str) -> dict[str, dict[str, float]]:
    """Reference mean and sd per parameter of posterior ``name``, from ``summary.json``.

    Returns:
        Stan parameter name -> ``{"mean": float, "sd": float}``.
    """
    path = posteriordb_dir() / "summary.json"
    if not path.is_file():
        pytest.skip(f"posteriordb summary missing: {path}")
    summary = json.loads(path.read_text())
    if name not in summary:
        pytest.skip(f"posterior {name!r} not listed in {path}")
    entry = summary[name]
    return {
        n: {"mean": float(m), "sd": float(s)}
        for n, m, s in zip(entry["names"], entry["mean"], entry["sd"])
    }


def mean_mcse(reference_draws: np.ndarray, ess: float) -> float:
    """Monte Carlo standard error of a posterior-mean estimate with effective size ``ess``.

    The spread is the reference posterior sd (from ``reference_draws``, any
    shape, pooled), so the bound does not depend on the run being checked
    having found the right scale: ``sd_ref / sqrt(ess)``.
    """
    return float(np.std(np.asarray(reference_draws), ddof=1) / np.sqrt(ess))


def sd_mcse(reference_draws: np.ndarray, ess: float) -> float:
    """Monte Carlo standard error of a posterior-sd estimate with effective size ``ess``.

    Delta method on the variance estimate: ``se(s) ~= sqrt((m4 - s^4) / ess) / (2 s)``,
    with the central moments ``s^2`` and ``m4`` taken from ``reference_draws``;
    for a normal posterior it reduces to ``s / sqrt(2 ess)``.  ``ess`` should be
    an effective size for the squared deviations (ArviZ's ``method="sd"`` / tail
    ESS is a reasonable stand-in).
    """
    x = np.asarray(reference_draws, dtype=np.float64).reshape(-1)
    d = x - x.mean()
    s2 = np.mean(d**2)
    m4 = np.mean(d**4)
    return float(np.sqrt(max(m4 - s2**2, 0.0) / ess) / (2.0 * np.sqrt(s2)))


def reference_mcse(name: str) -> dict[str, dict[str, float]]:
    """The reference's own Monte Carlo error on its means and sds.

    Computed with ArviZ from the per-chain reference draws (``mcse`` with
    ``method="mean"`` and ``method="sd"``).

    Returns:
        Stan parameter name -> ``{"mean": float, "sd": float}``.
    """
    import arviz as az

    out = {}
    for k, v in load_reference_chains(name).items():
        out[k] = {
            "mean": float(az.mcse(v, method="mean")),
            "sd": float(az.mcse(v, method="sd")),
        }
    return out
