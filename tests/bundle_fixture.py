"""A trained study as the bundle tests need it (the ``study`` fixture, conftest.py): fold summaries and nnU-Net
model folders with small checkpoints shaped as nnU-Net's (a few tensors, not a network)."""
import json

import pandas as pd
import torch

from workflow_scripts.bundle import export_bundle


def trained_configuration(root, name, folds=(0, 1)):
    """A configuration's fold summaries and nnU-Net model folder as a study leaves them (small checkpoints)."""
    model = root / "nnUNet_results" / f"Dataset_{name}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    summaries = []
    for fold in folds:
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        torch.save(checkpoint(name, fold), model / f"fold_{fold}" / "checkpoint_final.pth")
        (model / f"fold_{fold}" / "checkpoint_best.pth").write_bytes(b"not packed")
        summary = root / f"{name}_fold_{fold}.json"
        summary.write_text(json.dumps({"output_folder": str(model / f"fold_{fold}"), "fold": fold,
                                       "trainer": "nnUNetTrainer", "plans": "nnUNetPlans"}))
        summaries.append(summary)
    for file in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (model / file).write_text(json.dumps({"name": name, "file": file}))
    return summaries


def checkpoint(name, fold):
    """What nnU-Net's checkpoint holds for prediction, with weights that tell the configuration and fold apart."""
    weights = {"conv.weight": torch.full((2, 3), float(fold)), "head.bias": torch.arange(len(name) + 1.0)}
    return {"network_weights": weights,
            "trainer_name": "nnUNetTrainer", "init_args": {"configuration": "3d_fullres", "fold": fold},
            "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 4, "optimizer_state": {"step": 1}}


def evidence():
    """What the model card reads of a study: QC's measurements of three training cases (one excluded), one of them
    converted from DICOM, and a metrics summary with the nested stage and a selection-biased one."""
    def measured(case, size_z, spacing_z, lesions):
        return {"case": case, "size_x": 64, "size_y": 64, "size_z": size_z, "spacing_x_mm": 0.8, "spacing_y_mm": 0.8,
                "spacing_z_mm": spacing_z, "label_1_lesions": lesions[0], "label_2_lesions": lesions[1]}

    rows = [("oof", stage, cls, metric, mean, biased) for stage, biased in (("ensemble", True), ("oof_nested", False))
            for cls in ("primary", "metastasis") for metric, mean in (("dice", 0.8), ("hd95_mm", 4.0), ("nsd_2mm", 0.9))]
    summary = pd.DataFrame(rows, columns=["split", "stage", "class", "metric", "mean", "selection_biased"])
    summary["median"], summary["n"] = summary["mean"], 2
    return {"measurements": [measured("c1", 30, 2.5, (1, 0)), measured("c2", 40, 1.25, (2, 3)),
                             measured("c3", 90, 5.0, (0, 0))],
            "passing": {"train": ["c1", "c2"], "test": [], "excluded": {"c3": "label grid differs from the image's"}},
            "dicom_findings": [{"case": "c2", "manufacturer": "Maker A"}], "summary": summary}


def export(study, out):
    return export_bundle(out, study["config"], study["selection"], study["refinement"], study["summaries"],
                         study["channel_labels"], evidence())
