"""Independent judges of the DICOM objects the workflow writes: dciodvfy (Debian's dicom3tools) checks an object
against the standard; dcmqi's segimage2itkimage (PyPI, the converter MHub uses) reads a SEG back; plastimatch
(Debian) rasterises an RT structure set back on its referenced series."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"  # dcmqi, from PyPI
# What the standard has a SEG carry of its source: the Patient and General Study modules (highdicom copies them).
PATIENT_AND_STUDY = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"}


HOW_TO_GET = {"dciodvfy": "apt-get install dicom3tools", "segimage2itkimage": "pip install dcmqi",
              "plastimatch": "apt-get install plastimatch"}


def judge(name: str) -> str:
    """The path of an independent checker; CI installs each (.ci/run, requirements.txt), elsewhere a missing one
    skips with how to get it."""
    if name == "segimage2itkimage":
        path = str(SEGIMAGE2ITKIMAGE) if SEGIMAGE2ITKIMAGE.exists() else None
    else:
        path = shutil.which(name)
    if path is None:
        message = f"{name} not found: {HOW_TO_GET[name]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([judge("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def read_back_with_dcmqi(seg: Path, out: Path) -> sitk.Image:
    """dcmqi's reading of the SEG: one image of segment numbers (segments merged; they do not overlap)."""
    out.mkdir()
    result = subprocess.run([judge("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(out),
                             "--outputType", "nifti", "--mergeSegments"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    images = sorted(out.glob("*.nii.gz"))
    assert len(images) == 1, images
    return sitk.ReadImage(str(images[0]))


def at_source_slice(image: sitk.Image, ds) -> np.ndarray:
    """``image`` sampled (nearest voxel, 0 outside) on the pixel grid of one source slice, at its own position."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    grid = sitk.Image(int(ds.Columns), int(ds.Rows), 1, sitk.sitkUInt8)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    grid.SetSpacing((column_spacing, row_spacing, 1.0))
    grid.SetOrigin([float(v) for v in ds.ImagePositionPatient])
    grid.SetDirection(np.column_stack([iop[:3], iop[3:], normal]).ravel().tolist())
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))[0]


def rasterise_with_plastimatch(rtstruct: Path, series: Path, out: Path) -> dict[str, sitk.Image]:
    """plastimatch's rasterisation of each ROI of ``rtstruct`` (referencing the DICOM series in ``series``)."""
    result = subprocess.run([judge("plastimatch"), "convert", "--input", str(rtstruct), "--referenced-ct", str(series),
                             "--output-prefix", str(out), "--prefix-format", "nii.gz"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {path.name[: -len(".nii.gz")]: sitk.ReadImage(str(path)) for path in sorted(out.glob("*.nii.gz"))}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def measurement_groups(report) -> list[dict]:
    """Each measurement group of a TID 1500 report: its items' values by concept name."""
    groups = []

    def walk(items):
        for item in items:
            if item.ConceptNameCodeSequence[0].CodeValue == "125007":  # Measurement Group
                values = {}
                for child in item.ContentSequence:
                    meaning = child.ConceptNameCodeSequence[0].CodeMeaning
                    if child.ValueType == "TEXT":
                        values[meaning] = child.TextValue
                    elif child.ValueType == "CODE":
                        values.setdefault(meaning, []).append(child.ConceptCodeSequence[0].CodeValue)
                        for modifier in child.get("ContentSequence", []):
                            values[modifier.ConceptNameCodeSequence[0].CodeMeaning] = (
                                modifier.ConceptCodeSequence[0].CodeValue)
                    elif child.ValueType == "NUM":
                        values[meaning] = float(child.MeasuredValueSequence[0].NumericValue)
                    elif child.ValueType == "IMAGE" and "ReferencedSegmentNumber" in child.ReferencedSOPSequence[0]:
                        values["segment"] = int(child.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                        values["segmentation"] = child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                groups.append(values)
            elif "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(report.ContentSequence)
    return groups

