import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.ensemble import accumulate_members, ensemble_case, ensemble_probabilities, fuse_class
from workflow_scripts.io import read_probabilities, write_probabilities

pytestmark = pytest.mark.unit


def average_members(paths, weights):
    """Weighted mean of members that share one label set, read one file at a time."""
    return accumulate_members((read_probabilities(p) for p in paths), weights, [str(p) for p in paths])


def random_probabilities(rng, channels, shape=(4, 5, 6)):
    p = rng.random((channels, *shape)).astype(np.float32)
    return p / p.sum(axis=0, keepdims=True)


def test_weighted_average(tmp_path):
    rng = np.random.default_rng(0)
    a, b = random_probabilities(rng, 3), random_probabilities(rng, 3)
    write_probabilities(tmp_path / "a.npz", a, [0, 1, 2], "float16")
    write_probabilities(tmp_path / "b.npz", b, [0, 1, 2], "float16")
    mean, labels = average_members([tmp_path / "a.npz", tmp_path / "b.npz"], [3.0, 1.0])
    a16, b16 = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(mean, (3 * a16 + b16) / 4, rtol=1e-6)
    assert labels == [0, 1, 2]
    write_probabilities(tmp_path / "c.npz", random_probabilities(rng, 2), [0, 2], "float16")
    with pytest.raises(ValueError, match="share one label set"):
        average_members([tmp_path / "a.npz", tmp_path / "c.npz"], [1.0, 1.0])


@pytest.mark.parametrize("strategy", ["mean", "max", "union"])
def test_fusion_replaces_one_class_and_keeps_a_distribution(strategy):
    rng = np.random.default_rng(1)
    full, partial = random_probabilities(rng, 3), random_probabilities(rng, 2)
    fused = fuse_class(full, [0, 1, 2], partial, [0, 2], into=2, strategy=strategy)
    expected = {"mean": (full[2] + partial[1]) / 2, "max": np.maximum(full[2], partial[1]),
                "union": 1 - (1 - full[2]) * (1 - partial[1])}[strategy]
    np.testing.assert_allclose(fused[2], expected, rtol=1e-6)
    np.testing.assert_allclose(fused.sum(axis=0), 1.0, rtol=1e-5)
    # The other classes keep their ratio.
    np.testing.assert_allclose(fused[0] / fused[1], full[0] / full[1], rtol=1e-4)


@pytest.mark.parametrize("slab", [1, 3, 64])
def test_fusion_by_slabs_gives_the_whole_map_formula_bit_for_bit(slab):
    """The fusion runs slab by slab of the first spatial axis (temporaries of a slab, not of a scan): each voxel's
    value is the whole-map formula's exactly, with slabs that divide the axis, do not, or exceed it."""
    rng = np.random.default_rng(4)
    full, partial = random_probabilities(rng, 3), random_probabilities(rng, 2)
    full[:, 0, 0, 0] = [0.0, 0.0, 1.0]  # a voxel where the ensemble was certain of the class
    old, other = full[2], partial[1]
    new = (old + other) / 2.0
    rest = 1.0 - old
    scale = np.divide(1.0 - new, rest, out=np.zeros_like(rest), where=rest > 1e-6)
    expected = full * scale[None]
    expected[2] = new
    expected[0][rest <= 1e-6] += 1.0 - new[rest <= 1e-6]
    fused = fuse_class(full.copy(), [0, 1, 2], partial, [0, 2], into=2, strategy="mean", slab=slab)
    assert fused.dtype == expected.dtype and np.array_equal(fused, expected)
    in_place = full.copy()
    assert fuse_class(in_place, [0, 1, 2], partial, [0, 2], 2, "mean", in_place=True, slab=slab) is in_place
    assert np.array_equal(in_place, expected)


def test_fusion_where_the_ensemble_was_certain():
    full = np.zeros((3, 1, 1, 2), dtype=np.float32)
    full[2] = 1.0
    partial = np.zeros((2, 1, 1, 2), dtype=np.float32)
    partial[0] = 1.0  # the partial model says: no metastasis
    fused = fuse_class(full, [0, 1, 2], partial, [0, 2], into=2, strategy="mean")
    np.testing.assert_allclose(fused[:, 0, 0, 0], [0.5, 0.0, 0.5])


def test_ensemble_case_writes_labels_on_the_image_grid(tmp_path):
    reference = sitk.Image(6, 5, 4, sitk.sitkInt16)
    reference.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(reference, str(tmp_path / "image.nii.gz"))
    member = np.zeros((3, 4, 5, 6), dtype=np.float32)
    member[0] = 1.0
    member[:, 0, 0, 0] = [0.1, 0.6, 0.3]  # primary
    member[:, 1, 1, 1] = [0.45, 0.1, 0.45]  # metastasis only after fusion
    (tmp_path / "full").mkdir()
    (tmp_path / "partial").mkdir()
    write_probabilities(tmp_path / "full" / "c.npz", member, [0, 1, 2], "float16")
    partial = np.zeros((2, 4, 5, 6), dtype=np.float32)
    partial[0] = 1.0
    partial[:, 1, 1, 1] = [0.1, 0.9]
    write_probabilities(tmp_path / "partial" / "c.npz", partial, [0, 2], "float16")
    selection = {"members": {"full": 1.0},
                 "fusions": [{"configuration": "partial", "into": 2, "strategy": "mean"}]}
    ensemble_case(selection, tmp_path, tmp_path / "image.nii.gz", tmp_path / "labels_only", "c")
    assert sorted(p.name for p in (tmp_path / "labels_only").iterdir()) == ["c.nii.gz"]
    ensemble_case(selection, tmp_path, tmp_path / "image.nii.gz", tmp_path / "out", "c", encoding="float16")
    seg = sitk.ReadImage(str(tmp_path / "out" / "c.nii.gz"))
    assert (sitk.GetArrayFromImage(seg) == sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels_only/c.nii.gz")))).all()
    assert np.allclose(seg.GetSpacing(), reference.GetSpacing())
    array = sitk.GetArrayFromImage(seg)
    assert array[0, 0, 0] == 1 and array[1, 1, 1] == 2 and array.sum() == 3
    probabilities, labels = read_probabilities(tmp_path / "out" / "c.npz")
    assert labels == [0, 1, 2] and probabilities.shape == (3, 4, 5, 6)


def test_in_place_fusion_and_argmax_match_the_plain_numpy_ones():
    from workflow_scripts.io import labels_from_probabilities

    rng = np.random.default_rng(2)
    full, partial = random_probabilities(rng, 3, (6, 7, 8)), random_probabilities(rng, 2, (6, 7, 8))
    full[:, 0, 0, 0] = [0.0, 0.0, 1.0]  # the class certain: what the fusion removes goes to background
    expected = fuse_class(full, [0, 1, 2], partial, [0, 2], into=2, strategy="union")
    fused = fuse_class(full.copy(), [0, 1, 2], partial, [0, 2], into=2, strategy="union", in_place=True)
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    fused[1, 1, 1, 1] = fused[0, 1, 1, 1]  # a tie goes to the first channel, as np.argmax
    np.testing.assert_array_equal(labels_from_probabilities(fused, [0, 1, 2]),
                                  np.array([0, 1, 2], np.uint8)[np.argmax(fused, axis=0)])


def test_ensemble_in_memory_asks_each_member_once_and_equals_the_one_from_files(tmp_path):
    """predict_test builds the ensemble from members predicted on demand; ensemble_case from their files: same."""
    rng = np.random.default_rng(3)
    maps = {"a": (random_probabilities(rng, 3), [0, 1, 2]), "b": (random_probabilities(rng, 3), [0, 1, 2]),
            "m": (random_probabilities(rng, 2), [0, 2])}
    for name, (probabilities, labels) in maps.items():
        (tmp_path / name).mkdir()
        # float16 as on disk, so both paths see the same numbers
        maps[name] = (probabilities.astype(np.float16).astype(np.float32), labels)
        write_probabilities(tmp_path / name / "c.npz", maps[name][0], labels, "float16")
    selection = {"members": {"a": 2.0, "b": 1.0}, "fusions": [{"configuration": "m", "into": 2, "strategy": "max"}]}
    asked = []

    def member(name):
        asked.append(name)
        return maps[name][0].copy(), maps[name][1]

    probabilities, labels = ensemble_probabilities(selection, member)
    assert asked == ["a", "b", "m"] and labels == [0, 1, 2]
    from_files, _ = ensemble_probabilities(selection, lambda n: read_probabilities(tmp_path / n / "c.npz"))
    np.testing.assert_allclose(probabilities, from_files, rtol=1e-6)
    mean = (2 * maps["a"][0] + maps["b"][0]) / 3
    np.testing.assert_allclose(probabilities, fuse_class(mean, [0, 1, 2], maps["m"][0], [0, 2], 2, "max"), rtol=1e-5)
