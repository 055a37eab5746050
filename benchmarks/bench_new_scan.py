"""The new-scan path at real size around the network, against nnU-Net's own path and the read-and-write floor.

    python -m benchmarks.bench_new_scan [--shape 300 512 512] [--threads 2] [--work DIR]

Two scans: a phantom of ``--shape`` (z y x) at 0.8 x 0.8 x 1 mm (the toy generator's CT), and the example CT of
tests/data/totalseg_example resampled to 0.8 x 0.8 x 1 mm (linear). The template's three configurations, planned
as nnU-Net plans real CT (spacing and patch per configuration: ``CONFIGURATIONS``), each get a stub network instead
of a trained one: a few elementwise operations on the tile that give fixed logits of the right shape (class k where
the normalised intensity passes a threshold), so the time measured is the path around the network. Each path runs
in its own process, so that its peak RSS is its own:

- **floor**: read the scan (SimpleITK) and write a label map of its size (the workflow's writer);
- **ours**: ``predict_new_cases`` as the ``predict_test`` rule runs it with the template's ``prediction`` settings:
  the three configurations and the template's ensemble (two members, the metastasis-only model fused into the
  metastasis class), label maps written per configuration and for the ensemble;
- **ours-torch**: the same with ``input_resampling`` and ``export_resampling`` set to ``torch``;
- **nnU-Net**: ``nnUNetPredictor.predict_from_files`` per configuration with the same stub (probabilities saved,
  as its ensembling needs them; one preprocessing and one export worker, as 2 cores allow), then
  ``nnUNetv2_ensemble``'s ``ensemble_folders`` over the two multiclass configurations (nnU-Net's ensembling
  averages folders with the same labels; the fusion of a metastasis-only model has no nnU-Net counterpart);
- **after-ensemble** (the phantom only): the stages after the ensemble as their rules run them, refinement with
  the template's rules, the tumour burden, the picture and the meshes, on the phantom's own lesion map standing in
  for the ensemble's and its anatomy map standing in for TotalSegmentator's (nnU-Net has no counterpart).

Printed per path and scan: seconds and peak RSS per step (ours: preprocessing, sliding window, export, ensemble
and writing, each step's peak from Linux's resettable VmHWM), the path's total, its ratio to the floor and to
nnU-Net's path, and how many voxels of each configuration's label map equal nnU-Net's. TotalSegmentator is not in
it. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPACING_MM = (1.0, 0.8, 0.8)  # z y x, the scans' grid
# name: nnU-Net target spacing (z y x, mm), 3d_fullres patch, label values of its output channels
CONFIGURATIONS = {
    "resenc_multiclass": {"spacing": [1.25, 0.8, 0.8], "patch": [96, 160, 160], "labels": [0, 1, 2]},
    "isotropic_multiclass": {"spacing": [1.0, 1.0, 1.0], "patch": [128, 128, 128], "labels": [0, 1, 2]},
    "metastasis_only": {"spacing": [1.25, 0.8, 0.8], "patch": [96, 160, 160], "labels": [0, 2]},
}
SELECTION = {"members": {"resenc_multiclass": 1.0, "isotropic_multiclass": 1.0},
             "fusions": [{"configuration": "metastasis_only", "into": 2, "strategy": "mean"}]}
# Normalised-intensity thresholds of the stub's classes (CT normalisation with INTENSITIES below): soft tissue
# around 40-100 HU is class 1, brighter than about 250 HU class 2.
THRESHOLDS = (0.0, 1.5)
INTENSITIES = {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -200.0, "percentile_00_5": -100.0,
               "percentile_99_5": 600.0, "std": 100.0}


def peak_reset() -> None:
    """Start a new peak RSS for this process (Linux: VmHWM back to the current RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Steps:
    """Seconds and peak RSS of named steps, by wrapping the functions that do them. A step called inside another
    (the ensemble asks for its members' predictions) counts for itself only: the outer step's seconds are its own."""

    def __init__(self):
        self.rows: dict[str, list[float]] = {}
        self.stack: list[list[float]] = []  # per running step: its start, its inner steps' seconds, its peak

    def wrap(self, owner, attribute: str, step: str) -> None:
        function = getattr(owner, attribute)

        def timed(*args, **kwargs):
            if self.stack:
                self.stack[-1][2] = max(self.stack[-1][2], peak_mb())
            peak_reset()
            self.stack.append([time.perf_counter(), 0.0, 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                start, inner, peak = self.stack.pop()
                elapsed, peak = time.perf_counter() - start, max(peak, peak_mb())
                row = self.rows.setdefault(step, [0.0, 0.0])
                row[0] += elapsed - inner
                row[1] = max(row[1], peak)
                if self.stack:
                    self.stack[-1][1] += elapsed
                    self.stack[-1][2] = max(self.stack[-1][2], peak)

        setattr(owner, attribute, timed)


def stub_network(channels: int):
    import torch

    class StubNetwork(torch.nn.Module):
        """Fixed logits of the right shape from the tile itself: channel k rises where the normalised intensity
        passes THRESHOLDS[k - 1] (background 0), so label maps follow the scan's structure."""

        def forward(self, x):
            steps = [torch.zeros_like(x)] + [4.0 * (x - t) for t in THRESHOLDS[: channels - 1]]
            return torch.cat(steps, dim=1)

    return StubNetwork().eval()


def plans_of(name: str, index: int) -> tuple[dict, dict]:
    """nnU-Net plans and dataset.json of one configuration (3d_fullres, CT normalisation)."""
    conf = CONFIGURATIONS[name]
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": conf["patch"], "median_image_size_in_voxels": [300, 512, 512], "spacing": conf["spacing"],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False}
    plans = {"dataset_name": f"Dataset{900 + index}_{name}", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": conf["spacing"],
             "original_median_shape_after_transp": [300, 512, 512], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": INTENSITIES}}
    labels = {"background": 0, **{f"class_{value}": k for k, value in enumerate(conf["labels"][1:], 1)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset


def stub_predictor(predictor, name: str, index: int, patch_scale: float):
    """``predictor`` with configuration ``name``'s plans and its stub network."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset = plans_of(name, index)
    configuration = plans["configurations"]["3d_fullres"]
    configuration["patch_size"] = [max(8, int(round(p * patch_scale))) for p in configuration["patch_size"]]
    manager = PlansManager(plans)
    network = stub_network(len(CONFIGURATIONS[name]["labels"]))
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), [{}], dataset,
                                    "nnUNetTrainer", None)
    return predictor


def template_settings() -> dict:
    """The template's settings (config/config.yaml), validated."""
    import yaml

    from workflow_scripts.config import validate_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as base:
        for key in ("images_tr", "labels_tr", "images_ts"):
            (Path(base) / config["data"][key]).mkdir(parents=True)
        return validate_config(config, base=base)


def prediction_settings() -> dict:
    """The template's ``prediction`` settings, on a CPU."""
    return template_settings()["prediction"]


def run_floor(scan: Path, out: Path) -> dict:
    import SimpleITK as sitk

    from workflow_scripts.io import array_like, write_image

    steps = {}
    peak_reset()
    start = time.perf_counter()
    image = sitk.ReadImage(str(scan))
    steps["read the scan"] = [time.perf_counter() - start, peak_mb()]
    labels = (sitk.GetArrayViewFromImage(image) > 100).astype(np.uint8)
    peak_reset()
    start = time.perf_counter()
    write_image(array_like(labels, image), out / "labels.nii.gz")
    steps["write its label map"] = [time.perf_counter() - start, peak_mb()]
    return steps


def run_ours(scan: Path, out: Path, threads: int, patch_scale: float, resampling: str = "template") -> dict:
    """``resampling``: ``template`` (the template's settings: nnU-Net's resampling both ways) or ``torch``
    (``input_resampling`` and ``export_resampling`` torch)."""
    from workflow_scripts import ensemble, nnunet_seam, prediction
    from workflow_scripts.nnunet_seam import configure_nnunet

    configure_nnunet(out / "nnunet", threads)
    import nnunetv2.inference.predict_from_raw_data as raw
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    settings = {**prediction_settings(), "use_mirroring": False, "save_probabilities": False}
    if resampling == "torch":
        settings.update(input_resampling="torch", export_resampling="torch")
    names = list(CONFIGURATIONS)
    prediction.make_predictor = lambda folder, folds, device, settings, threads, tensors_only=False: (
        prediction.with_resampling_settings(stub_predictor(prediction.unloaded_predictor(device, settings), folder,
                                                       names.index(folder), patch_scale), settings, threads))
    steps = Steps()
    steps.wrap(DefaultPreprocessor, "run_case_npy", "preprocess (resample to the plans' spacing, normalise)")
    steps.wrap(raw.nnUNetPredictor, "predict_logits_from_preprocessed_data", "sliding window (stub network)")
    steps.wrap(raw, "convert_predicted_logits_to_segmentation_with_correct_shape", "export (resample back)")
    steps.wrap(nnunet_seam, "export_probabilities", "export (resample back)")
    steps.wrap(ensemble, "accumulate_members", "ensemble (weighted mean, fusion)")
    steps.wrap(ensemble, "fuse_class", "ensemble (weighted mean, fusion)")
    steps.wrap(prediction, "write_prediction", "argmax and write label maps")
    steps.wrap(prediction, "write_image", "argmax and write label maps")
    models = {name: {"folder": name, "folds": [0], "labels": CONFIGURATIONS[name]["labels"]} for name in names}
    (out / "images").mkdir(parents=True, exist_ok=True)
    os.symlink(scan, out / "images" / "scan.nii.gz")
    prediction.predict_new_cases(models, SELECTION, ["scan"], out / "images", out / "predictions", settings, "cpu",
                                 threads)
    return steps.rows


def run_nnunet(scan: Path, out: Path, threads: int, patch_scale: float) -> dict:
    from workflow_scripts.nnunet_seam import configure_nnunet

    configure_nnunet(out / "nnunet", threads)
    import torch
    from nnunetv2.ensembling.ensemble import ensemble_folders
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    settings = prediction_settings()
    (out / "input").mkdir(parents=True, exist_ok=True)
    os.symlink(scan, out / "input" / "scan_0000.nii.gz")
    steps = {}
    for index, name in enumerate(CONFIGURATIONS):
        predictor = nnUNetPredictor(tile_step_size=settings["tile_step_size"], use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                    allow_tqdm=False)
        stub_predictor(predictor, name, index, patch_scale)
        start = time.perf_counter()
        predictor.predict_from_files(str(out / "input"), str(out / name), save_probabilities=True, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        steps[f"predict_from_files {name}"] = [time.perf_counter() - start, float("nan")]
    start = time.perf_counter()
    ensemble_folders([str(out / name) for name in SELECTION["members"]], str(out / "ensemble"),
                     save_merged_probabilities=False, num_processes=1)
    steps["nnUNetv2_ensemble (2 members)"] = [time.perf_counter() - start, float("nan")]
    return steps


def run_ours_torch(scan: Path, out: Path, threads: int, patch_scale: float) -> dict:
    return run_ours(scan, out, threads, patch_scale, resampling="torch")


def run_after_ensemble(scan: Path, out: Path, threads: int, patch_scale: float) -> dict:
    """The new-scan stages after the ensemble, as their rules run them one case at a time, on the phantom's own
    lesion map (standing in for the ensemble's) and anatomy map (standing in for TotalSegmentator's): refinement
    with the template's rules, the tumour burden, the picture and the meshes."""
    from workflow_scripts import burden, meshes, overlays, refinement
    from workflow_scripts.anatomy import anatomy_class_ids
    from workflow_scripts.settings import lesion_classes

    settings = template_settings()
    classes, task = lesion_classes(settings), settings["anatomy"]["task"]
    lesions, anatomy = (scan.with_name(f"{scan.name[:-7]}_{kind}.nii.gz") for kind in ("lesions", "anatomy"))
    steps = Steps()
    steps.wrap(refinement, "refine_case", "refinement (the template's 5 rules)")
    steps.wrap(burden, "write_burden", "tumour burden (lesions.tsv, burden.tsv)")
    steps.wrap(overlays, "plot_case", "picture (three views per class)")
    steps.wrap(meshes, "write_meshes", "meshes (one STL per class)")
    refinement.refine_case("scan", lesions, anatomy, scan, settings["refinement"]["rules"], task,
                           out / "refined" / "scan.nii.gz", out / "removed.tsv")
    names = {i: name for name, i in anatomy_class_ids(task).items()}
    burden.write_burden(["scan"], out / "refined", {"scan": anatomy}, classes, names, out / "lesions.tsv",
                        out / "burden.tsv")
    overlays.plot_case("scan", scan, out / "refined" / "scan.nii.gz", None, classes, out / "scan.png",
                       overlays.burden_notes(out / "burden.tsv", "scan", classes))
    meshes.write_meshes(out / "refined" / "scan.nii.gz", classes, out / "meshes")
    return steps.rows


PATHS = {"floor": run_floor, "ours": run_ours, "ours-torch": run_ours_torch, "nnunet": run_nnunet,
         "after-ensemble": run_after_ensemble}
OURS = ("ours", "ours-torch")


def one_path(path: str, scan: Path, out: Path, threads: int, patch_scale: float) -> None:
    """Runs in a process of its own; prints its steps and peak RSS (its own and its worker processes') as JSON."""
    shutil.rmtree(out, ignore_errors=True)  # this path's folder of an earlier run in the same --work
    out.mkdir(parents=True)
    peak_reset()  # ru_maxrss would count the parent's memory at the fork
    start = time.perf_counter()
    kwargs = {} if path == "floor" else {"threads": threads, "patch_scale": patch_scale}
    steps = PATHS[path](scan, out, **kwargs)
    total = time.perf_counter() - start
    if path != "nnunet":
        steps["other (outside the steps above)"] = [total - sum(seconds for seconds, _ in steps.values()), float("nan")]
    own = max([peak_mb()] + [peak for _, peak in steps.values() if peak == peak])
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps({"steps": steps, "seconds": total, "peak_mb": own, "workers_peak_mb": workers}))


def make_scans(work: Path, shape: list[int], wanted: list[str]) -> dict[str, Path]:
    from workflow_scripts.io import write_image
    from workflow_scripts.toy_data import _to_image, make_phantom

    scans = {}
    if "phantom" not in wanted:
        return {**scans, **example_scan(work)}
    # The whole phantom (liver, spine, hips and lesions) at the scans' spacing: no resampling.
    phantom = make_phantom(np.random.default_rng(0), shape=tuple(shape), in_plane_mm=SPACING_MM[1:],
                           slice_mm=(SPACING_MM[0], SPACING_MM[0]))
    scans["phantom"] = work / "phantom.nii.gz"
    write_image(_to_image(phantom.image, phantom.spacing), scans["phantom"])
    for name, labels in (("lesions", phantom.label), ("anatomy", phantom.anatomy)):  # for the after-ensemble path
        write_image(_to_image(labels, phantom.spacing), work / f"phantom_{name}.nii.gz")
    return {**scans, **(example_scan(work) if "example CT" in wanted else {})}


def example_scan(work: Path) -> dict[str, Path]:
    import SimpleITK as sitk

    from workflow_scripts.io import write_image

    example = sitk.ReadImage(str(REPO / "tests" / "data" / "totalseg_example" / "example_ct_sm.nii.gz"))
    size = [int(round(n * s / t)) for n, s, t in zip(example.GetSize(), example.GetSpacing(), SPACING_MM[::-1])]
    resampled = sitk.Resample(example, size, sitk.Transform(), sitk.sitkLinear, example.GetOrigin(), SPACING_MM[::-1],
                              example.GetDirection(), -1000, sitk.sitkInt16)
    write_image(resampled, work / "example.nii.gz")
    return {"example CT": work / "example.nii.gz"}


def agreement(ours: Path, nnunet: Path) -> dict[str, float]:
    """Per configuration, the share of voxels whose label equals nnU-Net's (its output channels mapped back)."""
    import SimpleITK as sitk

    shares = {}
    for name, conf in CONFIGURATIONS.items():
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / "predictions" / name / "scan.nii.gz")))
        b = np.asarray(conf["labels"], np.uint8)[sitk.GetArrayFromImage(sitk.ReadImage(str(nnunet / name /
                                                                                         "scan.nii.gz")))]
        shares[name] = float(np.mean(a == b))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="the phantom's z y x")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch-scale", type=float, default=1.0, help="patch sizes times this (smoke mode)")
    parser.add_argument("--scans", nargs="+", choices=["phantom", "example CT"], default=["phantom", "example CT"])
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="the paths to run (default: all; the ratios need the floor and nnU-Net's)")
    parser.add_argument("--work", type=Path, help="keep the scans and outputs here (default: a temporary folder)")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)  # one path, in its own process
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:
        one_path(args.path, args.scan, args.out, args.threads, args.patch_scale)
        return

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        scans = make_scans(work, args.shape, args.scans)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        for label in args.scans:
            scan = scans[label]
            import SimpleITK as sitk

            size = sitk.ReadImage(str(scan)).GetSize()[::-1]
            print(f"\n## {label}: {' x '.join(map(str, size))} voxels (z y x) at {SPACING_MM} mm")
            results = {}
            for path in args.paths:
                if path == "after-ensemble" and not scan.with_name(f"{scan.name[:-7]}_lesions.nii.gz").exists():
                    print(f"\n{path}: not run (no lesion map to stand in for the ensemble's)")
                    continue
                out = work / label.replace(" ", "_") / path
                command = [sys.executable, "-m", "benchmarks.bench_new_scan", "--path", path, "--scan", str(scan),
                           "--out", str(out), "--threads", str(args.threads), "--patch-scale", str(args.patch_scale)]
                done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"the {path} path failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
                results[path] = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
                print(f"\n{path}: {results[path]['seconds']:.1f} s, peak RSS {results[path]['peak_mb']:.0f} MB "
                      f"(worker processes {results[path]['workers_peak_mb']:.0f} MB)")
                for step, (seconds, peak) in results[path]["steps"].items():
                    print(f"  {step:60s} {seconds:8.1f} s  peak RSS {peak:8.0f} MB")
            compared = [p for p in OURS if p in results] if {"floor", "nnunet"} <= set(results) else []
            for ours in compared:
                seconds = results[ours]["seconds"]
                print(f"\n{ours}: ratio to the floor {seconds / results['floor']['seconds']:.1f}; nnU-Net / {ours} "
                      f"{results['nnunet']['seconds'] / seconds:.2f}")
                shares = agreement(work / label.replace(" ", "_") / ours, work / label.replace(" ", "_") / "nnunet")
                print("  voxels equal to nnU-Net's label map: " + ", ".join(f"{n} {s:.5f}" for n, s in shares.items()))


if __name__ == "__main__":
    main()
