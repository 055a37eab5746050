"""Benchmark: seconds per case and class of the distance metrics (HD95, ASSD, NSD together) on full-size CT
label maps, against the whole-volume distance-transform baseline measured in the same run.

    python -m benchmarks.bench_metrics                 # 512 x 512 x 300, 2 classes, 3 cases
    python -m benchmarks.bench_metrics --shape 64 128 128 --cases 1

Goal (issue 6): at most 1 s per case and class for HD95 + ASSD + NSD on 2 cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tests.reference_metrics import reference_surface_metrics

from workflow_scripts.metrics import Conventions, class_metrics, surface_metrics, union_crop

SPACING = (2.5, 0.8, 0.8)  # z, y, x in mm: a typical abdominal CT


def synthetic_case(shape, seed):
    """Label maps (reference, prediction) with a large primary tumour and metastases spread over the abdomen;
    the prediction is shifted and resized a little, misses one metastasis and adds one false lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    scale = np.array(shape) / np.array([300, 512, 512])

    def blob(centre, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centre, radii)) <= 1.0

    reference = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    centre = np.array(shape) / 2
    radii = np.array([40, 60, 70]) * scale
    reference[blob(centre, radii)] = 1
    prediction[blob(centre + 2 * scale, radii * 0.95)] = 1
    for i in range(8):
        c = rng.uniform(0.15, 0.85, 3) * shape
        r = rng.uniform(3, 10) * scale
        reference[blob(c, r)] = 2
        if i:
            prediction[blob(c + scale, r * 0.9)] = 2
    prediction[blob(rng.uniform(0.2, 0.8, 3) * shape, 5 * scale)] = 2
    return reference, prediction


def timed(function, *args, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def cropped_distances(reference, prediction, conventions):
    crop = union_crop(reference, prediction)
    return surface_metrics(reference[crop], prediction[crop], SPACING, conventions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="z y x")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the slow whole-volume baseline")
    args = parser.parse_args()
    conventions = Conventions.from_settings()
    print(f"shape {tuple(args.shape)} (z, y, x), spacing {SPACING} mm, {args.cases} case(s), classes 1 and 2")
    print(f"{'case':>4} {'class':>5} {'mask voxels':>11} {'distances s':>11} {'all metrics s':>13} "
          f"{'baseline s':>10} {'speed-up':>8} {'max |diff|':>10}")
    fast_times, all_times, ratios = [], [], []
    for case in range(args.cases):
        reference, prediction = synthetic_case(tuple(args.shape), case)
        for label in (1, 2):
            ref, pred = reference == label, prediction == label
            fast, got = timed(cropped_distances, ref, pred, conventions, repeats=2)
            everything, _ = timed(class_metrics, ref, pred, SPACING, conventions)
            fast_times.append(fast)
            all_times.append(everything)
            if args.no_baseline:
                print(f"{case:>4} {label:>5} {int(ref.sum()):>11} {fast:>11.3f} {everything:>13.3f}")
                continue
            slow, expected = timed(reference_surface_metrics, ref, pred, SPACING)
            diff = max(abs(got[k] - expected[k]) for k in expected)
            ratios.append(slow / fast)
            print(f"{case:>4} {label:>5} {int(ref.sum()):>11} {fast:>11.3f} {everything:>13.3f} {slow:>10.2f} "
                  f"{slow / fast:>7.1f}x {diff:>10.2e}")
    print(f"HD95 + ASSD + NSD: median {np.median(fast_times):.3f} s, max {max(fast_times):.3f} s per case and class "
          f"(goal <= 1 s); every metric incl. lesion-wise and dilated Dice: median {np.median(all_times):.3f} s")
    if ratios:
        print(f"speed-up over the whole-volume distance transform baseline: median {np.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
