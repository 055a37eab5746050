"""One k-fold split shared by every configuration, so out-of-fold predictions can be ensembled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.io import write_json


def make_splits(cases: list[str], strata: dict[str, str], n_folds: int = 5, seed: int = 0) -> list[dict]:
    """nnU-Net's splits_final.json layout; cases of each stratum are dealt round-robin over the folds."""
    if len(cases) < n_folds:
        raise ValueError(f"{len(cases)} training cases cannot fill {n_folds} folds; add cases or lower "
                         "training.n_folds")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    offset = 0
    for stratum in sorted(set(strata[c] for c in cases)):
        members = sorted(c for c in cases if strata[c] == stratum)
        for i, case in enumerate(rng.permutation(members)):
            folds[(offset + i) % n_folds].append(str(case))
        offset += len(members)
    return [{"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "val": sorted(folds[k])}
            for k in range(n_folds)]


def lesion_strata(cases: list[str], labels_dir: Path, labels: dict[str, int]) -> dict[str, str]:
    """Stratum of a case: which lesion classes its reference label contains, e.g. 'primary+metastasis'."""
    strata = {}
    for case in cases:
        present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(Path(labels_dir) / f"{case}.nii.gz")))))
        strata[case] = "+".join(name for name, value in labels.items() if value != 0 and value in present) or "none"
    return strata


def write_splits(cases: list[str], labels_dir: Path, labels: dict[str, int], n_folds: int, seed: int,
                 out: Path) -> list[dict]:
    splits = make_splits(cases, lesion_strata(cases, labels_dir, labels), n_folds, seed)
    write_json(splits, out)
    return splits
