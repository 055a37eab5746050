"""One k-fold split shared by every configuration, so out-of-fold predictions can be ensembled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.io import write_json


def make_splits(cases: list[str], strata: dict[str, str], n_folds: int, seed: int,
                patients: dict[str, str] | None = None) -> list[dict]:
    """nnU-Net's splits_final.json layout.

    All cases of one patient land in the same fold. Patients are dealt stratum by stratum (a patient's stratum
    joins its cases' strata), larger patients first, each to the fold with the fewest cases of that stratum
    (then the fewest cases), in a seeded random order.
    """
    patients = patients or {c: c for c in cases}
    members: dict[str, list[str]] = {}
    for case in sorted(cases):
        members.setdefault(patients[case], []).append(case)
    if len(members) < n_folds:
        raise ValueError(f"{len(members)} patients ({len(cases)} training cases) cannot fill {n_folds} folds; add "
                         "cases or lower splits.n_folds")
    stratum_of = {p: "|".join(sorted({strata[c] for c in cs})) for p, cs in members.items()}
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for stratum in sorted(set(stratum_of.values())):
        group = [str(p) for p in rng.permutation(sorted(p for p in members if stratum_of[p] == stratum))]
        group.sort(key=lambda p: -len(members[p]))  # stable: keeps the random order among equal sizes
        in_stratum = [0] * n_folds
        for patient in group:
            k = min(range(n_folds), key=lambda f: (in_stratum[f], len(folds[f])))
            folds[k] += members[patient]
            in_stratum[k] += len(members[patient])
    return [{"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "val": sorted(folds[k])}
            for k in range(n_folds)]


def read_patients(path: Path | None, cases: list[str]) -> dict[str, str] | None:
    """Case to patient from a TSV with columns ``case`` and ``patient``; every case must be listed."""
    if path is None:
        return None
    import pandas as pd

    table = pd.read_csv(path, sep="\t", dtype=str)
    if not {"case", "patient"} <= set(table.columns):
        raise ValueError(f"{path} needs the columns 'case' and 'patient' (tab-separated)")
    patients = dict(zip(table["case"], table["patient"]))
    missing = sorted(set(cases) - set(patients))
    if missing:
        raise ValueError(f"cases {missing} have no patient in {path} (data.patients)")
    return patients


def lesion_strata(cases: list[str], labels_dir: Path, labels: dict[str, int]) -> dict[str, str]:
    """Stratum of a case: which lesion classes its reference label contains, e.g. 'primary+metastasis'."""
    strata = {}
    for case in cases:
        present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(Path(labels_dir) / f"{case}.nii.gz")))))
        # By label value, so that the order of the config's label names cannot change the split.
        strata[case] = "+".join(name for name, value in sorted(labels.items(), key=lambda item: item[1])
                                if value != 0 and value in present) or "none"
    return strata


def write_splits(cases: list[str], labels_dir: Path, labels: dict[str, int], n_folds: int, seed: int,
                 out: Path, patients_file: Path | None = None) -> list[dict]:
    splits = make_splits(cases, lesion_strata(cases, labels_dir, labels), n_folds, seed,
                         read_patients(patients_file, cases))
    write_json(splits, out)
    return splits


def make_splits_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("make-splits", "The shared cross-validation folds, stratified by the lesion classes present.")
    p.add_argument("--references", nargs="+", required=True, help="the training cases' labels, <case>.nii.gz")
    cli.add_settings(p, "make-splits")
    p.add_argument("--patients", help="TSV with columns case and patient; a patient's cases share a fold")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    labels_dir, cases = cli.case_folder(args.references, "--references")
    settings = args.settings
    splits = write_splits(cases, labels_dir, settings["labels"], settings["splits"]["n_folds"],
                          settings["splits"]["seed"],
                          Path(args.out), Path(args.patients) if args.patients else None)
    for k, fold in enumerate(splits):
        print(f"fold {k}: {len(fold['train'])} train, {len(fold['val'])} val: {', '.join(fold['val'])}")
