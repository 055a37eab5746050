"""Case overlays: the CT with reference and prediction contours through the largest lesion of each class."""
import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from workflow_scripts.overlays import largest_lesion_centre, plot_case

pytestmark = pytest.mark.unit


def write(array, path, spacing=(0.8, 0.8, 2.5), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def sphere(shape, centre, radius_vox):
    zz, yy, xx = np.indices(shape)
    return ((zz - centre[0]) / radius_vox[0]) ** 2 + ((yy - centre[1]) / radius_vox[1]) ** 2 + \
        ((xx - centre[2]) / radius_vox[2]) ** 2 <= 1


def colour_pixels(png, rgb, tolerance=0.2):
    return np.argwhere(np.all(np.abs(png[..., :3] - np.asarray(rgb)) < tolerance, axis=-1))


def test_overlay_draws_reference_and_prediction_through_the_largest_lesion(tmp_path):
    shape = (20, 64, 64)
    image = np.full(shape, -1000, np.int16)
    image[:, 8:56, 8:56] = 40
    lesion = sphere(shape, (10, 20, 44), (3, 8, 8))
    small = sphere(shape, (3, 48, 16), (1, 2, 2))  # off the slices through the large one
    image[lesion] = 120
    reference = (lesion | small).astype(np.uint8) * 2
    prediction = np.roll(lesion, 2, axis=2).astype(np.uint8) * 2  # shifted 2 voxels along x; the small one missed
    out = tmp_path / "case.png"
    rows = plot_case("synthetic", write(image, tmp_path / "ct.nii.gz"), write(prediction, tmp_path / "pred.nii.gz"),
                     write(reference, tmp_path / "ref.nii.gz"), {"primary": 1, "metastasis": 2}, out,
                     {"metastasis": "3.1 ml in 2 lesion(s)"})
    assert [r["class"] for r in rows] == ["metastasis"]  # no primary in either: no row
    assert rows[0]["centre"] == (10, 20, 44)  # the larger lesion's centre, not the small one's
    expected = 2 * (lesion & np.roll(lesion, 2, axis=2)).sum() / (reference.astype(bool).sum() + lesion.sum())
    assert abs(rows[0]["dice"] - expected) < 1e-9
    assert largest_lesion_centre(np.zeros(shape, bool)) is None
    png = imread(str(out))
    lime, magenta = colour_pixels(png, (0, 1, 0)), colour_pixels(png, (1, 0, 1))
    assert len(lime) > 50 and len(magenta) > 50
    # In the axial panel (left third), the prediction's contour sits 2 voxels (1.6 mm) beside the reference's:
    # their columns differ, their rows agree.
    third = png.shape[1] / 3
    lime_axial, magenta_axial = lime[lime[:, 1] < third], magenta[magenta[:, 1] < third]
    assert abs(lime_axial[:, 0].mean() - magenta_axial[:, 0].mean()) < 3
    assert abs(lime_axial[:, 1].mean() - magenta_axial[:, 1].mean()) > 1
