"""Per case and class Dice for every stage, and the tables and figure of the report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from workflow_scripts.io import atomic_path, write_table

CASE_COLUMNS = ["split", "stage", "case", "class", "label", "dice", "reference_voxels", "predicted_voxels",
                "empty_convention"]


def dice(reference: np.ndarray, prediction: np.ndarray, both_empty: float) -> float:
    """Dice of two boolean masks; ``both_empty`` is the value when neither has a voxel (1.0 or NaN)."""
    denominator = int(reference.sum()) + int(prediction.sum())
    if denominator == 0:
        return both_empty
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / denominator


def evaluate_stage(split: str, stage: str, cases: list[str], prediction_dir: Path, reference_dir: Path,
                   classes: dict[str, int], both_empty: float) -> pd.DataFrame:
    rows = []
    convention = f"both empty -> {both_empty}"
    for case in cases:
        reference_image = sitk.ReadImage(str(Path(reference_dir) / f"{case}.nii.gz"))
        prediction_image = sitk.ReadImage(str(Path(prediction_dir) / f"{case}.nii.gz"))
        if reference_image.GetSize() != prediction_image.GetSize():
            raise ValueError(f"{stage}/{case}: prediction grid {prediction_image.GetSize()} differs from the "
                             f"reference grid {reference_image.GetSize()}")
        reference = sitk.GetArrayViewFromImage(reference_image)
        prediction = sitk.GetArrayViewFromImage(prediction_image)
        for name, label in classes.items():
            ref, pred = reference == label, prediction == label
            rows.append({"split": split, "stage": stage, "case": case, "class": name, "label": label,
                         "dice": dice(ref, pred, both_empty), "reference_voxels": int(ref.sum()),
                         "predicted_voxels": int(pred.sum()), "empty_convention": convention})
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


def summarize(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean, standard deviation, median and count of Dice per split, stage and class (NaN cases skipped)."""
    metrics = pd.concat(tables, ignore_index=True)
    grouped = metrics.groupby(["split", "stage", "class"], sort=False)["dice"]
    summary = grouped.agg(mean="mean", std="std", median="median", n="count").reset_index()
    summary["empty_convention"] = metrics["empty_convention"].iloc[0] if len(metrics) else ""
    return summary


def plot_dice(tables: list[pd.DataFrame], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = pd.concat(tables, ignore_index=True)
    panels = [(s, c) for s in metrics["split"].unique() for c in metrics["class"].unique()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (split, name) in zip(axes[0], panels):
        subset = metrics[(metrics["split"] == split) & (metrics["class"] == name)]
        stages = list(subset["stage"].unique())
        ax.boxplot([subset.loc[subset["stage"] == s, "dice"].dropna() for s in stages], tick_labels=stages)
        ax.set_title(f"{split}: {name}")
        ax.set_ylabel("Dice")
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_summary(case_tables: list[Path], summary_out: Path, figure_out: Path) -> pd.DataFrame:
    tables = [pd.read_csv(p, sep="\t") for p in case_tables]
    summary = summarize(tables)
    write_table(summary, summary_out)
    plot_dice(tables, figure_out)
    return summary
