"""DICOM series folders: conversion against ITK's series reader, series choice, missing and uneven slices, no
patient tag in any output, and QC rows naming the case and the fix."""
import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_fixture import SYNTHETIC_PATIENT_TAGS, phantom_hu, write_series
from workflow_scripts.cases import discover_cases
from workflow_scripts.config import ConfigError, section_settings
from workflow_scripts.dicom import DicomError, convert_series_folder, inspect_slices
from workflow_scripts.qc import write_case_qc

pytestmark = pytest.mark.unit

OBLIQUE = (np.cos(0.3), np.sin(0.3), 0.0, 0.0, 0.0, -1.0)  # a tilted coronal acquisition


def convert(tmp_path, folder, case="case_1", **settings):
    return convert_series_folder(case, folder, tmp_path / f"{case}.nii.gz", tmp_path / f"{case}.json", settings)


def itk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_a_series_converts_to_what_itk_reads_and_carries_no_patient_tag(tmp_path):
    hu = phantom_hu()
    write_series(tmp_path / "dicom", hu, orientation=OBLIQUE)
    findings = convert(tmp_path, tmp_path / "dicom")
    ours, itk = sitk.ReadImage(str(tmp_path / "case_1.nii.gz")), itk_series(tmp_path / "dicom")
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(itk))
    assert np.array_equal(sitk.GetArrayFromImage(ours), hu)  # rescale intercept applied: Hounsfield units
    np.testing.assert_allclose(ours.GetOrigin(), itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetSpacing(), itk.GetSpacing(), rtol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), itk.GetDirection(), atol=1e-6)
    assert findings["missing_slices"] == 0 and findings["slices"] == 12 and findings["other_series"] == []
    written = gzip.decompress((tmp_path / "case_1.nii.gz").read_bytes()) + (tmp_path / "case_1.json").read_bytes()
    for value in SYNTHETIC_PATIENT_TAGS.values():
        assert value.encode() not in written
        assert value.encode() in next((tmp_path / "dicom").iterdir()).read_bytes()  # the check could fail


def qc_rows(tmp_path, case="case_1"):
    table = write_case_qc(case, tmp_path / f"{case}.nii.gz", None, [0, 1, 2], tmp_path / "qc.tsv",
                          {**section_settings("qc"), "min_field_of_view_mm": 10},
                          dicom_findings=tmp_path / f"{case}.json")
    return table.set_index("check")


def test_a_missing_slice_is_an_error_naming_the_case_and_the_fix(tmp_path):
    write_series(tmp_path / "dicom", phantom_hu(), drop=(5,))
    findings = convert(tmp_path, tmp_path / "dicom")
    assert findings["missing_slices"] == 1 and findings["missing_gaps_mm"] == [5.0]
    row = qc_rows(tmp_path).loc["dicom_missing_slices"]
    assert row["severity"] == "error"
    assert row["message"].startswith("1 slice(s) missing from case case_1's series 2 (CT, 11 slices)")
    assert "re-export the complete series" in row["message"] and "qc.allow" in row["message"]


def test_uneven_slice_spacing_is_a_warning(tmp_path):
    write_series(tmp_path / "dicom", phantom_hu(), z_jitter={4: 0.3, 9: -0.2})
    findings = convert(tmp_path, tmp_path / "dicom")
    assert findings["missing_slices"] == 0 and findings["uneven_spacing"] == pytest.approx((2.8 - 2.2) / 2.5, abs=1e-3)  # gaps 2.8 and 2.2 by slice 4
    rows = qc_rows(tmp_path)
    assert rows.loc["dicom_uneven_spacing", "severity"] == "warning"
    assert "data.dicom.spacing_tolerance 0.01" in rows.loc["dicom_uneven_spacing", "message"]
    write_series(tmp_path / "even", phantom_hu())
    convert(tmp_path, tmp_path / "even", case="case_2")
    assert set(qc_rows(tmp_path, "case_2")["severity"]) == {"info"}


def test_a_slice_without_its_position_is_left_out_as_an_error(tmp_path):
    import pydicom

    paths = sorted(write_series(tmp_path / "dicom", phantom_hu()))
    ds = pydicom.dcmread(paths[0])
    del ds.ImagePositionPatient  # its orientation, spacing and size are still there: an image slice, damaged
    ds.save_as(paths[0])
    findings = convert(tmp_path, tmp_path / "dicom")
    assert findings["damaged_files"] == 1 and findings["slices"] == 11
    row = qc_rows(tmp_path).loc["dicom_damaged_files"]
    assert row["severity"] == "error" and row["message"].startswith("1 DICOM image file(s) in case case_1's folder")


@pytest.mark.parametrize("rule, chosen", [("most_slices", 5), ("thinnest_slices", 7), ("lowest_series_number", 3)])
def test_the_series_rule_chooses_among_several_series(tmp_path, rule, chosen):
    hu = phantom_hu()
    write_series(tmp_path / "dicom" / "a", hu[:10], spacing=(0.8, 0.7, 2.5), series_number=3)
    write_series(tmp_path / "dicom" / "b", hu, spacing=(0.8, 0.7, 2.5), series_number=5)
    write_series(tmp_path / "dicom" / "c", hu[:8], spacing=(0.8, 0.7, 1.0), series_number=7)
    (tmp_path / "dicom" / "notes.txt").write_text("not DICOM")
    findings = convert(tmp_path, tmp_path / "dicom", series=rule)
    assert findings["series_number"] == chosen and len(findings["other_series"]) == 2
    assert findings["skipped_files"] == 1
    message = qc_rows(tmp_path).loc["dicom_series", "message"]
    assert message.startswith(f"series {chosen} (CT, ") and f"chosen by rule {rule} over series" in message
    assert "1 file(s) not DICOM images skipped" in message


def test_folders_that_are_no_series_fail_with_the_case_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("scan pending")
    with pytest.raises(DicomError, match=r"case case_1: no DICOM image slice in .*empty \(1 other files, 0 damaged\); give "):
        convert(tmp_path, tmp_path / "empty")
    hu = phantom_hu()
    write_series(tmp_path / "twice", hu, series_uid="1.2.3.4")
    write_series(tmp_path / "twice", hu, series_uid="1.2.3.4", seed=1)  # the same slices stored twice
    with pytest.raises(DicomError, match="12 slice.s. at a position already taken"):
        convert(tmp_path, tmp_path / "twice")
    assert not (tmp_path / "case_1.nii.gz").exists()  # nothing that looks finished


def test_case_discovery_takes_series_folders_and_refuses_an_id_given_twice(tmp_path):
    write_series(tmp_path / "case_b", phantom_hu(shape=(3, 8, 8)))
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(tmp_path / "case_a.nii.gz"))
    (tmp_path / ".hidden").mkdir()
    pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
    assert discover_cases(tmp_path, pattern) == (["case_a", "case_b"], {})
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(tmp_path / "case_b.nii.gz"))
    with pytest.raises(ConfigError, match=r"cases \['case_b'\] .* both as <case>.nii.gz and as a DICOM folder"):
        discover_cases(tmp_path, pattern)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(3, 60), spacing=st.floats(0.3, 8.0), start=st.floats(-500, 500), data=st.data())
def test_missing_slices_are_counted_wherever_they_are(n, spacing, start, data):
    """Slices dropped from a regular stack (at most a quarter, ends kept) are all counted, in any order."""
    interior = list(range(1, n - 1))
    dropped = data.draw(st.sets(st.sampled_from(interior), max_size=(n - 1) // 4) if interior else st.just(set()))
    positions = np.asarray([start + k * spacing for k in range(n) if k not in dropped])
    shuffled = data.draw(st.permutations(positions.tolist()))
    findings = inspect_slices(np.asarray(shuffled), 1.5)
    assert findings.missing == len(dropped) and findings.duplicates == 0
    assert findings.uneven < 1e-6


def test_findings_file_is_json_with_series_numbers_only(tmp_path):
    write_series(tmp_path / "dicom", phantom_hu(), series_uid="1.2.826.0.1.3680043.99.1")
    convert(tmp_path, tmp_path / "dicom")
    text = (tmp_path / "case_1.json").read_text()
    assert "1.2.826.0.1.3680043.99.1" not in text  # UIDs are identifiers too
    assert json.loads(text)["chosen"] == "series 2 (CT, 12 slices)"


TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "RescaleSlope",
        "RescaleIntercept", "SeriesNumber", "BitsAllocated", "PixelData", "SeriesInstanceUID"]


@settings(max_examples=60, deadline=None)
@given(tag=st.sampled_from(TAGS), value=st.one_of(st.none(), st.text(max_size=12), st.binary(max_size=16)),
       slice_index=st.integers(0, 3), junk=st.binary(max_size=64))
def test_damaged_headers_and_junk_files_give_a_volume_or_a_clear_error(tmp_path_factory, tag, value, slice_index,
                                                                         junk):
    """One slice's tag deleted or set to random text or bytes, plus a junk file: a volume or a DicomError naming
    the case, never a traceback."""
    import pydicom

    folder = tmp_path_factory.mktemp("series")
    paths = sorted(write_series(folder / "dicom", phantom_hu(shape=(4, 6, 5))))
    ds = pydicom.dcmread(paths[slice_index])
    if value is None:
        if tag in ds:
            delattr(ds, tag)
    else:
        try:
            setattr(ds, tag, value)
            ds.save_as(paths[slice_index])
        except Exception:  # pydicom refuses to write some values at all: nothing to read back
            return
    if value is None:
        ds.save_as(paths[slice_index])
    (folder / "dicom" / "junk.bin").write_bytes(junk)
    try:
        findings = convert(folder, folder / "dicom")
    except DicomError as err:
        assert "case_1" in str(err)
    else:
        assert findings["slices"] >= 2 and (folder / "case_1.nii.gz").exists()
