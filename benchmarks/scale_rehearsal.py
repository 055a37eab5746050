"""Scale rehearsal: the whole study DAG on N synthetic cases at CT size, with the toy network so training stays cheap.

    python -m benchmarks.scale_rehearsal --cases 5 10 20 --shape 200 512 512 --out docs/scale

For each N: N training cases and ``--test-cases`` new cases from the toy generator at ``--shape`` (z, y, x; in-plane
spacing 0.7-0.9 mm, slices 2-3 mm), ``config/toy.yaml`` pointed at them, ``snakemake --profile profiles/local``.
Collected per N from the study folder: each rule's jobs, total and longest wall time and peak resident memory
(Snakemake's benchmark files), and the bytes under each results folder (files only; links are not counted twice).
Written to ``--out``: ``scale_rules.tsv``, ``scale_disk.tsv``, ``scale_growth.tsv`` (the exponent b of
time ~ N^b and memory ~ N^b per rule, fitted over the N values; 1 is linear), ``scale_projection.tsv`` (bytes per
folder for ``--project`` training cases, from a straight-line fit of bytes against N), ``scale_probabilities.tsv``
(what storing the out-of-fold probabilities cropped would save, measured by re-encoding the stored files) and
``scale.png``. Each N's study is kept under ``--work`` (``--clean`` removes it once measured).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
from workflow_scripts.crop import anatomy_box, box_slices
from workflow_scripts.io import (PROBABILITY_ENCODINGS, decode_probabilities, encode_probabilities, pyplot,
                                 read_image, write_figure, write_image, write_table)
from workflow_scripts.runtime import read_benchmarks, summarize_runtime
from workflow_scripts.toy_data import (CT_IN_PLANE_MM, METASTASIS_FREE_EVERY, _to_image,
                                       make_phantom)

SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "anatomy")


def _generate_one(args) -> None:
    out, name, shape = args
    index = int(name.split("_")[1])  # the generator draws case <index> from rng([seed, index]), as toy data does
    phantom = make_phantom(np.random.default_rng([0, index]), shape=shape,
                           with_metastases=index % METASTASIS_FREE_EVERY != 0, in_plane_mm=CT_IN_PLANE_MM)
    suffix = "Ts" if index >= 100 else "Tr"
    write_image(_to_image(phantom.image, phantom.spacing), Path(out) / f"images{suffix}" / f"{name}.nii.gz")
    write_image(_to_image(phantom.label, phantom.spacing), Path(out) / f"labels{suffix}" / f"{name}.nii.gz")
    write_image(_to_image(phantom.anatomy, phantom.spacing), Path(out) / "anatomy" / f"{name}.nii.gz")


def generate(data: Path, n_train: int, n_test: int, shape, workers: int) -> None:
    """The largest N's cases once; smaller N link the first of them (the same cases as a run with that N)."""
    names = [f"toy_{i:03d}" for i in range(n_train)] + [f"toy_{100 + i:03d}" for i in range(n_test)]
    todo = [(data, name, tuple(shape)) for name in names
            if not (data / "anatomy" / f"{name}.nii.gz").exists()]  # anatomy is written last
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_generate_one, todo))
    print(f"generated {len(todo)} cases of {tuple(shape)} in {time.perf_counter() - start:.0f} s", flush=True)


def study_inputs(data: Path, resources: Path, n_train: int, n_test: int) -> None:
    cases = [f"toy_{i:03d}" for i in range(n_train)] + [f"toy_{100 + i:03d}" for i in range(n_test)]
    for sub in SUBFOLDERS:
        (resources / sub).mkdir(parents=True, exist_ok=True)
        for path in (data / sub).glob("*.nii.gz"):
            if path.name[: -len(".nii.gz")] in cases and not (resources / sub / path.name).exists():
                os.symlink(path.resolve(), resources / sub / path.name)


def study_config(resources: Path, crop_margin_mm: float | None = None, probability_encoding: str = "float16") -> dict:
    config = yaml.safe_load((REPO / "config/toy.yaml").read_text())
    config.setdefault("prediction", {})["probability_encoding"] = probability_encoding
    if crop_margin_mm is not None:
        config["crop"] = {"enabled": True, "margin_mm": crop_margin_mm}  # the schema's default structures
    config["data"] = {key: str(resources / sub) for key, sub in
                      (("images_tr", "imagesTr"), ("labels_tr", "labelsTr"), ("images_ts", "imagesTs"),
                       ("labels_ts", "labelsTs"))}
    config["anatomy"]["precomputed_dir"] = str(resources / "anatomy")
    config["qc"].pop("min_field_of_view_mm", None)  # the phantoms are CT-sized: the schema's default applies
    return config


def folder_bytes(root: Path) -> dict[str, int]:
    """Bytes of the files (not links) under each results folder, nnU-Net's folders one level deeper."""
    sizes: dict[str, int] = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        parts = sorted(p for p in top.iterdir() if p.is_dir()) if top.name == "nnunet" else [top]
        for part in parts:
            total = sum(f.stat().st_size for f in part.rglob("*") if f.is_file() and not f.is_symlink())
            sizes[str(part.relative_to(root))] = total
    return sizes


def crop_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The box of ``mask`` widened by ``margin`` voxels (the whole image where the mask is empty)."""
    return box_slices(anatomy_box(mask, [True], (1.0, 1.0, 1.0), margin))


def encoded_bytes(probabilities: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities)
    return buffer.getbuffer().nbytes


def probability_storage(study: Path, data: Path, margin_voxels: int, limit: int) -> pd.DataFrame:
    """Out-of-fold probability files of the configurations as stored, and re-encoded cropped: to the body (CT above
    -500 HU), to the box of the predicted lesions (argmax not background) and to the box of every voxel where a
    lesion class has probability 0.05 or more, each box widened by ``margin_voxels`` (outside a box a reader would
    take certain background), and rounded to uint8. Also nnU-Net's own copy of the same probabilities (its
    validation export: float16 since the seam exports it so, float32 in studies run before)."""
    rows = []
    files = sorted(p for p in (study / "results").glob("predictions/oof/*/*.npz") if p.parent.name != "ensemble")
    for path in files[:limit]:
        case = path.stem
        with np.load(path) as stored:
            probabilities = stored["probabilities"]
        decoded = decode_probabilities(probabilities)
        image = read_image_array(data / "imagesTr" / f"{case}.nii.gz")
        foreground = decoded[1:].max(axis=0)
        boxes = {"body": crop_box(image > -500, margin_voxels),
                 "predicted_lesion": crop_box(foreground > decoded[0], margin_voxels),
                 "lesion_p05": crop_box(foreground >= 0.05, margin_voxels)}
        nnunet_copy = list((study / "results/nnunet").glob(f"nnUNet_results/*{path.parent.name}*/*/fold_*/"
                                                           f"validation/{case}.npz"))
        row = {"file": str(path.relative_to(study)), "voxels": int(probabilities[0].size),
               "stored_bytes": path.stat().st_size,
               "nnunet_validation_copy_bytes": sum(p.stat().st_size for p in nnunet_copy)}
        # As prediction.probability_encoding: uint8 stores it (what the noise in float16's low bits costs).
        row["uint8_bytes"] = encoded_bytes(encode_probabilities(decoded, "uint8"))
        for name, box in boxes.items():
            row[f"{name}_box_bytes"] = encoded_bytes(probabilities[(slice(None), *box)])
            row[f"{name}_box_voxel_fraction"] = float(np.prod([s.stop - s.start for s in box])) / image.size
        rows.append(row)
    return pd.DataFrame(rows)


def read_image_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(read_image(path))


def dice_over_cases_with_class(study: Path) -> pd.DataFrame:
    """Mean Dice and case count per split, stage and class over the cases whose reference holds the class (a
    lesion-free case scores 0 or 1 on a few voxels)."""
    tables = []
    for path in sorted((study / "results/metrics").glob("*/*.tsv")):
        per_case = pd.read_csv(path, sep="\t")
        held = per_case[per_case["reference_ml"] > 0]
        tables.append(held.groupby("class")["dice"].agg(["mean", "count"])
                      .assign(split=path.parent.name, stage=path.stem).reset_index())
    return pd.concat(tables).set_index(["split", "stage", "class"])


def crop_comparison(plain: Path, cropped: Path) -> pd.DataFrame:
    """The cropped study against the uncropped one with the same cases: voxels the models see, the model rules'
    wall time, and mean Dice per split, stage and class."""
    boxes = [json.loads(p.read_text()) for p in sorted((cropped / "results/crop").glob("*.json"))]
    rows = [{"measure": "voxel_fraction_mean", "uncropped": 1.0,
             "cropped": float(np.mean([b["voxel_fraction"] for b in boxes]))}]
    times = {}
    for label, study in (("uncropped", plain), ("cropped", cropped)):
        jobs = read_benchmarks(sorted((study / "results/benchmarks").rglob("*.tsv")))
        times[label] = jobs.groupby("rule")["seconds"].sum()
    for rule in ("crop_case", "plan_and_preprocess", "train_fold", "gather_oof", "predict_test"):
        rows.append({"measure": f"{rule}_seconds", "uncropped": float(times["uncropped"].get(rule, 0.0)),
                     "cropped": float(times["cropped"].get(rule, 0.0))})
    dice = {"uncropped": dice_over_cases_with_class(plain), "cropped": dice_over_cases_with_class(cropped)}
    for key, row in dice["uncropped"].iterrows():
        other = dice["cropped"]["mean"].get(key, np.nan)
        rows.append({"measure": f"dice {' '.join(key)} (n={int(row['count'])})", "uncropped": float(row["mean"]),
                     "cropped": float(other)})
    table = pd.DataFrame(rows)
    table["difference"] = table["cropped"] - table["uncropped"]
    return table


def growth(rules: pd.DataFrame) -> pd.DataFrame:
    """Exponent b of value ~ N^b per rule (least squares on logs over the N values)."""
    rows = []
    for rule, group in rules.groupby("rule"):
        group = group.sort_values("n")
        if group["n"].nunique() < 2:
            continue
        row = {"rule": rule}
        for column in ("total_seconds", "max_rss_mb", "jobs"):
            values = group[column].clip(lower=1e-3)
            row[f"{column}_exponent"] = float(np.polyfit(np.log(group["n"]), np.log(values), 1)[0])
        rows.append(row)
    return pd.DataFrame(rows).sort_values("total_seconds_exponent", ascending=False)


def projection(disk: pd.DataFrame, cases: int, voxel_ratio: float, target: str) -> pd.DataFrame:
    """Bytes per folder against N fitted by a straight line (per-case slope, fixed part), projected to ``cases``
    at the rehearsal's image size, and at ``target`` size with the per-case bytes scaled by ``voxel_ratio``."""
    rows = []
    for folder, group in disk.groupby("folder"):
        if group["n"].nunique() >= 2:
            slope, intercept = np.polyfit(group["n"], group["bytes"], 1)
        else:
            slope, intercept = float(group["bytes"].iloc[0]) / float(group["n"].iloc[0]), 0.0
        rows.append({"folder": folder, "mb_per_case": slope / 1e6, "fixed_mb": intercept / 1e6,
                     f"gb_{cases}_cases": (intercept + slope * cases) / 1e9,
                     f"gb_{cases}_cases_at_{target}": (intercept + slope * cases * voxel_ratio) / 1e9})
    return pd.DataFrame(rows).sort_values(f"gb_{cases}_cases", ascending=False)


def plot(rules: pd.DataFrame, disk: pd.DataFrame, out: Path, top: int = 8) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    largest = rules[rules["n"] == rules["n"].max()]
    for ax, column, label, frame, key in (
            (axes[0], "total_seconds", "total wall time of the rule's jobs (s)", rules, "rule"),
            (axes[1], "max_rss_mb", "peak resident memory of one job (MB)", rules, "rule"),
            (axes[2], "bytes", "disk (GB)", disk.assign(bytes=disk["bytes"] / 1e9), "folder")):
        if key == "rule":
            names = largest.sort_values(column, ascending=False)[key].head(top)
        else:
            last = frame[frame["n"] == frame["n"].max()]
            names = last.sort_values(column, ascending=False)[key].head(top)
        for name in names:
            series = frame[frame[key] == name].sort_values("n")
            ax.plot(series["n"], series[column], marker="o", label=name)
        ns = np.array(sorted(frame["n"].unique()), dtype=float)
        first = frame[frame["n"] == ns[0]][column].max()
        ax.plot(ns, first * ns / ns[0], "k--", lw=0.8, label="linear in N")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training cases N")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, out)


def run_study(work: Path, cores: int) -> float:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--profile", str(REPO / "profiles/local"), "--cores", str(cores),
               "--configfile", str(work / "config.yaml")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    with open(work / "snakemake.log", "w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"the study with {work.name} failed after {seconds:.0f} s; see {work / 'snakemake.log'}")
    return seconds


def run_toy_study(work: Path, name: str, config: dict, cores: int) -> float:
    """The toy study (toy data seed 0, made once under ``work/toy``) with ``config`` in ``work/name``; its wall
    seconds. A study already measured there is not run again."""
    data = work / "toy"
    if not (data / "toy_dataset.json").exists():
        subprocess.run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", str(data)], check=True,
                       cwd=REPO)
    study = work / name
    measured = study / "rehearsal_seconds.txt"
    if not measured.exists():
        (study / "resources").mkdir(parents=True, exist_ok=True)
        if not (study / "resources/toy").exists():
            os.symlink(data, study / "resources/toy")
        (study / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"{name}: running the toy study in {study}", flush=True)
        measured.write_text(f"{run_study(study, cores):.1f}")
    seconds = float(measured.read_text())
    print(f"{name}: {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[5, 10, 20], help="training case counts N")
    parser.add_argument("--test-cases", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], help="z y x voxels")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path("scale_rehearsal"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    parser.add_argument("--project", type=int, default=250, help="training cases to project disk to")
    parser.add_argument("--project-shape", type=int, nargs=3, default=[250, 512, 512],
                        help="z y x of the cases the disk is also projected to, per-case bytes scaled by voxels")
    parser.add_argument("--probability-files", type=int, default=6,
                        help="out-of-fold probability files re-encoded to measure cropped storage")
    parser.add_argument("--crop-margin-mm", type=float,
                        help="also run the smallest N with crop.enabled at this margin and compare it with the uncropped "
                        "study (voxels per case, rule times, test and out-of-fold Dice)")
    parser.add_argument("--clean", action="store_true", help="remove each study folder once measured")
    parser.add_argument("--probability-encoding", choices=PROBABILITY_ENCODINGS, default="float16",
                        help="prediction.probability_encoding of every study")
    args = parser.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    generate(data, max(args.cases), args.test_cases, args.shape, workers=args.cores)

    rules, disk, totals, storage, crops = [], [], [], [], []
    studies = [(n, f"n{n}", None) for n in sorted(args.cases)]
    if args.crop_margin_mm is not None:
        studies.append((min(args.cases), f"n{min(args.cases)}_crop", args.crop_margin_mm))
    for n, name, crop_margin in studies:
        study = work / name
        if (study / "rehearsal_seconds.txt").exists():
            seconds = float((study / "rehearsal_seconds.txt").read_text())  # measured by an earlier call
        else:
            study.mkdir(parents=True, exist_ok=True)
            study_inputs(data, study / "resources", n, args.test_cases)
            config = study_config(study / "resources", crop_margin, args.probability_encoding)
            (study / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            print(f"{name}: running the study in {study}", flush=True)
            seconds = run_study(study, args.cores)
            (study / "rehearsal_seconds.txt").write_text(f"{seconds:.1f}")
        summary = summarize_runtime(read_benchmarks(sorted((study / "results/benchmarks").rglob("*.tsv"))))
        if crop_margin is not None:
            crops.append(crop_comparison(work / f"n{n}", study))
            continue
        rules.append(summary.assign(n=n))
        disk.extend({"n": n, "folder": folder, "bytes": size}
                    for folder, size in folder_bytes(study / "results").items())
        totals.append({"n": n, "study_seconds": seconds,
                       "rule_seconds": float(summary["total_seconds"].sum())})
        if n == max(args.cases):
            storage.append(probability_storage(study, data, margin_voxels=5, limit=args.probability_files))
        print(f"{name}: {seconds:.0f} s", flush=True)
        if args.clean:
            shutil.rmtree(study)

    rules = pd.concat(rules, ignore_index=True)[["n", "rule", "jobs", "total_seconds", "max_seconds",
                                                  "max_rss_mb"]]
    disk = pd.DataFrame(disk)
    write_table(rules, out / "scale_rules.tsv")
    write_table(disk, out / "scale_disk.tsv")
    write_table(pd.DataFrame(totals), out / "scale_totals.tsv")
    if rules["n"].nunique() > 1:
        write_table(growth(rules), out / "scale_growth.tsv")
    target = "x".join(map(str, args.project_shape))
    voxel_ratio = float(np.prod(args.project_shape)) / float(np.prod(args.shape))
    write_table(projection(disk, args.project, voxel_ratio, target), out / "scale_projection.tsv")
    if storage:
        write_table(pd.concat(storage, ignore_index=True), out / "scale_probabilities.tsv")
    if crops:
        write_table(pd.concat(crops, ignore_index=True), out / "scale_crop.tsv")
    plot(rules, disk, out / "scale.png")
    pd.set_option("display.width", 200)
    for name in ("scale_totals", "scale_growth", "scale_projection", "scale_probabilities", "scale_crop"):
        if (out / f"{name}.tsv").exists():
            print(f"\n{name}\n" + pd.read_csv(out / f"{name}.tsv", sep="\t").to_string(index=False))


if __name__ == "__main__":
    main()
