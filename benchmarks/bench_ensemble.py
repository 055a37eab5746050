"""Benchmark: peak memory of ensembling one full-size case as the number of models grows, against the
stack-everything-then-average baseline measured in the same run.

    python -m benchmarks.bench_ensemble                    # 512 x 512 x 300, 3 classes, 1 to 15 members
    python -m benchmarks.bench_ensemble --shape 64 128 128

Each measurement runs in its own process (peak resident memory: VmHWM). The workflow's ensemble
(`workflow_scripts.ensemble.ensemble_case`) reads members one at a time and fuses one partial model; the goal
(issue 5) is a peak bounded by a few probability maps of one case, whatever the number of models (3 x 5).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from workflow_scripts.io import write_probabilities

STREAMED = """
import sys, json
from pathlib import Path
from workflow_scripts.ensemble import ensemble_case
root = Path(sys.argv[1]); n = int(sys.argv[2])
selection = {"members": {f"member_{k}": 1.0 for k in range(n)},
             "fusions": [{"configuration": "partial", "into": 2, "strategy": "union"}]}
ensemble_case(selection, root, root / "image.nii.gz", root / "out", "case")
"""

STACKED = """
import sys
import numpy as np
from pathlib import Path
from workflow_scripts.io import read_probabilities
root = Path(sys.argv[1]); n = int(sys.argv[2])
maps = np.stack([read_probabilities(root / f"member_{k}" / "case.npz")[0] for k in range(n)])
mean = maps.mean(axis=0)
labels = np.argmax(mean, axis=0).astype(np.uint8)
"""


def make_case(root: Path, shape, members: int) -> float:
    """One full-size probability map (mostly background, a tumour and metastases), hard-linked as every member;
    a 2-channel partial model. Returns the size of one float32 map in MB."""
    import SimpleITK as sitk

    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    centre = np.array(shape) / 2
    tumour = sum(((g - c) / (s / 6)) ** 2 for g, c, s in zip((z, y, x), centre, shape)) <= 1.0
    probabilities = np.zeros((3, *shape), np.float16)
    probabilities[0] = 1.0
    probabilities[:, tumour] = np.array([0.2, 0.7, 0.1], np.float16)[:, None]
    probabilities[:, : shape[0] // 10, : shape[1] // 10, : shape[2] // 10] = np.array([0.3, 0.1, 0.6],
                                                                                     np.float16)[:, None, None, None]
    (root / "member_0").mkdir(parents=True)
    write_probabilities(root / "member_0" / "case.npz", probabilities, [0, 1, 2], "float16")
    for k in range(1, members):
        (root / f"member_{k}").mkdir()
        os.link(root / "member_0" / "case.npz", root / f"member_{k}" / "case.npz")
    partial = np.stack([probabilities[0] + probabilities[1], probabilities[2]])
    (root / "partial").mkdir()
    write_probabilities(root / "partial" / "case.npz", partial, [0, 2], "float16")
    del probabilities, partial
    image = sitk.Image([int(v) for v in shape[::-1]], sitk.sitkInt16)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(root / "image.nii.gz"))
    return 3 * int(np.prod(shape)) * 4 / 2**20


def measure(code: str, root: Path, n: int) -> tuple[float, float]:
    """(peak resident MB, seconds) of one run in a fresh process."""
    # VmHWM starts afresh at exec; getrusage's ru_maxrss would carry this parent's peak over the fork.
    script = (code + "\nfrom pathlib import Path as _P\n"
              "print(next(int(l.split()[1]) for l in _P('/proc/self/status').read_text().splitlines()"
              " if l.startswith('VmHWM')) / 1024)\n")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script, str(root), str(n)], cwd=REPO, capture_output=True,
                            text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="z y x")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 3, 15])
    parser.add_argument("--baseline-members", type=int, nargs="+", default=[1, 3, 5],
                        help="the stacking baseline needs n maps at once: keep n small on small machines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        map_mb = make_case(root, tuple(args.shape), max(args.members + args.baseline_members))
        empty, _ = measure("import numpy, SimpleITK, scipy\nfrom workflow_scripts.io import read_probabilities",
                           root, 0)
        print(f"case {' x '.join(map(str, args.shape))}, 3 classes: one float32 probability map {map_mb:.0f} MB; "
              f"interpreter with the imports {empty:.0f} MB")
        print(f"{'members':>8} {'method':>9} {'peak MB':>9} {'(peak - imports) / map':>24} {'seconds':>8}")
        rows = []
        for n in args.members:
            peak, seconds = measure(STREAMED, root, n)
            rows.append(("streamed", n, peak))
            print(f"{n:>8} {'streamed':>9} {peak:>9.0f} {(peak - empty) / map_mb:>24.2f} {seconds:>8.1f}")
        for n in args.baseline_members:
            peak, seconds = measure(STACKED, root, n)
            rows.append(("stacked", n, peak))
            print(f"{n:>8} {'stacked':>9} {peak:>9.0f} {(peak - empty) / map_mb:>24.2f} {seconds:>8.1f}")
        streamed = {n: p for m, n, p in rows if m == "streamed"}
        stacked = {n: p for m, n, p in rows if m == "stacked"}
        lo, hi = min(streamed), max(streamed)
        print(f"streamed peak grows {streamed[hi] / streamed[lo]:.2f}x from {lo} to {hi} members "
              f"(goal: flat, a few maps)")
        common = sorted(set(streamed) & set(stacked))
        for n in common:
            print(f"{n} members: stacked / streamed peak = {stacked[n] / streamed[n]:.2f}")
        if len(stacked) >= 2:
            (a, pa), (b, pb) = sorted(stacked.items())[:1][0], sorted(stacked.items())[-1]
            slope = (pb - pa) / (b - a)
            print(f"stacked baseline grows {slope:.0f} MB per member: {pa + slope * (hi - a):.0f} MB projected "
                  f"for {hi} members")
        print(json.dumps({"streamed": streamed, "stacked": stacked, "map_mb": map_mb}))


if __name__ == "__main__":
    main()
