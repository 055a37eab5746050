import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.toy_data import ANATOMY_IDS, HU_LIVER, TOY_IN_PLANE_MM, generate_toy_dataset, make_phantom

pytestmark = pytest.mark.unit


def read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def test_generator_is_deterministic(tmp_path):
    generate_toy_dataset(tmp_path / "a", n_train=2, n_test=1, seed=3)
    generate_toy_dataset(tmp_path / "b", n_train=2, n_test=1, seed=3)
    for sub in ("imagesTr/toy_001", "labelsTr/toy_001", "imagesTs/toy_100", "anatomy/toy_100"):
        a, _ = read(tmp_path / "a" / f"{sub}.nii.gz")
        b, _ = read(tmp_path / "b" / f"{sub}.nii.gz")
        np.testing.assert_array_equal(a, b)
    generate_toy_dataset(tmp_path / "c", n_train=2, n_test=1, seed=4)
    a, _ = read(tmp_path / "a/imagesTr/toy_001.nii.gz")
    c, _ = read(tmp_path / "c/imagesTr/toy_001.nii.gz")
    assert not np.array_equal(a, c), "another seed gives other phantoms"


def test_phantoms_look_like_abdominal_ct(toy_dir):
    for case in ("toy_000", "toy_001", "toy_002", "toy_003"):
        image, spacing = read(toy_dir / "imagesTr" / f"{case}.nii.gz")
        label, label_spacing = read(toy_dir / "labelsTr" / f"{case}.nii.gz")
        anatomy, _ = read(toy_dir / "anatomy" / f"{case}.nii.gz")
        assert image.dtype == np.int16 and label.shape == image.shape == anatomy.shape
        assert spacing == label_spacing
        assert TOY_IN_PLANE_MM[0] <= spacing[0] == spacing[1] <= TOY_IN_PLANE_MM[1] and 2.0 <= spacing[2] <= 3.0
        assert image[0, 0, 0] == -1000  # air in the corner
        bone = np.isin(anatomy, [ANATOMY_IDS[n] for n in ANATOMY_IDS if n != "liver"])
        assert np.median(image[bone]) > 300
        assert set(np.unique(label)) <= {0, 1, 2}
        assert (label == 1).sum() > 300, "every case has a primary tumour"
        # Lesions lie in soft tissue, never in bone. The primary's core has the intensities of soft tissue and
        # liver, its rim is brighter (no threshold separates it); metastases are brighter than both.
        assert not np.any(bone & (label > 0))
        # Metastases keep 4 mm from bone: none is wrapped around a vertebra.
        bone_image = sitk.GetImageFromArray(bone.astype(np.uint8))
        bone_image.SetSpacing(spacing)
        distance_mm = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(bone_image, squaredDistance=False,
                                                                                   useImageSpacing=True))
        assert distance_mm[label == 2].min(initial=np.inf) > 4.0, case
        primary = image[label == 1]
        assert 60 < primary.mean() < 140
        assert (primary < HU_LIVER).mean() > 0.05 and (primary > HU_LIVER + 20).mean() > 0.6
        if (label == 2).any():
            assert image[label == 2].mean() > 150 and (label == 2).sum() > 150
    has_metastasis = [bool((read(toy_dir / "labelsTr" / f"toy_{i:03d}.nii.gz")[0] == 2).any()) for i in range(6)]
    assert has_metastasis == [False, True, True, True, True, True]


def test_spacing_varies_between_cases():
    spacings = {make_phantom(np.random.default_rng([0, i]), shape=(8, 16, 16)).spacing for i in range(4)}
    assert len(spacings) == 4
