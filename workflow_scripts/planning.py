"""Fingerprint, plans and preprocessing of one configuration's nnU-Net dataset."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from workflow_scripts.io import copy_file, read_json, write_json
from workflow_scripts.nnunet_seam import CONFIGURATION, PLANNING_POOL_MODULES, find_planner_class, pools_as_threads

# Lists in a network's arch_kwargs with one entry per encoder stage, and those with one per decoder stage.
_PER_STAGE = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage")
_PER_DECODER_STAGE = ("n_conv_per_stage_decoder",)


def isotropic_spacing(median_spacing) -> list[float]:
    """Isotropic spacing with the voxel volume of the median spacing, so the voxel count stays about the same."""
    value = float(np.prod(median_spacing) ** (1.0 / len(median_spacing)))
    return [round(value, 4)] * len(median_spacing)


def shrink_plans(plans: dict, n_stages: int | None = None, max_features: int | None = None,
                 max_blocks_per_stage: int | None = None, patch_size: list[int] | None = None,
                 batch_size: int | None = None) -> dict:
    """A copy of ``plans`` whose 3d_fullres network and patch are cut down (the toy config's small model).

    The patch size is rounded up to a multiple of the network's total downsampling per axis.
    """
    plans = copy.deepcopy(plans)
    conf = plans["configurations"][CONFIGURATION]
    arch = conf["architecture"]["arch_kwargs"]
    old_stages = arch["n_stages"]
    if n_stages is not None and n_stages < old_stages:
        for key in _PER_STAGE:
            if key in arch:
                arch[key] = arch[key][:n_stages]
        for key in _PER_DECODER_STAGE:
            if key in arch:
                arch[key] = arch[key][: n_stages - 1]
        arch["n_stages"] = n_stages
    if max_features is not None:
        arch["features_per_stage"] = [min(f, max_features) for f in arch["features_per_stage"]]
    if max_blocks_per_stage is not None and "n_blocks_per_stage" in arch:
        arch["n_blocks_per_stage"] = [min(b, max_blocks_per_stage) for b in arch["n_blocks_per_stage"]]
    if patch_size is not None:
        divisor = np.prod(np.asarray(arch["strides"]), axis=0)
        conf["patch_size"] = [int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor)]
    if batch_size is not None:
        conf["batch_size"] = int(batch_size)
    return plans


def plan_and_preprocess(dataset_id: int, planner: str, target_spacing, plans_overrides: dict | None,
                        splits_file: Path, threads: int, plans_out: Path) -> dict:
    """Fingerprint, plan (nnU-Net planner by class name), apply overrides, install the shared splits, preprocess.

    ``target_spacing`` is None (planner default), 'isotropic' or a list in nnU-Net's axis order.
    nnU-Net must already be configured for this process (``configure_nnunet``).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset,
                                                                      preprocess_dataset)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    planner_class = find_planner_class(planner)
    if planner_class is None:
        raise ValueError(f"nnU-Net has no experiment planner named '{planner}' (e.g. ExperimentPlanner, "
                         "nnUNetPlannerResEncM, nnUNetPlannerResEncL)")
    name = convert_id_to_dataset_name(dataset_id)
    # With one thread, nnU-Net's one-worker process pools as threads: no worker importing torch again.
    with pools_as_threads(PLANNING_POOL_MODULES, enabled=threads == 1):
        fingerprint = extract_fingerprint_dataset(dataset_id, num_processes=threads, check_dataset_integrity=True,
                                                  clean=True, verbose=False, show_progress_bar=False)
        if target_spacing == "isotropic":
            target_spacing = isotropic_spacing(np.median(np.asarray(fingerprint["spacings"]), axis=0))
        _, plans_identifier = plan_experiment_dataset(dataset_id, planner_class,
                                                      overwrite_target_spacing=target_spacing)

        preprocessed = Path(nnUNet_preprocessed) / name
        plans_file = preprocessed / f"{plans_identifier}.json"
        plans = read_json(plans_file)
        if plans_overrides:
            plans = shrink_plans(plans, **plans_overrides)
            write_json(plans, plans_file)
        # The shared split goes in before any training reads it (nnU-Net issue 3064: concurrent folds).
        copy_file(splits_file, preprocessed / "splits_final.json")
        preprocess_dataset(dataset_id, plans_identifier, configurations=[CONFIGURATION], num_processes=[threads],
                           verbose=False, show_progress_bar=False)
    conf = plans["configurations"][CONFIGURATION]
    summary = {"dataset": str(name), "plans_identifier": plans_identifier, "planner": planner,
               "spacing": conf["spacing"], "patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
               "network": conf["architecture"]["network_class_name"],
               "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"],
               "preprocessed_folder": str(preprocessed / conf["data_identifier"]),
               "plans_file": str(plans_file)}
    write_json(summary, plans_out)
    return summary


def plan_and_preprocess_entry(argv=None) -> None:
    import json

    from workflow_scripts import cli

    p = cli.parser("plan-and-preprocess", "nnU-Net fingerprint, plans (with overrides), shared splits, "
                   "preprocessing of one configuration.")
    cli.add_nnunet(p)
    cli.add_settings(p, "plan-and-preprocess")
    p.add_argument("--splits", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cli.configure_nnunet(args, augmentation_workers=args.threads)  # the planner sizes torch threads by this value
    from workflow_scripts.settings import only_configuration

    _, settings = only_configuration(args.settings)
    summary = plan_and_preprocess(settings["dataset_id"], settings["planner"], settings["target_spacing"],
                                  settings["plans_overrides"], Path(args.splits), args.threads, Path(args.out))
    print(json.dumps(summary, indent=2))
