"""Anatomy-aware label QC on TotalSegmentator's real example CT and its anatomy map."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.config import section_settings
from workflow_scripts.qc_anatomy import candidate_shifts, check_case_anatomy, transform_label
from workflow_scripts.anatomy import anatomy_class_ids

pytestmark = pytest.mark.unit

SETTINGS = section_settings("qc")  # the default rules: lesions not mostly in bone, not mostly in lung


@pytest.fixture(scope="module")
def example(totalseg_example):
    ct = sitk.ReadImage(str(totalseg_example / "example_ct_sm.nii.gz"))
    anatomy = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_example / "example_seg.nii.gz")))
    return ct, anatomy


def sphere(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def lesion_flipped_into_the_lung(ct, anatomy):
    """A 2-voxel-radius lesion (6 mm voxels... 3 mm) in soft tissue whose mirror image along z lies in the right
    lower lung lobe: found from the map, not placed by hand."""
    image = sitk.GetArrayFromImage(ct)
    ids = anatomy_class_ids("total")
    lung = anatomy == ids["lung_lower_lobe_right"]
    bone_or_lung = np.isin(anatomy, [i for n, i in ids.items() if n.startswith(("lung_", "vertebrae_", "rib_"))])
    n = anatomy.shape[0]
    for centre in map(tuple, np.argwhere(lung)):
        mirrored = (n - 1 - centre[0], centre[1], centre[2])
        inside, original = sphere(anatomy.shape, centre, 2), sphere(anatomy.shape, mirrored, 2)
        if lung[inside].mean() == 1 and not bone_or_lung[original].any() and image[original].min() > -200:
            return original
    raise AssertionError("no such place in the example")


def write(array, reference, path, dtype=np.uint8):
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))
    return path


def test_a_label_flipped_along_z_is_flagged_and_the_flip_is_proposed(example, totalseg_example, tmp_path, capsys):
    """The real CT with a lesion painted in (+80 HU, an enhancing nodule), its label written with the slices
    reversed: the label lands in the lung, is flagged, and the proposal is the flip back (the shifts that also
    leave the lung do not sit on the lesion)."""
    ct, anatomy = example
    truth = lesion_flipped_into_the_lung(ct, anatomy).astype(np.uint8) * 2
    voxels = sitk.GetArrayFromImage(ct).astype(np.int16)
    voxels[truth == 2] += 80
    write(voxels, ct, tmp_path / "ct.nii.gz", np.int16)
    flipped = truth[::-1]  # the label file written with its slices reversed
    image, seg = tmp_path / "ct.nii.gz", totalseg_example / "example_seg.nii.gz"
    table = check_case_anatomy("flipped", image, write(flipped, ct, tmp_path / "flipped.nii.gz"), seg, SETTINGS,
                               [0, 1, 2], "total", tmp_path / "flipped.tsv", tmp_path / "proposal")
    warnings = table[table["severity"] == "warning"].set_index("check")["message"]
    assert "label 2: 100% of it lies inside ['lung_*'] (rule lesions_not_in_lung" in warnings["label_anatomy"]
    assert "flip along z" in warnings["label_anatomy_proposal"] and "-> 100%" in warnings["label_anatomy_proposal"]
    proposed = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "proposal" / "label.nii.gz")))
    dice = 2 * ((proposed == 2) & (truth == 2)).sum() / ((proposed == 2).sum() + (truth == 2).sum())
    assert dice > 0.9
    assert pd.read_csv(tmp_path / "flipped.tsv", sep="\t").equals(table)
    # The report: the flagged label pictured with its proposal, beside a case QC found in air.
    from workflow_scripts.qc_anatomy import qc_anatomy_report_entry

    qc = pd.DataFrame([{"case": "other", "check": "label_in_air", "severity": "warning", "message": "m"}])
    qc.to_csv(tmp_path / "qc.tsv", sep="\t", index=False)
    (tmp_path / "other_proposal").mkdir()
    pd.DataFrame(columns=table.columns).to_csv(tmp_path / "other.tsv", sep="\t", index=False)
    qc_anatomy_report_entry(["--tables", str(tmp_path / "flipped.tsv"), str(tmp_path / "other.tsv"),
                             "--proposals", str(tmp_path / "proposal"), str(tmp_path / "other_proposal"),
                             "--images", str(image), str(image), "--labels", str(tmp_path / "flipped.nii.gz"),
                             str(tmp_path / "flipped.nii.gz"), "--qc-table", str(tmp_path / "qc.tsv"),
                             "--out", str(tmp_path / "all.tsv"), "--figure", str(tmp_path / "flagged.png")])
    assert "2 flagged label(s) pictured, 1 correction(s) proposed" in capsys.readouterr().out
    assert (tmp_path / "flagged.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The label as it should be: nothing flagged, nothing proposed.
    table = check_case_anatomy("right", image, write(truth, ct, tmp_path / "right.nii.gz"), seg, SETTINGS,
                               [0, 1, 2], "total", tmp_path / "right.tsv", tmp_path / "none")
    assert set(table["severity"]) <= {"info"} and not (tmp_path / "none" / "label.nii.gz").exists()


def test_a_shifted_label_gets_the_shift_back(example, totalseg_example, tmp_path):
    """The same lesion moved 30 mm along y into the lung's reach: the proposal moves it back."""
    ct, anatomy = example
    truth = lesion_flipped_into_the_lung(ct, anatomy).astype(np.uint8) * 2
    flipped = truth[::-1]
    shifted = transform_label(flipped, (True, False, False), (0, 0, 0))
    assert np.array_equal(shifted, truth)  # a flip along z undoes itself
    assert (0, 0, 0) in map(tuple, candidate_shifts(30, 10, (3.0, 3.0, 3.0)))
    moved = transform_label(truth, (False, False, False), (0, 4, 0))
    assert moved.sum() == truth.sum() and np.array_equal(transform_label(moved, (False, False, False), (0, -4, 0)),
                                                         truth)
