"""Independent judges of the DICOM objects the workflow writes: dciodvfy (Debian's dicom3tools) checks an object
against the standard; dcmqi's segimage2itkimage (PyPI, the converter MHub uses) reads a SEG back."""
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


def judge(name: str) -> str:
    """The path of an independent checker; CI installs both (.ci/run, requirements.txt), elsewhere a missing one
    skips with how to get it."""
    path = shutil.which(name) if name == "dciodvfy" else str(SEGIMAGE2ITKIMAGE) if SEGIMAGE2ITKIMAGE.exists() else None
    if path is None:
        message = f"{name} not found: apt-get install dicom3tools (dciodvfy) / pip install dcmqi (segimage2itkimage)"
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
