"""A conditional density q(y | c): a `Flow` on y with an optionally embedded, z-scored context.

Used by NPE (y = unconstrained theta, c = x) and NLE (y = x, c = unconstrained
theta). The static part is a hashable `CondFlowSpec` (JSON-ready); the arrays
are ``params = {"flow": ..., "embedding": [...]}`` (trained) and
``standardizer = {"c_loc": (c_dim,), "c_scale": (c_dim,)}`` (fixed from the
training data). z-scoring of y itself is the flow's final elementwise affine
layer (`sbi_kit.flows.standardize`), started at the data's mean and std, so
``log_prob`` is a density of the raw y.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbi_kit.flows.flow import Flow, FlowConfig, flow_config, init_params, standardize
from sbi_kit.sbi._data import check_pairs
from sbi_kit.sbi._networks import apply_mlp, check_activation, init_mlp
from sbi_kit.sbi._train import fit_minibatch, kept_validation_mask
from sbi_kit.sbi.prior import as_prior, check_same_prior

Array = jax.Array

FLOW_OPTIONS = ("kind", "num_layers", "hidden", "num_bins", "bound", "max_log_scale", "conditioner", "lu_layers")
# The neural spline flow of sbibm / the `sbi` package: 5 rational-quadratic
# coupling layers with 10 bins, residual conditioners (2 blocks of 50) and a
# learned LU linear layer after each coupling. On two_moons it fits the
# posterior's thin crescents clearly better than tanh-MLP conditioners
# (benchmarks/RESULTS_sbi.md).
DEFAULT_FLOW = {"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10,
                "conditioner": "resnet", "lu_layers": True}


@dataclasses.dataclass(frozen=True)
class CondFlowSpec:
    """Static architecture of a conditional flow (hashable, JSON-ready)."""

    flow: FlowConfig
    context_dim: int
    embedding_hidden: tuple[int, ...] = ()
    embedding_dim: int = 0  # 0: no embedding network, the z-scored context goes in directly
    activation: str = "silu"

    def to_dict(self) -> dict:
        return {"flow": self.flow.to_dict(), "context_dim": self.context_dim,
                "embedding_hidden": list(self.embedding_hidden), "embedding_dim": self.embedding_dim,
                "activation": self.activation}

    @classmethod
    def from_dict(cls, d: dict) -> "CondFlowSpec":
        return cls(FlowConfig.from_dict(d["flow"]), int(d["context_dim"]),
                   tuple(int(h) for h in d["embedding_hidden"]), int(d["embedding_dim"]), str(d["activation"]))


def flow_options(flow) -> dict:
    """Merge user flow options (a dict, a `FlowConfig`, or None) over the defaults."""
    if flow is None:
        return dict(DEFAULT_FLOW)
    if isinstance(flow, FlowConfig):
        flow = {k: getattr(flow, k) for k in FLOW_OPTIONS}
    if not isinstance(flow, dict):
        raise TypeError(f"flow must be a dict of make_flow options or a FlowConfig, got {type(flow).__name__}")
    unknown = set(flow) - set(FLOW_OPTIONS)
    if unknown:
        raise ValueError(f"unknown flow options {sorted(unknown)}; allowed: {list(FLOW_OPTIONS)}")
    return {**DEFAULT_FLOW, **flow}


def embedding_options(embedding, embedding_dim) -> tuple[tuple[int, ...], int | None]:
    """``embedding``: None or hidden widths; returns (hidden, output width or None)."""
    if embedding is None:
        if embedding_dim is not None:
            raise ValueError("embedding_dim needs an embedding network: pass embedding=(hidden widths)")
        return (), None
    hidden = tuple(int(h) for h in embedding)
    if any(h < 1 for h in hidden):
        raise ValueError(f"embedding hidden widths must be >= 1, got {embedding}")
    if embedding_dim is not None and (isinstance(embedding_dim, bool) or int(embedding_dim) < 1):
        raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
    return hidden, None if embedding_dim is None else int(embedding_dim)


def init_conditional(key: Array, y: np.ndarray, c: np.ndarray, *, flow: dict, embedding_hidden: Sequence[int],
                     embedding_dim: int | None, activation: str, z_score: bool, dtype):
    """A fresh spec, params and standardizer fitted to training data ``y (n, dy)``, ``c (n, dc)``."""
    check_activation(activation)
    dy, dc = y.shape[1], c.shape[1]
    if embedding_hidden or embedding_dim:
        emb_dim = embedding_dim or min(dc, 20)
    else:
        emb_dim = 0
    k_flow, k_emb = jax.random.split(key)
    # Coupling masks from a fixed key: the same architecture then has the same
    # static config on every fit, so compiled training and sampling code is
    # reused (sequential rounds, refits); only the weights use ``key``.
    # (Saved files store their masks, so changing how masks are drawn never
    # changes a loaded estimator.)
    config = flow_config(np.zeros(2, np.uint32), dy, context_dim=emb_dim or dc, dtype=dtype, **flow)
    f = Flow(config, init_params(config, k_flow))
    if z_score:
        # float64 moments on the host: float32 sums of 1e5 points lose digits.
        y64 = np.asarray(y, np.float64)
        f = standardize(f, y64.mean(0), _safe_std(y64))
        c64 = np.asarray(c, np.float64)
        c_loc, c_scale = c64.mean(0), _safe_std(c64)
    else:
        c_loc, c_scale = np.zeros(dc), np.ones(dc)
    spec = CondFlowSpec(f.config, int(dc), tuple(int(h) for h in embedding_hidden), int(emb_dim), activation)
    emb = init_mlp(k_emb, dc, spec.embedding_hidden, emb_dim, f.dtype) if emb_dim else []
    params = {"flow": f.params, "embedding": emb}
    standardizer = {"c_loc": jnp.asarray(c_loc, f.dtype), "c_scale": jnp.asarray(c_scale, f.dtype)}
    return spec, params, standardizer


def _safe_std(a: np.ndarray) -> np.ndarray:
    s = a.std(0)
    # A constant feature carries no information; scale 1 keeps it finite.
    return np.where(s > 1e-12 * (1 + np.abs(a.mean(0))), s, 1.0)


def context_features(spec: CondFlowSpec, params, standardizer, c: Array) -> Array:
    """z-scored (and embedded) context ``(..., dc) -> (..., flow context_dim)``."""
    h = (c - standardizer["c_loc"]) / standardizer["c_scale"]
    if spec.embedding_dim:
        h = apply_mlp(params["embedding"], h, spec.activation)
    return h


def log_prob(spec: CondFlowSpec, params, standardizer, y: Array, c: Array) -> Array:
    """``log q(y | c)`` for ``y (n, dy)`` and ``c (n, dc)`` (or ``(dc,)``, shared): ``(n,)``."""
    flow = Flow(spec.flow, params["flow"])
    return flow.log_prob(y, context_features(spec, params, standardizer, c))


def sample_and_log_prob(spec: CondFlowSpec, params, standardizer, key: Array, n: int, c: Array):
    """``n`` draws ``(n, dy)`` of ``q(y | c)`` for one context ``c (dc,)``, and their log densities."""
    flow = Flow(spec.flow, params["flow"])
    return flow.sample_and_log_prob(key, n, context_features(spec, params, standardizer, c))


@dataclasses.dataclass(frozen=True)
class NegLogProb:
    """Training loss of a conditional flow: per-example ``-log q(y | c)`` for ``batch = (y, c)``.

    Hashable, so the compiled training chunk is reused across fits (see `sbi_kit.sbi._train`).
    """

    spec: CondFlowSpec

    def __call__(self, params, standardizer, batch, key):
        y, c = batch
        return -log_prob(self.spec, params, standardizer, y, c)


class ConditionalFlowEstimator:
    """Shared constructor of the flow-based estimators (NPE, NLE): their settings, validated.

    ``prior`` goes through `as_prior`; ``flow`` and ``embedding`` through
    `flow_options` / `embedding_options`; see `NPE` for the meaning of each.
    """

    def __init__(self, prior, *, flow=None, embedding=None, embedding_dim=None, activation: str = "silu",
                 z_score: bool = True, dtype=None):
        self.prior = as_prior(prior)
        self.flow = flow_options(flow)
        self.embedding_hidden, self.embedding_dim = embedding_options(embedding, embedding_dim)
        self.activation = activation
        self.z_score = bool(z_score)
        self.dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)

    def _fit_flow(self, key, theta, x, *, what: str, model_data: bool, check_initial, initial, settings,
                  validation_mask, lr_decays, ema_epochs=None, min_delta=0.0):
        """The training body shared by `NPE.fit` and `NLE.fit`.

        Validates the pairs (NPE drops non-finite ``x`` rows, NLE refuses them),
        maps theta to the prior's unconstrained space, starts from ``initial``
        (after ``check_initial(initial, x_dim)`` raises on a mismatch) or a fresh
        flow, and trains by maximum likelihood. The flow models ``x`` given
        theta when ``model_data`` (NLE), else theta given ``x`` (NPE).

        Returns:
          ``(spec, params, standardizer, TrainInfo)``.
        """
        validation_mask = kept_validation_mask(validation_mask, x)
        theta, x = check_pairs(self.prior, theta, x, drop_invalid_x=not model_data, what=what)
        u = np.asarray(self.prior.to_unconstrained(jnp.asarray(theta, self.dtype)))
        if not np.all(np.isfinite(u)):
            raise ValueError("some theta map to non-finite unconstrained values (on the edge of the prior support)")
        y, c = (x, u) if model_data else (u, x)
        k_init, k_fit = jax.random.split(key)
        if initial is not None:
            check_initial(initial, x.shape[1])
            check_same_prior(self.prior, initial.prior, "initial")
            spec, params, standardizer = initial.spec, initial.params, initial.standardizer
        else:
            spec, params, standardizer = init_conditional(
                k_init, y, c, flow=self.flow, embedding_hidden=self.embedding_hidden,
                embedding_dim=self.embedding_dim, activation=self.activation, z_score=self.z_score,
                dtype=self.dtype,
            )
        dt = jnp.dtype(spec.flow.dtype)
        max_epochs, batch_size, lr, vf, patience = settings
        params, info = fit_minibatch(
            NegLogProb(spec), params, standardizer, (jnp.asarray(y, dt), jnp.asarray(c, dt)), k_fit,
            max_epochs=max_epochs, batch_size=batch_size, learning_rate=lr, validation_fraction=vf,
            patience=patience, validation_mask=validation_mask, lr_decays=lr_decays, ema_epochs=ema_epochs,
            min_delta=min_delta,
        )
        return spec, params, standardizer, info

