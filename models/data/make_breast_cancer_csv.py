"""Regenerate ``breast_cancer.csv`` for ``models/logistic_regression.py``.

Provenance
----------
The rows are the Breast Cancer Wisconsin (Diagnostic) data set: W. N. Street,
W. H. Wolberg and O. L. Mangasarian, "Nuclear feature extraction for breast
tumor diagnosis" (1993), distributed by the UCI Machine Learning Repository
(https://doi.org/10.24432/C5DW2B) under the Creative Commons Attribution 4.0
International licence (CC BY 4.0).  We read the copy bundled with
scikit-learn (``sklearn.datasets.load_breast_cancer``), so no download is made.

What the CSV holds
------------------
All 569 rows.  Column ``malignant`` is 1 for a malignant and 0 for a benign
tumour (scikit-learn codes benign as 1, so it is flipped here).  The other six
columns are the cell-nucleus features named in ``FEATURES``, each standardised
to mean 0 and standard deviation 1 (population sd, ``ddof=0``) over the 569
rows, rounded to 6 decimals.  The six were picked as informative but not
near-duplicates of one another (radius, perimeter and area, for instance, are
almost collinear, so only the radius is kept).

Run once from anywhere, with scikit-learn installed::

    python models/data/make_breast_cancer_csv.py
"""

from pathlib import Path

import numpy as np

FEATURES = (
    "mean radius",
    "mean texture",
    "mean smoothness",
    "mean compactness",
    "mean symmetry",
    "mean fractal dimension",
)
OUT = Path(__file__).parent / "breast_cancer.csv"


def main() -> None:
    """Write the standardised CSV beside this script."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = list(bunch.feature_names)
    columns = [names.index(f) for f in FEATURES]
    x = np.asarray(bunch.data[:, columns], dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    malignant = 1 - np.asarray(bunch.target, dtype=np.int64)
    header = ",".join(["malignant"] + [f.replace(" ", "_") for f in FEATURES])
    with OUT.open("w") as fh:
        fh.write(header + "\n")
        for label, row in zip(malignant, x):
            fh.write(f"{label}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    print(f"wrote {OUT} ({x.shape[0]} rows, {x.shape[1]} features)")


if __name__ == "__main__":
    main()
