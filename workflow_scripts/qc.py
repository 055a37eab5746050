"""Quality control of the input cases: readable 3D images, geometry, intensities in HU, labels on the image grid,
known label values, and lesions that look like annotation errors (empty, tiny, in air or off the tissue)."""
from __future__ import annotations

import re
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from workflow_scripts.cases import SAFE_CASE_ID, safe_case_id
from workflow_scripts.config import section_settings
from workflow_scripts.dicom import dicom_rows
from workflow_scripts.io import (Volume, describe_shape, pyplot, read_json, read_volume, write_figure,
                                 write_json, write_table)
from workflow_scripts.metrics import bounding_box

try:  # ISA-L's checksums, as the standard library's
    from isal import isal_zlib as checksums
except ImportError:  # pragma: no cover - other platforms
    import zlib as checksums


COLUMNS = ["case", "check", "severity", "message"]


class QCError(RuntimeError):
    """Raised when cases fail QC; the message names every failing case and the fix."""


def finding(case, check, severity, message) -> dict:
    """One row of a QC table."""
    return {"case": case, "check": check, "severity": severity, "message": message}


def channel_suffix_hint(case: str, label_path: Path) -> str:
    """For an image named as in nnU-Net's raw layout (``<case>_0000.nii.gz`` beside ``<case>.nii.gz`` labels):
    what to do about its channel suffix."""
    match = re.fullmatch(r"(.+)_(\d{4})", case)
    if not match or not (label_path.parent / f"{match.group(1)}.nii.gz").exists():
        return ""
    return (f"; the image's name ends in _{match.group(2)}, nnU-Net's channel suffix, and the label is "
            f"{match.group(1)}.nii.gz: rename the image {match.group(1)}.nii.gz (this workflow takes one CT channel)")


def _read(case: str, check: str, path: Path) -> tuple[Volume | None, dict | None]:
    try:
        return read_volume(path), None
    except Exception as err:  # any reader failure is a QC finding, never a traceback
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        return None, finding(case, check, "error", f"cannot read {path}: {reason} ({type(err).__name__}); "
                          "re-export or re-download the file")


def inspect_case(case: str, image_path: Path, label_path: Path | None, label_values: list[int],
                 settings: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The case's QC table and its measurements (geometry, intensity range, volume and component count per
    lesion label) for the dataset summary; measurements stop where a check stops."""
    settings = section_settings("qc", settings)
    measured = {"case": case}
    image, error = _read(case, "image_readable", image_path)
    if error:
        return pd.DataFrame([error], columns=COLUMNS), measured
    if image.dimension != 3 or image.components != 1:
        return pd.DataFrame([finding(case, "image_3d", "error", f"{image_path} is {describe_shape(image)}; a "
                                  "single-channel 3D CT is needed (one volume, one value per voxel)")],
                            columns=COLUMNS), measured
    rows = _geometry_rows(case, image, settings, measured) + _intensity_rows(case, image.voxels, settings, measured)
    rows.append(finding(case, "image_content", "info", f"crc32+adler32 {content_hash(image)}"))
    if label_path is None:
        return pd.DataFrame(rows, columns=COLUMNS), measured
    if not Path(label_path).exists():
        rows.append(finding(case, "label_exists", "error", f"no label {label_path} for image {image_path}"
                         + channel_suffix_hint(case, Path(label_path))))
        return pd.DataFrame(rows, columns=COLUMNS), measured
    label, error = _read(case, "label_readable", label_path)
    if error:
        return pd.DataFrame(rows + [error], columns=COLUMNS), measured
    problems = []
    if label.dimension != 3 or label.components != 1 or label.size != image.size:
        problems.append(f"size {label.size} with {label.components} component(s) vs image {image.size}")
    elif not np.allclose(label.spacing, image.spacing, rtol=settings["spacing_tolerance"]):
        problems.append(f"spacing {label.spacing} vs image {image.spacing}")
    if label.dimension == 3:
        if not np.allclose(label.origin, image.origin, atol=settings["origin_tolerance_mm"]):
            problems.append(f"origin {label.origin} vs image {image.origin}")
        if not np.allclose(label.direction, image.direction, atol=settings["direction_tolerance"]):
            problems.append(f"direction {_orientation(label.direction)} vs image {_orientation(image.direction)}")
    if problems:
        rows.append(finding(case, "label_grid", "error", "label is not on the image grid: " + "; ".join(problems)
                         + ". Resample the label onto its image (nearest neighbour) or fix the pairing"))
    if label.voxels is None:
        return pd.DataFrame(rows, columns=COLUMNS), measured
    box = bounding_box(label.voxels != 0)
    values, voxels = _value_counts(label.voxels, box)
    unknown = sorted(v for v in values.tolist() if v not in label_values)
    if unknown:
        rows.append(finding(case, "label_values", "error", f"label values {unknown} are not in the configured "
                         f"labels {label_values}; fix the label or add them to config 'labels'"))
    rows.append(finding(case, "label_voxels", "info", ", ".join(f"label {v:g}: {c}" for v, c in zip(values, voxels))))
    if not problems:
        rows += _lesion_rows(case, image.voxels, label.voxels, box, image.spacing,
                             [v for v in label_values if v != 0], settings, measured)
    return pd.DataFrame(rows, columns=COLUMNS), measured


def content_hash(volume: Volume) -> str:
    """CRC-32 and Adler-32 (64 bits) of the voxels, their type and the geometry: equal for the same image
    stored under two ids. ISA-L computes both at several GB/s; a cryptographic hash took 6x longer."""
    voxels = volume.voxels
    buffer = voxels.T if voxels.flags.f_contiguous and not voxels.flags.c_contiguous else np.ascontiguousarray(voxels)
    data = memoryview(buffer).cast("B")
    meta = repr((str(voxels.dtype), volume.size, np.round(volume.spacing, 4).tolist())).encode()
    crc = checksums.crc32(data, checksums.crc32(meta))
    adler = checksums.adler32(data, checksums.adler32(meta))
    return f"{crc:08x}{adler:08x}"


def _value_counts(array: np.ndarray, box: tuple[slice, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their voxel counts; ``box`` holds every non-zero voxel (None: there are none). Label
    maps: one comparison per value inside the box; other arrays: a sort."""
    if box is None:
        return np.array([0]), np.array([array.size])
    inner = array[box]
    if np.issubdtype(array.dtype, np.integer):
        low, high = min(int(inner.min()), 0), int(inner.max())
        if high - low < 32:
            values = np.arange(low, high + 1)
            counts = np.array([np.count_nonzero(inner == v) for v in values])
            counts[values == 0] += array.size - inner.size
            return values[counts > 0], counts[counts > 0]
    return np.unique(array, return_counts=True)


def _orientation(direction) -> str:
    """Three-letter DICOM orientation code of direction cosines (LPS: x to the left, y to the back, z up)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction)


def _geometry_rows(case: str, image: Volume, settings: dict, measured: dict) -> list[dict]:
    spacing, size = image.spacing, image.size
    measured.update({f"size_{a}": int(n) for a, n in zip("xyz", size)})
    measured.update({f"spacing_{a}_mm": float(d) for a, d in zip("xyz", spacing)})
    measured.update({f"field_{a}_mm": float(n * d) for a, n, d in zip("xyz", size, spacing)})
    measured["orientation"] = _orientation(image.direction)
    rows = [finding(case, "image_geometry", "info", f"size {size}, spacing {tuple(round(s, 3) for s in spacing)} mm, "
                 f"orientation {measured['orientation']}")]
    low, high = settings["slice_thickness_mm"]
    if not low <= spacing[2] <= high:
        rows.append(finding(case, "slice_thickness", "warning", f"slice spacing {spacing[2]:.3g} mm is outside "
                         f"[{low}, {high}] mm; check the header (qc.slice_thickness_mm sets the range)"))
    low, high = settings["in_plane_spacing_mm"]
    if not (low <= spacing[0] <= high and low <= spacing[1] <= high):
        rows.append(finding(case, "in_plane_spacing", "warning", f"in-plane spacing {spacing[0]:.3g} x {spacing[1]:.3g} "
                         f"mm is outside [{low}, {high}] mm; check the header (qc.in_plane_spacing_mm)"))
    field = (size[0] * spacing[0], size[1] * spacing[1])
    if min(field) < settings["min_field_of_view_mm"]:
        rows.append(finding(case, "field_of_view", "warning", f"field of view {field[0]:.0f} x {field[1]:.0f} mm is "
                         f"below {settings['min_field_of_view_mm']} mm: a tightly cropped scan loses context "
                         "(qc.min_field_of_view_mm)"))
    return rows


def _intensity_rows(case: str, array: np.ndarray, settings: dict, measured: dict) -> list[dict]:
    if np.issubdtype(array.dtype, np.floating):
        # Read with nibabel: ITK's NIfTI reader turns NaN and infinity into 0, nnU-Net's NibabelIO keeps them.
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            return [finding(case, "image_finite", "error", f"{bad} voxels are NaN or infinite; fix the conversion "
                         "that wrote the image")]
    low, high = float(array.min()), float(array.max())
    measured.update(intensity_min=low, intensity_max=high)
    rows = [finding(case, "image_intensity", "info", f"range [{low:g}, {high:g}]")]
    if low > settings["air_hu"]:
        rows.append(finding(case, "hounsfield_units", "warning", f"lowest value {low:g} is above {settings['air_hu']} "
                         "(air is -1000 HU): not in Hounsfield units (rescale slope/intercept not applied?) or "
                         "cropped inside the body (qc.air_hu)"))
    if max(-low, high) > settings["max_abs_value"]:
        rows.append(finding(case, "intensity_range", "warning", f"values reach [{low:g}, {high:g}], beyond "
                         f"+-{settings['max_abs_value']:g}: raw or unsigned stored values? (qc.max_abs_value)"))
    return rows


def _lesion_rows(case: str, image: np.ndarray, labels: np.ndarray, box: tuple[slice, ...] | None, spacing,
                 lesion_values: list[int], settings: dict, measured: dict) -> list[dict]:
    """Empty annotations, tiny components, and lesions off the tissue (a shifted, flipped or mismatched label);
    ``box`` holds every non-zero label voxel."""
    voxel_mm3 = float(np.prod(spacing))
    for value in lesion_values:
        measured.update({f"label_{value}_ml": 0.0, f"label_{value}_lesions": 0})
    if box is None:
        return [finding(case, "label_empty", "warning", "the label has no lesion voxels: an empty annotation, or the "
                     "wrong file?")]
    rows = []
    labels, image = labels[box], image[box]
    for value in lesion_values:
        mask = labels == value
        if not mask.any():
            continue
        components, n = cc3d.connected_components(mask, connectivity=26, return_N=True)  # 5x scipy's label
        voxels = np.bincount(components.ravel())[1:]
        sizes_mm3 = voxels * voxel_mm3
        hu = image[mask].astype(np.float64)
        mean_hu, air = float(hu.mean()), float(np.mean(hu < settings["air_hu"]))
        volume_ml = float(np.count_nonzero(mask) * voxel_mm3 / 1000)
        measured.update({f"label_{value}_ml": volume_ml, f"label_{value}_lesions": n})
        rows.append(finding(case, "label_volume", "info", f"label {value}: {volume_ml:.3g} ml in {n} component(s), "
                         f"mean {mean_hu:.0f} HU"))
        # By volume and by voxel count: at 3 mm voxels one stray voxel is 27 mm3, above a volume floor.
        tiny = (sizes_mm3 < settings["min_component_mm3"]) | (voxels < settings["min_component_voxels"])
        if tiny.any():
            rows.append(finding(case, "label_tiny_components", "warning", f"label {value}: {int(tiny.sum())} of {n} "
                             f"component(s) below {settings['min_component_mm3']:g} mm3 or "
                             f"{settings['min_component_voxels']} voxels (smallest {voxels.min()} voxel(s), "
                             f"{sizes_mm3.min():.3g} mm3): stray voxels? (qc.min_component_mm3, "
                             "qc.min_component_voxels)"))
        if air > settings["lesion_max_air_fraction"]:
            rows.append(finding(case, "label_in_air", "warning", f"label {value}: {air:.0%} of its voxels lie in air "
                             f"(< {settings['air_hu']} HU): a shifted, flipped or mismatched label? "
                             "(qc.lesion_max_air_fraction)"))
        elif mean_hu < settings["lesion_min_mean_hu"]:
            rows.append(finding(case, "label_mean_hu", "warning", f"label {value}: mean {mean_hu:.0f} HU is below "
                             f"{settings['lesion_min_mean_hu']:g} HU, unusual for a lesion: a label shifted off the "
                             "tissue? (qc.lesion_min_mean_hu)"))
    return rows


def write_case_qc(case: str, image_path: Path, label_path: Path | None, label_values: list[int],
                  out: Path, settings: dict | None = None, out_measurements: Path | None = None,
                  dicom_findings: Path | None = None, anatomy_path: Path | None = None) -> pd.DataFrame:
    """The case's QC table (and measurements) written; a DICOM case's conversion findings come first. With
    ``anatomy_path`` (a precomputed anatomy map, which refinement reads) its presence is checked."""
    table, measured = inspect_case(case, image_path, label_path, label_values, settings)
    if dicom_findings is not None:
        rows = [finding(case, *row) for row in dicom_rows(read_json(dicom_findings))]
        table = pd.concat([pd.DataFrame(rows, columns=COLUMNS), table], ignore_index=True)
    if anatomy_path is not None and not Path(anatomy_path).is_file():
        row = finding(case, "anatomy_exists", "error", f"no anatomy map {anatomy_path} (anatomy.source: precomputed); "
                   "add the case's map or let the workflow compute it (anatomy.source: totalsegmentator)")
        table = pd.concat([table, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True)
    write_table(table, out)
    if out_measurements is not None:
        write_json(measured, out_measurements)
    return table


SUMMARY_OUTLIER_COLUMNS = {"spacing_x_mm": "in-plane spacing", "spacing_z_mm": "slice spacing",
                           "field_x_mm": "field of view", "size_z": "slice count"}


def dataset_summary(measurement_files: list[Path], splits: dict[str, str], labels: dict[str, int],
                    outlier_z: float = 5.0) -> tuple[pd.DataFrame, list[dict]]:
    """One row per case (split, geometry, intensity range, volume and lesion count per class), and warning rows
    for cases far from the dataset's median: robust z (median absolute deviation, at least 5 % of the median)
    above ``outlier_z``, for spacing, field of view, slice count and each class's volume where present."""
    summary = pd.DataFrame([read_json(p) for p in measurement_files])
    summary.insert(1, "split", summary["case"].map(splits))
    lesions = {n: v for n, v in labels.items() if v != 0}
    summary = summary.rename(columns={f"label_{v}_{k}": f"{n}_{k}" for n, v in lesions.items()
                                      for k in ("ml", "lesions")})
    checked = SUMMARY_OUTLIER_COLUMNS | {f"{n}_ml": f"{n} volume (ml)" for n in lesions}
    rows = []
    for column, what in checked.items():
        if column not in summary:
            continue
        values = summary[column].astype(float)
        if column.endswith("_ml"):
            values = values[values > 0]
        if len(values) < 5:
            continue
        median = float(values.median())
        scale = max(1.4826 * float((values - median).abs().median()), 0.05 * abs(median), 1e-9)
        for index, value in values.items():
            z = abs(value - median) / scale
            if z > outlier_z:
                rows.append(finding(summary.loc[index, "case"], "dataset_outlier", "warning",
                                 f"{what} {value:.4g} against the dataset's median {median:.4g} (robust z {z:.0f}): "
                                 "a different protocol or a header error?"))
    return summary, rows


def plot_dataset(summary: pd.DataFrame, labels: dict[str, int], out: Path) -> None:
    """Spacing, field of view, lesion volume per class and label presence per split, in one figure."""
    plt = pyplot()

    lesions = [n for n, v in labels.items() if v != 0]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for split, group in summary.groupby("split"):
        axes[0].scatter(group.get("spacing_x_mm"), group.get("spacing_z_mm"), label=split, alpha=0.7)
        axes[1].scatter(group.get("field_x_mm"), group.get("field_y_mm"), label=split, alpha=0.7)
    axes[0].set(xlabel="in-plane spacing (mm)", ylabel="slice spacing (mm)", title="Spacing")
    axes[1].set(xlabel="field of view x (mm)", ylabel="field of view y (mm)", title="Field of view")
    volumes = [summary[f"{n}_ml"].dropna().loc[lambda v: v > 0] if f"{n}_ml" in summary else pd.Series(dtype=float)
               for n in lesions]
    axes[2].boxplot(volumes, tick_labels=lesions)
    axes[2].set(yscale="log", ylabel="volume per case (ml)", title="Lesion volume (cases with the class)")
    presence = pd.DataFrame({split: [float((group[f"{n}_ml"] > 0).mean()) if f"{n}_ml" in group else 0.0
                                     for n in lesions] for split, group in summary.groupby("split")}, index=lesions)
    presence.plot.bar(ax=axes[3], rot=0)
    axes[3].set(ylim=(0, 1), ylabel="fraction of cases", title="Label presence")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    write_figure(fig, out, dpi=80)


def excluded_cases(table: pd.DataFrame) -> dict[str, str]:
    """{case: reason} of every excluded case in a QC table (by qc.exclude or by qc.on_error)."""
    rows = table[table["check"] == "excluded"]
    return dict(zip(rows["case"], rows["message"]))


def passing_cases(table: pd.DataFrame, splits: dict[str, str]) -> dict:
    """The cases of each split that go on after QC, and the excluded ones with their reason."""
    excluded = excluded_cases(table)
    return {"train": [c for c, s in splits.items() if s == "train" and c not in excluded],
            "test": [c for c, s in splits.items() if s == "test" and c not in excluded], "excluded": excluded}


# Errors qc.allow may turn into warnings: the workflow runs on with them. Any other error breaks a later step
# (an unreadable file, a label on another grid or with unknown values), so only exclusion or a fix gets past it.
ALLOWABLE_CHECKS = ("duplicate_image", "dicom_missing_slices", "dicom_damaged_files")


def qc_table(case_tables: list[Path], on_error: str, exclude: dict[str, str] | None = None,
             allow: dict[str, list[str]] | None = None, orphan_labels: dict[str, Path] | None = None,
             dataset_rows: list[dict] | None = None, splits: dict[str, str] | None = None,
             misnamed: dict[str, str] | None = None, case_pattern: str = "", channel_suffix: str = "") -> pd.DataFrame:
    """The dataset's QC table: the case tables, plus dataset-level rows (the same image under two ids, labels
    without an image, images named off the case pattern (``misnamed``: {name: path}), cases excluded by config,
    ``dataset_rows`` such as outliers); errors allowed by ``allow`` ({case: [check]}) become warnings. With
    ``on_error="exclude"`` training cases with errors (``splits``: {case: "train" | "test"}) get an ``excluded``
    row; their errors stay in the table. ``qc_verdict`` decides whether the run goes on."""
    table = pd.concat([pd.read_csv(p, sep="\t") for p in case_tables], ignore_index=True)
    rows = list(dataset_rows or [])
    contents = table[table["check"] == "image_content"]
    for _, same in contents.groupby("message"):
        for case in same["case"]:
            if len(same) > 1:
                others = ", ".join(c for c in same["case"] if c != case)
                rows.append(finding(case, "duplicate_image", "error", f"same voxels and geometry as {others}: one "
                                 "image under two ids; remove one copy"))
    for case, path in sorted((orphan_labels or {}).items()):
        rows.append(finding(case, "label_without_image", "warning", f"label {path} has no image, so the case is left "
                         "out; add its image or remove the label"))
    for name, path in sorted((misnamed or {}).items()):
        if channel_suffix and Path(path).name.endswith(".nii.gz") and not Path(path).name.endswith(
                f"{channel_suffix}.nii.gz"):
            rows.append(finding(name, "case_name", "error", f"{path}: the name does not end in data.channel_suffix "
                             f"'{channel_suffix}' (a second channel? this workflow takes one CT channel), so no rule "
                             "can use it; remove or rename the file"))
            continue
        if not SAFE_CASE_ID.fullmatch(name):
            rows.append(finding(name, "case_name", "error", f"{path}: the id '{name}' holds characters a case id cannot "
                             "have here (ASCII letters, digits, '_', '-' and '.' only; it names files in nnU-Net's "
                             f"datasets and Snakemake's jobs), so no rule can use it; rename the image (and its label) "
                             f"to '{safe_case_id(name)}'"))
            continue
        rows.append(finding(name, "case_name", "error", f"{path}: the id '{name}' does not match data.case_pattern "
                         f"'{case_pattern}', so no rule can use it; rename the image (and its label) or change the "
                         "pattern"))
    for case, reason in sorted((exclude or {}).items()):
        rows.append(finding(case, "excluded", "info", f"excluded by qc.exclude ({reason}): never used for training, "
                         "prediction or evaluation"))
    table = pd.concat([table, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
    for case, checks in (allow or {}).items():
        allowed = (table["case"] == case) & table["check"].isin(checks) & (table["severity"] == "error")
        table.loc[allowed, "message"] = "allowed by qc.allow: " + table.loc[allowed, "message"]
        table.loc[allowed, "severity"] = "warning"
    if on_error == "exclude":
        errors = table[table["severity"] == "error"]
        failing = [c for c in errors["case"].unique() if (splits or {}).get(c) == "train"]
        excluded = [finding(case, "excluded", "info", "excluded by qc.on_error: exclude after errors in "
                         + ", ".join(sorted(set(errors.loc[errors["case"] == case, "check"])))
                         + ": never used for training or evaluation") for case in failing]
        table = pd.concat([table, pd.DataFrame(excluded, columns=COLUMNS)], ignore_index=True)
    return table


def qc_verdict(table: pd.DataFrame, table_path: Path, on_error: str, splits: dict[str, str]) -> None:
    """Raise ``QCError`` when errors remain (not excluded): the message names every such case and check, and
    gives the config lines that let the run go on (each accepted by the schema) or says that a fix is needed."""
    excluded = excluded_cases(table)
    if on_error == "exclude" and any(s == "train" for s in splits.values()) and not passing_cases(table, splits)["train"]:
        raise QCError(f"every training case has QC errors; see {table_path}")
    errors = table[(table["severity"] == "error") & ~table["case"].isin(excluded)]
    if errors.empty:
        return
    lines = [f"  {r.case}: [{r.check}] {r.message}" for r in errors.itertuples()]
    checks = errors.groupby("case")["check"].agg(lambda c: sorted(set(c)))
    allow = {case: c for case, c in checks.items() if set(c) <= set(ALLOWABLE_CHECKS)}
    exclude = {case: f"QC errors: {', '.join(c)}" for case, c in checks.items() if case not in allow}
    snippet = yaml.safe_dump({"qc": {k: v for k, v in (("exclude", exclude), ("allow", allow)) if v}},
                             default_flow_style=None, sort_keys=False, width=200)
    policy = (" (qc.on_error: exclude leaves out training cases only, not a new case you asked to segment)"
              if on_error == "exclude" else "; qc.on_error: exclude would leave out the failing training cases")
    raise QCError(f"QC found errors in {len(checks)} case(s); the table is {table_path}, with the dataset summary "
                  f"and figure beside it:\n" + "\n".join(lines) + "\nFix each file, or go on without these cases by "
                  "adding to the config (qc.exclude leaves a case out of everything; qc.allow accepts only the "
                  f"checks {', '.join(ALLOWABLE_CHECKS)})" + policy + ":\n" + snippet.rstrip())


def qc_case_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("qc-case", "Check one case (image, label, DICOM findings); write its QC table.")
    p.add_argument("--case", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--label")
    cli.add_settings(p, "qc-case")
    p.add_argument("--out", required=True)
    p.add_argument("--measurements", help="JSON file for the case's measurements (dataset summary)")
    p.add_argument("--dicom-findings", help="JSON findings of the case's DICOM conversion (convert-dicom)")
    p.add_argument("--anatomy", help="the case's precomputed anatomy map, checked to exist")
    args = p.parse_args(argv)
    table = write_case_qc(args.case, Path(args.image), Path(args.label) if args.label else None,
                          list(args.settings["labels"].values()), Path(args.out), args.settings["qc"], Path(args.measurements) if args.measurements else None,
                          Path(args.dicom_findings) if args.dicom_findings else None,
                          Path(args.anatomy) if args.anatomy else None)
    for row in table[table["severity"] != "info"].itertuples():
        print(f"{row.severity}: [{row.check}] {row.message}")


def qc_aggregate_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("qc-aggregate", "One QC table of every case, the dataset summary and its figure. Never stops "
                   "the run (qc-gate does), so the table is there to read when the run stops.")
    cli.add_settings(p, "qc-aggregate")
    p.add_argument("--tables", nargs="+", required=True, help="the cases' QC tables")
    p.add_argument("--measurements", nargs="+", required=True, help="the cases' QC measurement JSON files")
    p.add_argument("--orphan-labels", type=cli.json_value, default={}, help="JSON {case: label path} of labels "
                   "without an image")
    p.add_argument("--misnamed", type=cli.json_value, default={}, help="JSON {name: path} of images named off "
                   "the case pattern")
    p.add_argument("--splits", type=cli.json_value, required=True, help="JSON {case: split}")
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True, help="dataset summary TSV to write")
    p.add_argument("--figure", required=True, help="dataset figure PNG to write")
    args = p.parse_args(argv)
    settings, labels, data = args.settings["qc"], args.settings["labels"], args.settings["data"]
    summary, dataset_rows = dataset_summary([Path(m) for m in args.measurements], args.splits, labels)
    write_table(summary, Path(args.summary))
    plot_dataset(summary, labels, Path(args.figure))
    table = qc_table([Path(t) for t in args.tables], settings["on_error"], settings["exclude"], settings["allow"],
                     args.orphan_labels, dataset_rows, args.splits, args.misnamed, data["case_pattern"],
                     data["channel_suffix"])
    write_table(table, Path(args.out))
    counts = table[table["severity"] != "info"].groupby(["severity", "check"])["case"].nunique()
    print(f"QC: {len(args.tables)} cases checked, {len(table)} rows")
    for (severity, check), count in counts.items():
        print(f"  {severity} {check}: {count} case(s)")


def qc_gate_entry(argv=None) -> None:
    import sys

    from workflow_scripts import cli

    p = cli.parser("qc-gate", "Stop the run on QC errors, naming every failing case and the config lines that let "
                   "it go on; else write the cases that go on.")
    cli.add_settings(p, "qc-gate")
    p.add_argument("--table", required=True, help="the QC table written by qc-aggregate")
    p.add_argument("--splits", type=cli.json_value, required=True, help="JSON {case: split}")
    p.add_argument("--passing", required=True, help="JSON to write: the cases of each split that go on, and the "
                   "excluded ones")
    args = p.parse_args(argv)
    table = pd.read_csv(args.table, sep="\t")
    try:
        qc_verdict(table, Path(args.table), args.settings["qc"]["on_error"], args.splits)
    except QCError as err:
        sys.exit(str(err))
    passing = passing_cases(table, args.splits)
    write_json(passing, Path(args.passing))
    for case, reason in passing["excluded"].items():
        print(f"excluded {case}: {reason}")
    warnings = table[table["severity"] == "warning"]
    print(f"QC passed: {len(passing['train'])} training and {len(passing['test'])} new case(s) go on; "
          f"{len(warnings)} warning(s) in {warnings['case'].nunique()} case(s)")
