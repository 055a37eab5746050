"""Quality control of the input cases: readable 3D images, geometry, intensities in HU, labels on the image grid,
known label values, and lesions that look like annotation errors (empty, tiny, in air or off the tissue)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from workflow_scripts.config import section_defaults
from workflow_scripts.io import write_table

COLUMNS = ["case", "check", "severity", "message"]


class QCError(RuntimeError):
    """Raised when cases fail QC; the message names every failing case and the fix."""


def _row(case, check, severity, message):
    return {"case": case, "check": check, "severity": severity, "message": message}


def check_case(case: str, image_path: Path, label_path: Path | None, label_values: list[int],
               settings: dict | None = None) -> pd.DataFrame:
    """One row per check; 'error' blocks the run, 'warning' is reported, 'info' records a measurement.

    ``settings``: the config's ``qc`` section (its schema defaults when None).
    """
    settings = settings if settings is not None else section_defaults("qc")
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
    array = sitk.GetArrayViewFromImage(image)
    rows += _geometry_rows(case, image, settings)
    rows += _intensity_rows(case, image_path, array, settings)
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
    spacing = image.GetSpacing()
    if label.GetDimension() != 3 or label.GetSize() != image.GetSize():
        problems.append(f"size {label.GetSize()} vs image {image.GetSize()}")
    elif not np.allclose(label.GetSpacing(), spacing, rtol=settings["spacing_tolerance"]):
        problems.append(f"spacing {label.GetSpacing()} vs image {spacing}")
    if label.GetDimension() == 3:
        if not np.allclose(label.GetOrigin(), image.GetOrigin(), atol=settings["origin_tolerance_mm"]):
            problems.append(f"origin {label.GetOrigin()} vs image {image.GetOrigin()}")
        if not np.allclose(label.GetDirection(), image.GetDirection(), atol=settings["direction_tolerance"]):
            problems.append(f"direction {_orientation(label)} vs image {_orientation(image)}")
    if problems:
        rows.append(_row(case, "label_grid", "error", "label is not on the image grid: " + "; ".join(problems)
                         + ". Resample the label onto its image (nearest neighbour) or fix the pairing"))
    labels = sitk.GetArrayViewFromImage(label)
    values, voxels = _value_counts(labels)
    unknown = sorted(int(v) for v in values if int(v) not in label_values)
    if unknown:
        rows.append(_row(case, "label_values", "error", f"label values {unknown} are not in the configured "
                         f"labels {label_values}; fix the label or add them to config 'labels'"))
    rows.append(_row(case, "label_voxels", "info", ", ".join(f"label {v}: {c}" for v, c in zip(values, voxels))))
    if not problems:
        rows += _lesion_rows(case, array, labels, spacing, [v for v in label_values if v != 0], settings)
    return pd.DataFrame(rows, columns=COLUMNS)


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their voxel counts; a bincount for small non-negative integers (a sort otherwise)."""
    if np.issubdtype(array.dtype, np.integer) and array.size:
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high < 65536:
            counts = np.bincount(array.ravel(), minlength=high + 1)
            values = np.flatnonzero(counts)
            return values, counts[values]
    return np.unique(array, return_counts=True)


def _orientation(image: sitk.Image) -> str:
    """Three-letter DICOM orientation code (LPS: x to the left, y to the back, z up)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def _geometry_rows(case: str, image: sitk.Image, settings: dict) -> list[dict]:
    spacing, size = image.GetSpacing(), image.GetSize()
    rows = [_row(case, "image_geometry", "info", f"size {size}, spacing {tuple(round(s, 3) for s in spacing)} mm, "
                 f"orientation {_orientation(image)}")]
    low, high = settings["slice_thickness_mm"]
    if not low <= spacing[2] <= high:
        rows.append(_row(case, "slice_thickness", "warning", f"slice spacing {spacing[2]:.3g} mm is outside "
                         f"[{low}, {high}] mm; check the header (qc.slice_thickness_mm sets the range)"))
    low, high = settings["in_plane_spacing_mm"]
    if not (low <= spacing[0] <= high and low <= spacing[1] <= high):
        rows.append(_row(case, "in_plane_spacing", "warning", f"in-plane spacing {spacing[0]:.3g} x {spacing[1]:.3g} "
                         f"mm is outside [{low}, {high}] mm; check the header (qc.in_plane_spacing_mm)"))
    field = (size[0] * spacing[0], size[1] * spacing[1])
    if min(field) < settings["min_field_of_view_mm"]:
        rows.append(_row(case, "field_of_view", "warning", f"field of view {field[0]:.0f} x {field[1]:.0f} mm is "
                         f"below {settings['min_field_of_view_mm']} mm: a tightly cropped scan loses context "
                         "(qc.min_field_of_view_mm)"))
    return rows


def _intensity_rows(case: str, image_path: Path, array: np.ndarray, settings: dict) -> list[dict]:
    if np.issubdtype(array.dtype, np.floating):
        # ITK's NIfTI reader turns NaN and infinity into 0; nibabel (and nnU-Net's NibabelIO) keeps them.
        raw = np.asanyarray(nib.load(str(image_path)).dataobj) if str(image_path).endswith((".nii", ".nii.gz")) \
            else array
        bad = int(np.count_nonzero(~np.isfinite(raw)))
        if bad:
            return [_row(case, "image_finite", "error", f"{bad} voxels are NaN or infinite; fix the conversion "
                         "that wrote the image")]
    low, high = float(array.min()), float(array.max())
    rows = [_row(case, "image_intensity", "info", f"range [{low:g}, {high:g}]")]
    if low > settings["air_hu"]:
        rows.append(_row(case, "hounsfield_units", "warning", f"lowest value {low:g} is above {settings['air_hu']} "
                         "(air is -1000 HU): not in Hounsfield units (rescale slope/intercept not applied?) or "
                         "cropped inside the body (qc.air_hu)"))
    if max(-low, high) > settings["max_abs_value"]:
        rows.append(_row(case, "intensity_range", "warning", f"values reach [{low:g}, {high:g}], beyond "
                         f"+-{settings['max_abs_value']:g}: raw or unsigned stored values? (qc.max_abs_value)"))
    return rows


def _lesion_rows(case: str, image: np.ndarray, labels: np.ndarray, spacing, lesion_values: list[int],
                 settings: dict) -> list[dict]:
    """Empty annotations, tiny components, and lesions off the tissue (a shifted, flipped or mismatched label)."""
    voxel_mm3 = float(np.prod(spacing))
    box = ndimage.find_objects((labels != 0).view(np.uint8))
    if not box:
        return [_row(case, "label_empty", "warning", "the label has no lesion voxels: an empty annotation, or the "
                     "wrong file?")]
    rows = []
    box = box[0]
    labels, image = labels[box], image[box]
    for value in lesion_values:
        mask = labels == value
        if not mask.any():
            continue
        components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes_mm3 = np.bincount(components.ravel())[1:] * voxel_mm3
        hu = image[mask].astype(np.float64)
        mean_hu, air = float(hu.mean()), float(np.mean(hu < settings["air_hu"]))
        rows.append(_row(case, "label_volume", "info", f"label {value}: {mask.sum() * voxel_mm3 / 1000:.3g} ml in "
                         f"{n} component(s), mean {mean_hu:.0f} HU"))
        tiny = int(np.count_nonzero(sizes_mm3 < settings["min_component_mm3"]))
        if tiny:
            rows.append(_row(case, "label_tiny_components", "warning", f"label {value}: {tiny} of {n} component(s) "
                             f"below {settings['min_component_mm3']:g} mm3 (smallest {sizes_mm3.min():.3g} mm3): "
                             "stray voxels? (qc.min_component_mm3)"))
        if air > settings["lesion_max_air_fraction"]:
            rows.append(_row(case, "label_in_air", "warning", f"label {value}: {air:.0%} of its voxels lie in air "
                             f"(< {settings['air_hu']} HU): a shifted, flipped or mismatched label? "
                             "(qc.lesion_max_air_fraction)"))
        elif mean_hu < settings["lesion_min_mean_hu"]:
            rows.append(_row(case, "label_mean_hu", "warning", f"label {value}: mean {mean_hu:.0f} HU is below "
                             f"{settings['lesion_min_mean_hu']:g} HU, unusual for a lesion: a label shifted off the "
                             "tissue? (qc.lesion_min_mean_hu)"))
    return rows


def write_case_qc(case: str, image_path: Path, label_path: Path | None, label_values: list[int],
                  out: Path, settings: dict | None = None) -> pd.DataFrame:
    table = check_case(case, image_path, label_path, label_values, settings)
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
