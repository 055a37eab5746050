"""A trained study as the bundle tests need it (the ``study`` fixture, conftest.py): fold summaries and nnU-Net
model folders of small fake files."""
import json

from workflow_scripts.bundle import export_bundle


def trained_configuration(root, name, folds=(0, 1)):
    """A configuration's fold summaries and nnU-Net model folder as a study leaves them (small fake files)."""
    model = root / "nnUNet_results" / f"Dataset_{name}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    summaries = []
    for fold in folds:
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(f"{name} weights {fold}".encode())
        (model / f"fold_{fold}" / "checkpoint_best.pth").write_bytes(b"not packed")
        summary = root / f"{name}_fold_{fold}.json"
        summary.write_text(json.dumps({"output_folder": str(model / f"fold_{fold}"), "fold": fold,
                                       "trainer": "nnUNetTrainer", "plans": "nnUNetPlans"}))
        summaries.append(summary)
    for file in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (model / file).write_text(json.dumps({"name": name, "file": file}))
    return summaries


def export(study, out):
    return export_bundle(out, study["config"], study["selection"], study["refinement"], study["summaries"],
                         study["channel_labels"])
