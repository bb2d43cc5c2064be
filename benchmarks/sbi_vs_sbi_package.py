"""sbi_kit NPE vs the `sbi` package (PyTorch, CPU) on two_moons at 10^4 simulations.

Both libraries train on the *same* 10^4 (theta, x) pairs (simulated once with
`models/sbi_tasks.py`'s two_moons, the sbibm definition) with the same flow
size, batch size and validation share, each with its own default optimiser
settings and stopping rule (below), then draw 10^4 posterior samples for each of
sbibm's observations 1..10. Each library runs in its own process (sbi_kit in
the JAX venv, sbi in a torch venv), one after the other on the same machine;
the driver then scores both sample sets with the same C2ST (sbi_kit's JAX
C2ST, sbibm protocol, same PRNG keys) against sbibm's reference samples.

Flow: neural spline flow, 5 coupling transforms, 10 bins, 50 hidden units.
  sbi:     posterior_nn(model="nsf", hidden_features=50, num_transforms=5, num_bins=10)
           (nflows coupling layers, residual-net conditioners with 2 blocks of 50),
           NPE_C.train defaults (Adam 5e-4, batches of 200, 10% validation, stop after 20
           epochs without improvement); samples with `posterior.sample_batched`
           (rejection of draws outside the BoxUniform prior).
  sbi_kit: NPE(prior, flow={"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10,
           "conditioner": "resnet", "lu_layers": True}) (the same architecture: residual
           conditioners with 2 blocks of 50, an LU layer after each coupling), fit defaults
           (batches of 200, 10% validation; Adam 2e-3, validated and returned as a moving
           average of the parameters over 16 epochs, stop after 10 epochs without improvement),
           or the settings given by ``--fit JSON``; one jitted flow draw for all 10
           observations in the prior's unconstrained space (no rejection).
Both libraries get the same number of CPU threads, ``--threads`` (default 1): torch through
``torch.set_num_threads``, XLA through ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` (for 1; XLA's defaults otherwise). One thread is the
fastest setting for both on the shared 2-core machine (torch's default 2 threads were ~6x
slower per epoch there; XLA's 2 threads ~1.3x slower per step).
Timed: training (sbi_kit: including JIT compilation) and sampling (10 x 10^4
draws); "end to end" = train + sample. Simulation and imports are not timed.

Setup:  python3 -m venv /tmp/venv_sbi && /tmp/venv_sbi/bin/pip install torch==2.13.0 sbi
        pip download sbibm==1.1.0 --no-deps -d /tmp/sbibm
Reproduce:  python benchmarks/sbi_vs_sbi_package.py --sbi-python /tmp/venv_sbi/bin/python [--quick] [--seed 0] [--threads 1]
(one side only: --library sbi_kit|sbi --data FILE --out FILE)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NUM_OBS = 10


def _emit(row):
    print(json.dumps(row), flush=True)


def run_sbi_kit(data: dict, num_samples: int, seed: int, threads: int = 1, fit: dict | None = None) -> dict:
    import jax
    import jax.numpy as jnp

    from sbi_kit.models.sbi_tasks import get_task
    from sbi_kit.sbi import NPE

    task = get_task("two_moons")
    flow = {"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10, "conditioner": "resnet",
            "lu_layers": True}
    key = jax.random.key(seed)
    k_fit, k_draw = jax.random.split(key)
    t0 = time.perf_counter()
    post = NPE(task.prior, flow=flow).fit(k_fit, jnp.asarray(data["theta"]), jnp.asarray(data["x"]), **(fit or {}))
    jax.block_until_ready(jax.tree.leaves(post.params))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    draws = np.asarray(post.sample(k_draw, num_samples, jnp.asarray(data["x_obs"])))
    t_sample = time.perf_counter() - t0
    return {"train_s": t_train, "sample_s": t_sample, "epochs": int(post.info.epochs), "samples": draws,
            "fit": fit or {}, "versions": {"jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}}


def run_sbi(data: dict, num_samples: int, seed: int, threads: int = 1) -> dict:
    import sbi
    import torch
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn
    from sbi.utils import BoxUniform

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    net = posterior_nn(model="nsf", hidden_features=50, num_transforms=5, num_bins=10)
    theta = torch.as_tensor(data["theta"], dtype=torch.float32)
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    t0 = time.perf_counter()
    inference = NPE(prior=prior, density_estimator=net, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(training_batch_size=200, learning_rate=5e-4,
                                                             validation_fraction=0.1, stop_after_epochs=20)
    posterior = inference.build_posterior(estimator)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    x_obs = torch.as_tensor(data["x_obs"], dtype=torch.float32)
    with torch.no_grad():
        draws = posterior.sample_batched((num_samples,), x=x_obs, show_progress_bars=False)  # (n, m, d)
    draws = draws.permute(1, 0, 2).numpy()
    t_sample = time.perf_counter() - t0
    epochs = int(inference._summary["epochs_trained"][-1]) if "epochs_trained" in inference._summary else None
    return {"train_s": t_train, "sample_s": t_sample, "epochs": epochs, "samples": draws,
            "versions": {"sbi": sbi.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}}


def one_side(args):
    data = dict(np.load(args.data))
    if args.library == "sbi_kit":
        out = run_sbi_kit(data, int(data["num_samples"]), args.seed, args.threads, json.loads(args.fit))
    else:
        out = run_sbi(data, int(data["num_samples"]), args.seed, args.threads)
    np.save(args.out + ".npy", out.pop("samples"))
    with open(args.out + ".json", "w") as f:
        json.dump(out, f)


def _child_env(lib: str, threads: int) -> dict:
    """The subprocess environment: XLA limited to one thread when ``threads == 1`` (set before jax loads)."""
    env = dict(os.environ)
    if lib == "sbi_kit" and threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    return env


def driver(args):
    import jax

    sys.path.insert(0, str(HERE))
    import _sbibm_reference as ref

    from sbi_kit.models.sbi_tasks import get_task
    from sbi_kit.sbi import simulate
    from sbi_kit.sbi.diagnostics import c2st

    ref.wheel_path(args.sbibm_wheel)
    num_sims = 2000 if args.quick else 10_000
    num_samples = 1000 if args.quick else 10_000
    _emit({"benchmark": "sbi_vs_sbi_package", "kind": "command",
           "command": "python benchmarks/sbi_vs_sbi_package.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
           "load_average": os.getloadavg(), "num_simulations": num_sims, "num_samples": num_samples,
           "threads": args.threads})
    task = get_task("two_moons")
    sims = simulate(jax.random.key(args.seed + 1000), task.prior, task.simulator, num_sims)
    x_obs = np.stack([ref.observation("two_moons", i, args.sbibm_wheel) for i in range(1, NUM_OBS + 1)])
    tmp = Path(tempfile.mkdtemp(prefix="sbi_vs_sbi_"))
    np.savez(tmp / "data.npz", theta=np.asarray(sims.theta, np.float32), x=np.asarray(sims.x, np.float32),
             x_obs=x_obs.astype(np.float32), num_samples=num_samples)
    order = ["sbi_kit", "sbi"] if args.seed % 2 == 0 else ["sbi", "sbi_kit"]
    results = {}
    for lib in order:
        python = sys.executable if lib == "sbi_kit" else args.sbi_python
        load_before = os.getloadavg()
        subprocess.run([python, __file__, "--library", lib, "--data", str(tmp / "data.npz"), "--out",
                        str(tmp / lib), "--seed", str(args.seed), "--threads", str(args.threads), "--fit", args.fit],
                       check=True, stdout=sys.stderr, env=_child_env(lib, args.threads))  # keep our stdout pure JSON lines
        with open(tmp / f"{lib}.json") as f:
            results[lib] = json.load(f)
        results[lib]["samples"] = np.load(tmp / f"{lib}.npy")
        results[lib]["load_before"] = load_before
    for lib in order:
        r = results[lib]
        scores = []
        for i in range(NUM_OBS):
            reference = ref.reference_samples("two_moons", i + 1, args.sbibm_wheel)[:num_samples]
            scores.append(c2st(reference, r["samples"][i], jax.random.key(100 + i)))
        _emit({"benchmark": "sbi_vs_sbi_package", "library": lib, "train_s": round(r["train_s"], 2),
               "sample_s": round(r["sample_s"], 2), "end_to_end_s": round(r["train_s"] + r["sample_s"], 2),
               "epochs": r["epochs"], "c2st_mean": round(float(np.mean(scores)), 4),
               "c2st_per_obs": [round(s, 4) for s in scores], "versions": r["versions"],
               "load_before": r["load_before"]})
    a, b = results["sbi_kit"], results["sbi"]
    _emit({"benchmark": "sbi_vs_sbi_package", "kind": "ratio",
           "speedup_end_to_end": round((b["train_s"] + b["sample_s"]) / (a["train_s"] + a["sample_s"]), 2),
           "speedup_train": round(b["train_s"] / a["train_s"], 2),
           "speedup_sample": round(b["sample_s"] / a["sample_s"], 2), "load_after": os.getloadavg()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=["sbi_kit", "sbi"], default=None)
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sbi-python", default="/tmp/venv_sbi/bin/python")
    parser.add_argument("--sbibm-wheel", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fit", default="{}",
                        help="JSON of sbi_kit NPE.fit keyword arguments over its defaults, e.g. "
                             "'{\"ema_epochs\": 16, \"learning_rate\": 1e-3, \"patience\": 10, \"lr_decays\": 0}'")
    parser.add_argument("--threads", "--torch-threads", type=int, default=1,
                        help="CPU threads for each library (torch.set_num_threads; XLA single-threaded for 1)")
    args = parser.parse_args()
    if args.library:
        one_side(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
