import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from workflow_scripts.anatomy import anatomy_class_ids, body_mask, structure_ids
from workflow_scripts.refinement import refine, refine_case

pytestmark = pytest.mark.unit

RULES = [
    {"name": "drop_in_bone", "kind": "drop_inside", "structures": ["vertebrae_*", "rib_*"], "min_fraction": 0.5},
    {"name": "drop_outside_body", "kind": "drop_outside_body", "body_hu": -500, "min_fraction": 0.5},
    {"name": "drop_tiny", "kind": "drop_smaller_than", "min_volume_mm3": 100},
]


def deepest_voxel(mask):
    distance = ndimage.distance_transform_edt(mask)
    return np.unravel_index(int(np.argmax(distance)), mask.shape)


def paint_sphere(label, centre, radius, value):
    zz, yy, xx = np.ogrid[: label.shape[0], : label.shape[1], : label.shape[2]]
    sphere = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
    label[sphere] = value
    return sphere


@pytest.fixture(scope="module")
def painted_case(totalseg_example, tmp_path_factory):
    """The real CT with lesions painted into liver, a vertebra, the air outside the body, and one tiny one."""
    ct = sitk.ReadImage(str(totalseg_example / "example_ct_sm.nii.gz"))
    anatomy = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_example / "example_seg.nii.gz")))
    image = sitk.GetArrayFromImage(ct)
    ids = anatomy_class_ids("total")
    label = np.zeros(anatomy.shape, dtype=np.uint8)
    spheres = {
        "liver": paint_sphere(label, deepest_voxel(anatomy == ids["liver"]), 2, 1),
        "vertebra": paint_sphere(label, deepest_voxel(anatomy == ids["vertebrae_L1"]), 1.5, 2),
        "air": paint_sphere(label, deepest_voxel(image < -900), 2, 2),
    }
    tiny_centre = deepest_voxel(anatomy == ids["spleen"])
    label[tiny_centre] = 2
    spheres["tiny"] = label == -1
    spheres["tiny"][tiny_centre] = True
    return ct, image, anatomy, label, spheres


def test_structure_patterns_resolve_to_totalsegmentator_ids():
    ids = anatomy_class_ids("total")
    assert structure_ids(["vertebrae_L*"], ids) == sorted(ids[f"vertebrae_L{i}"] for i in range(1, 6))
    with pytest.raises(ValueError, match="no anatomy class matches"):
        structure_ids(["vertebra_L1"], ids)


def test_body_mask_of_real_ct(painted_case):
    _, image, anatomy, _, _ = painted_case
    body = body_mask(image, -500)
    assert body[anatomy > 0].mean() > 0.99, "every organ is inside the body"
    assert not body[0, 0, 0]
    lungs = np.isin(anatomy, [10, 11, 13, 14])
    assert body[lungs].mean() > 0.9, "air-filled lungs are holes filled into the body"


def test_refinement_removes_exactly_the_misplaced_lesions(painted_case):
    ct, image, anatomy, label, spheres = painted_case
    refined, removed = refine(label, anatomy, image, ct.GetSpacing(), RULES, anatomy_class_ids("total"), "painted")
    assert np.array_equal(refined == 1, spheres["liver"]), "the liver lesion is kept whole"
    assert not (refined == 2).any(), "bone, air and tiny lesions are all removed"
    assert list(removed["rule"]) == ["drop_in_bone", "drop_outside_body", "drop_tiny"]
    assert list(removed["voxels"]) == [int(spheres["vertebra"].sum()), int(spheres["air"].sum()), 1]
    assert removed.loc[0, "fraction"] >= 0.5 and removed.loc[1, "fraction"] == 1.0
    assert removed.loc[2, "volume_mm3"] == pytest.approx(np.prod(ct.GetSpacing()))


def test_rules_apply_only_to_their_labels(painted_case):
    ct, image, anatomy, label, _ = painted_case
    only_primary = [dict(RULES[0], labels=[1])]
    refined, removed = refine(label, anatomy, image, ct.GetSpacing(), only_primary, anatomy_class_ids("total"), "p")
    assert removed.empty and np.array_equal(refined, label)


def test_refine_case_writes_map_and_table(painted_case, totalseg_example, tmp_path):
    ct, _, _, label, _ = painted_case
    seg = sitk.GetImageFromArray(label)
    seg.CopyInformation(ct)
    sitk.WriteImage(seg, str(tmp_path / "seg.nii.gz"))
    removed = refine_case("painted", tmp_path / "seg.nii.gz", totalseg_example / "example_seg.nii.gz",
                          totalseg_example / "example_ct_sm.nii.gz", RULES, "total", tmp_path / "out.nii.gz",
                          tmp_path / "removed.tsv")
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetOrigin() == ct.GetOrigin() and out.GetDirection() == ct.GetDirection()
    assert len(removed) == 3 and (tmp_path / "removed.tsv").read_text().startswith("case\trule")


def test_keep_within_span_removes_lesions_beyond_the_structures(painted_case):
    """The kidneys of the real CT end at slice 22 of 30 (3 mm): a liver lesion above them goes, one level with
    them stays; a 3 mm margin keeps one more slice."""
    ct, image, anatomy, _, _ = painted_case
    ids = anatomy_class_ids("total")
    kidneys = np.flatnonzero(np.isin(anatomy, [ids["kidney_left"], ids["kidney_right"]]).any(axis=(1, 2)))
    liver = anatomy == ids["liver"]
    label = np.zeros(anatomy.shape, np.uint8)
    inside_z, beyond_z = kidneys[-1] - 3, kidneys[-1] + 4
    centres = {}
    for name, z in (("level", inside_z), ("beyond", beyond_z)):
        in_slice = np.zeros_like(liver)
        in_slice[z] = liver[z]
        centres[name] = deepest_voxel(in_slice)
        paint_sphere(label, centres[name], 1, 1)
    rule = {"name": "abdomen", "kind": "keep_within_span", "structures": ["kidney_*"], "min_fraction": 0.5}
    refined, removed = refine(label, anatomy, image, ct.GetSpacing(), [rule], ids, "span", ct.GetDirection())
    assert refined[centres["level"]] == 1 and refined[centres["beyond"]] == 0
    assert list(removed["rule"]) == ["abdomen"] and removed.loc[0, "fraction"] == 0.0
    wide = dict(rule, margin_mm=5 * ct.GetSpacing()[2])  # five slices further: both stay
    refined, removed = refine(label, anatomy, image, ct.GetSpacing(), [wide], ids, "span", ct.GetDirection())
    assert removed.empty and np.array_equal(refined, label)


def test_cranio_caudal_axis_follows_the_direction_matrix():
    from workflow_scripts.anatomy import cranio_caudal_axis

    assert cranio_caudal_axis((1, 0, 0, 0, 1, 0, 0, 0, 1)) == 0
    # A volume stored with the head-foot axis as its first index axis (x): numpy axis 2.
    assert cranio_caudal_axis((0, 0, 1, 0, 1, 0, 1, 0, 0)) == 2


def test_anatomy_map_on_another_grid_stops_naming_the_case(painted_case, totalseg_example, tmp_path):
    ct, _, _, label, _ = painted_case
    seg = sitk.GetImageFromArray(label[:, :, :-1].copy())  # one column short of the anatomy map's grid
    sitk.WriteImage(seg, str(tmp_path / "seg.nii.gz"))
    with pytest.raises(ValueError, match=r"painted: anatomy map .*example_seg.nii.gz is not on the segmentation's grid"):
        refine_case("painted", tmp_path / "seg.nii.gz", totalseg_example / "example_seg.nii.gz",
                    totalseg_example / "example_ct_sm.nii.gz", RULES, "total", tmp_path / "out.nii.gz",
                    tmp_path / "removed.tsv")
    assert not (tmp_path / "out.nii.gz").exists()


def test_one_rule_removes_every_component_it_matches_and_only_those():
    """Many components of one label dropped by one rule (removed in one pass over the scan): each small one goes,
    each row of the table names one, and the large ones and the other label stay voxel for voxel."""
    label = np.zeros((20, 40, 40), np.uint8)
    small = [(2, 3, 3), (2, 3, 30), (10, 20, 5), (17, 35, 35), (17, 5, 20)]
    for z, y, x in small:
        label[z, y, x] = 2  # 1 voxel, 1 mm3
    large = [paint_sphere(label, (8, 12, 12), 4, 2), paint_sphere(label, (12, 28, 28), 5, 2)]
    primary = paint_sphere(label, (5, 30, 8), 1, 1)  # small too, but of label 1
    rule = [{"name": "drop_tiny", "kind": "drop_smaller_than", "min_volume_mm3": 10, "labels": [2]}]
    refined, removed = refine(label, None, None, (1.0, 1.0, 1.0), rule, None, "many")
    expected = label.copy()
    for voxel in small:
        expected[voxel] = 0
    assert np.array_equal(refined, expected)
    assert len(removed) == len(small) and set(removed["voxels"]) == {1} and set(removed["label"]) == {2}
    assert all((refined[sphere] == 2).all() for sphere in large) and (refined[primary] == 1).all()
