"""Segmentation metrics of one class in one case, in physical units, and the PINKCC challenge score.

Conventions (printed in every table by :meth:`Conventions.describe`):
- Surface distances follow Metrics Reloaded: the border of a mask is its voxels with a 6-neighbour outside
  the mask (voxels on the edge of the volume are border voxels); distances are Euclidean in mm between
  border voxel centres. HD95 is the larger of the two directed 95th percentiles, ASSD the mean of all
  border-to-border distances of both directions, NSD the fraction of both borders within the tolerance.
- Distances are computed inside the union bounding box plus one voxel, which gives the same borders and
  the same nearest border voxels as the whole volume, and by nearest-neighbour search over border voxels,
  which gives exactly the values of a Euclidean distance transform evaluated at those voxels.
- Lesions are 26-connected components. A reference lesion is detected when a predicted component overlaps
  it by at least ``lesion_min_overlap`` voxels; a predicted component overlapping no reference lesion is
  a false lesion. Lesion-wise Dice (after BraTS) is the sum over reference lesions of the Dice between the
  lesion and the predicted components overlapping it, divided by (reference lesions + false lesions); BraTS
  2023's evaluation also dilates lesions before matching and drops small ones, which is not done here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from workflow_scripts.config import section_settings

TWENTY_SIX_NEIGHBOURS = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class Conventions:
    """How undefined values are counted. ``both_empty``: the score (Dice, IoU, precision, recall, NSD,
    lesion F1, lesion Dice) when neither mask has the class, with distances 0 (or NaN when ``both_empty``
    is NaN). ``one_empty_distance``: HD95 and ASSD when exactly one mask is empty, ``nan`` (left out of
    means) or ``diagonal`` (the diagonal of the volume in mm, the worst possible value); NSD is then 0.
    Precision of an empty prediction and recall of an empty reference are NaN (not defined)."""

    both_empty: float
    one_empty_distance: str
    nsd_tolerances_mm: tuple[float, ...]
    hd_percentile: float
    lesion_min_overlap: int

    @classmethod
    def from_settings(cls, settings: dict | None = None) -> "Conventions":
        """From the config's ``evaluation`` section; keys left out take the schema's defaults."""
        settings = section_settings("evaluation", settings)
        return cls(both_empty=1.0 if settings["both_empty"] == "one" else math.nan,
                   one_empty_distance=settings["one_empty_distance"],
                   nsd_tolerances_mm=tuple(float(t) for t in settings["nsd_tolerances_mm"]),
                   hd_percentile=float(settings["hd_percentile"]),
                   lesion_min_overlap=int(settings["lesion_min_overlap"]))

    @property
    def both_empty_distance(self) -> float:
        return math.nan if math.isnan(self.both_empty) else 0.0

    def describe(self) -> str:
        return (f"both empty: scores {self.both_empty:g}, distances {self.both_empty_distance:g}; "
                f"one empty: distances {self.one_empty_distance}, NSD 0; lesions 26-connected, detected at "
                f">= {self.lesion_min_overlap} overlapping voxel(s); HD{self.hd_percentile:g}")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask`` plus ``margin`` voxels (clipped), or None when it is empty; one
    projection per axis."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        slices.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(slices)


def union_crop(reference: np.ndarray, prediction: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of both masks plus ``margin`` voxels (clipped), or None when both are empty."""
    return bounding_box(reference | prediction, margin)


def border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it; outside the array counts as outside the mask."""
    # Shifted-slice erosion: the same result as binary_erosion(cross, border_value=0), several times faster.
    interior = mask.copy()
    for axis in range(mask.ndim):
        lower = [slice(None)] * mask.ndim
        upper = [slice(None)] * mask.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        interior[tuple(lower)] &= mask[tuple(upper)]
        interior[tuple(upper)] &= mask[tuple(lower)]
        edge = [slice(None)] * mask.ndim
        for index in (0, -1):
            edge[axis] = index
            interior[tuple(edge)] = False
    return mask & ~interior


def dilate_cube(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 3x3x3 cube, one axis at a time (the cube is separable); the volume is not padded."""
    out = mask
    for axis in range(mask.ndim):
        lower = [slice(None)] * mask.ndim
        upper = [slice(None)] * mask.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        grown = out.copy()
        grown[tuple(lower)] |= out[tuple(upper)]
        grown[tuple(upper)] |= out[tuple(lower)]
        out = grown
    return out


def border_distances(reference: np.ndarray, prediction: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every prediction border voxel to the reference border and back.
    Both masks must be non-empty."""
    spacing = np.asarray(spacing, float)
    ref_points = np.argwhere(border(reference)) * spacing
    pred_points = np.argwhere(border(prediction)) * spacing
    pred_to_ref, _ = cKDTree(ref_points).query(pred_points, workers=-1)
    ref_to_pred, _ = cKDTree(pred_points).query(ref_points, workers=-1)
    return pred_to_ref, ref_to_pred


def surface_metrics(reference: np.ndarray, prediction: np.ndarray, spacing, conventions: Conventions,
                    volume_shape=None) -> dict:
    """HD95, ASSD and NSD at every tolerance of two boolean masks (cropped or not) with spacing in mm."""
    tolerances = conventions.nsd_tolerances_mm
    has_ref, has_pred = bool(reference.any()), bool(prediction.any())
    if not has_ref and not has_pred:
        distance = conventions.both_empty_distance
        return {"hd95_mm": distance, "assd_mm": distance, **{nsd_column(t): conventions.both_empty for t in tolerances}}
    if not (has_ref and has_pred):
        if conventions.one_empty_distance == "diagonal":
            shape = np.asarray(volume_shape if volume_shape is not None else reference.shape, float)
            distance = float(np.linalg.norm(shape * np.asarray(spacing, float)))
        else:
            distance = math.nan
        return {"hd95_mm": distance, "assd_mm": distance, **{nsd_column(t): 0.0 for t in tolerances}}
    pred_to_ref, ref_to_pred = border_distances(reference, prediction, spacing)
    both = np.concatenate([pred_to_ref, ref_to_pred])
    q = conventions.hd_percentile
    return {"hd95_mm": float(max(np.percentile(pred_to_ref, q), np.percentile(ref_to_pred, q))),
            "assd_mm": float(both.mean()),
            **{nsd_column(t): float(np.count_nonzero(both <= t) / both.size) for t in tolerances}}


def nsd_column(tolerance: float) -> str:
    return f"nsd_{tolerance:g}mm"


def lesion_metrics(reference: np.ndarray, prediction: np.ndarray, conventions: Conventions) -> dict:
    """Lesion-wise detection over 26-connected components, lesion F1 and BraTS-style lesion-wise Dice."""
    ref_components, n_ref = ndimage.label(reference, TWENTY_SIX_NEIGHBOURS)
    pred_components, n_pred = ndimage.label(prediction, TWENTY_SIX_NEIGHBOURS)
    # Overlap counts between every reference lesion (rows) and predicted component (columns), 0 = none;
    # only voxels of either mask matter, so background (row 0, column 0) is not counted.
    union = reference | prediction
    pairs = np.bincount(ref_components[union].astype(np.int64) * (n_pred + 1) + pred_components[union],
                        minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)
    matched = pairs[1:, 1:] >= conventions.lesion_min_overlap
    detected = int(matched.any(axis=1).sum())
    false = int((~matched.any(axis=0)).sum())
    ref_sizes, pred_sizes = pairs[1:, :].sum(axis=1), pairs[:, 1:].sum(axis=0)
    lesion_dice_sum = 0.0
    for lesion in range(n_ref):
        partners = matched[lesion]
        if partners.any():
            overlap = pairs[lesion + 1, 1:][partners].sum()
            lesion_dice_sum += 2.0 * overlap / (ref_sizes[lesion] + pred_sizes[partners].sum())
    if n_ref == 0 and n_pred == 0:
        f1 = lesion_dice = conventions.both_empty
    else:
        f1 = 2.0 * detected / (2.0 * detected + (n_ref - detected) + false)
        lesion_dice = lesion_dice_sum / (n_ref + false)
    return {"lesions_reference": n_ref, "lesions_predicted": n_pred, "lesions_detected": detected,
            "lesions_missed": n_ref - detected, "lesions_false": false, "lesion_f1": f1, "lesion_dice": lesion_dice}


def overlap_metrics(reference: np.ndarray, prediction: np.ndarray, voxel_ml: float, conventions: Conventions) -> dict:
    tp = int(np.count_nonzero(reference & prediction))
    n_ref, n_pred = int(np.count_nonzero(reference)), int(np.count_nonzero(prediction))
    fp, fn = n_pred - tp, n_ref - tp
    empty = n_ref == 0 and n_pred == 0
    both = conventions.both_empty
    return {"dice": both if empty else 2.0 * tp / (n_ref + n_pred),
            "iou": both if empty else tp / (tp + fp + fn),
            "precision": both if empty else _ratio(tp, n_pred),
            "recall": both if empty else _ratio(tp, n_ref),
            "reference_voxels": n_ref, "predicted_voxels": n_pred, "tp_voxels": tp, "fp_voxels": fp, "fn_voxels": fn,
            "reference_ml": n_ref * voxel_ml, "predicted_ml": n_pred * voxel_ml,
            "volume_difference_ml": (n_pred - n_ref) * voxel_ml,
            "relative_volume_difference": _ratio(n_pred - n_ref, n_ref)}


# The PINKCC organisers' evaluation (github.com/MaximeD34/public_pinkcc_challenge, eval/): a small constant in
# every denominator, kept so that their values are reproduced to rounding, empty masks included.
PINKCC_EPSILON = 1e-6


def dilated_dice(reference: np.ndarray, prediction: np.ndarray, both_empty: float) -> float:
    """The PINKCC tolerant Dice (eval/dilated_dice_score.py): (|A & D(B)| + |B & D(A)|) / (|A| + |B| + 1e-6), A the
    reference, B the prediction, D the dilation by the 3x3x3 cube (their max-pool, eval/dilate3D.py). A voxel of
    either mask within one voxel of the other counts as matched. ``both_empty`` where neither mask has the class
    (the score leaves such a class out)."""
    n_ref, n_pred = int(np.count_nonzero(reference)), int(np.count_nonzero(prediction))
    if n_ref == 0 and n_pred == 0:
        return both_empty
    matched = (np.count_nonzero(reference & dilate_cube(prediction))
               + np.count_nonzero(prediction & dilate_cube(reference)))
    return float(matched / (n_ref + n_pred + PINKCC_EPSILON))


def class_metrics(reference: np.ndarray, prediction: np.ndarray, spacing, conventions: Conventions) -> dict:
    """Every metric of one class: boolean masks of the whole volume (z, y, x) and spacing in mm (z, y, x)."""
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    volume_shape = reference.shape
    crop = union_crop(reference, prediction)
    if crop is not None:
        reference, prediction = reference[crop], prediction[crop]
    row = overlap_metrics(reference, prediction, voxel_ml, conventions)
    row.update(surface_metrics(reference, prediction, spacing, conventions, volume_shape=volume_shape))
    row.update(lesion_metrics(reference, prediction, conventions))
    row["dice_dilated"] = dilated_dice(reference, prediction, conventions.both_empty)
    return row


def f_beta(tp: float, fp: float, fn: float, beta: float = 2.0) -> float:
    """F-beta from voxel counts as the PINKCC evaluation computes it (eval/eval_pipeline.py): precision and recall
    each with 1e-6 in the denominator, so a class with no voxel in either mask scores 0, not undefined."""
    precision = tp / (tp + fp + PINKCC_EPSILON)
    recall = tp / (tp + fn + PINKCC_EPSILON)
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall + PINKCC_EPSILON)


def pinkcc_score(rows) -> dict:
    """PINKCC score of one stage from per case and class rows (dicts or a DataFrame's records) holding
    ``case``, ``class``, ``reference_voxels``, ``dice_dilated``, ``tp_voxels``, ``fp_voxels``, ``fn_voxels``;
    as the organisers' evaluation computes it (github.com/MaximeD34/public_pinkcc_challenge, eval/):

    - per case, the sum of the tolerant Dice (:func:`dilated_dice`) over the classes present in the reference,
      divided by (their count + 1e-6): a case with no lesion class in its reference scores 0 and still counts
      (eval/dilated_dice_score.py); then the mean over cases (eval/compute_global_score_from_batches.py);
    - per class, F2 of the voxel true/false positives and negatives (undilated masks) summed over all cases
      (:func:`f_beta`, eval/eval_pipeline.py), then the mean over the classes, a class absent from every case
      and every prediction counting 0;
    - score = 0.5 x mean tolerant Dice + 0.5 x mean F2.

    The classes are those of the rows: both lesion classes for a full-label stage, its own for a partial model."""
    present: dict[str, list[float]] = {}
    pooled: dict[str, list[int]] = {}
    for row in rows:
        dice = present.setdefault(row["case"], [])
        if row["reference_voxels"] > 0:
            dice.append(row["dice_dilated"])
        counts = pooled.setdefault(row["class"], [0, 0, 0])
        counts[0] += int(row["tp_voxels"])
        counts[1] += int(row["fp_voxels"])
        counts[2] += int(row["fn_voxels"])
    per_case = [sum(values) / (len(values) + PINKCC_EPSILON) for values in present.values()]
    dice_part = float(np.mean(per_case)) if per_case else math.nan
    f2 = {name: f_beta(*counts) for name, counts in pooled.items()}
    f2_part = float(np.mean(list(f2.values()))) if f2 else math.nan
    return {"dilated_dice": dice_part, "f2": f2_part, "pinkcc_score": 0.5 * dice_part + 0.5 * f2_part,
            **{f"f2_{name}": value for name, value in f2.items()}}
