"""Tumour burden of segmented cases: every lesion with its volume and the anatomy it lies in, and one row per case.

A lesion is a 26-connected component of one class. Its structure is the TotalSegmentator class it overlaps
most (``none`` when it overlaps no labelled structure); its position is the centroid in physical
coordinates (mm, the image's own frame).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from workflow_scripts.io import image_array, read_anatomy, read_image, write_table

LESION_COLUMNS = ["case", "class", "lesion", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm",
                  "centroid_z_mm", "structure", "structure_fraction"]
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def case_lesions(case: str, segmentation: sitk.Image, anatomy: np.ndarray | None, classes: dict[str, int],
                 structure_names: dict[int, str]) -> list[dict]:
    """One row per lesion, largest first within each class."""
    array = image_array(segmentation)
    voxel_ml = float(np.prod(segmentation.GetSpacing())) / 1000.0
    rows = []
    for name, label in classes.items():
        components, n = ndimage.label(array == label, structure=_CONNECTIVITY_26)
        if n == 0:
            continue
        objects = ndimage.find_objects(components)
        lesions = []
        for k, box in enumerate(objects, 1):
            mask = components[box] == k
            voxels = int(mask.sum())
            centre = [float(c) + s.start for c, s in zip(ndimage.center_of_mass(mask), box)]
            point = segmentation.TransformContinuousIndexToPhysicalPoint(centre[::-1])
            structure, fraction = "none", 0.0
            if anatomy is not None:
                counts = np.bincount(anatomy[box][mask].ravel())
                counts[0] = 0
                if counts.any():
                    best = int(np.argmax(counts))
                    structure = structure_names.get(best, f"class_{best}")
                    fraction = float(counts[best] / voxels)
            lesions.append({"case": case, "class": name, "voxels": voxels, "volume_ml": voxels * voxel_ml,
                            "centroid_x_mm": point[0], "centroid_y_mm": point[1], "centroid_z_mm": point[2],
                            "structure": structure, "structure_fraction": fraction})
        lesions.sort(key=lambda r: -r["voxels"])
        rows += [{**r, "lesion": i} for i, r in enumerate(lesions, 1)]
    return rows


def case_burden(lesions: pd.DataFrame, cases: list[str], classes: dict[str, int]) -> pd.DataFrame:
    """Per case: volume (ml) and lesion count per class, total volume, the largest lesion and where it lies."""
    rows = []
    for case in cases:
        own = lesions[lesions["case"] == case]
        row = {"case": case}
        for name in classes:
            of_class = own[own["class"] == name]
            row[f"{name}_ml"] = float(of_class["volume_ml"].sum())
            row[f"{name}_lesions"] = int(len(of_class))
        row["total_ml"] = float(own["volume_ml"].sum())
        if len(own):
            largest = own.loc[own["voxels"].idxmax()]
            row.update(largest_class=largest["class"], largest_ml=float(largest["volume_ml"]),
                       largest_structure=largest["structure"])
        else:
            row.update(largest_class="none", largest_ml=0.0, largest_structure="none")
        rows.append(row)
    return pd.DataFrame(rows)


def write_burden(cases: list[str], segmentation_dir: Path, anatomy_paths: dict[str, Path | None],
                 classes: dict[str, int], structure_names: dict[int, str], out_lesions: Path,
                 out_burden: Path) -> pd.DataFrame:
    rows = []
    for i, case in enumerate(cases, 1):
        segmentation = read_image(Path(segmentation_dir) / f"{case}.nii.gz")
        anatomy = read_anatomy(case, anatomy_paths.get(case), segmentation)
        case_rows = case_lesions(case, segmentation, anatomy, classes, structure_names)
        rows += case_rows
        print(f"[{i}/{len(cases)}] {case}: {len(case_rows)} lesion(s)", flush=True)
    lesions = pd.DataFrame(rows, columns=LESION_COLUMNS)
    burden = case_burden(lesions, cases, classes)
    write_table(lesions, out_lesions)
    write_table(burden, out_burden)
    return burden


def tumour_burden_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.anatomy import anatomy_class_ids
    from workflow_scripts.settings import lesion_classes

    p = cli.parser("tumour-burden", "Lesion table and per-case tumour burden of the refined segmentations.")
    p.add_argument("--segmentations", nargs="+", required=True, help="the refined <case>.nii.gz")
    p.add_argument("--anatomy", nargs="*", default=[], help="the cases' anatomy maps, same order (or none)")
    cli.add_settings(p, "tumour-burden")
    p.add_argument("--out-lesions", required=True)
    p.add_argument("--out-burden", required=True)
    args = p.parse_args(argv)
    segmentation_dir, cases = cli.case_folder(args.segmentations, "--segmentations")
    anatomy = cli.case_paths(args.anatomy, cases) if args.anatomy else {case: None for case in cases}
    names = {i: name for name, i in anatomy_class_ids(args.settings["anatomy"]["task"]).items()}
    burden = write_burden(cases, segmentation_dir, anatomy, lesion_classes(args.settings), names, Path(args.out_lesions),
                          Path(args.out_burden))
    print(f"{len(burden)} case(s), {burden['total_ml'].sum():.1f} ml of lesions in all")
