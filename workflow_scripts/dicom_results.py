"""DICOM results for a new case that came as a DICOM series: a Segmentation (SEG) of its refined label map on the
source series, for PACS, OHIF, 3D Slicer and planning systems.

The SEG's frames are the source slices that hold a lesion, each referencing its slice (SOP Instance UID) and
placed at that slice's position: the label map's k-th slice is the k-th source slice along the slice normal, as
the conversion stacked them (``dicom.convert_series_folder``). A slice missing from the source has no frame in
the SEG, as it has no image. Patient and study attributes come from the source as the standard requires (the
Patient and General Study modules); nothing else of the source is copied (not its equipment or institution).
The DICOM writing is highdicom's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow_scripts.dicom import choose_series, read_series, slice_order

# The SEG's series: a number well above a scanner's, and the name this workflow gives its content.
SEG_SERIES_NUMBER = 9001
SEG_CONTENT_LABEL = "LESIONS"


class DicomResultError(RuntimeError):
    """A label map that does not fit its source series; the message names the case and the fix."""


def source_slices(folder: Path, rule: str) -> list:
    """The chosen series' datasets (without pixels), sorted along the slice normal as the conversion stacked them."""
    import pydicom

    series, _, _ = read_series(folder)
    chosen = choose_series(series, rule)
    return [pydicom.dcmread(chosen.slices[i][0], stop_before_pixels=True) for i in slice_order(chosen)]


def segment_codes(settings: dict) -> dict[str, dict]:
    """Each lesion label's coded category and type: its ``segment_codes`` entry or ``default_segment_code``."""
    results = settings["dicom_results"]
    return {name: results["segment_codes"].get(name, results["default_segment_code"])
            for name in list(settings["labels"])[1:]}


def write_segmentation(case: str, source: list, labels: np.ndarray, settings: dict, out: Path) -> dict:
    """A DICOM SEG of ``labels`` (z, y, x; the label values of ``settings["labels"]``) on the ``source`` slices;
    one segment per lesion label, coded as ``segment_codes`` says, named by the label. Returns a summary."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from workflow_scripts.io import atomic_path

    expected = (len(source), int(source[0].Rows), int(source[0].Columns))
    if labels.shape != expected:
        raise DicomResultError(f"case {case}: the label map has shape {labels.shape} (z, y, x), its source series "
                               f"{expected}; segment the image converted from this series")
    names = list(settings["labels"])[1:]
    values = [settings["labels"][name] for name in names]
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *values})
    if unknown:
        raise DicomResultError(f"case {case}: label values {unknown} are not in labels {settings['labels']}")
    card = settings["model_card"]
    algorithm = hd.AlgorithmIdentificationSequence(name=card["name"], version=card["version"],
                                                   family=codes.cid7162.ArtificialIntelligence)

    def coded(code: dict) -> Code:
        return Code(code["code"], code["scheme"], code["meaning"])

    codes_of = segment_codes(settings)
    descriptions = [
        hd.seg.SegmentDescription(segment_number=number, segment_label=name,
                                  segmented_property_category=coded(codes_of[name]["category"]),
                                  segmented_property_type=coded(codes_of[name]["type"]),
                                  algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                  algorithm_identification=algorithm)
        for number, name in enumerate(names, 1)]
    segment_of_value = np.zeros(256, dtype=np.uint8)
    segment_of_value[values] = np.arange(1, len(values) + 1)
    segment_map = segment_of_value[labels.astype(np.uint8)]
    segmentation = hd.seg.Segmentation(
        source_images=source, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnU-Net lesion workflow",
        manufacturer_model_name=card["name"], software_versions=card["version"], device_serial_number="none",
        content_label=SEG_CONTENT_LABEL, content_description=f"{card['name']} {card['version']}",
        series_description=f"{card['name']} (research use)")
    # highdicom lists the source's acquisition equipment (its maker, institution, station) as contributing
    # equipment; the standard does not ask for it, so only the item naming highdicom itself stays.
    segmentation.ContributingEquipmentSequence = segmentation.ContributingEquipmentSequence[-1:]
    with atomic_path(out) as tmp:
        segmentation.save_as(tmp, enforce_file_format=True)
    present = {name: int(np.count_nonzero(labels == value)) for name, value in zip(names, values)}
    return {"case": case, "frames": int(segmentation.NumberOfFrames), "segments": names, "voxels": present}


def dicom_seg_entry(argv=None) -> None:
    import sys

    import SimpleITK as sitk

    from workflow_scripts import cli

    p = cli.parser("dicom-seg", "A DICOM Segmentation of a new case's label map on the DICOM series it came from.")
    p.add_argument("--case", required=True)
    p.add_argument("--source", required=True, help="the case's DICOM folder (the series the conversion chose)")
    p.add_argument("--labels", required=True, help="the case's label map, <case>.nii.gz, on the converted grid")
    cli.add_settings(p, "dicom-seg")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    source = source_slices(Path(args.source), args.settings["data"]["dicom"]["series"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(args.labels))
    try:
        summary = write_segmentation(args.case, source, labels, args.settings, Path(args.out))
    except DicomResultError as err:
        sys.exit(f"error: {err}")
    print(f"{args.case}: DICOM SEG with {summary['frames']} frame(s); voxels per segment {summary['voxels']}")
