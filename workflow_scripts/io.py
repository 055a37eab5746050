"""Reading and writing volumes; every write goes to a temporary name and is renamed when complete."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

try:  # ISA-L's inflate, with the same CRC and truncation checks as the standard library's
    from isal import igzip as gzip_reader
except ImportError:  # pragma: no cover - other platforms
    import gzip as gzip_reader


def _split_suffix(path: Path) -> tuple[str, str]:
    name = path.name
    for suffix in (".nii.gz", ".tsv.gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return path.stem, path.suffix


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temporaries(path: Path) -> list[Path]:
    """The temporaries ``atomic_path(path)`` makes (mkstemp's 8 random characters), and no other file's."""
    stem, suffix = _split_suffix(path)
    pattern = re.compile(rf"\.{re.escape(stem)}\.[a-z0-9_]{{8}}\.tmp{re.escape(suffix)}")
    return [p for p in path.parent.glob(f".{glob_escape(stem)}.*") if pattern.fullmatch(p.name)]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A killed job therefore never leaves a file that looks finished; the temporaries a killed writer of ``path``
    left (SIGKILL runs no cleanup) are removed when ``path`` is written again, as a rerun of the job does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_suffix(path)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only (0600): give it the mode a plain open() would, for shared clusters.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def pyplot():
    """matplotlib's pyplot on the Agg backend: jobs have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_figure(fig, path: str | os.PathLike, dpi: int = 90) -> None:
    """Save ``fig`` as PNG under a temporary name, rename it, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def write_table(df, path: str | os.PathLike, float_format: str = "%.6g") -> None:
    """A TSV; ``float_format="%.17g"`` where the numbers are read back for a decision (exact round trip)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format=float_format)


def read_image(path: str | os.PathLike) -> sitk.Image:
    return sitk.ReadImage(str(path))


def image_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """ITK's reader of the image at ``path`` with its header read (size, spacing, origin, direction), no voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def image_grid(path: str | os.PathLike) -> sitk.Image:
    """A blank uint8 image on the grid (size, origin, spacing, direction) of the image at ``path``, from its header
    only: the grid to write label maps on without reading the voxels again."""
    reader = image_header(path)
    grid = sitk.Image(reader.GetSize(), sitk.sitkUInt8)
    grid.SetOrigin(reader.GetOrigin())
    grid.SetSpacing(reader.GetSpacing())
    grid.SetDirection(reader.GetDirection())
    return grid


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def image_array(image: sitk.Image) -> np.ndarray:
    """A copy of the voxels as (z, y, x); a view would dangle once ``image`` is freed."""
    return sitk.GetArrayFromImage(image)


def read_anatomy(case: str, path: str | os.PathLike | None, grid: sitk.Image) -> np.ndarray | None:
    """A case's anatomy label map as an array, checked to lie on the grid of its segmentation (None: no map)."""
    if path is None:
        return None
    anatomy = read_image(path)
    if anatomy.GetSize() != grid.GetSize():
        raise ValueError(f"{case}: anatomy map {path} is not on the segmentation's grid "
                         f"({anatomy.GetSize()} vs {grid.GetSize()})")
    return image_array(anatomy)


def array_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image holding ``array`` (z, y, x) on the grid of ``reference``."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


PROBABILITY_ENCODINGS = ("float16", "uint8")


def encode_probabilities(probabilities: np.ndarray, encoding: str) -> np.ndarray:
    """Probabilities as stored: ``float16``, or ``uint8`` (rounded to 1/255, within 1/510 of the value; about a
    seventh of float16's compressed bytes on the toy study, docs/scale.md). ``decode_probabilities`` reads either
    back."""
    if encoding == "float16":
        return np.asarray(probabilities).astype(np.float16)
    if encoding == "uint8":
        encoded = np.empty(np.shape(probabilities), dtype=np.uint8)
        for k, channel in enumerate(probabilities):  # one channel at a time: no float32 copy of the whole map
            encoded[k] = np.rint(np.clip(np.asarray(channel, dtype=np.float32), 0.0, 1.0) * 255.0)
        return encoded
    raise ValueError(f"probability encoding {encoding!r} is not one of {PROBABILITY_ENCODINGS}")


def decode_probabilities(stored: np.ndarray) -> np.ndarray:
    """float32 probabilities from a stored array: uint8 means 1/255 steps; any float type is taken as is."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(stored.dtype, np.floating):
        raise ValueError(f"stored probabilities of type {stored.dtype}: expected float16, float32 or uint8")
    return stored.astype(np.float32)


def as_stored(probabilities: np.ndarray, encoding: str, slab: int = 8) -> np.ndarray:
    """float32 probabilities rounded in place to what ``encoding`` stores and ``read_probabilities`` gives back:
    new cases are labelled and ensembled from these, as the out-of-fold and test stages are from their files.
    ``slab`` planes of the first spatial axis at a time, so no full-size copy is made."""
    if probabilities.dtype != np.float32:
        raise ValueError(f"as_stored rounds float32 probabilities in place, not {probabilities.dtype}")
    for start in range(0, probabilities.shape[1], slab):
        block = probabilities[:, start:start + slab]
        block[...] = decode_probabilities(encode_probabilities(block, encoding))
    return probabilities


def write_probabilities(path: str | os.PathLike, probabilities: np.ndarray, labels: list[int],
                        encoding: str) -> None:
    """Class probabilities (C, z, y, x), encoded (``encode_probabilities``), with the label value each channel
    stands for."""
    encoded = encode_probabilities(probabilities, encoding)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=encoded, labels=np.asarray(labels, dtype=np.int16))


def read_probabilities(path: str | os.PathLike) -> tuple[np.ndarray, list[int]]:
    """float32 probabilities and channel labels of a file ``write_probabilities`` wrote, in either encoding."""
    with np.load(path) as data:
        return decode_probabilities(data["probabilities"]), [int(v) for v in data["labels"]]


def labels_from_probabilities(probabilities: np.ndarray, labels: list[int]) -> np.ndarray:
    """Argmax over channels, without np.argmax's int64 index map. The tie rule of every label map: an exact tie
    goes to the first channel (the lowest label, background first); stored probabilities (``as_stored``) make
    near ties exact."""
    best = probabilities[0].copy()
    result = np.full(best.shape, labels[0], dtype=np.uint8)
    for label, channel in zip(labels[1:], probabilities[1:]):
        higher = channel > best
        result[higher] = label
        np.maximum(best, channel, out=best)
    return result


def write_prediction(probabilities: np.ndarray, labels: list[int], reference_image: Path | sitk.Image,
                     out_dir: Path, case: str, encoding: str | None) -> None:
    """``<case>.nii.gz`` (argmax of the probabilities as given, in source label values) on the reference image's
    grid, and ``<case>.npz`` (the probabilities, stored as ``encoding``) unless ``encoding`` is None."""
    reference = reference_image if isinstance(reference_image, sitk.Image) else read_image(reference_image)
    if probabilities.shape[1:] != reference.GetSize()[::-1]:
        raise ValueError(f"{case}: probabilities of shape {probabilities.shape[1:]} do not match the image grid "
                         f"{reference.GetSize()[::-1]} of {reference_image}")
    if encoding is not None:
        write_probabilities(Path(out_dir) / f"{case}.npz", probabilities, labels, encoding)
    write_image(array_like(labels_from_probabilities(probabilities, labels), reference),
                Path(out_dir) / f"{case}.nii.gz")


@dataclass(frozen=True)
class Volume:
    """A NIfTI file's geometry as ITK (and nnU-Net) reads it, and its voxels in file order (x, y, z)."""
    dimension: int
    components: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    voxels: np.ndarray | None  # None unless a single-channel 3D volume


def _check_header_geometry(header) -> None:
    """NaN or infinity in the geometry fields in use: ITK's reader (and so nnU-Net's) never returns on such a
    header (an infinite sform row hangs it), so QC stops there with an error instead."""
    fields = {"pixdim[1:4]": header["pixdim"][1:4]}
    if header["sform_code"] > 0:
        fields.update((row, header[row]) for row in ("srow_x", "srow_y", "srow_z"))
    if header["qform_code"] > 0:
        fields.update((q, header[q]) for q in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                                               "qoffset_z"))
    bad = [name for name, value in fields.items() if not np.all(np.isfinite(value))]
    if bad:
        raise ValueError(f"the header's geometry holds NaN or infinity in {', '.join(bad)}; rewrite the file with "
                         "a valid affine")


def _nifti_from_bytes(data: bytes):
    import nibabel as nib

    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return klass.from_bytes(data)
        except Exception:  # noqa: BLE001 - not this NIfTI version; the last one's error is raised
            if klass is nib.Nifti2Image:
                raise


def read_volume(path: Path) -> Volume:
    """Header as ITK (and nnU-Net) reads it; voxels from the whole gzip stream, decompressed with its CRC checked
    (ITK reads a truncated .nii.gz without an error and fills the missing part), by ISA-L where installed: about
    1.6x faster than ITK's own inflate."""
    import nibabel as nib  # here, not at the top: the Snakefile imports this module at every start

    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip_reader.decompress(data)
    nifti = _nifti_from_bytes(data)
    _check_header_geometry(nifti.header)
    reader = image_header(path)
    volume = Volume(reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(), reader.GetSpacing(),
                    reader.GetOrigin(), reader.GetDirection(), None)
    if volume.dimension != 3 or volume.components != 1:
        return volume
    proxy = nifti.dataobj  # where the voxels start and how they scale, as read from the file's header
    shape, dtype, offset = proxy.shape, np.dtype(proxy.dtype), int(proxy.offset)
    if shape[:3] != volume.size or int(np.prod(shape)) != int(np.prod(volume.size)):
        raise ValueError(f"voxel array {shape} does not match the header size {volume.size}")
    if len(data) < offset + int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"the file holds {len(data) - offset} bytes of voxels; its header says {shape} of {dtype}")
    # A view of the decompressed bytes (no copy), scaled as nibabel and ITK scale it.
    voxels = np.ndarray(volume.size, dtype, buffer=data, offset=offset, order="F")
    voxels = nib.volumeutils.apply_read_scaling(voxels, proxy.slope, proxy.inter)
    return replace(volume, voxels=voxels)


def describe_shape(volume: Volume) -> str:
    """What a file holds, in words: '4D with 2 volumes of 64 x 64 x 32', '3D with 3 components per voxel'."""
    size = " x ".join(str(n) for n in volume.size[:3])
    if volume.dimension == 4:
        shape = f"4D with {volume.size[3]} volumes of {size}"
    else:
        shape = f"{volume.dimension}D of {' x '.join(str(n) for n in volume.size)}"
    return shape + (f", {volume.components} components per voxel" if volume.components != 1 else "")
