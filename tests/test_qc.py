import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.qc import QCError, aggregate_qc, check_case, write_case_qc
from tests.conftest import copy_case

VALUES = [0, 1, 2]


def errors(table):
    return table[table["severity"] == "error"]


def test_good_case_passes(toy_dir):
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz", VALUES)
    assert errors(table).empty
    assert set(table["check"]) == {"image_geometry", "label_voxels"}


def test_label_on_another_grid_is_an_error(toy_dir, tmp_path):
    label = sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))
    label.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(label, str(tmp_path / "shifted.nii.gz"))
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "shifted.nii.gz", VALUES)
    (row,) = errors(table).itertuples()
    assert row.check == "label_grid" and "origin" in row.message and "Resample" in row.message


def test_unknown_label_value_is_an_error(toy_dir, tmp_path):
    label = sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(tmp_path / "bad.nii.gz"))
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "bad.nii.gz", VALUES)
    (row,) = errors(table).itertuples()
    assert row.check == "label_values" and "[7]" in row.message


def test_missing_label_unreadable_image_and_2d_image(toy_dir, tmp_path):
    table = check_case("x", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "none.nii.gz", VALUES)
    assert list(errors(table)["check"]) == ["label_exists"]
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    table = check_case("y", tmp_path / "broken.nii.gz", None, VALUES)
    assert list(errors(table)["check"]) == ["image_readable"]
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    table = check_case("z", tmp_path / "flat.nii.gz", None, VALUES)
    assert list(errors(table)["check"]) == ["image_3d"]


def test_aggregate_names_every_failing_case(toy_dir, tmp_path):
    good = write_case_qc("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz",
                         VALUES, tmp_path / "good.tsv")
    assert errors(good).empty
    write_case_qc("lost_a", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "missing_a.nii.gz", VALUES,
                  tmp_path / "a.tsv")
    write_case_qc("lost_b", toy_dir / "imagesTr/toy_002.nii.gz", tmp_path / "missing_b.nii.gz", VALUES,
                  tmp_path / "b.tsv")
    with pytest.raises(QCError) as err:
        aggregate_qc([tmp_path / "good.tsv", tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "table.tsv")
    message = str(err.value)
    assert "2 case(s)" in message and "lost_a: [label_exists]" in message and "lost_b" in message
    assert "  toy_001:" not in message
    table = aggregate_qc([tmp_path / "good.tsv"], tmp_path / "table.tsv")
    assert (tmp_path / "table.tsv").exists() and set(table["case"]) == {"toy_001"}
