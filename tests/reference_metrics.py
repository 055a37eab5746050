"""Independent renderings the workflow's metrics are checked against: straightforward whole-volume surface
metrics in the style of Metrics Reloaded (border maps by erosion, Euclidean distance transforms of the whole
volume), the baseline the fast cropped code is checked and benchmarked against; and the PINKCC score as the
organisers' evaluation code defines it."""
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


def organisers_pinkcc(references: list, predictions: list) -> float:
    """The PINKCC score as the definition in the organisers' evaluation code reads, written independently with
    torch: one-hot label maps, dilation by 3x3x3 max-pooling, per case the mean over the classes present in the
    reference, voxel counts per class summed over cases for F2."""
    import torch
    import torch.nn.functional as F

    eps, per_case, counts = 1e-6, [], torch.zeros(2, 3, dtype=torch.float64)
    for reference, prediction in zip(references, predictions):
        ref = F.one_hot(torch.from_numpy(reference).long(), 3).permute(3, 0, 1, 2)[None].double()
        pred = F.one_hot(torch.from_numpy(prediction).long(), 3).permute(3, 0, 1, 2)[None].double()
        dilate = lambda x: F.max_pool3d(x, kernel_size=3, stride=1, padding=1)  # noqa: E731
        total, present = 0.0, 0
        for c in (1, 2):
            a, b = ref[:, c:c + 1], pred[:, c:c + 1]
            dice = ((a * dilate(b)).sum() + (b * dilate(a)).sum()) / (a.sum() + b.sum() + eps)
            if a.sum() > 0:
                total, present = total + float(dice), present + 1
            counts[c - 1] += torch.tensor([(a * b).sum(), ((1 - a) * b).sum(), (a * (1 - b)).sum()])
        per_case.append(total / (present + eps))
    tp, fp, fn = counts.T
    precision, recall = tp / (tp + fp + eps), tp / (tp + fn + eps)
    f2 = 5 * precision * recall / (4 * precision + recall + eps)
    return 0.5 * float(np.mean(per_case)) + 0.5 * float(f2.mean())
