"""Tumour burden on the real CT's anatomy with lesions painted where the answer is known."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.burden import case_lesions, write_burden
from workflow_scripts.anatomy import anatomy_class_ids

pytestmark = pytest.mark.unit

CLASSES = {"primary": 1, "metastasis": 2}


@pytest.fixture(scope="module")
def painted(totalseg_example):
    ct = sitk.ReadImage(str(totalseg_example / "example_ct_sm.nii.gz"))
    anatomy = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_example / "example_seg.nii.gz")))
    ids = anatomy_class_ids("total")
    label = np.zeros(anatomy.shape, np.uint8)
    liver = np.argwhere(anatomy == ids["liver"])
    spleen = np.argwhere(anatomy == ids["spleen"])
    z, y, x = liver[len(liver) // 2]
    label[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 1  # 3 x 5 x 5 = 75 voxels inside the liver (checked below)
    z, y, x = spleen[len(spleen) // 2]
    label[z, y, x] = 2  # one voxel in the spleen
    label[0, 0, 0:2] = 2  # two voxels in the air of the corner, no structure
    segmentation = sitk.GetImageFromArray(label)
    segmentation.CopyInformation(ct)
    return segmentation, anatomy, ids


def test_each_lesion_gets_its_volume_position_and_structure(painted):
    segmentation, anatomy, ids = painted
    names = {i: n for n, i in ids.items()}
    rows = pd.DataFrame(case_lesions("c", segmentation, anatomy, CLASSES, names))
    voxel_ml = float(np.prod(segmentation.GetSpacing())) / 1000
    primary = rows[rows["class"] == "primary"].iloc[0]
    assert primary["voxels"] == 75 and primary["volume_ml"] == pytest.approx(75 * voxel_ml)
    label = sitk.GetArrayFromImage(segmentation)
    in_liver = (anatomy[label == 1] == ids["liver"]).mean()
    assert primary["structure"] == "liver" and primary["structure_fraction"] == pytest.approx(in_liver)
    centre = np.argwhere(label == 1).mean(axis=0)[::-1]
    expected = segmentation.TransformContinuousIndexToPhysicalPoint(centre.tolist())
    assert [primary["centroid_x_mm"], primary["centroid_y_mm"], primary["centroid_z_mm"]] == pytest.approx(expected)
    metastases = rows[rows["class"] == "metastasis"]
    assert list(metastases["lesion"]) == [1, 2] and list(metastases["voxels"]) == [2, 1]  # largest first
    assert list(metastases["structure"]) == ["none", "spleen"]


def test_burden_table_per_case(painted, tmp_path):
    segmentation, _, ids = painted
    (tmp_path / "seg").mkdir()
    sitk.WriteImage(segmentation, str(tmp_path / "seg" / "c.nii.gz"))
    empty = sitk.Image(segmentation.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(segmentation)
    sitk.WriteImage(empty, str(tmp_path / "seg" / "e.nii.gz"))
    burden = write_burden(["c", "e"], tmp_path / "seg", {"c": None, "e": None}, CLASSES,
                          {i: n for n, i in ids.items()}, tmp_path / "lesions.tsv", tmp_path / "burden.tsv")
    c, e = burden.set_index("case").loc["c"], burden.set_index("case").loc["e"]
    assert c["primary_lesions"] == 1 and c["metastasis_lesions"] == 2 and c["largest_class"] == "primary"
    assert c["largest_structure"] == "none"  # no anatomy maps given
    assert c["total_ml"] == pytest.approx(c["primary_ml"] + c["metastasis_ml"])
    assert e["total_ml"] == 0 and e["largest_class"] == "none"
    assert len(pd.read_csv(tmp_path / "lesions.tsv", sep="\t")) == 3
