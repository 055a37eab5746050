"""DICOM series folders as NIfTI: one series chosen per case, slice gaps and uneven spacing found, and no tag copied.

Only the geometry (positions, orientation, pixel spacing), the rescale and the voxels are read into the NIfTI;
findings name series by their number, never by UID or any patient tag, so a case is known by its id only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.config import section_settings
from workflow_scripts.io import write_image, write_json

SERIES_RULES = ("most_slices", "thinnest_slices", "lowest_series_number")


class DicomError(RuntimeError):
    """A folder that cannot be made into one volume; the message names the case and the fix."""


@dataclass
class Series:
    number: int | None
    modality: str
    slices: list = field(default_factory=list)  # (path, dataset without pixels)

    @property
    def normal(self) -> np.ndarray:
        iop = _orientation(self.slices[0][1])
        return np.cross(iop[:3], iop[3:])

    def positions(self) -> np.ndarray:
        return np.asarray([np.dot([float(v) for v in ds.ImagePositionPatient], self.normal)
                           for _, ds in self.slices])

    @property
    def median_gap(self) -> float:
        gaps = np.diff(np.sort(self.positions()))
        return float(np.median(gaps)) if gaps.size else float("inf")

    def describe(self) -> str:
        number = "?" if self.number is None else self.number
        return f"series {number} ({self.modality}, {len(self.slices)} slices)"


def _orientation(ds) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)


GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def _valid_geometry(ds) -> bool:
    """Position (3), orientation (6, two non-parallel axes), pixel spacing (2, positive) and size all readable."""
    try:
        position = [float(v) for v in ds.ImagePositionPatient]
        orientation = _orientation(ds)
        spacing = [float(v) for v in ds.PixelSpacing]
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception:  # absent, empty, or not numbers
        return False
    return (len(position) == 3 and orientation.shape == (6,) and len(spacing) == 2
            and np.all(np.isfinite(position + spacing)) and np.all(np.isfinite(orientation))
            and min(spacing) > 0 and rows > 0 and columns > 0
            and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) > 0.5)


def _series_number(ds) -> int | None:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


def read_series(folder: Path) -> tuple[list[Series], int, int]:
    """Image series of a folder (searched recursively); the number of files that are no DICOM image (skipped),
    and of DICOM image files whose geometry cannot be read (damaged, left out)."""
    import pydicom

    series: dict[str, Series] = {}
    skipped = damaged = 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (a DICOMDIR's neighbours, notes, thumbnails)
            skipped += 1
            continue
        if not any(k in ds for k in GEOMETRY_TAGS):
            skipped += 1
            continue
        if not _valid_geometry(ds):
            damaged += 1
            continue
        key = str(ds.get("SeriesInstanceUID", "")) + "/" + str(ds.get("SeriesNumber", ""))
        series.setdefault(key, Series(_series_number(ds), str(ds.get("Modality", "?")))).slices.append((path, ds))
    return list(series.values()), skipped, damaged


def choose_series(candidates: list[Series], rule: str) -> Series:
    """The series a rule picks: most slices (then thinnest), thinnest slices (then most), or the lowest
    series number; remaining ties go to the lower series number."""
    number = lambda s: s.number if s.number is not None else 1 << 30  # noqa: E731
    keys = {"most_slices": lambda s: (-len(s.slices), s.median_gap, number(s)),
            "thinnest_slices": lambda s: (s.median_gap, -len(s.slices), number(s)),
            "lowest_series_number": lambda s: (number(s), -len(s.slices))}
    if rule not in keys:
        raise ValueError(f"unknown series rule {rule!r}; one of {SERIES_RULES}")
    return min(candidates, key=keys[rule])


@dataclass
class SliceFindings:
    missing: int            # slices missing in gaps of about k times the usual spacing
    gaps_mm: list[float]    # the gaps that hold missing slices
    uneven: float           # (largest - smallest) / median of the other gaps
    duplicates: int         # slices at a position already taken


def inspect_slices(positions: np.ndarray, gap_factor: float) -> SliceFindings:
    """Missing slices (a gap above ``gap_factor`` x the median gap) and the spread of the remaining gaps."""
    positions = np.sort(positions)
    gaps = np.diff(positions)
    duplicates = int(np.sum(gaps < 1e-3))
    gaps = gaps[gaps >= 1e-3]
    if gaps.size == 0:
        return SliceFindings(0, [], 0.0, duplicates)
    median = float(np.median(gaps))
    large = gaps > gap_factor * median
    missing = int(sum(round(g / median) - 1 for g in gaps[large]))
    regular = gaps[~large]
    uneven = float((regular.max() - regular.min()) / median) if regular.size else 0.0
    return SliceFindings(missing, [round(float(g), 3) for g in gaps[large]], uneven, duplicates)


def slice_order(series: Series) -> np.ndarray:
    """The series' slices in the order the volume stacks them: along the slice normal (DICOM results follow it)."""
    return np.argsort(series.positions(), kind="stable")


def _volume(series: Series) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Voxels (z, y, x) in the series' rescaled units and the LPS geometry (origin, spacing, direction)."""
    import pydicom

    first = series.slices[0][1]
    iop = _orientation(first)
    problems = []
    for _, ds in series.slices:
        if not np.allclose(_orientation(ds), iop, atol=1e-4):
            problems.append("orientation")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            problems.append("size")
        if not np.allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing], rtol=1e-4):
            problems.append("pixel spacing")
    if problems:
        raise DicomError(f"slices of {series.describe()} differ in {', '.join(sorted(set(problems)))}")
    positions = series.positions()
    order = slice_order(series)
    slices = []
    for index in order:
        try:
            ds = pydicom.dcmread(series.slices[index][0])
            pixels = ds.pixel_array
            slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        except Exception as err:  # pixels that do not decode, a rescale that is not a number
            raise DicomError(f"a slice of {series.describe()} cannot be decoded ({type(err).__name__}); re-export "
                             "the series (uncompressed, if it is compressed)") from None
        if pixels.shape != (first.Rows, first.Columns):
            raise DicomError(f"a slice of {series.describe()} holds pixels of shape {pixels.shape}, not "
                             f"{(first.Rows, first.Columns)} (multi-frame or colour); export the series as "
                             "single-frame greyscale slices")
        if not (np.isfinite(slope) and np.isfinite(intercept)):
            raise DicomError(f"a slice of {series.describe()} has rescale slope {slope} and intercept {intercept}; "
                             "re-export the series")
        slices.append(pixels.astype(np.float64) * slope + intercept)
    voxels = np.stack(slices)
    if np.all(np.mod(voxels, 1) == 0) and voxels.min() >= -32768 and voxels.max() <= 32767:
        voxels = voxels.astype(np.int16)
    else:
        voxels = voxels.astype(np.float32)
    gaps = np.diff(positions[order])
    slice_spacing = float(np.median(gaps)) if gaps.size else float(first.get("SliceThickness", 1.0) or 1.0)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = tuple(float(v) for v in series.slices[order[0]][1].ImagePositionPatient)
    # ITK's direction columns are the x (along a row), y (down a column) and slice axes.
    direction = tuple(np.column_stack([iop[:3], iop[3:], series.normal]).ravel().tolist())
    return voxels, origin, (column_spacing, row_spacing, slice_spacing), direction


def convert_series_folder(case: str, folder: Path, out_image: Path, out_findings: Path,
                          settings: dict | None = None) -> dict:
    """Write the chosen series of ``folder`` as NIfTI and the findings QC reports (series, slices).

    ``settings``: the config's ``data.dicom`` section (series rule, missing-gap factor, spacing tolerance); keys
    left out take the schema's defaults."""
    settings = section_settings("data.dicom", settings)
    rule = settings["series"]
    series, skipped, damaged = read_series(folder)
    if not series:
        raise DicomError(f"case {case}: no DICOM image slice in {folder} ({skipped} other files, {damaged} damaged); give the case "
                         "as one series folder of CT slices or as <case>.nii.gz")
    chosen = choose_series(series, rule)
    if len(chosen.slices) < 2:
        raise DicomError(f"case {case}: {chosen.describe()} in {folder} has one slice; a 3D series is needed")
    findings = inspect_slices(chosen.positions(), settings["missing_gap_factor"])
    if findings.duplicates:
        raise DicomError(f"case {case}: {chosen.describe()} has {findings.duplicates} slice(s) at a position "
                         "already taken (two acquisitions in one series?); split the series or remove the copies")
    try:
        voxels, origin, spacing, direction = _volume(chosen)
    except DicomError as err:
        raise DicomError(f"case {case}: {err}") from None
    image = sitk.GetImageFromArray(voxels)  # a new image: no metadata of the DICOM files comes along
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    write_image(image, out_image)
    report = {"case": case, "rule": rule, "chosen": chosen.describe(), "series_number": chosen.number,
              "other_series": sorted(s.describe() for s in series if s is not chosen),
              "slices": len(chosen.slices), "slice_spacing_mm": round(spacing[2], 4),
              "missing_slices": findings.missing, "missing_gaps_mm": findings.gaps_mm,
              "uneven_spacing": round(findings.uneven, 4), "spacing_tolerance": settings["spacing_tolerance"],
              "skipped_files": skipped, "damaged_files": damaged,
              # the scanner's maker (not a patient attribute) for the model card's training data
              "manufacturer": str(chosen.slices[0][1].get("Manufacturer", "")).strip() or None}
    write_json(report, out_findings)
    return report


def dicom_rows(findings: dict) -> list[tuple[str, str, str]]:
    """(check, severity, message) rows of a conversion's findings."""
    case, uneven_tolerance = findings["case"], findings["spacing_tolerance"]
    rows = [("dicom_series", "info", f"{findings['chosen']} chosen by rule {findings['rule']}"
             + (f" over {', '.join(findings['other_series'])}" if findings["other_series"] else "")
             + (f"; {findings['skipped_files']} file(s) not DICOM images skipped" if findings["skipped_files"] else ""))]
    if findings["missing_slices"]:
        rows.append(("dicom_missing_slices", "error",
                     f"{findings['missing_slices']} slice(s) missing from case {case}'s {findings['chosen']} (gaps of "
                     f"{findings['missing_gaps_mm']} mm where the spacing is {findings['slice_spacing_mm']} mm); "
                     "re-export the complete series, or allow the check for this case (qc.allow) to use it "
                     "with stretched geometry"))
    if findings.get("damaged_files"):
        rows.append(("dicom_damaged_files", "error",
                     f"{findings['damaged_files']} DICOM image file(s) in case {case}'s folder have no readable "
                     "position, orientation, pixel spacing or size and were left out; re-export the series, or "
                     "allow the check for this case (qc.allow) to use the rest"))
    if findings["uneven_spacing"] > uneven_tolerance:
        rows.append(("dicom_uneven_spacing", "warning",
                     f"slice gaps of case {case} vary by {findings['uneven_spacing']:.1%} of "
                     f"{findings['slice_spacing_mm']} mm (data.dicom.spacing_tolerance {uneven_tolerance}); the volume "
                     "is stored with the median gap, so positions drift along the scan"))
    return rows


def convert_dicom_entry(argv=None) -> None:
    import sys

    from workflow_scripts import cli

    p = cli.parser("convert-dicom", "Convert a case's DICOM series folder to NIfTI, with findings for QC.")
    p.add_argument("--case", required=True)
    p.add_argument("--folder", required=True, help="the case's DICOM folder (searched recursively)")
    cli.add_settings(p, "convert-dicom")
    p.add_argument("--out", required=True, help="NIfTI image to write")
    p.add_argument("--findings", required=True, help="JSON findings for QC to write")
    args = p.parse_args(argv)
    try:
        findings = convert_series_folder(args.case, Path(args.folder), Path(args.out), Path(args.findings),
                                         args.settings["data"]["dicom"])
    except DicomError as err:
        sys.exit(f"error: {err}")
    print(f"{args.case}: {findings['chosen']} (rule {findings['rule']}), {findings['missing_slices']} missing "
          f"slice(s), other series: {findings['other_series'] or 'none'}")
