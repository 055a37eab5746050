"""Conversion of the input cases into an nnU-Net raw dataset, one per configuration."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.io import array_like, image_header, read_image, read_json, write_image, write_json
from workflow_scripts.settings import class_label_values

CHANNEL_SUFFIX = "_0000"


def label_lookup(label_mapping: dict[str, list[int]], max_source: int = 255) -> np.ndarray:
    """A table mapping each source label value to the index of its class in ``label_mapping`` (dict order)."""
    table = np.zeros(max_source + 1, dtype=np.uint8)
    for index, values in enumerate(label_mapping.values()):
        table[list(values)] = index
    return table


def remap_label(label: sitk.Image, label_mapping: dict[str, list[int]]) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(label)
    known = np.unique(array)
    mapped = {v for values in label_mapping.values() for v in values}
    unknown = sorted(int(v) for v in known if int(v) not in mapped)
    if unknown:
        raise ValueError(f"label values {unknown} are not in the label mapping {label_mapping}")
    return array_like(label_lookup(label_mapping)[array], label)


def _on_image_grid(label: sitk.Image, image_path: Path) -> sitk.Image:
    """The label with its image's spacing, origin and direction: QC has checked that they agree within the
    ``qc`` tolerances, and nnU-Net refuses any difference above float rounding (e.g. a DICOM series' spacing
    from slice positions against a label saved by another tool)."""
    reader = image_header(image_path)
    if tuple(reader.GetSize()) != label.GetSize():
        raise ValueError(f"label of {image_path.name} has size {label.GetSize()}, the image {reader.GetSize()}")
    label.SetSpacing(reader.GetSpacing())
    label.SetOrigin(reader.GetOrigin())
    label.SetDirection(reader.GetDirection())
    return label


def convert_dataset(cases: list[str], images_dir: Path, labels_dir: Path, raw_root: Path, dataset_id: int,
                    name: str, label_mapping: dict[str, list[int]], summary_path: Path,
                    crop_boxes: dict[str, Path] | None = None) -> dict:
    """Write ``raw_root/DatasetNNN_name`` (images linked, labels remapped) and a summary JSON. With ``crop_boxes``
    ({case: box JSON}) the images are the cropped ones and each label is cut to its case's box; lesion voxels
    outside the box are counted in the summary."""
    from workflow_scripts.crop import crop_label
    from workflow_scripts.nnunet_seam import dataset_name

    folder = Path(raw_root) / dataset_name(dataset_id, name)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    lost: dict[str, int] = {}
    for case in cases:
        link = folder / "imagesTr" / f"{case}{CHANNEL_SUFFIX}.nii.gz"
        target = (Path(images_dir) / f"{case}.nii.gz").resolve()
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)
        label = remap_label(read_image(Path(labels_dir) / f"{case}.nii.gz"), label_mapping)
        if crop_boxes is not None:
            label, lost[case] = crop_label(label, read_json(crop_boxes[case]))
        write_image(_on_image_grid(label, target), folder / "labelsTr" / f"{case}.nii.gz")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {class_name: index for index, class_name in enumerate(label_mapping)},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "label_mapping_from_source": label_mapping,
    }
    write_json(dataset_json, folder / "dataset.json")
    summary = {"dataset": folder.name, "folder": str(folder), "cases": list(cases),
               "labels": dataset_json["labels"], "class_label_values": class_label_values(label_mapping),
               "cropped": crop_boxes is not None, "lesion_voxels_outside_crop": lost}
    write_json(summary, summary_path)
    return summary


def convert_dataset_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("convert-dataset", "A configuration's nnU-Net raw dataset: images linked, labels remapped.")
    p.add_argument("--nnunet-root", required=True)
    p.add_argument("--images", nargs="+", required=True, help="the training cases' images, <case>.nii.gz")
    p.add_argument("--references", nargs="+", required=True, help="their labels, same order")
    p.add_argument("--crop-boxes", nargs="+", help="crop.enabled: each case's crop box JSON (the images are the "
                   "cropped ones)")
    cli.add_settings(p, "convert-dataset")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    images_dir, cases = cli.case_folder(args.images, "--images")
    labels_dir, label_cases = cli.case_folder(args.references, "--references")
    if label_cases != cases:
        raise SystemExit(f"error: --references name other cases than --images: {sorted(set(cases) ^ set(label_cases))}")
    boxes = None
    if args.crop_boxes:
        boxes = {Path(b).name[: -len(".json")]: Path(b) for b in args.crop_boxes}
        if sorted(boxes) != sorted(cases):
            raise SystemExit(f"error: --crop-boxes name other cases than --images: {sorted(set(cases) ^ set(boxes))}")
    from workflow_scripts.settings import only_configuration

    name, configuration = only_configuration(args.settings)
    summary = convert_dataset(cases, images_dir, labels_dir, Path(args.nnunet_root) / "nnUNet_raw",
                              configuration["dataset_id"], name, configuration["label_mapping"], Path(args.out), boxes)
    print(f"wrote {summary['folder']} with {len(summary['cases'])} cases")
    for case, voxels in summary["lesion_voxels_outside_crop"].items():
        if voxels:
            print(f"warning: {case}: {voxels} lesion voxels lie outside the crop box and are not trained on; widen "
                  "crop.margin_mm or add structures to crop.structures")
