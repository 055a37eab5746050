"""Benchmark: QC time of one case (image + label, every check) against the time to just read the same two files
with SimpleITK (nnU-Net's reader), measured in the same run on realistic-size volumes. QC reads the voxels with
nibabel, which checks the gzip stream's CRC (ITK accepts a truncated file), so reading is part of its time.

    python -m benchmarks.bench_qc                  # 512 x 512 x 300 int16 CT + uint8 label, gzip, 3 cases
    python -m benchmarks.bench_qc --shape 64 128 128 --cases 1

Goal (issue 3): QC time within 1.3x of reading.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.config import section_settings
from workflow_scripts.qc import inspect_case

SPACING = (0.8, 0.8, 2.5)  # x, y, z in mm


def write_case(folder: Path, shape, seed: int) -> tuple[Path, Path]:
    """A body-shaped CT in HU (air, soft tissue with noise, bone) and a label with a primary and metastases."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    centre = np.array(shape) / 2
    body = ((y - centre[1]) / (0.4 * shape[1])) ** 2 + ((x - centre[2]) / (0.45 * shape[2])) ** 2 <= 1
    image = np.full(shape, -1000, np.int16)
    image[np.broadcast_to(body, shape)] = 40
    image += rng.normal(0, 15, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[((z - centre[0]) / (0.1 * shape[0])) ** 2 + ((y - centre[1]) / (0.08 * shape[1])) ** 2
          + ((x - centre[2]) / (0.08 * shape[2])) ** 2 <= 1] = 1
    for _ in range(8):
        c = centre + rng.uniform(-0.25, 0.25, 3) * np.array(shape)
        label[((z - c[0]) / 3) ** 2 + ((y - c[1]) / 8) ** 2 + ((x - c[2]) / 8) ** 2 <= 1] = 2
    paths = folder / f"case_{seed}_image.nii.gz", folder / f"case_{seed}_label.nii.gz"
    for array, path in ((image, paths[0]), (label, paths[1])):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(SPACING)
        sitk.WriteImage(itk, str(path), useCompression=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [write_case(Path(tmp), tuple(args.shape), seed) for seed in range(args.cases)]
        read_s, qc_s = [], []
        settings = section_settings("qc")
        for image, label in cases:
            start = time.perf_counter()
            for path in (image, label):
                itk = sitk.ReadImage(str(path))  # SimpleITK: nnU-Net's own reader
                sitk.GetArrayViewFromImage(itk).min()  # touch the voxels (the view lives while itk does)
            read_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            table = inspect_case(image.name, image, label, [0, 1, 2], settings)[0]  # as the rule passes them
            qc_s.append(time.perf_counter() - start)
            assert not (table["severity"] == "error").any(), table.to_string()
        ratios = [q / r for q, r in zip(qc_s, read_s)]
        print(f"shape {tuple(args.shape)} (z, y, x), int16 image + uint8 label, gzip, {args.cases} case(s)")
        print(f"read only : median {statistics.median(read_s):.2f} s per case")
        print(f"QC        : median {statistics.median(qc_s):.2f} s per case ({len(table)} rows)")
        print(f"ratio QC / read: median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
