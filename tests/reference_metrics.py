"""Straightforward whole-volume surface metrics in the style of Metrics Reloaded (border maps by erosion,
Euclidean distance transforms of the whole volume): the baseline the fast cropped code is checked and
benchmarked against."""
import numpy as np
from scipy import ndimage


def border_map(mask):
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1), border_value=0)


def reference_surface_metrics(reference, prediction, spacing, tolerances=(1.0, 2.0), percentile=95):
    border_ref, border_pred = border_map(reference), border_map(prediction)
    distance_to_ref = ndimage.distance_transform_edt(~border_ref, sampling=spacing)
    distance_to_pred = ndimage.distance_transform_edt(~border_pred, sampling=spacing)
    pred_to_ref, ref_to_pred = distance_to_ref[border_pred], distance_to_pred[border_ref]
    both = np.concatenate([pred_to_ref, ref_to_pred])
    return {"hd95_mm": max(np.percentile(pred_to_ref, percentile), np.percentile(ref_to_pred, percentile)),
            "assd_mm": both.mean(),
            **{f"nsd_{t:g}mm": np.count_nonzero(both <= t) / both.size for t in tolerances}}
