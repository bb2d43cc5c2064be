"""NPE training settings on two_moons, 10^4 simulations: C2ST and time per seed.

The data are those of `benchmarks/sbi_vs_sbi_package.py` for the same seed
(simulations from key seed + 1000, sbibm's 10 observations, 10^4 draws each,
C2ST against the reference posteriors with the same keys), so the C2ST can be
compared with that benchmark's `sbi` rows. Only sbi_kit is run, in one process
(compilation is paid by the first seed only; compare epochs, not times, across
seeds). Used on 2026-11-25 to test the then opt-in moving average (`ema_epochs`) and on
2026-12-06 to compare its learning rates before it became NPE's default
(RESULTS_sbi.md). Every row carries the validation-loss trace and the step count.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    python benchmarks/npe_training_settings.py '{"lr_decays": 2, "learning_rate": 5e-4, "patience": 20, "ema_epochs": null}' 0,1,2
    python benchmarks/npe_training_settings.py '{"ema_epochs": 16, "learning_rate": 1e-3, "patience": 10, "lr_decays": 0}' 0,1,2
    python benchmarks/npe_training_settings.py '{}' 0,1,2          # the defaults
    python benchmarks/npe_training_settings.py '{}' 0 noc2st       # no C2ST (every row has the validation-loss trace)
    TASK=gaussian_linear python benchmarks/npe_training_settings.py '{...}' 0   # another sbibm task (NPE's default flow)
    python benchmarks/npe_training_settings.py --quick   # smoke run (benchmarks/run.py)
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax, jax.numpy as jnp, numpy as np
import _sbibm_reference as ref
from sbi_kit.models.sbi_tasks import get_task
from sbi_kit.sbi import NPE, simulate
from sbi_kit.sbi.diagnostics import c2st
if sys.argv[1:] == ["--quick"]:  # benchmarks/run.py smoke run: two epochs, one seed, no C2ST
    sys.argv[1:] = ['{"max_epochs": 2}', "0", "noc2st"]
settings = json.loads(sys.argv[1]); seeds = [int(s) for s in sys.argv[2].split(",")]
do_c2st = len(sys.argv) < 4 or sys.argv[3] != "noc2st"
TASK = os.environ.get("TASK", "two_moons"); task = get_task(TASK)
flow = {"kind": "spline", "num_layers": 5, "hidden": (50, 50), "num_bins": 10, "conditioner": "resnet", "lu_layers": True}
x_obs = np.stack([ref.observation(TASK, i, None) for i in range(1, 11)]).astype(np.float32)
for seed in seeds:
    sims = simulate(jax.random.key(seed + 1000), task.prior, task.simulator, 10_000)
    theta = jnp.asarray(np.asarray(sims.theta, np.float32)); x = jnp.asarray(np.asarray(sims.x, np.float32))
    key = jax.random.key(seed); k_fit, k_draw = jax.random.split(key)
    t0 = time.perf_counter()
    post = NPE(task.prior, flow=flow if TASK == "two_moons" else None).fit(k_fit, theta, x, **settings)
    jax.block_until_ready(jax.tree.leaves(post.params)); tt = time.perf_counter() - t0
    t0 = time.perf_counter()
    draws = np.asarray(post.sample(k_draw, 10_000, jnp.asarray(x_obs))); ts = time.perf_counter() - t0
    info = post.info
    out = {"settings": settings, "seed": seed, "train_s": round(tt, 2), "sample_s": round(ts, 2), "epochs": int(info.epochs),
           "best_epoch": int(info.best_epoch), "best_val": float(np.nanmin(info.val_losses))}
    if do_c2st:
        sc = [c2st(ref.reference_samples(TASK, i + 1, None)[:10_000], draws[i], jax.random.key(100 + i)) for i in range(10)]
        out["c2st_mean"] = round(float(np.mean(sc)), 4); out["c2st"] = [round(float(s), 4) for s in sc]
    out["steps"] = int(info.num_steps); out["val_trace"] = [round(float(v), 4) for v in info.val_losses]
    print(json.dumps(out), flush=True)
