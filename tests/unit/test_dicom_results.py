"""DICOM results of new cases that came as DICOM series, judged by tools that are not ours: dciodvfy (Debian's
dicom3tools) checks each object against the standard; dcmqi's segimage2itkimage (the converter MHub uses) reads a
Segmentation back, which must give the label map voxel for voxel at every source slice; plastimatch rasterises an
RT structure set back on the series."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes

from dicom_judges import (PATIENT_AND_STUDY, at_source_slice, dciodvfy_errors, dice, measurement_groups,
                          rasterise_with_plastimatch, read_back_with_dcmqi)
from workflow_scripts.config import validate_config
from workflow_scripts.dicom import convert_series_folder
from workflow_scripts.dicom_results import (DicomResultError, dicom_results_entry, segment_codes, source_slices,
                                            write_measurement_report, write_rtstruct, write_segmentation)
from workflow_scripts.settings import read_settings, verb_settings
from workflow_scripts.toy_data import SYNTHETIC_PATIENT_TAGS, write_series

pytestmark = pytest.mark.unit

@pytest.fixture
def settings(toy_config):
    return read_settings("dicom-results", verb_settings(validate_config(toy_config), "dicom-results"))


ORIENTATIONS = {"axial": (1, 0, 0, 0, 1, 0), "flipped": (-1, 0, 0, 0, -1, 0), "coronal": (1, 0, 0, 0, 0, -1)}


@pytest.mark.parametrize("series", ["axial", "flipped", "coronal", "slice missing"])
def test_a_seg_and_an_rtstruct_pass_dciodvfy_and_read_back(settings, tmp_path, series):
    """Files named at random (listed out of slice order), a flipped and a non-axial orientation, and a series with
    a slice missing (which QC can be told to allow): at each source slice dcmqi reads back the label map's slice;
    the missing slice has no frame. The SEG references the source's study, series, instances and frame of
    reference, carries the patient and study attributes the standard requires and nothing else of the source.
    plastimatch rasterises the RT structure set back to the label map, holes filled (it fills every contour)."""
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 500, size=(12, 20, 24)).astype(np.int16)
    write_series(tmp_path / "dicom", hu, orientation=ORIENTATIONS.get(series, ORIENTATIONS["axial"]),
                 drop=(5,) if series == "slice missing" else ())
    findings = convert_series_folder("scan", tmp_path / "dicom", tmp_path / "scan.nii.gz", tmp_path / "scan.json")
    assert findings["missing_slices"] == (1 if series == "slice missing" else 0)
    image = sitk.ReadImage(str(tmp_path / "scan.nii.gz"))
    labels = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    labels[2:5, 3:9, 4:10] = settings["labels"]["primary"]
    labels[3, 5:7, 6:8] = 0  # a hole
    labels[6:9, 10:15, 12:20] = settings["labels"]["metastasis"]  # across the missing slice's place
    labels[7, 16, 21] = labels[7, 17, 22] = settings["labels"]["metastasis"]  # touching at a corner only
    label_map = sitk.GetImageFromArray(labels)
    label_map.CopyInformation(image)
    sitk.WriteImage(label_map, str(tmp_path / "labels.nii.gz"))

    lesions = tmp_path / "lesions.tsv"
    lesions.write_text("case\tclass\tlesion\tvolume_ml\tstructure\n")  # no lesion reported here
    results = tmp_path / "results"
    dicom_results_entry(["--case", "scan", "--source", str(tmp_path / "dicom"), "--labels", str(tmp_path / "labels.nii.gz"),
                         "--lesions", str(lesions), "--settings", json.dumps(settings),
                         "--out", str(results / "segmentation.dcm"), str(results / "rtstruct.dcm")])
    (tmp_path / "seg.dcm").symlink_to(results / "segmentation.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(results / "rtstruct.dcm") == []
    back = read_back_with_dcmqi(tmp_path / "seg.dcm", tmp_path / "dcmqi")
    source = source_slices(tmp_path / "dicom", settings["data"]["dicom"]["series"])
    assert len(source) == labels.shape[0]
    segment_of = {settings["labels"][name]: number for number, name in enumerate(list(settings["labels"])[1:], 1)}
    for k, ds in enumerate(source):
        expected = np.vectorize(lambda v: segment_of.get(v, 0))(labels[k])
        assert np.array_equal(at_source_slice(back, ds), expected), (series, k)

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    first = source[0]
    assert seg.Modality == "SEG" and seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (first.StudyInstanceUID, first.FrameOfReferenceUID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    by_uid = {ds.SOPInstanceUID: ds for ds in source}
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) == seg.NumberOfFrames == int(np.count_nonzero(labels == 1, axis=(1, 2)).astype(bool).sum()
                                                    + np.count_nonzero(labels == 2, axis=(1, 2)).astype(bool).sum())
    for frame in frames:  # each frame at the position of the slice it references
        referenced = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in referenced.ImagePositionPatient], atol=1e-4)
    for keyword in PATIENT_AND_STUDY:
        assert str(seg.get(keyword, "")) == str(first.get(keyword, "")), keyword
    copied = {e.keyword for e in first if e.keyword and e.keyword in seg and str(seg[e.keyword].value) ==
              str(e.value) and e.keyword not in PATIENT_AND_STUDY}
    assert copied <= {"FrameOfReferenceUID", "PatientSex", "Modality", "SpecificCharacterSet",
                      "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns",
                      "SamplesPerPixel", "PhotometricInterpretation", "HighBit", "PixelRepresentation",
                      "Manufacturer", "InstanceNumber"}, copied  # equal by coincidence or by geometry
    written = (tmp_path / "seg.dcm").read_bytes()  # anywhere, nested sequences included
    assert SYNTHETIC_PATIENT_TAGS["InstitutionName"].encode() not in written and b"Toy phantom maker" not in written
    assert first.InstitutionName == SYNTHETIC_PATIENT_TAGS["InstitutionName"]  # the source holds them
    codes = segment_codes(settings)
    for segment, name in zip(seg.SegmentSequence, list(settings["labels"])[1:]):
        assert segment.SegmentLabel == name and segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes[name]["type"]["code"]
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes[name]["category"]["code"]
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (settings["model_card"]["name"],
                                                                          settings["model_card"]["version"])

    # The RT structure set: each ROI rasterised by plastimatch at each source slice is the label's mask with the
    # slice's holes filled (a hole is a contour of its own, which plastimatch fills as it fills the outline).
    masks = rasterise_with_plastimatch(results / "rtstruct.dcm", tmp_path / "dicom", tmp_path / "plastimatch")
    assert sorted(masks) == sorted(list(settings["labels"])[1:])
    for name, mask in masks.items():
        want = labels == settings["labels"][name]
        got = np.stack([at_source_slice(mask, ds) for ds in source]) > 0
        assert np.array_equal(got, np.stack([binary_fill_holes(plane) for plane in want])), (series, name)
        assert dice(got, want) >= 0.95, (series, name)
    rt = pydicom.dcmread(results / "rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT" and rt.SeriesInstanceUID not in (first.SeriesInstanceUID, seg.SeriesInstanceUID)
    assert (rt.StudyInstanceUID, rt.FrameOfReferenceUID) == (first.StudyInstanceUID, first.FrameOfReferenceUID)
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    referenced_series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert referenced_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced_series.ContourImageSequence] == [ds.SOPInstanceUID
                                                                                          for ds in source]
    for roi, observation, name in zip(rt.ROIContourSequence, rt.RTROIObservationsSequence, list(settings["labels"])[1:]):
        for contour in roi.ContourSequence:  # every point in the plane of the slice it references
            ds = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            offsets = (points - [float(v) for v in ds.ImagePositionPatient]) @ np.cross(iop[:3], iop[3:])
            assert np.abs(offsets).max() < 1e-3 and contour.ContourGeometricType == "CLOSED_PLANAR"
        assert observation.RTROIIdentificationCodeSequence[0].CodeValue == codes[name]["type"]["code"]
    assert [roi.ROIName for roi in rt.StructureSetROISequence] == list(settings["labels"])[1:]
    for keyword in PATIENT_AND_STUDY:
        assert str(rt.get(keyword, "")) == str(first.get(keyword, "")), keyword
    written = (results / "rtstruct.dcm").read_bytes()
    assert SYNTHETIC_PATIENT_TAGS["InstitutionName"].encode() not in written and b"Toy phantom maker" not in written


def test_an_empty_class_is_a_segment_without_frames_an_roi_without_contours_and_a_mismatched_map_is_refused(settings, tmp_path):
    hu = np.full((6, 10, 12), -1000, np.int16)
    write_series(tmp_path / "dicom", hu)
    source = source_slices(tmp_path / "dicom", "most_slices")
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:3, 2:5, 2:6] = settings["labels"]["primary"]  # no metastasis
    summary = write_segmentation("scan", source, labels, settings, tmp_path / "seg.dcm")
    assert summary["segments"] == ["primary", "metastasis"] and summary["voxels"]["metastasis"] == 0
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["primary", "metastasis"]
    referenced = {f.SegmentIdentificationSequence[0].ReferencedSegmentNumber for f in seg.PerFrameFunctionalGroupsSequence}
    assert referenced == {1} and seg.NumberOfFrames == 2
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    rt = write_rtstruct("scan", source, labels, settings, tmp_path / "rtstruct.dcm")
    assert rt["contours"] == {"primary": 2, "metastasis": 0}  # one outline on each of two slices
    structure_set = pydicom.dcmread(tmp_path / "rtstruct.dcm")
    assert [r.ROIName for r in structure_set.StructureSetROISequence] == ["primary", "metastasis"]
    assert "ContourSequence" not in structure_set.ROIContourSequence[1]
    assert dciodvfy_errors(tmp_path / "rtstruct.dcm") == []
    with pytest.raises(DicomResultError, match=r"case scan: the label map has shape \(5, 10, 12\).*source series "
                                               r"\(6, 10, 12\)"):
        write_segmentation("scan", source, labels[:5], settings, tmp_path / "other.dcm")
    labels[0, 0, 0] = 7
    with pytest.raises(DicomResultError, match=r"case scan: label values \[7\] are not in labels"):
        write_segmentation("scan", source, labels, settings, tmp_path / "other.dcm")
    assert not (tmp_path / "other.dcm").exists()


def test_the_measurement_report_lists_each_lesion_with_its_volume_site_and_segment(settings, tmp_path):
    """TID 1500: one group per lesion of the burden table, tracked by class and number, its volume in ml, the
    structure it overlaps most as a SNOMED CT finding site (TotalSegmentator's mapping, laterality included; none
    where the lesion overlaps no structure), referencing its class's segment of the case's SEG; then each class's
    summed volume. A case without lesions gets only the sums, 0 ml. dciodvfy finds no error in either."""
    write_series(tmp_path / "dicom", np.full((6, 10, 12), -1000, np.int16))
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:3, 2:5, 2:6] = settings["labels"]["primary"]
    labels[4, 6:8, 8:10] = settings["labels"]["metastasis"]
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "labels.nii.gz"))  # on the series' grid
    (tmp_path / "lesions.tsv").write_text(
        "case\tclass\tlesion\tvoxels\tvolume_ml\tstructure\tstructure_fraction\n"
        "other\tprimary\t1\t9\t9.0\tliver\t1\n"
        "scan\tprimary\t1\t24\t0.375\tliver\t0.8\n"
        "scan\tmetastasis\t1\t4\t0.0625\tkidney_left\t0.5\n"
        "scan\tmetastasis\t2\t2\t0.03\tnone\t0\n")
    out = [tmp_path / "results" / name for name in ("segmentation.dcm", "rtstruct.dcm", "measurements.dcm")]
    dicom_results_entry(["--case", "scan", "--source", str(tmp_path / "dicom"), "--labels", str(tmp_path / "labels.nii.gz"),
                         "--lesions", str(tmp_path / "lesions.tsv"), "--settings", json.dumps(settings),
                         "--out", *map(str, out)])
    assert [dciodvfy_errors(path) for path in out] == [[], [], []]
    seg, report = pydicom.dcmread(out[0]), pydicom.dcmread(out[2])
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and report.StudyInstanceUID == seg.StudyInstanceUID
    groups = measurement_groups(report)
    assert [g["Tracking Identifier"] for g in groups] == ["primary lesion 1", "metastasis lesion 1",
                                                         "metastasis lesion 2", "primary (all lesions)",
                                                         "metastasis (all lesions)"]
    assert [g["Volume"] for g in groups] == [0.375, 0.0625, 0.03, 0.375, 0.0925]
    assert [g["segment"] for g in groups] == [1, 2, 2, 1, 2]
    assert {g["segmentation"] for g in groups} == {seg.SOPInstanceUID}
    assert [g.get("Finding Site") for g in groups[:3]] == [["10200004"], ["64033007"], None]  # liver, kidney, none
    assert groups[1]["Laterality"] == "7771000"  # left
    codes = segment_codes(settings)
    assert [g["Finding"] for g in groups] == [[codes[name]["type"]["code"]] for name in
                                              ("primary", "metastasis", "metastasis", "primary", "metastasis")]

    source = source_slices(tmp_path / "dicom", "most_slices")
    empty = write_measurement_report("scan", source, seg, [], settings, tmp_path / "empty.dcm")
    groups = measurement_groups(pydicom.dcmread(tmp_path / "empty.dcm"))
    assert empty["lesions"] == 0 and [(g["Tracking Identifier"], g["Volume"]) for g in groups] == [
        ("primary (all lesions)", 0.0), ("metastasis (all lesions)", 0.0)]
    assert dciodvfy_errors(tmp_path / "empty.dcm") == []
