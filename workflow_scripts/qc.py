"""Quality control of the input cases: readable 3D images, labels on the image grid, known label values."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from workflow_scripts.io import write_table

COLUMNS = ["case", "check", "severity", "message"]


class QCError(RuntimeError):
    """Raised when cases fail QC; the message names every failing case and the fix."""


def _row(case, check, severity, message):
    return {"case": case, "check": check, "severity": severity, "message": message}


def check_case(case: str, image_path: Path, label_path: Path | None, label_values: list[int],
               spacing_tolerance: float = 1e-3, origin_tolerance_mm: float = 1e-2) -> pd.DataFrame:
    """One row per check; severity 'error' blocks the run, 'info' records a measurement."""
    rows = []
    try:
        image = sitk.ReadImage(str(image_path))
    except RuntimeError as err:
        rows.append(_row(case, "image_readable", "error", f"cannot read {image_path}: {str(err).strip()[:200]}"))
        return pd.DataFrame(rows, columns=COLUMNS)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        rows.append(_row(case, "image_3d", "error", f"{image_path} is {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components; a single-channel 3D CT is needed"))
        return pd.DataFrame(rows, columns=COLUMNS)
    spacing = image.GetSpacing()
    rows.append(_row(case, "image_geometry", "info", f"size {image.GetSize()}, spacing "
                     f"{tuple(round(s, 3) for s in spacing)} mm"))
    if label_path is None:
        return pd.DataFrame(rows, columns=COLUMNS)
    if not Path(label_path).exists():
        rows.append(_row(case, "label_exists", "error", f"no label {label_path} for image {image_path}"))
        return pd.DataFrame(rows, columns=COLUMNS)
    try:
        label = sitk.ReadImage(str(label_path))
    except RuntimeError as err:
        rows.append(_row(case, "label_readable", "error", f"cannot read {label_path}: {str(err).strip()[:200]}"))
        return pd.DataFrame(rows, columns=COLUMNS)
    problems = []
    if label.GetSize() != image.GetSize():
        problems.append(f"size {label.GetSize()} vs image {image.GetSize()}")
    if not np.allclose(label.GetSpacing(), spacing, rtol=spacing_tolerance):
        problems.append(f"spacing {label.GetSpacing()} vs image {spacing}")
    if not np.allclose(label.GetOrigin(), image.GetOrigin(), atol=origin_tolerance_mm):
        problems.append(f"origin {label.GetOrigin()} vs image {image.GetOrigin()}")
    if not np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-4):
        problems.append("direction differs from the image")
    if problems:
        rows.append(_row(case, "label_grid", "error", "label is not on the image grid: " + "; ".join(problems)
                         + ". Resample the label onto its image (nearest neighbour) or fix the pairing"))
    values, voxels = np.unique(sitk.GetArrayViewFromImage(label), return_counts=True)
    unknown = sorted(int(v) for v in values if int(v) not in label_values)
    if unknown:
        rows.append(_row(case, "label_values", "error", f"label values {unknown} are not in the configured "
                         f"labels {label_values}; fix the label or add them to config 'labels'"))
    rows.append(_row(case, "label_voxels", "info", ", ".join(f"label {v}: {c}" for v, c in zip(values, voxels))))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_case_qc(case: str, image_path: Path, label_path: Path | None, label_values: list[int],
                  out: Path) -> pd.DataFrame:
    table = check_case(case, image_path, label_path, label_values)
    write_table(table, out)
    return table


def aggregate_qc(case_tables: list[Path], out: Path) -> pd.DataFrame:
    """Write the dataset's QC table; raise ``QCError`` naming every case with an error."""
    table = pd.concat([pd.read_csv(p, sep="\t") for p in case_tables], ignore_index=True)
    write_table(table, out)
    errors = table[table["severity"] == "error"]
    if len(errors):
        lines = [f"  {r.case}: [{r.check}] {r.message}" for r in errors.itertuples()]
        raise QCError(f"QC found errors in {errors['case'].nunique()} case(s); see {out}. Fix or remove them "
                      "from the input folders:\n" + "\n".join(lines))
    return table
