"""Trace and pair plots written to files (ArviZ + matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path


def _components(idata, max_components: int):
    """The first ``max_components`` scalar posterior components as an InferenceData.

    Each component becomes its own variable (``theta[3]``), so plots never
    grow with a large vector site; sample_stats are kept for divergences.
    """
    import arviz as az
    import numpy as np

    comps = {}
    for name, da in idata.posterior.data_vars.items():
        values = np.asarray(da.values)
        flat = values.reshape(values.shape[:2] + (-1,))
        extra_shape = values.shape[2:]
        for j in range(flat.shape[2]):
            if len(comps) == max_components:
                break
            label = name if not extra_shape else f"{name}[{','.join(map(str, np.unravel_index(j, extra_shape)))}]"
            comps[label] = flat[:, :, j]
    groups = {"posterior": comps}
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        groups["sample_stats"] = {"diverging": np.asarray(idata.sample_stats["diverging"].values)}
    return az.from_dict(**groups)


def save_diagnostic_plots(idata, out_dir, *, max_components: int = 10, max_pair_components: int = 4) -> dict[str, Path]:
    """Write ``trace.png`` (and ``pair.png``) for an InferenceData into ``out_dir``.

    Args:
      idata: an ``arviz.InferenceData`` with a posterior group.
      out_dir: folder to write into (created if missing).
      max_components: scalar components in the trace plot (the first ones,
        in posterior order; vector sites count one per entry).
      max_pair_components: components in the pair plot, whose panels grow
        quadratically; no pair plot is written for fewer than 2 components.

    Returns:
      ``{"trace": path}`` plus ``"pair": path`` when a pair plot was written.
    """
    import arviz as az
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}

    axes = az.plot_trace(_components(idata, max_components), compact=True)
    fig = axes.ravel()[0].figure
    fig.tight_layout()
    paths["trace"] = out / "trace.png"
    fig.savefig(paths["trace"], dpi=80)
    plt.close(fig)

    pair_data = _components(idata, max_pair_components)
    if len(pair_data.posterior.data_vars) >= 2:
        has_div = "sample_stats" in pair_data.groups()
        axes = az.plot_pair(pair_data, kind="scatter", divergences=has_div, scatter_kwargs={"alpha": 0.2, "s": 4})
        fig = axes.ravel()[0].figure if hasattr(axes, "ravel") else axes.figure
        paths["pair"] = out / "pair.png"
        fig.savefig(paths["pair"], dpi=60)
        plt.close(fig)
    return paths


def _first_components(idata, k: int):
    """The first ``k`` scalar posterior components, flattened: (labels, array (n, k))."""
    import numpy as np

    labels, cols = [], []
    for name, da in idata.posterior.data_vars.items():
        values = np.asarray(da.values).reshape(da.sizes["chain"] * da.sizes["draw"], -1)
        for j in range(values.shape[1]):
            labels.append(name if values.shape[1] == 1 else f"{name}[{j}]")
            cols.append(values[:, j])
            if len(cols) == k:
                return labels, np.stack(cols, axis=1)
    return labels, np.stack(cols, axis=1)


def save_coreset_plot(full, coreset, path, *, num_components: int = 4) -> Path:
    """Scatter a coreset over the full draws for the first posterior components.

    Args:
      full, coreset: ``arviz.InferenceData`` with matching posterior variables.
      path: the PNG to write.
      num_components: how many leading scalar components to pair (>= 2).

    Returns:
      The written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels, x = _first_components(full, num_components)
    _, c = _first_components(coreset, num_components)
    k = x.shape[1]
    if k < 2:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(x[:, 0], bins=50, density=True, alpha=0.4, label="all draws")
        ax.plot(c[:, 0], [0.0] * len(c), "|", color="C3", markersize=20, label="coreset")
        ax.legend()
        ax.set_xlabel(labels[0])
        axes = [ax]
    else:
        fig, axes = plt.subplots(k - 1, k - 1, figsize=(3 * (k - 1), 3 * (k - 1)), squeeze=False)
        for i in range(1, k):
            for j in range(k - 1):
                ax = axes[i - 1, j]
                if j >= i:
                    ax.axis("off")
                    continue
                ax.plot(x[:, j], x[:, i], ".", color="0.6", alpha=0.15, markersize=2)
                ax.plot(c[:, j], c[:, i], "o", color="C3", markersize=4)
                if i == k - 1:
                    ax.set_xlabel(labels[j])
                if j == 0:
                    ax.set_ylabel(labels[i])
    fig.suptitle(f"coreset ({len(c)} points, red) over {len(x)} draws (grey)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
