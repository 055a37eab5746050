"""Deterministic synthetic abdominal CT phantoms (Hounsfield units) for the smoke workflow.

Each case has an image, a lesion label map (0 background, 1 primary tumour, 2 metastasis) and an anatomy
map with TotalSegmentator "total" class ids, so that the refinement stage runs the same code on toy and
real data. Layout written under ``out``::

    imagesTr/<case>.nii.gz  labelsTr/<case>.nii.gz  anatomy/<case>.nii.gz
    imagesTs/<case>.nii.gz  labelsTs/<case>.nii.gz   (labelsTs: for evaluation only)

Cases named in ``dicom_cases`` get their image as a DICOM series folder ``images*/<case>/`` instead, with made-up
patient tags, so that the smoke run converts DICOM and proves that no tag reaches an output.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.io import write_image, write_json

# TotalSegmentator v2 "total" class ids of the structures the phantom models.
ANATOMY_IDS = {"liver": 5, "sacrum": 25, "vertebrae_L5": 27, "vertebrae_L4": 28, "vertebrae_L3": 29,
               "vertebrae_L2": 30, "vertebrae_L1": 31, "hip_left": 77, "hip_right": 78}
LUMBAR = ["sacrum", "vertebrae_L5", "vertebrae_L4", "vertebrae_L3", "vertebrae_L2", "vertebrae_L1"]

HU_AIR, HU_FAT, HU_SOFT, HU_LIVER, HU_BONE = -1000, -100, 40, 60, 450
# The primary tumour is an enhancing rim (as bright as the discs) around a core as dark as soft tissue and liver:
# no threshold separates it, a model has to learn its shape. Metastases are uniformly brighter.
HU_PRIMARY_RIM, HU_PRIMARY_CORE, HU_METASTASIS = 110, 50, 170
PRIMARY_CORE_FRACTION = 0.5  # of the primary's radii
NOISE_HU = 12.0
METASTASIS_FREE_EVERY = 6  # case index % 6 == 0: no metastasis (toy_000, toy_006, toy_102)
# Angles (radians) of the metastases around the body's axis: +y (pi / 2) is posterior, where the spine is; the
# sector within 0.3 pi of it is left out.
METASTASIS_ANGLES = (0.8 * np.pi, 2.2 * np.pi)


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray      # int16 (z, y, x)
    label: np.ndarray      # uint8 (z, y, x)
    anatomy: np.ndarray    # uint8 (z, y, x)
    spacing: tuple[float, float, float]  # (x, y, z) in mm, SimpleITK order


def _ellipsoid(coords, centre, radii) -> np.ndarray:
    z, y, x = coords
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
        + ((z - centre[2]) / radii[2]) ** 2 <= 1.0


# (z, y, x) and in-plane spacing (mm) of the toy study: small enough that 15 trainings and their predictions fit a
# 2-core CPU (67-86 mm across). Real CT has 0.7-0.9 mm, the default for other shapes (benchmarks).
TOY_SHAPE, TOY_IN_PLANE_MM = (32, 64, 64), (67 / 64, 86 / 64)
CT_IN_PLANE_MM = (0.7, 0.9)
CT_SLICE_MM = (2.0, 3.0)


def make_phantom(rng: np.random.Generator, shape=TOY_SHAPE, with_metastases: bool = True,
                 in_plane_mm: tuple[float, float] = CT_IN_PLANE_MM,
                 slice_mm: tuple[float, float] = CT_SLICE_MM) -> Phantom:
    """One phantom; ``shape`` is (z, y, x), its in-plane spacing drawn from ``in_plane_mm``, its slice spacing
    from ``slice_mm``. Positions are fractions of the field of view, sizes in mm."""
    nz, ny, nx = shape
    sxy = float(rng.uniform(*in_plane_mm))
    sz = float(rng.uniform(*slice_mm))
    fov_x, fov_y, fov_z = nx * sxy, ny * sxy, nz * sz
    zz, yy, xx = np.meshgrid((np.arange(nz) + 0.5) * sz - fov_z / 2, (np.arange(ny) + 0.5) * sxy - fov_y / 2,
                             (np.arange(nx) + 0.5) * sxy - fov_x / 2, indexing="ij")
    coords = (zz, yy, xx)
    height = zz + fov_z / 2  # 0 at the lowest slice

    image = np.full(shape, HU_AIR, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    anatomy = np.zeros(shape, dtype=np.uint8)

    body_a, body_b = 0.45 * fov_x * rng.uniform(0.95, 1.05), 0.38 * fov_y * rng.uniform(0.95, 1.05)
    body_r = (xx / body_a) ** 2 + (yy / body_b) ** 2
    body = body_r <= 1.0
    image[body] = HU_FAT
    inner = (xx / (body_a - 3.5)) ** 2 + (yy / (body_b - 3.5)) ** 2 <= 1.0
    image[inner] = HU_SOFT

    liver = _ellipsoid(coords, (-0.2 * fov_x, -0.04 * fov_y, 0.35 * fov_z), (0.2 * fov_x, 0.22 * fov_y, 0.3 * fov_z))
    liver &= inner
    image[liver] = HU_LIVER
    anatomy[liver] = ANATOMY_IDS["liver"]

    # Lumbar spine: a column of vertebral bodies separated by discs, the sacrum lowest.
    spine_r = 0.1 * fov_x
    column = (xx ** 2 + (yy - 0.22 * fov_y) ** 2) <= spine_r ** 2
    level_height = fov_z / len(LUMBAR)
    level = np.clip((height // level_height).astype(int), 0, len(LUMBAR) - 1)
    disc = (height % level_height) < 3.0
    vertebra = column & ~disc
    image[column & disc] = 90
    image[vertebra] = HU_BONE
    for i, name in enumerate(LUMBAR):
        anatomy[vertebra & (level == i)] = ANATOMY_IDS[name]

    # Iliac wings in the lower third; +x is the patient's left in LPS.
    for side, name in ((1, "hip_left"), (-1, "hip_right")):
        wing = _ellipsoid(coords, (side * 0.27 * fov_x, 0.12 * fov_y, -0.35 * fov_z),
                          (0.06 * fov_x, 0.12 * fov_y, 0.2 * fov_z)) & inner
        image[wing] = HU_BONE + 100
        anatomy[wing] = ANATOMY_IDS[name]

    # Primary tumour low in the abdomen, anterior to the spine: enhancing rim around a core (PRIMARY_CORE_FRACTION).
    r = rng.uniform(8.0, 12.0, size=3)
    centre = (rng.uniform(-0.1, 0.1) * fov_x, rng.uniform(-0.12, 0.0) * fov_y, rng.uniform(-0.2, -0.05) * fov_z)
    primary = _ellipsoid(coords, centre, r) & inner & (anatomy == 0)
    image[primary] = HU_PRIMARY_RIM
    image[primary & _ellipsoid(coords, centre, PRIMARY_CORE_FRACTION * r)] = HU_PRIMARY_CORE
    label[primary] = 1

    # Peritoneal metastases: 2-4 nodules near the anterior and lateral body wall in the upper abdomen, never
    # touching the primary, and never beside the spine: a nodule wrapped around a vertebra, merged with the
    # models' false positives in bone, is then dropped whole by the refinement's drop_in_bone.
    n_metastases = int(rng.integers(2, 5)) if with_metastases else 0
    bone = np.isin(anatomy, [ANATOMY_IDS[n] for n in LUMBAR + ["hip_left", "hip_right"]])
    for _ in range(n_metastases):
        angle = rng.uniform(*METASTASIS_ANGLES)
        radius = rng.uniform(5.0, 8.0)
        ex, ey = (body_a - 12) * np.cos(angle), (body_b - 12) * np.sin(angle)
        met = _ellipsoid(coords, (ex, ey, rng.uniform(0.1, 0.35) * fov_z), (radius, radius, radius + 2.0))
        met &= inner & ~bone & (label == 0)
        image[met] = HU_METASTASIS
        label[met] = 2

    image[body] += rng.normal(0.0, NOISE_HU, size=int(body.sum())).astype(np.float32)
    return Phantom(image=np.round(image).astype(np.int16), label=label, anatomy=anatomy, spacing=(sxy, sxy, sz))


# Made-up patient tags written into toy DICOM series: no output of the workflow may contain them.
SYNTHETIC_PATIENT_TAGS = {"PatientName": "Doe^Jane^Secret", "PatientID": "PID-7731-SECRET", "PatientBirthDate": "19470312",
               "InstitutionName": "St Secret Hospital", "AccessionNumber": "ACC99887766"}


def write_series(folder: Path, hu: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(-120.0, -100.0, 50.0),
                 orientation=(1, 0, 0, 0, 1, 0), series_number: int = 2, series_uid: str | None = None,
                 drop: tuple[int, ...] = (), z_jitter: dict[int, float] | None = None, seed: int = 0) -> list[Path]:
    """One file per slice of ``hu`` (z, y, x), stored as unsigned pixels with intercept -1024; ``spacing``
    is (column, row, slice) in mm. ``drop`` leaves slices out, ``z_jitter`` moves slices along the normal (mm).
    Files get random names so their order says nothing."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    series_uid = series_uid or generate_uid()
    study_uid, frame_of_reference_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(hu.shape[0]):
        if k in drop:
            continue
        position = (np.asarray(origin) + (k * spacing[2] + (z_jitter or {}).get(k, 0.0)) * normal)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        for tag, value in SYNTHETIC_PATIENT_TAGS.items():
            setattr(ds, tag, value)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.Manufacturer = "Toy phantom maker"
        # the rest of the patient, study and frame of reference modules a scanner writes
        ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.StudyID = "F", "20240102", "101500", "1"
        ds.ReferringPhysicianName, ds.FrameOfReferenceUID = "", frame_of_reference_uid
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]  # row spacing, column spacing
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        path = folder / f"{rng.integers(1 << 40):x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _to_image(array: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((0.0, 0.0, 0.0))
    return image


def generate_toy_dataset(out: str | Path, n_train: int = 12, n_test: int = 3, seed: int = 0,
                         shape=TOY_SHAPE, dicom_cases: tuple[str, ...] = (),
                         in_plane_mm: tuple[float, float] = TOY_IN_PLANE_MM) -> dict:
    """Write the toy dataset; every sixth case has no metastasis; ``dicom_cases`` as DICOM series folders.
    Returns the case lists."""
    out = Path(out)
    cases = {"train": [f"toy_{i:03d}" for i in range(n_train)],
             "test": [f"toy_{100 + i:03d}" for i in range(n_test)]}
    for split, suffix in (("train", "Tr"), ("test", "Ts")):
        for case in cases[split]:
            index = int(case.split("_")[1])
            rng = np.random.default_rng([seed, index])
            phantom = make_phantom(rng, shape=shape, with_metastases=index % METASTASIS_FREE_EVERY != 0,
                                   in_plane_mm=in_plane_mm)
            if case in dicom_cases:
                write_series(out / f"images{suffix}" / case, phantom.image, spacing=phantom.spacing,
                             origin=(0.0, 0.0, 0.0), series_number=index + 1, seed=index)
            else:
                write_image(_to_image(phantom.image, phantom.spacing), out / f"images{suffix}" / f"{case}.nii.gz")
            write_image(_to_image(phantom.label, phantom.spacing), out / f"labels{suffix}" / f"{case}.nii.gz")
            write_image(_to_image(phantom.anatomy, phantom.spacing), out / "anatomy" / f"{case}.nii.gz")
    write_json({"seed": seed, "shape_zyx": list(shape), **cases, "dicom": sorted(dicom_cases)},
               out / "toy_dataset.json")
    return cases


def make_toy_data_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("make-toy-data", "Write the toy study's phantoms (images, labels, anatomy maps).")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-test", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom-cases", nargs="*", default=["toy_011", "toy_102"],
                   help="cases written as DICOM series folders (default: one training and one new case)")
    args = p.parse_args(argv)
    cases = generate_toy_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                                 dicom_cases=tuple(args.dicom_cases))
    dicom = [c for c in args.dicom_cases if c in cases["train"] + cases["test"]]
    print(f"toy data: {len(cases['train'])} training and {len(cases['test'])} test cases in {args.out}"
          + (f" ({', '.join(dicom)} as DICOM series folders)" if dicom else ""))
