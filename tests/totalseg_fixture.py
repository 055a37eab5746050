"""A tiny nnU-Net model in TotalSegmentator's weights layout, built from code, so the real
``totalsegmentator()`` runs offline in tests.

The network is nnU-Net's own PlainConvUNet built from the plans written here; its last layer's weights are zero
and its bias favours one class, so every voxel gets that class: a test can tell exactly what the model said.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# (dataset folder, trainer) as TotalSegmentator's map_tasks_config names them: task total in fast mode, and the
# 6 mm model it runs first to crop to a roi_subset.
TOTAL_FAST = ("Dataset297_TotalSegmentator_total_3mm_1559subj", "nnUNetTrainer_4000epochs_NoMirroring")
TOTAL_CROP = ("Dataset298_TotalSegmentator_total_6mm_1559subj", "nnUNetTrainer_4000epochs_NoMirroring")
SPACING = [3.0, 3.0, 3.0]


def tiny_plans(dataset_name: str) -> dict:
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": SPACING,
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 2000.0, "mean": 40.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -1000.0,
            "percentile_99_5": 1500.0, "std": 300.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 1,
            "patch_size": [32, 32, 32],
            "median_image_size_in_voxels": [64, 64, 64],
            "spacing": SPACING,
            "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {**resampling, "order": 3},
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": resampling,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
                    "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
                },
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
            "batch_dice": False,
        }},
    }


def build_tiny_totalseg_home(home: Path, predicted_class: str = "liver", task: str = "total") -> Path:
    """Write ``home/nnunet/results/<Dataset297...>/<trainer>__nnUNetPlans__3d_fullres`` (and the 6 mm cropping
    model, Dataset298) with fold 0's ``checkpoint_final.pth``, and ``home/config.json`` with usage statistics
    off. Returns ``home``."""
    for model in (TOTAL_FAST, TOTAL_CROP):
        _write_model(Path(home), model, predicted_class, task)
    (Path(home) / "config.json").write_text(json.dumps({"totalseg_id": "tests", "send_usage_stats": False,
                                                        "prediction_counter": 0}))
    return Path(home)


def _write_model(home: Path, model: tuple[str, str], predicted_class: str, task: str) -> None:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from totalsegmentator.map_to_binary import class_map

    names = class_map[task]
    labels = {"background": 0, **{name: int(i) for i, name in sorted(names.items())}}
    folder_name, trainer = model
    model_dir = Path(home) / "nnunet" / "results" / folder_name / f"{trainer}__nnUNetPlans__3d_fullres"
    (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    plans = tiny_plans(folder_name.split("_")[0] + "_" + folder_name.split("_", 1)[1])
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=1))
    (model_dir / "dataset.json").write_text(json.dumps(dataset, indent=1))

    arch = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     input_channels=1, output_channels=len(labels), deep_supervision=False)
    last = network.decoder.seg_layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[labels[predicted_class]] = 10.0
    torch.save({"network_weights": network.state_dict(), "trainer_name": trainer,
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": None},
               model_dir / "fold_0" / "checkpoint_final.pth")


# Any download or usage report would go through this dead proxy and fail.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def segment(image, out, home, **settings):
    """The verb with a partial anatomy section, as a user would call it: the schema fills task and the rest."""
    env = {**os.environ, **OFFLINE}
    env.pop("TOTALSEG_HOME_DIR", None)
    section = json.dumps({"anatomy": {"source": "totalsegmentator", "totalseg_home": str(home), **settings}})
    return subprocess.run([sys.executable, "-m", "workflow_scripts", "segment-anatomy", "--image", str(image),
                           "--out", str(out), "--settings", section, "--device", "cpu", "--threads", "1"],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=600)
