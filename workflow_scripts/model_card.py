"""A bundle's model card: what a reader checks before trusting a model from elsewhere, as fields (in bundle.json) and
as ``MODEL_CARD.md``: its intended use, labels, the data it was trained on, the ensemble and rules chosen, how well
it did under cross-validation (the unbiased nested estimate first, selection-biased ones marked), versions and
the licences of what it ships or needs.

Built from the study's own tables at export; no DICOM tag value reaches it but the scanner maker (not a patient
attribute)."""
from __future__ import annotations

from importlib import metadata

import pandas as pd

from workflow_scripts.dicom_results import segment_codes

# Out-of-fold metrics the card reports, and the stage that is the unbiased estimate of the whole selection.
CARD_METRICS = ("dice", "hd95_mm", "lesion_f1")
NESTED_STAGE = "oof_nested"
PACKAGES = ("nnunetv2", "torch", "TotalSegmentator", "snakemake", "safetensors")
LICENCES = {
    "nnU-Net (needed to segment)": "Apache-2.0",
    "TotalSegmentator (needed where anatomy.source is totalsegmentator)": "Apache-2.0 (code); its weights are "
    "downloaded by the user, under the licence TotalSegmentator's README gives for the task (some tasks need a "
    "licence from its authors)",
}


def _range(values: list[float]) -> list[float] | None:
    return [round(min(values), 4), round(max(values), 4)] if values else None


def training_data(measurements: list[dict], passing: dict, dicom_findings: list[dict]) -> dict:
    """The training cases the models learned from: counts, size and spacing ranges per axis, lesion counts per
    label, inputs that came as DICOM with their scanner makers, and the cases QC excluded with why."""
    used = set(passing["train"])
    cases = [m for m in measurements if m["case"] in used]
    axes = ("x", "y", "z")
    labels = sorted({key.split("_")[1] for m in cases for key in m if key.startswith("label_") and
                     key.endswith("_lesions")}, key=int)
    makers = sorted({f.get("manufacturer") or "not recorded" for f in dicom_findings if f["case"] in used})
    return {
        "cases": len(cases),
        "size_voxels": {axis: _range([m[f"size_{axis}"] for m in cases]) for axis in axes},
        "spacing_mm": {axis: _range([m[f"spacing_{axis}_mm"] for m in cases]) for axis in axes},
        "cases_with_label": {label: sum(m.get(f"label_{label}_lesions", 0) > 0 for m in cases) for label in labels},
        "lesions_per_label": {label: int(sum(m.get(f"label_{label}_lesions", 0) for m in cases)) for label in labels},
        "dicom_cases": sum(f["case"] in used for f in dicom_findings),
        "scanner_makers": makers,
        "excluded_by_qc": passing.get("excluded", {}),
    }


def cross_validation(summary: pd.DataFrame) -> list[dict]:
    """Out-of-fold means per stage, class and metric, the nested (unbiased) stage first; each row says whether its
    stage was chosen on the very cases it is scored on (``selection_biased``)."""
    rows = summary[(summary["split"] == "oof") & summary["metric"].isin(CARD_METRICS)].copy()
    rows["order"] = (rows["stage"] != NESTED_STAGE).astype(int)
    rows = rows.sort_values(["order", "stage", "class", "metric"], kind="stable")
    return [{"stage": r["stage"], "class": r["class"], "metric": r["metric"], "mean": round(float(r["mean"]), 4),
             "median": round(float(r["median"]), 4), "n": int(r["n"]),
             "selection_biased": bool(r.get("selection_biased", False)), "unbiased": r["stage"] == NESTED_STAGE}
            for _, r in rows.iterrows()]


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def model_card(config: dict, selection: dict, refinement: dict, configurations: dict, data: dict,
               scores: list[dict]) -> dict:
    card = config["model_card"]
    return {
        "name": card["name"], "version": card["version"], "intended_use": card["intended_use"],
        "model_licence": card["licence"],
        "labels": {name: value for name, value in config["labels"].items()},
        "label_codes": segment_codes(config),
        "configurations": {name: {"trainer": c["trainer"], "plans": c["plans"], "folds": c["folds"],
                                  "classes": c["channel_labels"]} for name, c in configurations.items()},
        "ensemble": {"members": selection["members"], "fusions": selection["fusions"]},
        "refinement_rules": refinement.get("rules", []),
        "anatomy": {"source": config["anatomy"]["source"], "task": config["anatomy"]["task"]},
        "training_data": data,
        "cross_validation": scores,
        "versions": versions(),
        "licences": {**LICENCES, "these weights": card["licence"]},
    }


def _table(rows: list[list], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def card_markdown(card: dict) -> str:
    data = card["training_data"]
    lines = [f"# {card['name']} {card['version']}", "", "## Intended use", "", card["intended_use"], "",
             "## Labels", ""]
    coded = card["label_codes"]
    lines += _table([[name, value, *(f"{coded[name][part]['meaning']} ({coded[name][part]['scheme']} "
                                     f"{coded[name][part]['code']})" if name in coded else "-"
                                     for part in ("category", "type"))]
                     for name, value in card["labels"].items()], ["label", "value", "category", "type"])
    lines += ["", "## Training data", "",
              f"{data['cases']} training cases ({data['dicom_cases']} from DICOM series; scanner makers: "
              f"{', '.join(data['scanner_makers']) or 'none recorded'}).", ""]
    lines += _table([[axis, data["size_voxels"][axis], data["spacing_mm"][axis]] for axis in ("x", "y", "z")],
                    ["axis", "size (voxels), min and max", "spacing (mm), min and max"])
    names = {str(value): name for name, value in card["labels"].items()}
    lines += ["", "Cases holding each label (lesions in all): " + ", ".join(
        f"{names.get(label, 'label ' + label)}: {data['cases_with_label'][label]} ({data['lesions_per_label'][label]})"
        for label in data["cases_with_label"]) + ".", "",
        "Excluded by QC: " + (", ".join(f"{case} ({why})" for case, why in data["excluded_by_qc"].items())
                              or "none") + ".", "", "## Models, ensemble and refinement", ""]
    lines += _table([[name, c["trainer"], c["plans"], c["folds"], c["classes"]] for name, c in
                     card["configurations"].items()], ["configuration", "trainer", "plans", "folds", "classes"])
    lines += ["", f"Ensemble: members {card['ensemble']['members']}, fusions {card['ensemble']['fusions']}.",
              f"Refinement rules: {card['refinement_rules'] or 'none'} (anatomy: {card['anatomy']['source']}, "
              f"task {card['anatomy']['task']}).", "", "## Cross-validation", "",
              f"Out-of-fold means over the training cases. `{NESTED_STAGE}` is the unbiased estimate: its ensemble "
              "and rules were chosen on the other folds' cases. Rows marked selection-biased score a choice made on "
              "these same cases and are optimistic.", ""]
    lines += _table([[r["stage"], r["class"], r["metric"], r["mean"], r["median"], r["n"],
                      "unbiased" if r["unbiased"] else "selection-biased" if r["selection_biased"] else ""]
                     for r in card["cross_validation"]], ["stage", "class", "metric", "mean", "median", "n", "note"])
    lines += ["", "## Versions", ""] + _table([[p, v] for p, v in card["versions"].items()], ["package", "version"])
    lines += ["", "## Licences", ""] + _table([[w, l] for w, l in card["licences"].items()], ["what", "licence"])
    lines += ["", "## Checksums", "", "bundle.json lists the SHA-256 of every file of the bundle, this card "
              "included; segmenting with the bundle checks the model files against it. They catch a damaged copy, "
              "not a deliberate change (they travel in the same folder); a bundle runs no code of its own whatever "
              "its files hold: its weights are safetensors, read without unpickling.", ""]
    return "\n".join(lines)
