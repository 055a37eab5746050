"""DICOM results for a new case that came as a DICOM series: a Segmentation (SEG) of its refined label map on the
source series, for PACS, OHIF, 3D Slicer and planning systems; as options an RT structure set of the same map and
a TID 1500 measurement report of its lesions (the burden table's rows), referencing the SEG's segments.

The SEG's frames are the source slices that hold a lesion, each referencing its slice (SOP Instance UID) and
placed at that slice's position: the label map's k-th slice is the k-th source slice along the slice normal, as
the conversion stacked them (``dicom.convert_series_folder``). A slice missing from the source has no frame in
the SEG, as it has no image. Patient and study attributes come from the source as the standard requires (the
Patient and General Study modules); nothing else of the source is copied (not its equipment or institution).
The SEG and the report are highdicom's; the RT structure set is written with pydicom.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow_scripts.dicom import choose_series, read_series, slice_order

# Each DICOM result a new case can get (dicom_results.<kind> in the config), by the file it is written to.
RESULT_FILES = {"seg": "segmentation.dcm", "rtstruct": "rtstruct.dcm", "sr": "measurements.dcm"}

# The results' series: numbers well above a scanner's, and the name this workflow gives their content.
SEG_SERIES_NUMBER = 9001
RTSTRUCT_SERIES_NUMBER = 9002
SR_SERIES_NUMBER = 9003
SEG_CONTENT_LABEL = "LESIONS"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # what an RT structure set's referenced study is (PS3.3 C.8.8.5)
# The Patient and General Study modules, all an RT structure set carries of its source (type 1 and 2: kept empty
# where the source has none).
PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
ROI_COLOURS = ((255, 0, 0), (0, 200, 255), (255, 200, 0), (0, 255, 0), (255, 0, 255))


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



def coded_concept(code: dict):
    """A code of the config or of TotalSegmentator's mapping ({code, scheme, meaning}) as pydicom's Code."""
    from pydicom.sr.coding import Code

    return Code(code["code"], code["scheme"], code["meaning"])


def lesion_labels(case: str, source: list, labels: np.ndarray, settings: dict) -> tuple[list[str], list[int]]:
    """The lesion labels' names and values, once ``labels`` is known to lie on ``source`` and hold only them."""
    expected = (len(source), int(source[0].Rows), int(source[0].Columns))
    if labels.shape != expected:
        raise DicomResultError(f"case {case}: the label map has shape {labels.shape} (z, y, x), its source series "
                               f"{expected}; segment the image converted from this series")
    names = list(settings["labels"])[1:]
    values = [settings["labels"][name] for name in names]
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *values})
    if unknown:
        raise DicomResultError(f"case {case}: label values {unknown} are not in labels {settings['labels']}")
    return names, values


def write_segmentation(case: str, source: list, labels: np.ndarray, settings: dict, out: Path) -> dict:
    """A DICOM SEG of ``labels`` (z, y, x; the label values of ``settings["labels"]``) on the ``source`` slices;
    one segment per lesion label, coded as ``segment_codes`` says, named by the label. Returns a summary (and the
    written dataset, which a measurement report references)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from workflow_scripts.io import atomic_path

    names, values = lesion_labels(case, source, labels, settings)
    card = settings["model_card"]
    algorithm = hd.AlgorithmIdentificationSequence(name=card["name"], version=card["version"],
                                                   family=codes.cid7162.ArtificialIntelligence)

    codes_of = segment_codes(settings)
    descriptions = [
        hd.seg.SegmentDescription(segment_number=number, segment_label=name,
                                  segmented_property_category=coded_concept(codes_of[name]["category"]),
                                  segmented_property_type=coded_concept(codes_of[name]["type"]),
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
    return {"case": case, "frames": int(segmentation.NumberOfFrames), "segments": names, "voxels": present,
            "dataset": segmentation}

def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (row, column; in pixels) of a 2-d mask, between its pixel centres: a pixel's centre lies
    inside an odd number of them exactly when the pixel is set (holes are outlines of their own)."""
    from skimage.measure import find_contours

    outlines = find_contours(np.pad(mask.astype(np.uint8), 1), 0.5)
    return [outline[:-1] - 1 for outline in outlines]  # closed: the last point repeats the first


def patient_points(ds, outline: np.ndarray) -> np.ndarray:
    """Pixel (row, column) points of one source slice in the patient frame (mm), as x, y, z rows."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
    return (origin + outline[:, 1:2] * column_spacing * iop[:3] + outline[:, 0:1] * row_spacing * iop[3:])


def write_rtstruct(case: str, source: list, labels: np.ndarray, settings: dict, out: Path) -> dict:
    """An RT Structure Set of ``labels`` on the ``source`` slices: one ROI per lesion label, named by it, its
    outlines on each source slice as closed planar contours in the patient frame. A label with no voxel is an ROI
    without contours. Returns a summary."""
    import datetime

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from workflow_scripts.io import atomic_path

    names, values = lesion_labels(case, source, labels, settings)
    card = settings["model_card"]
    codes_of = segment_codes(settings)
    first = source[0]
    now = datetime.datetime.now()

    def item(**attributes) -> Dataset:
        dataset = Dataset()
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        return dataset

    def slice_reference(ds) -> Dataset:
        return item(ReferencedSOPClassUID=ds.SOPClassUID, ReferencedSOPInstanceUID=ds.SOPInstanceUID)

    rt = Dataset()
    rt.SpecificCharacterSet = "ISO_IR 192"
    rt.SOPClassUID, rt.SOPInstanceUID = RTSTRUCT_SOP_CLASS, generate_uid()
    rt.InstanceCreationDate, rt.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in PATIENT_AND_STUDY:
        setattr(rt, keyword, first.get(keyword, ""))
    rt.Modality, rt.SeriesInstanceUID, rt.SeriesNumber = "RTSTRUCT", generate_uid(), RTSTRUCT_SERIES_NUMBER
    rt.SeriesDescription = f"{card['name']} (research use)"
    rt.OperatorsName = ""
    rt.Manufacturer, rt.ManufacturerModelName = "nnU-Net lesion workflow", card["name"]
    rt.SoftwareVersions, rt.DeviceSerialNumber = card["version"], "none"
    rt.StructureSetLabel, rt.StructureSetName = SEG_CONTENT_LABEL, f"{card['name']} {card['version']}"
    rt.InstanceNumber = 1
    rt.StructureSetDate, rt.StructureSetTime = rt.InstanceCreationDate, rt.InstanceCreationTime
    frame_of_reference = first.FrameOfReferenceUID
    rt.FrameOfReferenceUID, rt.PositionReferenceIndicator = frame_of_reference, first.get("PositionReferenceIndicator", "")
    rt.ReferencedFrameOfReferenceSequence = [item(
        FrameOfReferenceUID=frame_of_reference,
        RTReferencedStudySequence=[item(
            ReferencedSOPClassUID=STUDY_COMPONENT_SOP_CLASS, ReferencedSOPInstanceUID=first.StudyInstanceUID,
            RTReferencedSeriesSequence=[item(SeriesInstanceUID=first.SeriesInstanceUID,
                                             ContourImageSequence=[slice_reference(ds) for ds in source])])])]
    rois, contours, observations, counts = [], [], [], {}
    for number, (name, value) in enumerate(zip(names, values), 1):
        rois.append(item(ROINumber=number, ReferencedFrameOfReferenceUID=frame_of_reference, ROIName=name,
                         ROIGenerationAlgorithm="AUTOMATIC",
                         ROIGenerationDescription=f"{card['name']} {card['version']}"))
        outlines = []
        for ds, plane in zip(source, labels == value):
            if plane.any():
                for outline in slice_contours(plane):
                    points = patient_points(ds, outline)
                    outlines.append(item(ContourImageSequence=[slice_reference(ds)],
                                         ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(points),
                                         ContourData=[f"{v:.3f}" for v in points.ravel()]))
        roi = item(ReferencedROINumber=number, ROIDisplayColor=list(ROI_COLOURS[(number - 1) % len(ROI_COLOURS)]))
        if outlines:
            for contour_number, outline in enumerate(outlines, 1):
                outline.ContourNumber = contour_number
            roi.ContourSequence = outlines
        contours.append(roi)
        counts[name] = len(outlines)
        type_code = codes_of[name]["type"]
        observations.append(item(
            ObservationNumber=number, ReferencedROINumber=number, RTROIInterpretedType="", ROIInterpreter="",
            RTROIIdentificationCodeSequence=[item(CodeValue=type_code["code"], CodingSchemeDesignator=type_code["scheme"],
                                                  CodeMeaning=type_code["meaning"])]))
    rt.StructureSetROISequence, rt.ROIContourSequence, rt.RTROIObservationsSequence = rois, contours, observations
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID, rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPClassUID, rt.SOPInstanceUID
    rt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pydicom.dataset.validate_file_meta(rt.file_meta, enforce_standard=True)
    with atomic_path(out) as tmp:
        rt.save_as(tmp, enforce_file_format=True)
    return {"case": case, "rois": names, "contours": counts}


def anatomy_codes() -> dict[str, tuple[dict, dict | None]]:
    """TotalSegmentator's structures coded in SNOMED CT, from the mapping TotalSegmentator ships: each name's
    anatomic type and its laterality (or None)."""
    import csv
    from importlib import resources

    mapping = resources.files("totalsegmentator") / "resources" / "totalsegmentator_snomed_mapping.csv"
    coded = {}
    with mapping.open() as rows:
        for row in csv.DictReader(rows):
            prefix = "SegmentedPropertyType"
            site = {"code": row[f"{prefix}CodeSequence.CodeValue"], "scheme": row[f"{prefix}CodeSequence.CodingSchemeDesignator"],
                    "meaning": row[f"{prefix}CodeSequence.CodeMeaning"]}
            side = row[f"{prefix}ModifierCodeSequence.CodeValue"]
            laterality = {"code": side, "scheme": row[f"{prefix}ModifierCodeSequence.CodingSchemeDesignator"],
                          "meaning": row[f"{prefix}ModifierCodeSequence.CodeMeaning"]} if side else None
            coded[row["Structure"]] = (site, laterality)
    return coded


def write_measurement_report(case: str, source: list, segmentation, lesions: list[dict], settings: dict,
                             out: Path) -> dict:
    """A TID 1500 measurement report (Comprehensive 3D SR) of a case's lesions: for each lesion of the burden table
    (``lesions``: its rows of this case) a volumetric ROI group referencing its class's segment of
    ``segmentation``, tracked as "<class> lesion <n>", with its volume (ml) and, where TotalSegmentator's mapping
    codes it, the structure it overlaps most as finding site; then one group per class, "<class> (all lesions)",
    with their summed volume (0 ml for a class without lesions). Returns a summary."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from workflow_scripts.io import atomic_path

    card = settings["model_card"]
    names = list(settings["labels"])[1:]
    codes_of = segment_codes(settings)
    sites = anatomy_codes()
    algorithm = hd.sr.AlgorithmIdentification(name=card["name"], version=card["version"])
    series = hd.sr.SourceSeriesForSegmentation(source[0].SeriesInstanceUID)
    def group(name: str, identifier: str, volume_ml: float, site=None):
        finding_sites = [hd.sr.FindingSite(coded_concept(site[0]), laterality=coded_concept(site[1]) if site[1] else None)] if site else None
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
            referenced_segment=hd.sr.ReferencedSegment(segmentation.SOPClassUID, segmentation.SOPInstanceUID,
                                                       names.index(name) + 1, source_series=series),
            finding_type=coded_concept(codes_of[name]["type"]), algorithm_id=algorithm, finding_sites=finding_sites,
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=volume_ml,
                                            unit=Code("ml", "UCUM", "milliliter"), algorithm_id=algorithm)])

    groups, sited = [], 0
    for lesion in lesions:
        site = sites.get(lesion["structure"])
        sited += site is not None
        groups.append(group(lesion["class"], f"{lesion['class']} lesion {lesion['lesion']}", float(lesion["volume_ml"]),
                            site))
    # Each class's whole burden as well: the segment's volume, 0 ml where the case has no such lesion.
    for name in names:
        total = sum(float(lesion["volume_ml"]) for lesion in lesions if lesion["class"] == name)
        groups.append(group(name, f"{name} (all lesions)", total))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=card["name"], manufacturer_name="nnU-Net lesion workflow", model_name=card["name"]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("25045-6", "LN", "CT unspecified body region"), imaging_measurements=groups)
    document = hd.sr.Comprehensive3DSR(
        evidence=[segmentation], content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnU-Net lesion workflow",
        series_description=f"{card['name']} (research use)")
    with atomic_path(out) as tmp:
        document.save_as(tmp, enforce_file_format=True)
    return {"case": case, "lesions": len(lesions), "with_finding_site": sited}


def dicom_results_entry(argv=None) -> None:
    import sys

    import pandas as pd
    import SimpleITK as sitk

    from workflow_scripts import cli

    p = cli.parser("dicom-results", "DICOM results of a new case's label map on the DICOM series it came from: a "
                   "Segmentation, an RT structure set, a measurement report (the files --out names).")
    p.add_argument("--case", required=True)
    p.add_argument("--source", required=True, help="the case's DICOM folder (the series the conversion chose)")
    p.add_argument("--labels", required=True, help="the case's label map, <case>.nii.gz, on the converted grid")
    p.add_argument("--lesions", required=True, help="the burden table's lesions (lesions.tsv): the report's rows")
    cli.add_settings(p, "dicom-results")
    p.add_argument("--out", required=True, nargs="+", type=Path,
                   help=f"the files to write, each named as its kind: {', '.join(RESULT_FILES.values())}")
    args = p.parse_args(argv)
    kinds = {name: kind for kind, name in RESULT_FILES.items()}
    unknown = [str(path) for path in args.out if path.name not in kinds]
    if unknown:
        p.error(f"--out {' '.join(unknown)}: each file is named {', '.join(RESULT_FILES.values())}")
    out = {kinds[path.name]: path for path in args.out}
    if "sr" in out and "seg" not in out:
        p.error(f"--out: the measurement report references the Segmentation: name {RESULT_FILES['seg']} too")
    source = source_slices(Path(args.source), args.settings["data"]["dicom"]["series"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(args.labels))
    try:
        if "seg" in out:
            seg = write_segmentation(args.case, source, labels, args.settings, out["seg"])
            print(f"{args.case}: DICOM SEG with {seg['frames']} frame(s); voxels per segment {seg['voxels']}")
        if "rtstruct" in out:
            rt = write_rtstruct(args.case, source, labels, args.settings, out["rtstruct"])
            print(f"{args.case}: RT structure set; contours per ROI {rt['contours']}")
        if "sr" in out:
            table = pd.read_csv(args.lesions, sep="\t", dtype={"case": str})
            rows = table[table["case"] == args.case].to_dict("records")
            sr = write_measurement_report(args.case, source, seg["dataset"], rows, args.settings, out["sr"])
            print(f"{args.case}: measurement report of {sr['lesions']} lesion(s), {sr['with_finding_site']} with "
                  "a coded finding site")
    except DicomResultError as err:
        sys.exit(f"error: {err}")
