"""sbi_kit NUTS against numpyro's own NUTS on the same models, machine and run.

Models (numpyro, bundled with sbi_kit):

* ``eight_schools``: eight schools, non-centred (``sbi_kit.models.eight_schools_noncentered``);
* ``funnel``: Neal's funnel, d = 10, centred (``sbi_kit.models.funnel.model``), v ~ N(0, 3).

Samplers, same settings everywhere: NUTS, diagonal mass matrix adapted with
Stan-style windows, target acceptance 0.8, maximum tree depth 10, 1000 warmup
+ 1000 kept draws on each of 4 chains, initial points uniform in [-2, 2]
(unconstrained), no progress bar:

* ``sbi_kit``: ``sbi_kit.nuts(sbi_kit.from_numpyro(model, **data), key, ...)``
  (blackjax NUTS, per-chain window adaptation, chains vmapped);
* ``numpyro_sequential``: ``MCMC(NUTS(model), ..., chain_method="sequential")``,
  what a single-CPU user gets (numpyro falls back to it from "parallel" when
  there is one device);
* ``numpyro_vectorized``: the same with ``chain_method="vectorized"`` (chains
  vmapped, as in sbi_kit).

Timing. Warmup and sampling are timed separately (numpyro: ``MCMC.warmup``
then ``MCMC.run`` from ``post_warmup_state``; sbi_kit: ``trace.info``
``warmup_time``/``sampling_time``, measured inside sbi_kit with
``block_until_ready``). Each run is a fresh call (fresh ``MCMC`` object / fresh
``sbi_kit.nuts`` call), so each phase includes JAX tracing and XLA
compilation, as a user sees it. The compile share is measured, not guessed:
a ``jax.monitoring`` time-span listener records every JAX tracing, lowering
and XLA-compilation interval, and the union of those intervals inside a phase
is reported as ``*_compile_s``. ``*_s`` (without ``wall``) is the phase's wall
time minus its compile time, i.e. the time spent running compiled code plus
Python/dispatch overhead; ``ess_per_s`` uses that sampling time, and
``ess_per_s_incl_compile`` the full sampling wall time.

JAX's CPU async dispatch is switched off (``jax_cpu_enable_async_dispatch``)
so that a compilation cannot run while earlier compiled code is still
executing, which would hide execution time inside the compile spans; and a
trivial jitted function runs before the first timed phase, so backend start-up
is not charged to whichever library goes first.

Efficiency. ``grad_evals`` is the total number of leapfrog steps (one gradient
each) of the kept draws over all chains: numpyro's ``extra_fields=("num_steps",)``
summed, sbi_kit's ``trace.num_grad_evals``. ``min_ess_bulk`` is the smallest
``arviz.ess(method="bulk")`` over every scalar component of the constrained
posterior variables listed in ``MODELS`` (the same variables for both
libraries, deterministic sites included). ``divergences`` counts divergent
kept transitions over all chains. ``lockstep_useful_fraction`` is the share of
gradient work that is kept when the chains' trajectories are computed in
lockstep (see `lockstep_useful_fraction`); ``us_per_grad_eval`` is sampling
seconds (compile excluded) per kept gradient evaluation. For the funnel ``std_v`` is the standard
deviation of v over all kept draws (true value 3).

Output (stdout, one JSON object per line, the benchmark-script contract of
``benchmarks/run.py``): one line per (model, library, seed) with
``"kind": "run"``, then one ``"kind": "summary"`` line with medians over seeds
per (model, library), the ratios sbi_kit / numpyro of the medians, the machine,
versions and the command to reproduce. Progress messages go to stderr.

Reproduce::

    /tmp/venv/bin/python benchmarks/nuts_vs_numpyro.py            # full: ~6 min on 2 shared cores
    /tmp/venv/bin/python benchmarks/nuts_vs_numpyro.py --quick    # smoke run: ~1.5 min

Run it on an otherwise idle machine if you can: every number here is wall
time on a CPU that other processes may share (the summary records ``nproc``
and the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from importlib import metadata

import jax
import numpy as np

# Synchronous dispatch on CPU: a jitted call returns only when its result is
# computed, so compilation of the next function can never overlap execution
# of the previous one and "wall minus compile" is the execution time. Must be
# set before the CPU backend starts. Applies to every library alike.
jax.config.update("jax_cpu_enable_async_dispatch", False)

MODELS = {
    # name: (module under sbi_kit.models, model attribute, constrained variables for ESS)
    "eight_schools": ("eight_schools_noncentered", "model", ("mu", "tau", "theta_tilde", "theta")),
    "funnel": ("funnel", "model", ("v", "x")),
}
LIBRARIES = ("sbi_kit", "numpyro_sequential", "numpyro_vectorized")
FULL = {"num_warmup": 1000, "num_draws": 1000, "num_chains": 4, "seeds": (0, 1, 2)}
QUICK = {"num_warmup": 100, "num_draws": 100, "num_chains": 4, "seeds": (0,)}
TARGET_ACCEPT = 0.8
MAX_TREE_DEPTH = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- compile time


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, per timed phase.

    Listens to JAX's monitoring time spans for jaxpr tracing, jaxpr -> MLIR
    lowering and XLA backend compilation (``jax._src.dispatch`` events) and
    returns, for a phase ``[start, end]``, the length of the union of those
    spans inside it (spans nest: an inner ``jit`` is traced while its caller
    is being traced, so summing durations would double count).
    """

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self._spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        jax.monitoring.register_event_time_span_listener(self._on_span)

    def _on_span(self, event, start_time, end_time, **kwargs):
        if event in self.EVENTS:
            with self._lock:
                self._spans.append((start_time, end_time))

    def seconds_between(self, start: float, end: float) -> float:
        """Union length of the recorded spans clipped to ``[start, end]`` (``time.time`` clock)."""
        with self._lock:
            spans = sorted((max(s, start), min(e, end)) for s, e in self._spans if e > start and s < end)
        total, cur_s, cur_e = 0.0, None, None
        for s, e in spans:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            total += cur_e - cur_s
        return total


class Phase:
    """Context manager timing one phase: wall seconds and compile seconds inside it."""

    def __init__(self, clock: CompileClock):
        self.clock = clock

    def __enter__(self):
        self.t0, self.p0 = time.time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.p0
        self.compile = self.clock.seconds_between(self.t0, time.time())
        return False


# ---------------------------------------------------------------- diagnostics


def min_bulk_ess(samples: dict, names) -> tuple[float, str]:
    """Smallest bulk ESS over every scalar component of ``samples[name]`` (chains, draws, ...)."""
    import arviz as az

    post = {k: np.asarray(samples[k]) for k in names}
    ess = az.ess(az.from_dict(posterior=post), method="bulk")
    best, where = np.inf, ""
    for k in names:
        vals = np.atleast_1d(np.asarray(ess[k].values, dtype=float))
        i = int(np.nanargmin(vals))
        if vals[i] < best:
            best, where = float(vals[i]), (k if vals.size == 1 else f"{k}[{i}]")
    return best, where


def lockstep_useful_fraction(n_steps) -> float:
    """Useful share of the leapfrog work when chains advance in lockstep.

    ``n_steps``: leapfrog steps per transition, ``(chains, draws)``. Vmapped
    NUTS (sbi_kit, numpyro "vectorized") runs every chain until the longest
    trajectory of the batch ends, so transition ``t`` costs about
    ``chains * max_c n_steps[c, t]`` gradient evaluations, of which
    ``sum_c n_steps[c, t]`` are kept. Returns kept / paid over the run (1 for
    equal trajectory lengths). Sequential chains do not pay this; for them the
    number says what vmapping the same trajectories would have cost.
    """
    n = np.asarray(n_steps, dtype=float)
    return float(n.sum() / (n.shape[0] * n.max(axis=0).sum()))


# ---------------------------------------------------------------- the runs


def load_model(name: str):
    import importlib

    module_name, attr, variables = MODELS[name]
    mod = importlib.import_module(f"sbi_kit.models.{module_name}")
    return getattr(mod, attr), dict(mod.data), variables


def run_sbi_kit(model, data, seed, cfg, clock):
    import sbi_kit

    target = sbi_kit.from_numpyro(model, **data)
    # from_numpyro traces the model (a little compile work) before sampling starts.
    t_call = time.time()
    trace = sbi_kit.nuts(
        target, jax.random.PRNGKey(seed), num_chains=cfg["num_chains"],
        num_warmup=cfg["num_warmup"], num_draws=cfg["num_draws"],
        target_accept=TARGET_ACCEPT, max_num_doublings=MAX_TREE_DEPTH,
        dense_mass=False, progress=False,
    )
    t_end = time.time()
    info = trace.info
    # sbi_kit times its phases itself (``info``); the sampling phase is the
    # last ``sampling_time`` seconds of the call (only the Trace is built
    # after it, which takes milliseconds and compiles nothing). Everything before it is counted as warmup here: sbi_kit's
    # own ``warmup_time`` plus the set-up around it (initial points, shape
    # tracing in run_chains), as numpyro's ``MCMC.warmup`` includes its init.
    s_wall = float(info["sampling_time"])
    s_start = t_end - s_wall
    samples = trace.constrained()
    return {
        "warmup_wall_s": s_start - t_call,
        "warmup_compile_s": clock.seconds_between(t_call, s_start),
        "sbi_kit_warmup_time_s": float(info["warmup_time"]),
        "sampling_wall_s": s_wall,
        "sampling_compile_s": clock.seconds_between(s_start, t_end),
        "grad_evals_warmup": int(info["warmup_grad_evals"]),
        "grad_evals": int(trace.num_grad_evals),
        "divergences": int(np.sum(trace.stats["diverging"])),
        "mean_accept": float(np.mean(trace.stats["acceptance_rate"])),
        "max_tree_depth_hits": int(np.sum(np.asarray(trace.stats["tree_depth"]) >= MAX_TREE_DEPTH)),
        "n_steps": np.asarray(trace.stats["n_steps"]),
        "samples": samples,
    }


def run_numpyro(model, data, seed, cfg, clock, chain_method):
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(model, target_accept_prob=TARGET_ACCEPT, max_tree_depth=MAX_TREE_DEPTH, dense_mass=False)
    mcmc = MCMC(
        kernel, num_warmup=cfg["num_warmup"], num_samples=cfg["num_draws"],
        num_chains=cfg["num_chains"], chain_method=chain_method, progress_bar=False,
    )
    with Phase(clock) as warm:
        mcmc.warmup(jax.random.PRNGKey(seed), extra_fields=("num_steps",), collect_warmup=True, **data)
        jax.block_until_ready(mcmc.post_warmup_state)
    warm_steps = int(np.sum(np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])))
    with Phase(clock) as samp:
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps", "accept_prob"), **data)
        jax.block_until_ready(mcmc.last_state)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    num_steps = np.asarray(extra["num_steps"])
    return {
        "warmup_wall_s": warm.wall,
        "warmup_compile_s": warm.compile,
        "sampling_wall_s": samp.wall,
        "sampling_compile_s": samp.compile,
        "grad_evals_warmup": warm_steps,
        "grad_evals": int(np.sum(num_steps)),
        "divergences": int(np.sum(np.asarray(extra["diverging"]))),
        "mean_accept": float(np.mean(np.asarray(extra["accept_prob"]))),
        # numpyro's num_steps = 2**depth - 1 at the maximum depth.
        "max_tree_depth_hits": int(np.sum(num_steps >= 2**MAX_TREE_DEPTH - 1)),
        "n_steps": num_steps,
        "samples": {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()},
    }


def one_run(model_name, library, seed, cfg, clock) -> dict:
    model, data, variables = load_model(model_name)
    if library == "sbi_kit":
        r = run_sbi_kit(model, data, seed, cfg, clock)
    else:
        r = run_numpyro(model, data, seed, cfg, clock, library.removeprefix("numpyro_"))
    samples = r.pop("samples")
    n_steps = r.pop("n_steps")
    extra = {k: r.pop(k) for k in list(r) if k.startswith("sbi_kit_")}
    ess, ess_at = min_bulk_ess(samples, variables)
    warm_s = max(r["warmup_wall_s"] - r["warmup_compile_s"], 0.0)
    samp_s = max(r["sampling_wall_s"] - r["sampling_compile_s"], 1e-12)
    row = {
        "kind": "run", "benchmark": "nuts_vs_numpyro", "model": model_name, "library": library,
        "seed": seed, "num_chains": cfg["num_chains"], "num_warmup": cfg["num_warmup"],
        "num_draws": cfg["num_draws"],
        "warmup_wall_s": r["warmup_wall_s"], "warmup_compile_s": r["warmup_compile_s"], "warmup_s": warm_s,
        "sampling_wall_s": r["sampling_wall_s"], "sampling_compile_s": r["sampling_compile_s"],
        "sampling_s": samp_s,
        "grad_evals_warmup": r["grad_evals_warmup"], "grad_evals": r["grad_evals"],
        "grad_evals_per_draw": r["grad_evals"] / (cfg["num_chains"] * cfg["num_draws"]),
        "us_per_grad_eval": 1e6 * samp_s / max(r["grad_evals"], 1),
        "min_ess_bulk": ess, "min_ess_at": ess_at,
        "ess_per_s": ess / samp_s,
        "ess_per_s_incl_compile": ess / r["sampling_wall_s"],
        "ess_per_grad": ess / max(r["grad_evals"], 1),
        "divergences": r["divergences"], "mean_accept": r["mean_accept"],
        "max_tree_depth_hits": r["max_tree_depth_hits"],
        "lockstep_useful_fraction": lockstep_useful_fraction(n_steps),
    }
    row.update(extra)
    if model_name == "funnel":
        row["std_v"] = float(np.std(np.asarray(samples["v"])))
    return row


# ---------------------------------------------------------------- summary


MEDIAN_KEYS = (
    "warmup_wall_s", "warmup_compile_s", "warmup_s", "sampling_wall_s", "sampling_compile_s",
    "sampling_s", "grad_evals", "grad_evals_per_draw", "us_per_grad_eval", "min_ess_bulk",
    "ess_per_s", "ess_per_s_incl_compile", "ess_per_grad", "divergences", "lockstep_useful_fraction", "std_v",
)


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("sbi-kit", "jax", "jaxlib", "numpyro", "blackjax", "arviz", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu, "nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "platform": platform.platform(),
        "jax_devices": [str(d) for d in jax.devices()], "versions": versions,
    }


def summarize(rows, cfg, load_before, load_after, elapsed, command) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["model"], {}).setdefault(r["library"], []).append(r)
    medians: dict = {}
    ratios: dict = {}
    for model, libs in groups.items():
        medians[model] = {}
        for lib, rs in libs.items():
            medians[model][lib] = {
                k: statistics.median(r[k] for r in rs) for k in MEDIAN_KEYS if k in rs[0]
            }
            medians[model][lib]["seeds"] = [r["seed"] for r in rs]
        if "sbi_kit" in medians[model]:
            ours = medians[model]["sbi_kit"]
            ratios[model] = {
                f"sbi_kit/{lib}": {
                    k: ours[k] / m[k] if m[k] else None
                    for k in ("ess_per_s", "ess_per_s_incl_compile", "ess_per_grad", "us_per_grad_eval", "sampling_s", "warmup_s")
                }
                for lib, m in medians[model].items() if lib != "sbi_kit"
            }
    return {
        "kind": "summary", "benchmark": "nuts_vs_numpyro", "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "settings": {"target_accept": TARGET_ACCEPT, "max_tree_depth": MAX_TREE_DEPTH, "mass_matrix": "diagonal"},
        "medians": medians, "ratios": ratios, "machine": machine_info(),
        "loadavg_before": load_before, "loadavg_after": load_after, "elapsed_s": elapsed,
        "command": command,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (100 + 100 steps, one seed)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    args = parser.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds:
        cfg["seeds"] = tuple(args.seeds)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    clock = CompileClock()
    jax.block_until_ready(jax.jit(lambda x: x + 1)(np.zeros(3)))  # start the backend untimed
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    # Interleave libraries inside each (seed, model) so that load changes on a
    # shared machine hit all of them alike.
    for seed in cfg["seeds"]:
        for model_name in args.models:
            for library in args.libraries:
                log(f"[nuts_vs_numpyro] {model_name} {library} seed={seed} ...")
                row = one_run(model_name, library, seed, cfg, clock)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = summarize(rows, cfg, load_before, os.getloadavg(), time.perf_counter() - t0, command)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
