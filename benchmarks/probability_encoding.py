"""Stored probabilities as uint8 against float16 (``prediction.probability_encoding``) on the seeded toy study.

    python -m benchmarks.probability_encoding --work /tmp/probability_encoding --out docs/scale

Two toy studies (``config/toy.yaml``, toy data seed 0, training seed 0, ``save_probabilities`` on so that new
cases' files are measured too), one per encoding. Training is seeded, so the networks are the same and only the
stored probabilities differ. Written to ``--out``:

- ``probability_encoding_disk.tsv``: files and MB per kind of ``.npz`` (nnU-Net's validation copy, the
  out-of-fold files per configuration, the new cases'), per encoding, and their ratio;
- ``probability_encoding_choices.tsv``: the chosen ensemble, the chosen refinement rules and the nested
  selection's per-fold choices in each study, whether they are the same, and the largest difference of the scores
  they were chosen by; also whether the new cases' refined label maps are the same voxel for voxel;
- ``probability_encoding_dice.tsv``: mean Dice per split, stage and class over the cases holding the class, per
  encoding, and the difference;
- ``probability_encoding_io.tsv``: seconds to write and to read back the float16 study's out-of-fold files in each
  encoding, one after the other in this process (the studies' rule times are not compared: other work may run
  beside one of them).

Studies already run under ``--work`` are not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
from benchmarks.scale_rehearsal import dice_over_cases_with_class, run_toy_study
from workflow_scripts.io import read_probabilities, write_probabilities, write_table

ENCODINGS = ("float16", "uint8")


def study_config(encoding: str) -> dict:
    config = yaml.safe_load((REPO / "config/toy.yaml").read_text())
    for section in config["configurations"].values():
        section["training_seed"] = 0
    config.setdefault("prediction", {}).update(probability_encoding=encoding, save_probabilities=True)
    return config


def npz_bytes(study: Path) -> pd.DataFrame:
    """Files and bytes per kind of stored probabilities (links are not counted)."""
    kinds = {"nnU-Net validation copy": sorted((study / "results/nnunet/nnUNet_results").rglob("validation/*.npz"))}
    for folder in sorted((study / "results/predictions/oof").iterdir()):
        kinds[f"out-of-fold, {folder.name}"] = sorted(folder.glob("*.npz"))
    kinds["new cases (every configuration and the ensemble)"] = sorted(
        p for p in (study / "results/predictions/test_parts").rglob("*.npz") if not p.is_symlink())
    table = pd.DataFrame([{"kind": kind, "files": len(paths), "mb": sum(p.stat().st_size for p in paths) / 1e6}
                          for kind, paths in kinds.items() if paths])
    return pd.concat([table, pd.DataFrame([{"kind": "all", "files": table["files"].sum(), "mb": table["mb"].sum()}])])


def choices(study: Path) -> dict[str, tuple[str, list[float]]]:
    """What each selection chose (as text) and the scores it chose by."""
    ensemble = json.loads((study / "results/ensemble/selected.json").read_text())
    refinement = json.loads((study / "results/refinement/selected_rules.json").read_text())
    folds = pd.read_csv(study / "results/nested/folds.tsv", sep="\t", dtype=str)
    return {
        "ensemble": (json.dumps([ensemble["candidate"], ensemble["members"], ensemble["fusions"]], sort_keys=True),
                     [ensemble["score"]]),
        "refinement rules": (json.dumps([refinement["rules"], refinement["left_out"]], sort_keys=True),
                             [refinement["score_without"], refinement["score_with"]]),
        "nested folds": (folds[["fold", "held_out", "ensemble", "rules"]].to_csv(sep="\t", index=False),
                         folds[["ensemble_inner_score", "refinement_inner_score"]].astype(float).values.ravel().tolist()),
    }


def same_label_maps(first: Path, second: Path) -> tuple[int, int]:
    """Label maps in ``first`` and how many of them ``second`` holds with the same voxels and grid."""
    import SimpleITK as sitk

    paths = sorted(first.glob("*.nii.gz"))
    same = 0
    for path in paths:
        a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(second / path.name))
        same += (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
                 and bool((sitk.GetArrayViewFromImage(a) == sitk.GetArrayViewFromImage(b)).all()))
    return len(paths), same


def io_seconds(files: list[Path], scratch: Path) -> pd.DataFrame:
    """Write and read-back seconds of the same probabilities in each encoding, summed over ``files``."""
    rows = []
    for encoding in ENCODINGS:
        write = read = 0.0
        for path in files:
            probabilities, labels = read_probabilities(path)
            start = time.perf_counter()
            write_probabilities(scratch / path.name, probabilities, labels, encoding)
            write += time.perf_counter() - start
            start = time.perf_counter()
            read_probabilities(scratch / path.name)
            read += time.perf_counter() - start
        rows.append({"encoding": encoding, "files": len(files), "write_seconds": write, "read_seconds": read})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path("probability_encoding"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    args = parser.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    disk, dice = [], []
    for encoding in ENCODINGS:
        study = work / encoding
        run_toy_study(work, encoding, study_config(encoding), args.cores)
        disk.append(npz_bytes(study).assign(encoding=encoding))
        dice.append(dice_over_cases_with_class(study).reset_index().assign(encoding=encoding))

    disk = pd.concat(disk).pivot_table(index="kind", columns="encoding", values=["files", "mb"], sort=False)
    disk.columns = [f"{value}_{encoding}" for value, encoding in disk.columns]
    disk["ratio"] = disk["mb_uint8"] / disk["mb_float16"]
    disk = disk.reset_index()
    write_table(disk, out / "probability_encoding_disk.tsv")

    chosen = {encoding: choices(work / encoding) for encoding in ENCODINGS}
    rows = [{"selection": name, "same": chosen["float16"][name][0] == chosen["uint8"][name][0],
             "largest_score_difference": float(np.max(np.abs(np.subtract(chosen["uint8"][name][1],
                                                                           chosen["float16"][name][1])))),
             "float16": chosen["float16"][name][0], "uint8": chosen["uint8"][name][0]} for name in chosen["float16"]]
    maps, same = same_label_maps(work / "float16/results/predictions/test/refined",
                                 work / "uint8/results/predictions/test/refined")
    rows.append({"selection": f"new cases' refined label maps ({maps})", "same": same == maps,
                 "largest_score_difference": float("nan"), "float16": "", "uint8": f"{same} of {maps} the same"})
    choice_table = pd.DataFrame(rows)
    write_table(choice_table, out / "probability_encoding_choices.tsv")

    dice = pd.concat(dice).pivot_table(index=["split", "stage", "class"], columns="encoding", values="mean")
    dice["difference"] = dice["uint8"] - dice["float16"]
    dice = dice.reset_index()
    write_table(dice, out / "probability_encoding_dice.tsv")

    scratch = work / "io_scratch"
    scratch.mkdir(exist_ok=True)
    files = sorted((work / "float16/results/predictions/oof").glob("*/*.npz"))
    timing = io_seconds(files, scratch)
    write_table(timing, out / "probability_encoding_io.tsv")

    pd.set_option("display.width", 200)
    for table in (disk, choice_table.drop(columns=["float16", "uint8"]), dice, timing):
        print(table.round(4).to_string(index=False), "\n")


if __name__ == "__main__":
    main()
