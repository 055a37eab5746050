"""DICOM Segmentations of new cases that came as DICOM series, judged by tools that are not ours: dciodvfy
(Debian's dicom3tools) checks each object against the standard, and dcmqi's segimage2itkimage (the converter MHub
uses) reads it back, which must give the label map voxel for voxel at every source slice."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_judges import PATIENT_AND_STUDY, at_source_slice, dciodvfy_errors, read_back_with_dcmqi
from workflow_scripts.config import validate_config
from workflow_scripts.dicom import convert_series_folder
from workflow_scripts.dicom_results import (DicomResultError, dicom_seg_entry, segment_codes, source_slices,
                                            write_segmentation)
from workflow_scripts.settings import read_settings, verb_settings
from workflow_scripts.toy_data import SYNTHETIC_PATIENT_TAGS, write_series

pytestmark = pytest.mark.unit

@pytest.fixture
def settings(toy_config):
    return read_settings("dicom-seg", verb_settings(validate_config(toy_config), "dicom-seg"))


ORIENTATIONS = {"axial": (1, 0, 0, 0, 1, 0), "flipped": (-1, 0, 0, 0, -1, 0), "coronal": (1, 0, 0, 0, 0, -1)}


@pytest.mark.parametrize("series", ["axial", "flipped", "coronal", "slice missing"])
def test_a_seg_passes_dciodvfy_and_reads_back_voxel_for_voxel(settings, tmp_path, series):
    """Files named at random (listed out of slice order), a flipped and a non-axial orientation, and a series with
    a slice missing (which QC can be told to allow): at each source slice dcmqi reads back the label map's slice;
    the missing slice has no frame. The SEG references the source's study, series, instances and frame of
    reference, carries the patient and study attributes the standard requires and nothing else of the source."""
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 500, size=(12, 20, 24)).astype(np.int16)
    write_series(tmp_path / "dicom", hu, orientation=ORIENTATIONS.get(series, ORIENTATIONS["axial"]),
                 drop=(5,) if series == "slice missing" else ())
    findings = convert_series_folder("scan", tmp_path / "dicom", tmp_path / "scan.nii.gz", tmp_path / "scan.json")
    assert findings["missing_slices"] == (1 if series == "slice missing" else 0)
    image = sitk.ReadImage(str(tmp_path / "scan.nii.gz"))
    labels = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    labels[2:5, 3:9, 4:10] = settings["labels"]["primary"]
    labels[6:9, 10:15, 12:20] = settings["labels"]["metastasis"]  # across the missing slice's place
    label_map = sitk.GetImageFromArray(labels)
    label_map.CopyInformation(image)
    sitk.WriteImage(label_map, str(tmp_path / "labels.nii.gz"))

    dicom_seg_entry(["--case", "scan", "--source", str(tmp_path / "dicom"), "--labels", str(tmp_path / "labels.nii.gz"),
                     "--settings", json.dumps(settings), "--out", str(tmp_path / "seg.dcm")])
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
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


def test_an_empty_class_is_a_segment_without_frames_and_a_mismatched_map_is_refused(settings, tmp_path):
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
    with pytest.raises(DicomResultError, match=r"case scan: the label map has shape \(5, 10, 12\).*source series "
                                               r"\(6, 10, 12\)"):
        write_segmentation("scan", source, labels[:5], settings, tmp_path / "other.dcm")
    labels[0, 0, 0] = 7
    with pytest.raises(DicomResultError, match=r"case scan: label values \[7\] are not in labels"):
        write_segmentation("scan", source, labels, settings, tmp_path / "other.dcm")
    assert not (tmp_path / "other.dcm").exists()
