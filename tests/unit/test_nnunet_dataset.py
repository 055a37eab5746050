import json

import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.nnunet_dataset import convert_dataset, label_lookup, remap_label
from workflow_scripts.settings import class_label_values

pytestmark = pytest.mark.unit

METASTASIS_ONLY = {"background": [0, 1], "metastasis": [2]}


def test_label_lookup_and_channel_labels():
    np.testing.assert_array_equal(label_lookup(METASTASIS_ONLY)[[0, 1, 2]], [0, 0, 1])
    assert class_label_values(METASTASIS_ONLY) == [0, 2]
    assert class_label_values({"background": [0], "primary": [1], "metastasis": [2]}) == [0, 1, 2]
    with pytest.raises(ValueError, match="only the background class may merge"):
        class_label_values({"background": [0], "lesion": [1, 2]})


def test_remap_rejects_unmapped_values():
    image = sitk.GetImageFromArray(np.array([[[0, 1, 3]]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[3\]"):
        remap_label(image, METASTASIS_ONLY)


def test_convert_links_images_and_remaps_labels(toy_dir, tmp_path):
    summary = convert_dataset(["toy_001", "toy_002"], toy_dir / "imagesTr", toy_dir / "labelsTr", tmp_path / "raw",
                              503, "metastasis_only", METASTASIS_ONLY, tmp_path / "summary.json")
    folder = tmp_path / "raw" / "Dataset503_metastasis_only"
    link = folder / "imagesTr" / "toy_001_0000.nii.gz"
    assert link.is_symlink() and link.resolve() == (toy_dir / "imagesTr" / "toy_001.nii.gz").resolve()
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(toy_dir / "labelsTr" / "toy_001.nii.gz")))
    remapped = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "toy_001.nii.gz")))
    assert set(np.unique(remapped)) == {0, 1}
    np.testing.assert_array_equal(remapped == 1, source == 2)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "metastasis": 1}
    assert dataset_json["numTraining"] == 2 and dataset_json["channel_names"] == {"0": "CT"}
    assert summary["class_label_values"] == [0, 2]
    # Converting again (a rerun) replaces the links instead of failing.
    convert_dataset(["toy_001", "toy_002"], toy_dir / "imagesTr", toy_dir / "labelsTr", tmp_path / "raw",
                    503, "metastasis_only", METASTASIS_ONLY, tmp_path / "summary.json")


def test_labels_take_the_image_geometry_that_qc_accepted(toy_dir, tmp_path):
    """A label whose spacing and origin differ from the image's by less than QC's tolerances (as one saved by
    another tool from a DICOM conversion) is written on the image's exact grid, which nnU-Net demands."""
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in ("toy_001", "toy_002"):
        label = sitk.ReadImage(str(toy_dir / "labelsTr" / f"{case}.nii.gz"))
        label.SetSpacing(tuple(s * (1 + 2e-4) for s in label.GetSpacing()))
        label.SetOrigin(tuple(o + 0.004 for o in label.GetOrigin()))
        sitk.WriteImage(label, str(labels / f"{case}.nii.gz"))
    convert_dataset(["toy_001", "toy_002"], toy_dir / "imagesTr", labels, tmp_path / "raw", 501, "multiclass",
                    {"background": [0], "primary": [1], "metastasis": [2]}, tmp_path / "summary.json")
    image = sitk.ReadImage(str(toy_dir / "imagesTr" / "toy_001.nii.gz"))
    written = sitk.ReadImage(str(tmp_path / "raw/Dataset501_multiclass/labelsTr/toy_001.nii.gz"))
    assert written.GetSpacing() == image.GetSpacing() and written.GetOrigin() == image.GetOrigin()
    assert not np.allclose(sitk.ReadImage(str(labels / "toy_001.nii.gz")).GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(labels / "toy_001.nii.gz"))))
