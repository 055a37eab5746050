import json

import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.io import read_probabilities
from workflow_scripts.prediction import gather_out_of_fold


def fold(tmp_path, k, validation_cases, shape):
    """A fold's summary and nnU-Net's validation export of its held-out cases (probabilities (C, z, y, x))."""
    folder = tmp_path / f"fold_{k}"
    (folder / "validation").mkdir(parents=True)
    for i, case in enumerate(validation_cases):
        probabilities = np.zeros((3, *shape), dtype=np.float32)
        probabilities[0] = 1.0
        probabilities[0, 0, 0, : k + i + 1] = 0.0
        probabilities[2, 0, 0, : k + i + 1] = 1.0  # metastasis voxels: k + i + 1, so the source fold shows
        np.savez(folder / "validation" / f"{case}.npz", probabilities=probabilities)
    summary = tmp_path / f"fold_{k}.json"
    summary.write_text(json.dumps({"output_folder": str(folder), "validation_cases": validation_cases}))
    return summary


def test_a_case_is_gathered_from_the_one_fold_that_held_it_out(tmp_path):
    shape = (2, 3, 8)
    image = sitk.GetImageFromArray(np.zeros(shape, dtype=np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / "b.nii.gz"))
    summaries = [fold(tmp_path, 0, ["a", "b"], shape), fold(tmp_path, 1, ["c"], shape)]
    source = gather_out_of_fold(summaries, [0, 1, 2], "b", tmp_path / "b.nii.gz", tmp_path / "out")
    assert source == str(tmp_path / "fold_0")
    probabilities, labels = read_probabilities(tmp_path / "out" / "b.npz")
    assert labels == [0, 1, 2] and probabilities.shape == (3, *shape)
    segmentation = sitk.ReadImage(str(tmp_path / "out" / "b.nii.gz"))
    np.testing.assert_allclose(segmentation.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    assert (sitk.GetArrayFromImage(segmentation) == 2).sum() == 2  # fold 0, second case
    with pytest.raises(RuntimeError, match="z was validated in 0 folds"):
        gather_out_of_fold(summaries, [0, 1, 2], "z", tmp_path / "b.nii.gz", tmp_path / "out")
    summaries.append(fold(tmp_path, 2, ["b"], shape))
    with pytest.raises(RuntimeError, match="b was validated in 2 folds"):
        gather_out_of_fold(summaries, [0, 1, 2], "b", tmp_path / "b.nii.gz", tmp_path / "out")
