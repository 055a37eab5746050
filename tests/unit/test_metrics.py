"""Metrics against known answers: analytic distances, anisotropic spacing, one-voxel objects, empty masks,
masks touching the volume border, lesion matching, and the PINKCC score computed by hand."""
import math

import numpy as np
import pytest

from reference_metrics import organisers_pinkcc, reference_surface_metrics
from workflow_scripts.metrics import (Conventions, border, class_metrics, dilate_cube, lesion_metrics, pinkcc_score,
                                      surface_metrics, union_crop)

pytestmark = pytest.mark.unit

CONVENTIONS = Conventions.from_settings()


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) * sp) ** 2 for g, c, sp in zip(grid, centre, spacing)) <= radius ** 2


def test_one_voxel_objects_anisotropic_exact_distances():
    ref = np.zeros((10, 10, 10), bool)
    pred = np.zeros_like(ref)
    ref[2, 5, 5] = True
    pred[5, 5, 5] = True  # 3 slices apart at 2.5 mm: 7.5 mm
    m = class_metrics(ref, pred, (2.5, 0.8, 0.8), Conventions.from_settings({"nsd_tolerances_mm": [7.0, 7.5]}))
    assert m["hd95_mm"] == pytest.approx(7.5) and m["assd_mm"] == pytest.approx(7.5)
    assert m["nsd_7mm"] == 0.0 and m["nsd_7.5mm"] == 1.0
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["lesions_detected"] == 0 and m["lesions_missed"] == 1 and m["lesions_false"] == 1
    pred[2, 5, 6] = True  # in-plane neighbour at 0.8 mm, same component as nothing else
    m = class_metrics(ref, pred, (2.5, 0.8, 0.8), Conventions.from_settings({"nsd_tolerances_mm": [1.0]}))
    # pred border {7.5, 0.8} to ref, ref border {0.8} to pred: ASSD = (7.5 + 0.8 + 0.8) / 3
    assert m["assd_mm"] == pytest.approx((7.5 + 0.8 + 0.8) / 3)
    assert m["nsd_1mm"] == pytest.approx(2 / 3)


def test_concentric_balls_have_the_radius_difference_as_distance():
    spacing = (2.0, 0.7, 0.7)
    shape = (40, 120, 120)
    centre = (20, 60, 60)
    ref, pred = ball(shape, centre, 20.0, spacing), ball(shape, centre, 26.0, spacing)
    m = class_metrics(ref, pred, spacing, Conventions.from_settings({"nsd_tolerances_mm": [4.0, 8.0]}))
    # Voxelised spheres: distances are 6 mm up to about one voxel diagonal of discretisation.
    assert m["hd95_mm"] == pytest.approx(6.0, abs=1.5)
    assert m["assd_mm"] == pytest.approx(6.0, abs=1.0)
    assert m["nsd_4mm"] < 0.1 and m["nsd_8mm"] == 1.0
    volume = lambda r: 4 / 3 * math.pi * r ** 3 / 1000  # noqa: E731
    assert m["reference_ml"] == pytest.approx(volume(20.0), rel=0.03)
    assert m["predicted_ml"] == pytest.approx(volume(26.0), rel=0.03)
    assert m["dice"] == pytest.approx(2 * 20 ** 3 / (20 ** 3 + 26 ** 3), rel=0.03)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx((20 / 26) ** 3, rel=0.03)


def test_shifted_cubes_match_hand_computed_values():
    ref = np.zeros((12, 12, 12), bool)
    ref[2:6, 2:6, 2:6] = True
    pred = np.roll(ref, 2, axis=2)  # shifted by 2 voxels in x (1.5 mm each)
    m = class_metrics(ref, pred, (1.0, 1.0, 1.5), CONVENTIONS)
    # 4x4x4 cubes overlapping on a 4x4x2 slab.
    assert m["dice"] == pytest.approx(2 * 32 / 128) and m["iou"] == pytest.approx(32 / 96)
    assert m["volume_difference_ml"] == 0.0 and m["relative_volume_difference"] == 0.0
    expected = reference_surface_metrics(ref, pred, (1.0, 1.0, 1.5))
    for key, value in expected.items():
        assert m[key] == pytest.approx(value)
    # The far faces are 2 voxels x 1.5 mm = 3 mm from the other border: that is the maximum distance.
    assert m["hd95_mm"] == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(6))
def test_cropped_nearest_neighbour_distances_equal_whole_volume_distance_transforms(seed):
    rng = np.random.default_rng(seed)
    shape = (20, 30, 26)
    spacing = tuple(rng.uniform(0.5, 3.0, 3))
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for mask in (ref, pred):
        for _ in range(3):
            centre = rng.integers(0, shape)
            mask |= ball(shape, centre, rng.uniform(1.0, 6.0), (1, 1, 1))
    if not (ref.any() and pred.any()):
        pytest.skip("random masks came out empty")
    expected = reference_surface_metrics(ref, pred, spacing)
    crop = union_crop(ref, pred)
    got = surface_metrics(ref[crop], pred[crop], spacing, CONVENTIONS)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_masks_touching_the_volume_border():
    ref = np.ones((6, 6, 6), bool)  # every face voxel is a border voxel
    pred = ref.copy()
    pred[:, :, -2:] = False
    m = class_metrics(ref, pred, (1.0, 1.0, 1.0), CONVENTIONS)
    expected = reference_surface_metrics(ref, pred, (1.0, 1.0, 1.0))
    for key, value in expected.items():
        assert m[key] == pytest.approx(value)
    assert m["hd95_mm"] == pytest.approx(2.0)  # ref's x=5 face to pred's x=3 face
    same = class_metrics(ref, ref, (1.0, 1.0, 1.0), CONVENTIONS)
    assert same["hd95_mm"] == 0.0 and same["assd_mm"] == 0.0 and same["dice"] == 1.0 and same["nsd_1mm"] == 1.0
    assert border(ref).sum() == 6 ** 3 - 4 ** 3


@pytest.mark.parametrize("both_empty, one_empty", [("one", "nan"), ("nan", "diagonal")])
def test_empty_mask_conventions(both_empty, one_empty):
    conventions = Conventions.from_settings({"both_empty": both_empty, "one_empty_distance": one_empty})
    empty = np.zeros((4, 5, 6), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    spacing = (2.0, 1.0, 1.0)
    both = class_metrics(empty, empty, spacing, conventions)
    score = 1.0 if both_empty == "one" else math.nan
    for key in ("dice", "iou", "precision", "recall", "nsd_1mm", "lesion_f1", "lesion_dice", "dice_dilated"):
        assert both[key] == score or (math.isnan(score) and math.isnan(both[key])), key
    assert (both["hd95_mm"] == 0.0) if both_empty == "one" else math.isnan(both["hd95_mm"])
    diagonal = math.sqrt((4 * 2.0) ** 2 + 5 ** 2 + 6 ** 2)
    for ref, pred in ((some, empty), (empty, some)):
        m = class_metrics(ref, pred, spacing, conventions)
        assert m["dice"] == 0.0 and m["nsd_1mm"] == 0.0
        if one_empty == "nan":
            assert math.isnan(m["hd95_mm"]) and math.isnan(m["assd_mm"])
        else:
            assert m["hd95_mm"] == pytest.approx(diagonal) and m["assd_mm"] == pytest.approx(diagonal)
    missed = class_metrics(some, empty, spacing, conventions)
    assert math.isnan(missed["precision"]) and missed["recall"] == 0.0 and missed["lesions_missed"] == 1
    false = class_metrics(empty, some, spacing, conventions)
    assert false["precision"] == 0.0 and math.isnan(false["recall"]) and false["lesions_false"] == 1
    assert false["lesion_f1"] == 0.0 and false["lesion_dice"] == 0.0
    assert f"one empty: distances {one_empty}" in conventions.describe()
    assert f"both empty: scores {score:g}" in conventions.describe()


def test_lesion_wise_detection_and_brats_lesion_dice():
    ref = np.zeros((10, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = True          # lesion A, 8 voxels: found by a 4-voxel prediction
    pred[1:3, 1:3, 1:2] = True
    ref[5, 5, 5] = ref[6, 6, 6] = True  # lesion B: diagonal neighbours are one 26-connected lesion
    pred[5, 5, 5] = True
    ref[8, 15, 15] = True               # lesion C: missed
    pred[8, 2:4, 10] = True             # false lesion
    m = lesion_metrics(ref, pred, CONVENTIONS)
    assert (m["lesions_reference"], m["lesions_predicted"]) == (3, 3)
    assert (m["lesions_detected"], m["lesions_missed"], m["lesions_false"]) == (2, 1, 1)
    assert m["lesion_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    dice_a, dice_b = 2 * 4 / (8 + 4), 2 * 1 / (2 + 1)
    assert m["lesion_dice"] == pytest.approx((dice_a + dice_b + 0 + 0) / (3 + 1))
    strict = lesion_metrics(ref, pred, Conventions.from_settings({"lesion_min_overlap": 2}))
    assert strict["lesions_detected"] == 1  # lesion B overlaps by one voxel only
    # One predicted component covering two reference lesions detects both.
    merged = np.zeros_like(ref)
    merged[1:7, 1:7, 1:7] = True
    both = lesion_metrics(ref, merged, CONVENTIONS)
    assert both["lesions_detected"] == 2 and both["lesions_false"] == 0


def test_dilation_is_the_3x3x3_cube_and_pinkcc_score_by_hand():
    mask = np.zeros((5, 5, 5), bool)
    mask[0, 0, 0] = True
    assert dilate_cube(mask).sum() == 8  # clipped at the volume corner
    mask[0, 0, 0], mask[2, 2, 2] = False, True
    assert dilate_cube(mask).sum() == 27
    eps = 1e-6
    rows = [
        # a: both classes present; b: only the primary, a false metastasis predicted; c: lesion-free, a false
        # primary predicted; d: both classes present, nothing predicted (an empty prediction).
        {"case": "a", "class": "primary", "reference_voxels": 10, "dice_dilated": 0.8, "tp_voxels": 8, "fp_voxels": 2, "fn_voxels": 2},
        {"case": "a", "class": "metastasis", "reference_voxels": 4, "dice_dilated": 0.4, "tp_voxels": 1, "fp_voxels": 0, "fn_voxels": 3},
        {"case": "b", "class": "primary", "reference_voxels": 6, "dice_dilated": 1.0, "tp_voxels": 6, "fp_voxels": 0, "fn_voxels": 0},
        {"case": "b", "class": "metastasis", "reference_voxels": 0, "dice_dilated": 0.0, "tp_voxels": 0, "fp_voxels": 5, "fn_voxels": 0},
        {"case": "c", "class": "primary", "reference_voxels": 0, "dice_dilated": 0.0, "tp_voxels": 0, "fp_voxels": 3, "fn_voxels": 0},
        {"case": "c", "class": "metastasis", "reference_voxels": 0, "dice_dilated": 1.0, "tp_voxels": 0, "fp_voxels": 0, "fn_voxels": 0},
        {"case": "d", "class": "primary", "reference_voxels": 5, "dice_dilated": 0.0, "tp_voxels": 0, "fp_voxels": 0, "fn_voxels": 5},
        {"case": "d", "class": "metastasis", "reference_voxels": 2, "dice_dilated": 0.0, "tp_voxels": 0, "fp_voxels": 0, "fn_voxels": 2},
    ]
    score = pinkcc_score(rows)
    # Per case: the classes present in the reference, summed and divided by their count (+ 1e-6); the lesion-free
    # case c scores 0 and counts in the mean over the four cases.
    dice_part = ((0.8 + 0.4) / (2 + eps) + 1.0 / (1 + eps) + 0.0 + 0.0 / (2 + eps)) / 4
    # F2 per class from the counts summed over the cases: primary TP 14, FP 5, FN 7; metastasis TP 1, FP 5, FN 5.
    f2_primary = 5 * 14 / (5 * 14 + 4 * 7 + 5)
    f2_metastasis = 5 * 1 / (5 * 1 + 4 * 5 + 5)
    assert score["dilated_dice"] == pytest.approx(dice_part, abs=1e-9)
    assert score["f2_primary"] == pytest.approx(f2_primary, abs=1e-6)
    assert score["f2_metastasis"] == pytest.approx(f2_metastasis, abs=1e-6)
    assert score["pinkcc_score"] == pytest.approx(0.5 * dice_part + 0.5 * (f2_primary + f2_metastasis) / 2, abs=1e-6)
    # A class absent from every reference and every prediction has F2 0 and still counts in the mean of the F2s.
    absent = [dict(row, **({"tp_voxels": 0, "fp_voxels": 0, "fn_voxels": 0, "reference_voxels": 0}
                           if row["class"] == "metastasis" else {})) for row in rows]
    score = pinkcc_score(absent)
    assert score["f2_metastasis"] == 0.0
    assert score["f2"] == pytest.approx(f2_primary / 2, abs=1e-6)
    assert score["dilated_dice"] == pytest.approx((0.8 / (1 + eps) + 1.0 / (1 + eps) + 0 + 0) / 4, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pinkcc_score_of_label_maps_equals_the_organisers_definition(seed):
    """Random label maps of six cases, among them a lesion-free reference, an empty prediction and (seed 2) a
    metastasis class absent from every reference and prediction: the workflow's metrics (cropped to the masks,
    as evaluation runs them) give the score of the organisers' definition to 1e-9."""
    rng = np.random.default_rng(seed)
    shape = (12, 14, 10)
    references, predictions, rows = [], [], []
    for case in range(6):
        reference = np.zeros(shape, np.uint8)
        prediction = np.zeros(shape, np.uint8)
        for volume, n_blobs in ((reference, 0 if case == 0 else 3), (prediction, 0 if case == 1 else 4)):
            for _ in range(n_blobs):
                label = 1 if seed == 2 else int(rng.integers(1, 3))
                centre = rng.integers(0, shape)
                volume[ball(shape, centre, float(rng.uniform(1.0, 3.5)))] = label
        references.append(reference)
        predictions.append(prediction)
        for value, name in ((1, "primary"), (2, "metastasis")):
            row = class_metrics(reference == value, prediction == value, (2.5, 0.8, 0.8), CONVENTIONS)
            rows.append({"case": f"case_{case}", "class": name, **row})
    assert pinkcc_score(rows)["pinkcc_score"] == pytest.approx(organisers_pinkcc(references, predictions), abs=1e-9)


def test_dilated_dice_forgives_a_one_voxel_boundary_shift():
    ref = np.zeros((12, 12, 12), bool)
    ref[3:8, 3:8, 3:8] = True
    m = class_metrics(ref, np.roll(ref, 1, axis=0), (1, 1, 1), CONVENTIONS)
    assert m["dice"] == pytest.approx(0.8)
    assert m["dice_dilated"] == pytest.approx(1.0)  # every voxel of either mask is within one voxel of the other
    m = class_metrics(ref, np.roll(ref, 2, axis=0), (1, 1, 1), CONVENTIONS)
    assert m["dice"] == pytest.approx(0.6)
    assert m["dice_dilated"] == pytest.approx(0.8)  # four of five slices of each mask within one voxel