"""Anatomy-based refinement: lesion components removed by rules written as config data.

Rule kinds (each may name ``labels``, the lesion labels it applies to; default all non-zero labels):
- ``drop_inside``: remove components with at least ``min_fraction`` of their voxels inside the anatomy
  structures matching ``structures`` (TotalSegmentator class names, shell patterns such as ``vertebrae_*``);
- ``drop_outside_body``: remove components with at least ``min_fraction`` outside the body, the body being the
  largest connected region above ``body_hu`` with its holes filled slice by slice;
- ``drop_smaller_than``: remove components below ``min_volume_mm3``;
- ``keep_within_span``: remove components with less than ``min_fraction`` of their voxels within the
  cranio-caudal span of ``structures`` widened by ``margin_mm`` (e.g. an abdomino-pelvic region from the top of
  the liver to the bottom of the bladder or hips).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from workflow_scripts.anatomy import anatomy_class_ids, body_mask, cranio_caudal_axis, span_region, structure_ids
from workflow_scripts.config import refinement_rules
from workflow_scripts.io import array_like, image_array, read_anatomy, read_image, write_image, write_table

RULE_KINDS = ("drop_inside", "drop_outside_body", "drop_smaller_than", "keep_within_span")
ANATOMY_KINDS = ("drop_inside", "keep_within_span")
REMOVED_COLUMNS = ["case", "rule", "label", "component", "voxels", "volume_mm3", "fraction"]
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def rules_class_ids(rules: list[dict], task: str) -> dict[str, int] | None:
    """TotalSegmentator class ids of ``task`` where a rule reads the anatomy map, else None."""
    return anatomy_class_ids(task) if any(r["kind"] in ANATOMY_KINDS for r in rules) else None


def refine(segmentation: np.ndarray, anatomy: np.ndarray | None, image: np.ndarray | None,
           spacing_xyz: tuple[float, float, float], rules: list[dict], class_ids: dict[str, int] | None,
           case: str = "", direction: tuple[float, ...] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Apply ``rules`` in order; returns the refined label map and one row per removed component."""
    rules = refinement_rules(rules)
    refined = segmentation.copy()
    voxel_mm3 = float(np.prod(spacing_xyz))
    removed = []
    components_of = {}  # label: its components and their count, until a rule removes some of them
    for rule in rules:
        kind = rule["kind"]
        if kind not in RULE_KINDS:
            raise ValueError(f"unknown refinement rule kind '{kind}'; choose one of {RULE_KINDS}")
        if kind in ANATOMY_KINDS and anatomy is None:
            raise ValueError(f"rule '{rule['name']}' needs an anatomy map for case {case}")
        if kind == "drop_outside_body" and image is None:
            raise ValueError(f"rule '{rule['name']}' needs the CT image for case {case}")
        region = rule_region(rule, anatomy, image, spacing_xyz, class_ids, direction)
        labels = rule.get("labels") or [int(v) for v in np.unique(refined) if v != 0]
        for label in labels:
            if label not in components_of:
                components_of[label] = ndimage.label(refined == label, structure=_CONNECTIVITY_26)
            components, n = components_of[label]
            if n == 0:
                continue
            # Per component: its voxels and those inside the rule's region, counted over the lesions' voxels only.
            lesion = components > 0
            ids = components[lesion]
            voxels = np.bincount(ids, minlength=n + 1)[1:].astype(float)
            index = np.arange(1, n + 1)
            if kind == "drop_smaller_than":
                fraction = np.zeros(n)
                drop = voxels * voxel_mm3 < rule["min_volume_mm3"]
            else:
                fraction = np.bincount(ids, weights=region[lesion], minlength=n + 1)[1:] / voxels
                keep = kind == "keep_within_span"
                drop = fraction < rule["min_fraction"] if keep else fraction >= rule["min_fraction"]
            if not drop.any():
                continue
            dropped = np.zeros(n + 1, dtype=bool)
            dropped[index[drop]] = True
            refined[dropped[components]] = 0  # one pass over the scan, however many components go
            del components_of[label]
            for c in index[drop]:
                removed.append({"case": case, "rule": rule["name"], "label": int(label), "component": int(c),
                                "voxels": int(voxels[c - 1]), "volume_mm3": float(voxels[c - 1] * voxel_mm3),
                                "fraction": float(fraction[c - 1])})
    return refined, pd.DataFrame(removed, columns=REMOVED_COLUMNS)


def rule_region(rule: dict, anatomy: np.ndarray | None, image: np.ndarray | None, spacing_xyz,
                class_ids: dict[str, int] | None, direction: tuple[float, ...] | None) -> np.ndarray | None:
    """The voxels a rule measures components against (None for ``drop_smaller_than``)."""
    if rule["kind"] == "drop_smaller_than":
        return None
    if rule["kind"] == "drop_inside":
        return np.isin(anatomy, structure_ids(rule["structures"], class_ids))
    if rule["kind"] == "keep_within_span":
        return span_region(anatomy, structure_ids(rule["structures"], class_ids), rule["margin_mm"], spacing_xyz,
                           cranio_caudal_axis(direction))
    return ~body_mask(image, rule["body_hu"])


def refine_case(case: str, segmentation_path: Path, anatomy_path: Path | None, image_path: Path,
                rules: list[dict], anatomy_task: str, out_segmentation: Path, out_removed: Path) -> pd.DataFrame:
    seg_image = read_image(segmentation_path)
    anatomy = read_anatomy(case, anatomy_path, seg_image)
    image = image_array(read_image(image_path))
    class_ids = rules_class_ids(rules, anatomy_task)
    refined, removed = refine(image_array(seg_image), anatomy, image, seg_image.GetSpacing(), rules,
                              class_ids, case, seg_image.GetDirection())
    write_image(array_like(refined.astype(np.uint8), seg_image), out_segmentation)
    write_table(removed, out_removed)
    return removed


def refine_case_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.io import read_json

    p = cli.parser("refine-case", "Remove lesion components of one case by the chosen anatomy rules.")
    p.add_argument("--case", required=True)
    p.add_argument("--segmentation", required=True)
    p.add_argument("--anatomy")
    p.add_argument("--image", required=True)
    p.add_argument("--selection", required=True, help="JSON file written by select-refinement (its 'rules')")
    cli.add_settings(p, "refine-case")
    p.add_argument("--out", required=True)
    p.add_argument("--removed", required=True)
    args = p.parse_args(argv)
    rules = read_json(args.selection)["rules"]
    print(f"{args.case}: rules {[r['name'] for r in rules] or 'none'}")
    removed = refine_case(args.case, Path(args.segmentation), Path(args.anatomy) if args.anatomy else None,
                          Path(args.image), rules, args.settings["anatomy"]["task"], Path(args.out),
                          Path(args.removed))
    print(f"{args.case}: removed {len(removed)} component(s)")
