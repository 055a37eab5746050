"""Optional crop before the lesion models (the pelvic-fracture pipeline's two stages): every case, in training and
in prediction, is cut to the box of chosen TotalSegmentator structures plus a margin, and the models' outputs are
pasted back on the full grid, so that every later stage sees full-size predictions.

The box is kept per case as JSON (numpy order z, y, x): ``start``, ``stop``, ``full_shape``, the structures' ids
and whether any was found (none found: the whole image, said in the JSON and the log).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.io import image_array, read_anatomy, read_image, write_image, write_json


def anatomy_box(anatomy: np.ndarray, ids: list[int], spacing_zyx, margin_mm: float) -> dict:
    """The box of the voxels holding any of ``ids``, widened by ``margin_mm`` on every side, within the image."""
    shape = anatomy.shape
    present = np.isin(anatomy, ids)
    if not present.any():
        return {"start": [0, 0, 0], "stop": list(shape), "full_shape": list(shape), "found": False}
    margin = [int(np.ceil(margin_mm / s)) for s in spacing_zyx]
    start, stop = [], []
    for axis in range(3):
        along = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
        start.append(max(int(along[0]) - margin[axis], 0))
        stop.append(min(int(along[-1]) + 1 + margin[axis], shape[axis]))
    return {"start": start, "stop": stop, "full_shape": list(shape), "found": True}


def box_slices(box: dict) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in zip(box["start"], box["stop"]))


def box_fraction(box: dict) -> float:
    return float(np.prod(np.subtract(box["stop"], box["start"])) / np.prod(box["full_shape"]))


def crop_image(image: sitk.Image, box: dict) -> sitk.Image:
    """The box of ``image``; SimpleITK's slicing (x, y, z) moves the origin, so the crop keeps its place in space."""
    (z0, y0, x0), (z1, y1, x1) = box["start"], box["stop"]
    if list(image.GetSize()[::-1]) != list(box["full_shape"]):
        raise ValueError(f"the crop box was made on a grid of {box['full_shape']} (z, y, x), the image is "
                         f"{list(image.GetSize()[::-1])}")
    return image[x0:x1, y0:y1, z0:z1]


def paste_probabilities(probabilities: np.ndarray, box: dict) -> np.ndarray:
    """Cropped (C, z, y, x) probabilities on the full grid: certain background (channel 0) outside the box."""
    full = np.zeros((probabilities.shape[0], *box["full_shape"]), dtype=probabilities.dtype)
    full[0] = 1
    full[(slice(None), *box_slices(box))] = probabilities
    return full


def paste_labels(segmentation: np.ndarray, box: dict, background: int = 0) -> np.ndarray:
    full = np.full(box["full_shape"], background, dtype=segmentation.dtype)
    full[box_slices(box)] = segmentation
    return full


def crop_case(image_path: Path, anatomy_path: Path, structures: list[str], margin_mm: float, task: str,
              out_image: Path, out_box: Path) -> dict:
    from workflow_scripts.anatomy import anatomy_class_ids, structure_ids

    image = read_image(image_path)
    anatomy = read_anatomy(Path(image_path).name, anatomy_path, image)
    ids = structure_ids(structures, anatomy_class_ids(task))
    box = anatomy_box(anatomy, ids, image.GetSpacing()[::-1], margin_mm)
    box.update(structures=structures, ids=ids, margin_mm=margin_mm, voxel_fraction=box_fraction(box))
    write_image(crop_image(image, box), out_image)
    write_json(box, out_box)
    return box


def crop_label(label: sitk.Image, box: dict) -> tuple[sitk.Image, int]:
    """A training label cut to its image's box, and how many lesion voxels fell outside it."""
    full = image_array(label)
    inside = full[box_slices(box)]
    lost = int(np.count_nonzero(full)) - int(np.count_nonzero(inside))
    return crop_image(label, box), lost


def crop_case_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("crop-case", "Cut a case's image to the box of chosen anatomy structures plus a margin.")
    p.add_argument("--image", required=True)
    p.add_argument("--anatomy", required=True, help="the case's TotalSegmentator label map")
    cli.add_settings(p, "crop-case")
    p.add_argument("--out-image", required=True)
    p.add_argument("--out-box", required=True)
    args = p.parse_args(argv)
    crop, task = args.settings["crop"], args.settings["anatomy"]["task"]
    box = crop_case(Path(args.image), Path(args.anatomy), crop["structures"], crop["margin_mm"], task,
                    Path(args.out_image), Path(args.out_box))
    if not box["found"]:
        print(f"warning: none of {box['structures']} is in {args.anatomy}: the whole image is kept")
    print(f"crop {box['start']} to {box['stop']} of {box['full_shape']} (z, y, x): "
          f"{100 * box['voxel_fraction']:.1f} % of the voxels")
