"""The preflight: before days of training, the study's own GPU path run briefly on the node that will train it.

One job on ``train_fold``'s resources checks the device, nnU-Net's version, TotalSegmentator's weights and the
disk, then runs the real code: a few training iterations of each configuration with the trainer the study builds
(its plans, patch and batch size, on the device), one new case through the prediction path (every configuration,
the widest ensemble, the export) and one TotalSegmentator call. It records seconds, peak GPU memory and peak RSS,
and projects the study's training GPU-hours, prediction hours and bytes on disk.

The table is this job's output and always written (a failed check is a row, not an exception); ``preflight-gate``
is a job of its own that stops the run naming every failed check and its fix, so the table survives the stop.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from workflow_scripts.io import image_header, read_json, write_json, write_table

COLUMNS = ["check", "subject", "status", "measure", "value", "unit", "detail"]
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"

# Bytes per voxel on disk, from the study measured in docs/scale.md ("Disk for a 250-case study"): per
# configuration, nnU-Net's preprocessed copy; per probability channel, one stored probability map (nnU-Net's
# validation copy, the out-of-fold file and a new case's file are each one) as each encoding stores it.
PREPROCESSED_BYTES_PER_VOXEL = 1.16
PROBABILITY_BYTES_PER_VOXEL = {"float16": 1.2, "uint8": 0.16}
# A training keeps checkpoint_final.pth and checkpoint_best.pth (nnU-Net deletes checkpoint_latest.pth at the end).
CHECKPOINTS_PER_FOLD = 2


def row(check: str, status: str, detail: str = "", subject: str = "", measure: str = "", value=math.nan,
        unit: str = "") -> dict:
    return {"check": check, "subject": subject, "status": status, "measure": measure, "value": value, "unit": unit,
            "detail": detail}


def measured(check: str, subject: str, detail: str, measures: dict[str, tuple[float, str]]) -> list[dict]:
    """One passing row per measure ({measure: (value, unit)})."""
    return [row(check, PASS, detail, subject, measure, value, unit) for measure, (value, unit) in measures.items()]


def peak_rss_mb() -> float:
    """The largest resident set of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# The checks. Each returns rows; none raises for what it checks.

def nnunet_version_check() -> list[dict]:
    from workflow_scripts.nnunet_seam import SUPPORTED_NNUNET, require_supported_nnunet

    try:
        installed = require_supported_nnunet()
    except RuntimeError as err:
        return [row("nnunet_version", FAIL, str(err))]
    return [row("nnunet_version", PASS, f"nnunetv2 {installed}, within the seam's [{SUPPORTED_NNUNET[0]}, "
                f"{SUPPORTED_NNUNET[1]})")]


def device_check(device: str, gpu_asked: bool) -> list[dict]:
    """The device training will use. ``gpu_asked``: train_fold's resources ask the scheduler for a GPU."""
    import torch

    versions = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
    available = torch.cuda.is_available()
    if device == "cpu" or (device == "auto" and not available):
        detail = f"cpu on {platform.node()} ({os.cpu_count()} cores visible; {versions})"
        if device == "auto":
            detail += "; compute.device is 'auto' and no GPU is visible, so training runs on the CPU"
        return [row("device", PASS, detail, "cpu")]
    if not available:
        fix = ("give train_fold a GPU (compute.resources.train_fold.gpu: true"
               + ("" if gpu_asked else ", which is false now")
               + ", and a GPU partition in your profile's slurm_partition) and run preflight where training runs, "
               "or set compute.device: cpu")
        return [row("device", FAIL, f"compute.device is 'cuda' but {versions} sees no GPU on {platform.node()} "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Fix: {fix}", "cuda")]
    properties = torch.cuda.get_device_properties(0)
    capability = f"{properties.major}.{properties.minor}"
    detail = f"{properties.name} on {platform.node()}, compute capability {capability}; {versions}"
    arches = torch.cuda.get_arch_list()
    sm = properties.major * 10 + properties.minor
    runnable = f"sm_{sm}" in arches or any(a.startswith("compute_") and int(a.split("_")[1]) <= sm for a in arches)
    if arches and not runnable:
        return [row("device", FAIL, f"{detail}: this torch was built for {arches}, not for compute capability "
                    f"{capability}. Fix: install a torch build for this GPU (pip install torch for its CUDA)",
                    "cuda")]
    return measured("device", "cuda", detail, {"gpu_memory_mb": (properties.total_memory / 2 ** 20, "MB"),
                                               "compute_capability": (float(capability), "")})


def weights_check(anatomy: dict, home: Path | None) -> list[dict]:
    """``anatomy``: the settings' section; ``home``: TotalSegmentator's home folder (``anatomy.totalseg_home``)."""
    if anatomy["source"] != "totalsegmentator":
        return [row("totalsegmentator_weights", SKIPPED, "anatomy.source is 'precomputed': TotalSegmentator "
                    "does not run in this study")]
    os.environ["TOTALSEG_HOME_DIR"] = str(Path(home).resolve())  # TotalSegmentator reads it on its first import
    from workflow_scripts.anatomy import check_weights

    try:
        check_weights(Path(home), anatomy["task"], anatomy["fast"], anatomy["roi_subset"])
    except FileNotFoundError as err:
        return [row("totalsegmentator_weights", FAIL, str(err), anatomy["task"])]
    return [row("totalsegmentator_weights", PASS, f"weights of task '{anatomy['task']}' (fast={anatomy['fast']}) in "
                f"{home}", anatomy["task"])]


def free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem that holds ``folder`` (or would, for a folder not made yet)."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def projected_bytes(train_voxels: int, test_voxels: int, channels: dict[str, int], folds: dict[str, int],
                    checkpoint_bytes: dict[str, float], encoding: str, keep_test_probabilities: bool
                    ) -> dict[str, float]:
    """The study's bytes on disk by folder: nnU-Net's preprocessed copies, nnU-Net's validation copies and the
    out-of-fold files of every configuration's channels, the new cases' probabilities where kept, checkpoints."""
    per_channel = PROBABILITY_BYTES_PER_VOXEL[encoding]
    all_channels = sum(channels.values())
    return {
        "nnUNet_preprocessed": train_voxels * PREPROCESSED_BYTES_PER_VOXEL * len(channels),
        "validation_copies_and_out_of_fold": 2 * train_voxels * per_channel * all_channels,
        "new_case_probabilities": test_voxels * per_channel * all_channels if keep_test_probabilities else 0.0,
        "checkpoints": sum(checkpoint_bytes.get(name, 0.0) * CHECKPOINTS_PER_FOLD * n for name, n in folds.items()),
    }


def disk_check(results: Path, projected: dict[str, float], margin: float, checkpoints_measured: bool) -> list[dict]:
    free = free_bytes(results)
    needed = sum(projected.values()) * margin
    parts = ", ".join(f"{name} {value / 1e9:.3g} GB" for name, value in projected.items())
    detail = (f"{free / 1e9:.3g} GB free where {results} lives; the study projects {parts} "
              f"(x {margin} margin: {needed / 1e9:.3g} GB)")
    if not checkpoints_measured:
        detail += "; checkpoints not counted (no training iterations ran)"
    measures = {"free_gb": (free / 1e9, "GB"), "needed_gb": (needed / 1e9, "GB")}
    if free < needed:
        fix = (f"Fix: free {(needed - free) / 1e9:.3g} GB or more there, run the study where there is room, or store "
               "probabilities as uint8 (prediction.probability_encoding: uint8)")
        return [row("disk", FAIL, f"{detail}. {fix}", "results", m, v, u) for m, (v, u) in measures.items()]
    return measured("disk", "results", detail, measures)


def failed(check: str, subject: str, error: BaseException, what: str) -> list[dict]:
    """A probe that raised: its error as a failed row (the traceback goes to the job's log only)."""
    traceback.print_exception(error, file=sys.stderr)
    return [row(check, FAIL, f"{what} failed: {type(error).__name__}: {error}. The traceback is in "
                "logs/preflight_checks.log", subject)]


def image_voxels(images: list[Path]) -> dict[Path, int]:
    return {Path(p): math.prod(image_header(p).GetSize()) for p in images}


def widest_ensemble(settings: dict) -> dict:
    """Every ensemble candidate's configuration at once: the costliest new-case path the selection can choose."""
    ensemble = settings["ensemble"]
    return {"members": dict(ensemble["members"]),
            "fusions": [{"configuration": f["configuration"], "into": settings["labels"][f["into"]],
                         "strategy": f["strategy"]} for f in ensemble["fusions"]]}


def probe_training(name: str, configuration: dict, plans_summary: dict, device, iterations: int) -> tuple[list[dict],
                                                                                                         dict]:
    """A few iterations of the configuration's first fold with the trainer the study builds; rows and the trained
    model ({"folder", "fold", "checkpoint_bytes"})."""
    import torch

    from workflow_scripts.nnunet_seam import time_training_iterations
    from workflow_scripts.training import make_trainer

    fold = configuration["folds"][0]
    trainer = make_trainer(plans_summary["dataset"], plans_summary["plans_identifier"], configuration["trainer"],
                           fold, configuration["trainer_settings"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(time_training_iterations(trainer, warm_up=1, timed=iterations))
    training_iterations = trainer.num_iterations_per_epoch * trainer.num_epochs * len(configuration["folds"])
    checkpoint = Path(trainer.output_folder) / "checkpoint_final.pth"
    model = {"folder": Path(trainer.output_folder_base), "fold": fold, "checkpoint_bytes": checkpoint.stat().st_size}
    measures = {"seconds_per_iteration": (seconds, "s"),
                "projected_training_hours": (seconds * training_iterations / 3600, "h")}
    if device.type == "cuda":
        measures["peak_gpu_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2 ** 20, "MB")
    measures["peak_rss_mb"] = (peak_rss_mb(), "MB")
    detail = (f"{iterations} iterations of fold {fold} on {device} (patch {plans_summary['patch_size']}, batch "
              f"{plans_summary['batch_size']}, {configuration['trainer']}); the projection is "
              f"{trainer.num_iterations_per_epoch} iterations x {trainer.num_epochs} epochs x "
              f"{len(configuration['folds'])} folds, validation not counted")
    del trainer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measured("training", name, detail, measures), model


def probe_prediction(models: dict[str, dict], configurations: dict, settings: dict, image: Path, test_voxels: int,
                     voxels: int, work: Path, device, threads: int, tile_batch_divisor: int) -> list[dict]:
    """One new case through the study's prediction path: each configuration's probe network loaded once per fold
    of the study (so the network runs as often as with the real models), the widest ensemble, the export."""
    import torch

    from workflow_scripts.prediction import predict_new_cases
    from workflow_scripts.settings import channel_labels

    labels = channel_labels(settings)
    predicted = {}
    for name, model in models.items():
        folder, first = model["folder"], model["fold"]
        for fold in configurations[name]["folds"]:
            if fold != first and not (folder / f"fold_{fold}").exists():
                (folder / f"fold_{fold}").symlink_to(f"fold_{first}", target_is_directory=True)
        predicted[name] = {"folder": folder, "folds": configurations[name]["folds"], "labels": labels[name]}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    case = image.name[: -len(".nii.gz")]
    predict_new_cases(predicted, widest_ensemble(settings), [case], image.parent, work / "predictions",
                      settings["prediction"], str(device), threads, tile_batch_divisor=tile_batch_divisor)
    seconds = time.perf_counter() - start
    measures = {"seconds_per_case": (seconds, "s"),
                "projected_new_case_hours": (seconds * test_voxels / voxels / 3600, "h")}
    if device.type == "cuda":
        measures["peak_gpu_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2 ** 20, "MB")
    measures["peak_rss_mb"] = (peak_rss_mb(), "MB")
    detail = (f"{case} ({voxels} voxels, the largest case) with {sorted(models)} and their widest ensemble; the "
              "projection scales by the new cases' voxels")
    return measured("prediction", case, detail, measures)


def probe_totalsegmentator(anatomy: dict, home: Path, image: Path, voxels: int, all_voxels: int, work: Path, device,
                           threads: int) -> list[dict]:
    from workflow_scripts.anatomy import segment_anatomy

    start = time.perf_counter()
    segment_anatomy(image, work / "anatomy.nii.gz", Path(home), anatomy["task"], anatomy["fast"],
                    anatomy["roi_subset"], "gpu" if device.type == "cuda" else "cpu", threads)
    seconds = time.perf_counter() - start
    return measured("totalsegmentator", anatomy["task"], f"one call on {image.name}; the projection scales by every "
                    "case's voxels", {"seconds_per_case": (seconds, "s"),
                                      "projected_hours": (seconds * all_voxels / voxels / 3600, "h"),
                                      "peak_rss_mb": (peak_rss_mb(), "MB")})


def run_preflight(settings: dict, plans_summaries: dict[str, Path], train_images: list[Path],
                  test_images: list[Path], results: Path, work: Path, threads: int,
                  tile_batch_divisor: int = 1, totalseg_home: Path | None = None) -> pd.DataFrame:
    """Every check and probe; a table of rows (``COLUMNS``). nnU-Net must be configured for this process with
    ``nnUNet_results`` in ``work`` (``configure_nnunet(..., results=...)``): the probes never touch the study's."""
    from workflow_scripts.nnunet_seam import resolve_device

    compute, anatomy = settings["compute"], settings["anatomy"]
    configurations = settings["configurations"]
    gpu_asked = bool({**compute["resources"].get("default", {}),
                      **compute["resources"].get("train_fold", {})}.get("gpu", False))
    rows = nnunet_version_check() + device_check(compute["device"], gpu_asked) + weights_check(anatomy, totalseg_home)
    voxels = image_voxels([*train_images, *test_images])
    train_voxels = sum(voxels[Path(p)] for p in train_images)
    test_voxels = sum(voxels[Path(p)] for p in test_images)
    largest = max(voxels, key=voxels.get)

    ready = not any(r["status"] == FAIL for r in rows if r["check"] in ("device", "nnunet_version"))
    models, checkpoint_bytes = {}, {}
    if ready:
        device = resolve_device(compute["device"])
        for name, configuration in configurations.items():
            try:
                probe, model = probe_training(name, configuration, read_json(plans_summaries[name]), device,
                                              settings["preflight"]["iterations"])
                rows += probe
                models[name] = model
                checkpoint_bytes[name] = model["checkpoint_bytes"]
            except Exception as error:
                rows += failed("training", name, error, f"training {name}")
        if len(models) == len(configurations):
            try:
                rows += probe_prediction(models, configurations, settings, largest, test_voxels, voxels[largest],
                                         work, device, threads, tile_batch_divisor)
            except Exception as error:
                rows += failed("prediction", largest.name, error, "predicting one case")
        else:
            rows.append(row("prediction", SKIPPED, "a configuration's training iterations failed"))
        if anatomy["source"] == "totalsegmentator" and not any(
                r["status"] == FAIL for r in rows if r["check"] == "totalsegmentator_weights"):
            try:
                rows += probe_totalsegmentator(anatomy, totalseg_home, largest, voxels[largest], train_voxels + test_voxels, work,
                                               device, threads)
            except Exception as error:
                rows += failed("totalsegmentator", anatomy["task"], error, "one TotalSegmentator call")
    else:
        for check in ("training", "prediction"):
            rows.append(row(check, SKIPPED, "the device or nnU-Net check failed"))

    channels = {name: len(c["label_mapping"]) for name, c in configurations.items()}
    folds = {name: len(c["folds"]) for name, c in configurations.items()}
    prediction = settings["prediction"]
    projected = projected_bytes(train_voxels, test_voxels, channels, folds, checkpoint_bytes,
                                prediction["probability_encoding"], prediction["save_probabilities"])
    rows += disk_check(results, projected, settings["preflight"]["disk_margin"],
                       len(checkpoint_bytes) == len(configurations))
    return pd.DataFrame(rows, columns=COLUMNS)


def failures(table: pd.DataFrame) -> list[str]:
    """One line per failed check: what failed and its fix."""
    failed_rows = table[table["status"] == FAIL].drop_duplicates(["check", "subject"])
    return [f"- {r['check']}{f' ({r.subject})' if isinstance(r.subject, str) and r.subject else ''}: {r.detail}"
            for _, r in failed_rows.iterrows()]


def projections(table: pd.DataFrame) -> dict[str, float]:
    """The study's projected totals: training GPU-hours, new-case hours, TotalSegmentator hours, disk GB."""
    def total(check, measure):
        values = table[(table["check"] == check) & (table["measure"] == measure)]["value"]
        return float(values.sum()) if len(values) else None

    return {"training_hours": total("training", "projected_training_hours"),
            "new_case_hours": total("prediction", "projected_new_case_hours"),
            "totalsegmentator_hours": total("totalsegmentator", "projected_hours"),
            "disk_needed_gb": total("disk", "needed_gb"), "disk_free_gb": total("disk", "free_gb")}


def preflight_gate(table_path: Path, out: Path) -> dict:
    """Passes the study on (``out``: its projections) or stops it with every failed check and its fix."""
    table = pd.read_csv(table_path, sep="\t", keep_default_na=False, na_values=[""])
    lines = failures(table)
    if lines:
        raise SystemExit(f"error: preflight: {len(lines)} check(s) failed; nothing was trained "
                         f"(table: {table_path}):\n" + "\n".join(lines) +
                         "\nFix them, then run the same command again: only the preflight reruns.")
    summary = projections(table)
    write_json(summary, out)
    return summary


def preflight_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("preflight", "Device, nnU-Net, weights and disk checks, and a few iterations of the study's "
                   "training and prediction, with projections; writes the table, never stops the run itself.")
    cli.add_nnunet(p)
    cli.add_settings(p, "preflight")
    p.add_argument("--plans-summaries", nargs="+", required=True,
                   help="each configuration's plans_summary.json (results/datasets/<configuration>/)")
    p.add_argument("--train-images", nargs="+", required=True)
    p.add_argument("--test-images", nargs="*", default=[])
    p.add_argument("--totalseg-home", help="anatomy.source totalsegmentator: TotalSegmentator's home folder")
    p.add_argument("--out", required=True, help="the table; its folder's filesystem is the study's (free bytes), "
                   "and the probes' scratch folder, emptied first and removed after, is work/ beside it")
    cli.add_tile_batch_divisor(p)
    args = p.parse_args(argv)
    work = Path(args.out).parent / "work"
    shutil.rmtree(work, ignore_errors=True)  # a killed earlier run's
    try:
        from workflow_scripts.nnunet_seam import configure_nnunet

        configure_nnunet(args.nnunet_root, args.threads, args.settings["compute"]["augmentation_workers"],
                         results=work / "nnUNet_results")
        summaries = {Path(s).parent.name: Path(s) for s in args.plans_summaries}
        table = run_preflight(args.settings, summaries, [Path(i) for i in args.train_images],
                              [Path(i) for i in args.test_images], Path(args.out).parent, work, args.threads,
                              args.tile_batch_divisor, Path(args.totalseg_home) if args.totalseg_home else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_table(table, args.out)
    print(table.to_string(index=False))
    lines = failures(table)
    print(f"preflight: {len(lines)} failed check(s)" + "".join(f"\n{line}" for line in lines))


def preflight_gate_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("preflight-gate", "Stop the run, naming every failed preflight check and its fix, or pass it on.")
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    summary = preflight_gate(Path(args.table), Path(args.out))
    print(f"preflight passed: {summary}")
