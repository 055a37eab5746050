"""Ensembling of configurations on probabilities, one case at a time, one model's map in memory at a time."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from workflow_scripts.io import read_probabilities, write_prediction

FUSION_STRATEGIES = ("mean", "max", "union")


def accumulate_members(maps: Iterable[tuple[np.ndarray, list[int]]], weights: list[float],
                       names: list[str]) -> tuple[np.ndarray, list[int]]:
    """Weighted mean of members' (probabilities, labels), taken from ``maps`` one at a time: one accumulator and
    one member map in memory, whatever the member count. The first member's map becomes the accumulator."""
    if not names or len(names) != len(weights):
        raise ValueError("an ensemble needs at least one member and one weight per member")
    total, labels = None, None
    for name, weight, (probabilities, member_labels) in zip(names, weights, maps):
        probabilities *= weight  # in place
        if labels is None:
            total, labels = probabilities, member_labels
        elif member_labels != labels:
            raise ValueError(f"{name} has labels {member_labels}, the other members {labels}; members must "
                             "share one label set (fuse partial models instead)")
        else:
            total += probabilities
        del probabilities
    total /= float(sum(weights))
    return total, labels


def fuse_class(probabilities: np.ndarray, labels: list[int], partial: np.ndarray, partial_labels: list[int],
               into: int, strategy: str, in_place: bool = False, slab: int = 8) -> np.ndarray:
    """Fuse a partial model's probability of label ``into`` into that class of a full ensemble.

    The other classes are rescaled so every voxel still sums to one. ``in_place`` overwrites ``probabilities``
    instead of allocating another full map. Done ``slab`` planes of the first spatial axis at a time: the
    temporaries are a slab's, not a scan's (four full-size float32 maps at CT size, 1.2 GB at 300 x 512 x 512).
    """
    if strategy not in FUSION_STRATEGIES:
        raise ValueError(f"unknown fusion strategy '{strategy}'; choose one of {FUSION_STRATEGIES}")
    k, j = labels.index(into), partial_labels.index(into)
    fused = probabilities if in_place else probabilities.copy()
    for start in range(0, fused.shape[1], slab):
        _fuse_slab(fused[:, start:start + slab], partial[j, start:start + slab], k, strategy)
    return fused


def _fuse_slab(block: np.ndarray, other: np.ndarray, k: int, strategy: str) -> None:
    """``fuse_class`` on one slab, in place (``block`` is a view of the ensemble's map)."""
    old = block[k]
    if strategy == "mean":
        new = (old + other) / 2.0
    elif strategy == "max":
        new = np.maximum(old, other)
    else:  # probability union: the class if either says so, as for independent detectors
        new = old + other - old * other
    rest = 1.0 - old
    scale = np.divide(1.0 - new, rest, out=np.zeros_like(rest), where=rest > 1e-6)
    certain = rest <= 1e-6
    block *= scale[None]
    block[k] = new
    # Where the full ensemble gave the class everything, spread what the fusion removed onto background.
    block[0][certain] += 1.0 - new[certain]


def ensemble_probabilities(selection: dict, member: Callable[[str], tuple[np.ndarray, list[int]]]
                           ) -> tuple[np.ndarray, list[int]]:
    """The ensemble ``selection`` describes (``members``: {configuration: weight}; ``fusions``: dicts with
    ``configuration``, ``into`` (label value) and ``strategy``); ``member(name)`` gives a configuration's
    (probabilities, labels) when asked, so only one model's map is held beside the accumulator."""
    names = list(selection["members"])
    probabilities, labels = accumulate_members((member(n) for n in names), list(selection["members"].values()),
                                               names)
    for fusion in selection["fusions"]:
        partial, partial_labels = member(fusion["configuration"])
        probabilities = fuse_class(probabilities, labels, partial, partial_labels, fusion["into"],
                                   fusion["strategy"], in_place=True)
        del partial
    return probabilities, labels


def ensemble_case(selection: dict, predictions_dir: Path, reference_image: Path, out_dir: Path, case: str,
                  encoding: str | None = None) -> None:
    """Ensemble one case as ``selection`` says from ``predictions_dir/<configuration>/<case>.npz``, one file in
    memory at a time. The label map only, unless an ``encoding`` asks for the probabilities too: no later rule
    reads an out-of-fold ensemble's probabilities, and at CT size each such file is as large as a member's."""
    probabilities, labels = ensemble_probabilities(
        selection, lambda name: read_probabilities(Path(predictions_dir) / name / f"{case}.npz"))
    write_prediction(probabilities, labels, reference_image, out_dir, case, encoding)


def ensemble_case_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.io import read_json

    p = cli.parser("ensemble-case", "Ensemble one case's probabilities as the chosen ensemble says.")
    p.add_argument("--case", required=True)
    p.add_argument("--selection", required=True, help="JSON file written by select-ensemble")
    p.add_argument("--probabilities", nargs="+", required=True, help="<folder>/<configuration>/<case>.npz files")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="the ensemble's <case>.nii.gz")
    args = p.parse_args(argv)
    if Path(args.out).name != f"{args.case}.nii.gz":
        raise SystemExit(f"error: --out {args.out} is not {args.case}.nii.gz")
    selection = read_json(args.selection)
    print(f"{args.case}: ensemble {selection['candidate']}")
    ensemble_case(selection, cli.probability_root(args.probabilities, [args.case]), Path(args.image),
                  Path(args.out).parent, args.case)
