import json

import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.crop import (anatomy_box, box_fraction, crop_case, crop_image, crop_label, paste_labels,
                                   paste_probabilities)
from workflow_scripts.io import labels_from_probabilities, read_probabilities
from workflow_scripts.nnunet_dataset import convert_dataset
from workflow_scripts.prediction import gather_out_of_fold

pytestmark = pytest.mark.unit

SPACING_XYZ = (0.8, 0.8, 2.5)


def oblique_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-10.0, 20.0, 5.0))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    return image


def test_box_is_the_structures_span_plus_the_margin_in_millimetres_cut_at_the_edges():
    anatomy = np.zeros((20, 60, 60), dtype=np.uint8)
    anatomy[8:12, 20:30, 2:10] = 5   # liver
    anatomy[3:5, 40:45, 30:35] = 25  # sacrum
    anatomy[15, 50, 50] = 99         # not chosen
    box = anatomy_box(anatomy, [5, 25], spacing_zyx=(2.5, 0.8, 0.8), margin_mm=5.0)
    # 5 mm: 2 slices of 2.5 mm, 7 voxels of 0.8 mm (6.25 rounded up); x starts at 2 - 7, cut to 0
    assert box["start"] == [1, 13, 0] and box["stop"] == [14, 52, 42] and box["full_shape"] == [20, 60, 60]
    assert box["found"] and box_fraction(box) == pytest.approx(13 * 39 * 42 / (20 * 60 * 60))
    nothing = anatomy_box(anatomy, [77], spacing_zyx=(2.5, 0.8, 0.8), margin_mm=5.0)
    assert not nothing["found"] and nothing["start"] == [0, 0, 0] and nothing["stop"] == [20, 60, 60]


def test_a_crop_keeps_its_place_in_space_and_pastes_back_exactly():
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(10, 30, 40)).astype(np.int16)
    image = oblique_image(array)
    box = {"start": [2, 5, 7], "stop": [9, 25, 31], "full_shape": [10, 30, 40]}
    cropped = crop_image(image, box)
    assert cropped.GetSize() == (24, 20, 7)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped), array[2:9, 5:25, 7:31])
    np.testing.assert_allclose(cropped.TransformIndexToPhysicalPoint((0, 0, 0)),
                               image.TransformIndexToPhysicalPoint((7, 5, 2)), atol=1e-9)
    np.testing.assert_allclose(cropped.GetDirection(), image.GetDirection())
    with pytest.raises(ValueError, match="grid of"):
        crop_image(image, {**box, "full_shape": [10, 30, 41]})

    probabilities = rng.dirichlet([1, 1, 1], size=(7, 20, 24)).transpose(3, 0, 1, 2).astype(np.float16)
    full = paste_probabilities(probabilities, box)
    assert full.shape == (3, 10, 30, 40) and full.dtype == np.float16
    np.testing.assert_array_equal(full[:, 2:9, 5:25, 7:31], probabilities)
    outside = np.ones((10, 30, 40), dtype=bool)
    outside[2:9, 5:25, 7:31] = False
    assert (full[0][outside] == 1).all() and (full[1:, outside] == 0).all()
    labels = [0, 1, 2]
    np.testing.assert_array_equal(labels_from_probabilities(full, labels),
                                  paste_labels(labels_from_probabilities(probabilities, labels), box))


def write(array, path, like=None):
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    else:
        image.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def test_crop_case_and_the_dataset_train_on_the_box_and_count_lost_lesion_voxels(tmp_path):
    ct = np.full((12, 40, 40), -1000, dtype=np.int16)
    ct[:, 5:35, 5:35] = 40
    anatomy = np.zeros_like(ct, dtype=np.uint8)
    anatomy[4:8, 10:20, 10:20] = 5  # liver (TotalSegmentator total id 5)
    label = np.zeros_like(ct, dtype=np.uint8)
    label[5:7, 12:15, 12:15] = 1    # inside the box
    label[0, 38:40, 38:40] = 2      # 4 voxels far outside it
    image = write(ct, tmp_path / "images/a.nii.gz")
    write(anatomy, tmp_path / "anatomy/a.nii.gz", image)
    write(label, tmp_path / "labels/a.nii.gz", image)
    box = crop_case(tmp_path / "images/a.nii.gz", tmp_path / "anatomy/a.nii.gz", ["liver"], 4.0, "total",
                    tmp_path / "crop/a.nii.gz", tmp_path / "crop/a.json")
    assert box["start"] == [2, 5, 5] and box["stop"] == [10, 25, 25] and box["ids"] == [5]
    assert json.loads((tmp_path / "crop/a.json").read_text())["stop"] == [10, 25, 25]
    assert sitk.ReadImage(str(tmp_path / "crop/a.nii.gz")).GetSize() == (20, 20, 8)
    _, lost = crop_label(sitk.ReadImage(str(tmp_path / "labels/a.nii.gz")), box)
    assert lost == 4

    summary = convert_dataset(["a"], tmp_path / "crop", tmp_path / "labels", tmp_path / "raw", 901, "cropped",
                              {"background": [0], "primary": [1], "metastasis": [2]}, tmp_path / "summary.json",
                              {"a": tmp_path / "crop/a.json"})
    assert summary["lesion_voxels_outside_crop"] == {"a": 4}
    trained = sitk.ReadImage(str(tmp_path / "raw" / summary["dataset"] / "labelsTr/a.nii.gz"))
    assert trained.GetSize() == (20, 20, 8)
    assert (sitk.GetArrayFromImage(trained) == 1).sum() == 18 and (sitk.GetArrayFromImage(trained) == 2).sum() == 0


def test_out_of_fold_probabilities_of_a_cropped_model_are_pasted_on_the_full_grid(tmp_path):
    image = write(np.zeros((6, 10, 12), dtype=np.int16), tmp_path / "b.nii.gz")
    box = {"start": [1, 2, 3], "stop": [5, 8, 11], "full_shape": [6, 10, 12]}
    folder = tmp_path / "fold_0"
    (folder / "validation").mkdir(parents=True)
    probabilities = np.zeros((3, 4, 6, 8), dtype=np.float32)
    probabilities[0] = 1
    probabilities[0, 0, 0, 0], probabilities[2, 0, 0, 0] = 0, 1  # one metastasis voxel at the box's corner
    np.savez(folder / "validation/b.npz", probabilities=probabilities)
    summary = tmp_path / "fold_0.json"
    summary.write_text(json.dumps({"output_folder": str(folder), "validation_cases": ["b"]}))
    gather_out_of_fold([summary], [0, 1, 2], "b", tmp_path / "b.nii.gz", tmp_path / "out", box, encoding="float16")
    full, _ = read_probabilities(tmp_path / "out/b.npz")
    assert full.shape == (3, 6, 10, 12)
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out/b.nii.gz")))
    assert list(zip(*np.nonzero(segmentation))) == [(1, 2, 3)] and segmentation[1, 2, 3] == 2
    assert sitk.ReadImage(str(tmp_path / "out/b.nii.gz")).GetSize() == image.GetSize()
