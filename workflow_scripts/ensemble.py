"""Ensembling of configurations on probabilities, one case at a time, one model's map in memory at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow_scripts.io import read_probabilities
from workflow_scripts.prediction import write_prediction

FUSION_STRATEGIES = ("mean", "max")


def average_members(paths: list[Path], weights: list[float]) -> tuple[np.ndarray, list[int]]:
    """Weighted mean of members that share one label set, accumulated one file at a time."""
    if not paths or len(paths) != len(weights):
        raise ValueError("an ensemble needs at least one member and one weight per member")
    total, labels = None, None
    for path, weight in zip(paths, weights):
        probabilities, member_labels = read_probabilities(path)
        if labels is None:
            total, labels = probabilities * weight, member_labels
        elif member_labels != labels:
            raise ValueError(f"{path} has labels {member_labels}, the other members {labels}; members must "
                             "share one label set (fuse partial models instead)")
        else:
            total += probabilities * weight
    return total / float(sum(weights)), labels


def fuse_class(probabilities: np.ndarray, labels: list[int], partial: np.ndarray, partial_labels: list[int],
               into: int, strategy: str) -> np.ndarray:
    """Fuse a partial model's probability of label ``into`` into that class of a full ensemble.

    The other classes are rescaled so every voxel still sums to one.
    """
    if strategy not in FUSION_STRATEGIES:
        raise ValueError(f"unknown fusion strategy '{strategy}'; choose one of {FUSION_STRATEGIES}")
    k, j = labels.index(into), partial_labels.index(into)
    old = probabilities[k]
    new = (old + partial[j]) / 2.0 if strategy == "mean" else np.maximum(old, partial[j])
    rest = 1.0 - old
    scale = np.divide(1.0 - new, rest, out=np.zeros_like(rest), where=rest > 1e-6)
    fused = probabilities * scale[None]
    fused[k] = new
    # Where the full ensemble gave the class everything, spread what the fusion removed onto background.
    fused[0] += np.where(rest > 1e-6, 0.0, 1.0 - new)
    return fused


def ensemble_case(members: list[Path], weights: list[float], fusions: list[dict], reference_image: Path,
                  out_dir: Path, case: str) -> None:
    """``fusions``: dicts with ``path``, ``into`` (label value) and ``strategy``."""
    probabilities, labels = average_members(members, weights)
    for fusion in fusions:
        partial, partial_labels = read_probabilities(fusion["path"])
        probabilities = fuse_class(probabilities, labels, partial, partial_labels, fusion["into"],
                                   fusion["strategy"])
    write_prediction(probabilities, labels, reference_image, out_dir, case)
