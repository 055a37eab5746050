"""Segmenting new scans: nnU-Net's default chain against this workflow's run with a bundle, on the same models.

    python -m benchmarks.bench_predict --study <a finished study's folder, e.g. a toy run>
    python -m benchmarks.bench_predict --study <...> --realistic 2   # two synthetic 512 x 512 x 200 scans

Baseline (nnU-Net's defaults): ``nnUNetv2_predict`` for each full-label member of the chosen ensemble with
``--save_probabilities``, then ``nnUNetv2_ensemble`` (it cannot fuse the metastasis-only model: other labels).
This workflow: ``snakemake`` with a config naming the study's bundle (QC, one prediction job for every
configuration the chosen ensemble uses, the ensemble with fusion in memory, refinement, burden table), once per
variant of the ``prediction`` settings (``--variants``, each laid over the schema's defaults). Printed per run:
wall seconds, seconds per case, the time ratio (baseline / this run), and the mean Dice (primary tumour,
metastasis) against the reference labels with its change from the baseline and from the first variant.
``--realistic N`` makes N synthetic scans of 200 x 512 x 512 voxels (the toy generator at that size, with labels
and anatomy) instead of the study's new cases.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parents[1]
from workflow_scripts.config import section_settings


def run(args, env=None, cwd=None):
    start = time.perf_counter()
    result = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return time.perf_counter() - start


def mean_dice(prediction_dir: Path, reference_dir: Path, cases: list[str], labels=(1, 2)) -> float:
    scores = []
    for case in cases:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_dir / f"{case}.nii.gz")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_dir / f"{case}.nii.gz")))
        for label in labels:
            p, r = pred == label, ref == label
            if r.any() or p.any():
                scores.append(2 * (p & r).sum() / (p.sum() + r.sum()))
    return float(np.mean(scores))


# Each laid over the schema's prediction defaults (nnU-Net's: step 0.5, mirroring where the trainer allows it).
VARIANTS = {
    "one_tile": {"tile_batch_size": 1},  # nnU-Net's one tile per network pass
    "default": {},                       # the training batch of tiles per pass
    "torch_export": {"export_resampling": "torch"},
    "step_0.75": {"export_resampling": "torch", "tile_step_size": 0.75},
    "step_1.0": {"export_resampling": "torch", "tile_step_size": 1.0},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True, help="folder of a finished study run (toy or real)")
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "toy.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="prediction settings to time (see VARIANTS)")
    parser.add_argument("--realistic", type=int, default=0, help="time N synthetic 200 x 512 x 512 scans instead")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    study = args.study.resolve()
    python = [sys.executable, "-m", "snakemake", "-s", REPO / "Snakefile"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if not (study / "results/bundle/bundle.json").exists():
        run([*python, "--directory", study, "export_bundle", "--cores", "1", "--configfile", args.configfile], env)
    bundle = study / "results/bundle"
    manifest = json.loads((bundle / "bundle.json").read_text())
    config = yaml.safe_load((bundle / "config.yaml").read_text())
    selection = json.loads((bundle / "ensemble.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if args.realistic:
        from workflow_scripts.toy_data import CT_IN_PLANE_MM, generate_toy_dataset

        generate_toy_dataset(work / "scans", n_train=0, n_test=args.realistic, seed=1, shape=(200, 512, 512),
                             in_plane_mm=CT_IN_PLANE_MM)
        images, references, anatomy_dir = work / "scans/imagesTs", work / "scans/labelsTs", work / "scans/anatomy"
    else:
        images = study / "results/inputs/test" if (study / "results/inputs/test").is_dir() else \
            study / config["data"]["images_ts"]
        references = study / config["data"]["labels_ts"]
        anatomy_dir = study / config["anatomy"].get("precomputed_dir", "")
    cases = sorted(p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz"))
    print(f"{len(cases)} cases from {images}; ensemble {selection['candidate']}; work folder {work}", flush=True)

    # nnU-Net's default chain.
    raw = work / "nnunet_input"
    raw.mkdir()
    for case in cases:
        os.symlink((images / f"{case}.nii.gz").resolve(), raw / f"{case}_0000.nii.gz")
    nnunet_env = {**env, "nnUNet_results": str(study / "results/nnunet/nnUNet_results"),
                  "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed")}
    members = list(selection["members"])
    baseline = 0.0
    for name in members:
        model = manifest["configurations"][name]
        baseline += run(["nnUNetv2_predict", "-i", raw, "-o", work / "baseline" / name, "-d",
                         config["configurations"][name]["dataset_id"], "-c", "3d_fullres", "-tr", model["trainer"],
                         "-p", model["plans"], "-f", *model["folds"], "--save_probabilities", "-device", "cpu"],
                        nnunet_env)
    if len(members) > 1:
        baseline += run(["nnUNetv2_ensemble", "-i", *[work / "baseline" / m for m in members], "-o",
                         work / "baseline" / "ensemble"], nnunet_env)
        baseline_out = work / "baseline" / "ensemble"
    else:
        baseline_out = work / "baseline" / members[0]
    # Labels in nnU-Net's class order; the members predict every label in the study's order.
    baseline_dice = mean_dice(baseline_out, references, cases)
    print(f"baseline (nnUNetv2_predict x{len(members)} + nnUNetv2_ensemble, nnU-Net defaults): "
          f"{baseline:.1f} s, {baseline / len(cases):.1f} s per case, mean Dice {baseline_dice:.4f}", flush=True)

    first_dice = None
    for variant in args.variants:
        batch = work / f"batch_{variant}"
        batch.mkdir()
        os.symlink(images, batch / "new_scans")
        anatomy = {"source": "precomputed", "precomputed_dir": str(anatomy_dir)} \
            if config["anatomy"]["source"] == "precomputed" else {}
        prediction = {**section_settings("prediction"), **VARIANTS[variant]}
        (batch / "predict.yaml").write_text(yaml.safe_dump({
            "bundle": str(bundle), "data": {"images_ts": "new_scans"}, "anatomy": anatomy,
            "prediction": prediction, "compute": {"device": "cpu", "resources": {"predict_test": {
                "threads": args.cores, "mem_mb": 8000, "runtime": 120, "gpu": False}}}}))
        seconds = run([*python, "--directory", batch, "--configfile", batch / "predict.yaml", "--cores", args.cores],
                      env, cwd=batch)
        # One benchmark file per prediction part (results/benchmarks/predict_test/<part>.tsv).
        parts = sorted((batch / "results/benchmarks/predict_test").glob("*.tsv"))
        predict_seconds = sum(float(part.read_text().split("\n")[1].split("\t")[0]) for part in parts)
        dice = mean_dice(batch / "results/predictions/test/refined", references, cases)
        first_dice = dice if first_dice is None else first_dice
        print(f"this workflow, {variant} {prediction} (QC, {len(manifest['configurations'])} models, fusion, "
              f"refinement, burden): {seconds:.1f} s ({predict_seconds:.1f} s in predict_test), "
              f"{seconds / len(cases):.1f} s per case, ratio {baseline / seconds:.2f}x, mean Dice {dice:.4f} "
              f"({dice - baseline_dice:+.4f} vs baseline, {dice - first_dice:+.4f} vs {args.variants[0]})",
              flush=True)


if __name__ == "__main__":
    main()
