"""SNF populations with resampling (annealed flow transport): exact log Z, power of the check, NaN, bad input.

With resampling the draws of a batch are no longer independent, so every
check here uses the spread over independent batches: the per-batch log Z
estimates and the per-batch self-normalised moments, z-scored against their
batch-means standard error with the threshold 4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbi_kit.samplers import _snf_population
from sbi_kit.samplers._snf_weights import log_mean_exp, normalized_weights
from sbi_kit.samplers.snf import FlowBlock, StochasticBlock, make_snf, sample_snf, snf, train_snf
from sbi_kit.targets import many_well
from sbi_kit.targets.density import from_logdensity
from sbi_kit.targets.gaussians import gaussian
from sbi_kit.targets.wells import double_well

Z_MAX = 4.0
GAUSS = dict(mean=np.array([1.0, -0.5]), scale=0.7)


def _blocks():
    return [
        StochasticBlock("langevin", 0.3, 0.05, 2),
        FlowBlock(2, hidden=(8,)),
        StochasticBlock("underdamped", 0.6, 0.05, 2, friction=2.0),
        StochasticBlock("mala", 0.8, 0.05, 2),
        StochasticBlock("rwmh", 1.0, 0.5, 2),
    ]


def _batch_z_scores(result, log_z_true, moments):
    """z-scores of log Z and of each ``(fn, true value)`` moment over the result's independent batches."""
    lw = result.log_weights
    b = lw.shape[0]
    assert np.isfinite(result.log_z_se) and result.log_z_se > 0
    z = {"log_z": (result.log_z - log_z_true) / result.log_z_se}
    positions = np.asarray(result.trace.positions, np.float64)
    for name, (fn, truth) in moments.items():
        per_batch = np.stack([normalized_weights(lw[i]) @ fn(positions[i]) for i in range(b)])
        se = per_batch.std(0, ddof=1) / np.sqrt(b)
        z[name] = (per_batch.mean(0) - truth) / se
    return z


LOG_Z_SHIFT = 3.0


def _shifted_gaussian():
    """The Gaussian of GAUSS with its log density raised by 3, so log Z = 3 (a normalised target's
    log Z = 0 would hide errors that drop whole increments of the estimate)."""
    g = gaussian(2, **GAUSS)
    return g, from_logdensity(lambda x: g.log_density(x) + LOG_Z_SHIFT, 2, name="shifted_gaussian")


def _gaussian_moments(g):
    return {"mean": (lambda x: x, g.mean), "second": (lambda x: x * x, g.mean**2 + g.std**2)}


@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_resampled_gaussian_log_z_and_moments_exact(threshold):
    g, target = _shifted_gaussian()
    model = make_snf(jax.random.PRNGKey(0), target, _blocks(), base_scale=1.5)
    result = sample_snf(model, target, jax.random.PRNGKey(1), 1000, num_batches=16, resample_threshold=threshold)
    z = _batch_z_scores(result, LOG_Z_SHIFT, _gaussian_moments(g))
    for name, v in z.items():
        assert np.all(np.abs(v) < Z_MAX), f"threshold {threshold}: {name} z = {v}"
    if threshold == 1.0:  # before each of the 4 stochastic blocks
        np.testing.assert_array_equal(result.num_resampled, np.full(16, 4))
    else:
        assert np.all(result.num_resampled >= 1)
    assert result.num_invalid == 0
    assert result.trace.info["num_resampled"] == result.num_resampled.tolist()
    # One extra target evaluation per particle and stochastic block.
    assert result.num_target_evals == 16 * 1000 * (model.target_evals_per_sample() + 4)
    assert result.trace.to_arviz().sample_stats["log_weight"].shape == (16, 1000)


def test_dropping_the_resampling_increment_is_caught(monkeypatch):
    """The same check fails when the log mean weight at resampling is not carried into log Z."""
    _, target = _shifted_gaussian()
    model = make_snf(jax.random.PRNGKey(0), target, _blocks(), base_scale=1.5)
    original = _snf_population._resample_step

    def forgetful(*args, **kwargs):
        state, anchor, added, did, dropped = original(*args, **kwargs)
        return state, anchor, jnp.zeros_like(added), did, dropped

    monkeypatch.setattr(_snf_population, "_resample_step", forgetful)
    jax.clear_caches()
    try:
        wrong = sample_snf(model, target, jax.random.PRNGKey(1), 1000, num_batches=16, resample_threshold=1.0)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    z = (wrong.log_z - LOG_Z_SHIFT) / wrong.log_z_se
    assert abs(z) > Z_MAX, f"dropped increments not caught: z = {z}"


@pytest.mark.parametrize("trained", [False, True])
def test_resampled_double_well_exact_trained_and_untrained(trained):
    target = double_well(1)  # log Z by quadrature
    model = make_snf(jax.random.PRNGKey(2), target, _blocks(), base_scale=1.5)
    if trained:
        model, info = train_snf(model, target, jax.random.PRNGKey(4), num_steps=40, batch_size=64,
                                learning_rate=3e-3, chunk_size=40)
        assert np.all(np.isfinite(info.losses))
    result = sample_snf(model, target, jax.random.PRNGKey(5), 1000, num_batches=16, resample_threshold=0.5)
    z = _batch_z_scores(result, target.log_Z, {"mean": (lambda x: x, np.atleast_1d(target.mean))})
    for name, v in z.items():
        assert np.all(np.abs(v) < Z_MAX), f"trained={trained}: {name} z = {v}"


def test_resampling_rescues_degenerate_weights_on_many_well():
    """8-d many-well (4 double-well pairs): plain SNF weights collapse, the resampled population's do not
    (measured 0.66 vs 0.0012 final IS ESS), and its log Z is within its SE of the truth, at the same number
    of target evaluations."""
    target = many_well(8)
    blocks = [StochasticBlock("mala", k / 8, 0.15 / ((1 - k / 8) / 4 + 24 * k / 8), 4) for k in range(1, 9)]
    model = make_snf(jax.random.PRNGKey(0), target, blocks, base_scale=2.0)
    resampled = sample_snf(model, target, jax.random.PRNGKey(1), 1000, num_batches=8, resample_threshold=0.5)
    # The same evaluations without resampling (8 more per path there).
    n_plain = resampled.num_target_evals // (8 * model.target_evals_per_sample())
    plain = sample_snf(model, target, jax.random.PRNGKey(1), n_plain, num_batches=8)
    assert plain.num_target_evals <= resampled.num_target_evals
    assert resampled.is_ess > 5 * plain.is_ess, (resampled.is_ess, plain.is_ess)
    z = (resampled.log_z - target.log_Z) / resampled.log_z_se
    assert abs(z) < Z_MAX, (resampled.log_z, target.log_Z, resampled.log_z_se)


def test_resampling_drops_and_counts_nan_paths(nan_well):
    """NaN energy right of 1.4; invalid particles are dropped at resampling and counted; nothing is NaN."""
    target, log_z_trunc, _ = nan_well
    blocks = [FlowBlock(2, hidden=(8,)), StochasticBlock("rwmh", 0.5, 0.5, 2), StochasticBlock("mala", 1.0, 0.05, 2)]
    model = make_snf(jax.random.PRNGKey(0), target, blocks, base_scale=1.5)
    result = sample_snf(model, target, jax.random.PRNGKey(1), 1000, num_batches=16, resample_threshold=1.0)
    assert result.num_invalid > 0
    assert not np.any(np.isnan(result.log_weights))
    for v in (result.log_z, result.log_z_se, result.is_ess):
        assert np.isfinite(v)
    z = (result.log_z - log_z_trunc) / result.log_z_se
    assert abs(z) < Z_MAX, f"log Z {result.log_z} vs truncated quadrature {log_z_trunc}: z = {z}"
    per_batch = [log_mean_exp(row) for row in result.log_weights]
    assert np.all(np.isfinite(per_batch))


def test_single_batch_has_no_standard_error():
    target = gaussian(2, **GAUSS)
    model = make_snf(jax.random.PRNGKey(0), target, [StochasticBlock("mala", 1.0, 0.1, 2)], base_scale=1.5)
    result = sample_snf(model, target, jax.random.PRNGKey(1), 500, resample_threshold=1.0)
    assert np.isfinite(result.log_z) and np.isnan(result.log_z_se)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_bad_threshold_raises_before_running(bad):
    target = double_well(1)
    model = make_snf(jax.random.PRNGKey(0), target, [StochasticBlock("mala", 1.0)])
    with pytest.raises(ValueError, match="resample_threshold"):
        sample_snf(model, target, jax.random.PRNGKey(0), 100, resample_threshold=bad)
    with pytest.raises(ValueError, match="resample_threshold"):
        # Raised before the training steps run.
        snf(target, jax.random.PRNGKey(0), blocks=[StochasticBlock("mala", 1.0)], num_train_steps=10 ** 6,
            resample_threshold=bad)


def test_systematic_indices_follow_the_weights():
    lw = jnp.log(jnp.asarray([0.5, 0.0, 0.25, 0.25]))
    counts = np.bincount(np.asarray(_snf_population.systematic_indices(jax.random.PRNGKey(0), lw)), minlength=4)
    np.testing.assert_array_equal(counts, [2, 0, 1, 1])  # exact for weights on the 1/n grid
