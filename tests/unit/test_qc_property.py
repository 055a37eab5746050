"""Property-based: random headers, arrays and damaged files thrown at the QC readers give a table (with an error
row where the file is unusable), never a traceback."""
import gzip

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workflow_scripts.io import read_volume
from workflow_scripts.qc import COLUMNS, inspect_case

pytestmark = pytest.mark.unit

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64]
SPECIALS = [0.0, -0.0, 1e-12, -1.0, 1e30, float("nan"), float("inf")]


@st.composite
def nifti_files(draw, shape=None, label_like=False):
    """Bytes of a .nii.gz with a random shape, type, voxels, header fields and scaling; sometimes damaged.
    ``label_like``: values 0-2 (so that the label checks past the value check run too)."""
    if shape is None:
        ndim = draw(st.integers(1, 4))
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if label_like:
        data = rng.integers(0, 3, shape).astype(dtype)
    elif np.issubdtype(dtype, np.floating):
        data = rng.normal(0, 500, shape).astype(dtype)
        if draw(st.booleans()):
            data.flat[rng.integers(data.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    # The header is written field by field, bypassing nibabel's own checks: any value a broken exporter could write.
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    header["pixdim"][1:4] = [0.8, 0.8, 2.5]
    header["qform_code"], header["sform_code"] = 1, 0
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = 0.0, 0.0, 0.0
    if draw(st.booleans()):
        header["pixdim"][1:4] = [draw(st.sampled_from(SPECIALS + [0.8, 2.5])) for _ in range(3)]
    if draw(st.booleans()):
        header["qform_code"], header["sform_code"] = draw(st.integers(0, 4)), draw(st.integers(0, 4))
        for row in ("srow_x", "srow_y", "srow_z"):
            header[row] = [draw(st.sampled_from(SPECIALS + [1.0])) for _ in range(4)]
        for field in ("quatern_b", "quatern_c", "quatern_d"):
            header[field] = draw(st.sampled_from(SPECIALS + [0.5]))
    if draw(st.booleans()):
        header["scl_slope"], header["scl_inter"] = (draw(st.sampled_from(SPECIALS + [0.5])) for _ in range(2))
    raw = gzip.compress(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip":
        position = draw(st.integers(0, len(raw) - 1))
        raw = raw[:position] + bytes([raw[position] ^ 0xFF]) + raw[position + 1:]
    elif damage == "garbage":
        raw = draw(st.binary(max_size=400))
    return raw


@st.composite
def cases(draw):
    """An image and, mostly, a label: unrelated, or of the same 3D shape with label values."""
    kind = draw(st.sampled_from(["none", "unrelated", "paired", "paired"]))
    if kind != "paired":
        return draw(nifti_files()), (draw(nifti_files()) if kind == "unrelated" else None)
    shape = tuple(draw(st.lists(st.integers(2, 8), min_size=3, max_size=3)))
    return draw(nifti_files(shape=shape)), draw(nifti_files(shape=shape, label_like=True))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_any_file_gives_a_qc_table_never_a_traceback(tmp_path, case):
    image, label = case
    (tmp_path / "image.nii.gz").write_bytes(image)
    label_path = None
    if label is not None:
        label_path = tmp_path / "label.nii.gz"
        label_path.write_bytes(label)
    table = inspect_case("random", tmp_path / "image.nii.gz", label_path, [0, 1, 2])[0]
    assert list(table.columns) == COLUMNS and len(table) >= 1
    assert set(table["severity"]) <= {"error", "warning", "info"}
    assert (table["case"] == "random").all() and table["message"].str.len().gt(0).all()
    for check in table["check"]:
        event(check)  # pytest --hypothesis-show-statistics: how often each check was reached
    # Where QC read the voxels, they are nibabel's (QC reads them itself, as a view of the inflated bytes).
    try:
        volume = read_volume(tmp_path / "image.nii.gz")
    except Exception:  # noqa: BLE001 - reported as an error row above
        return
    if volume.voxels is not None:
        expected = np.asanyarray(nib.load(str(tmp_path / "image.nii.gz")).dataobj).reshape(volume.size)
        assert np.array_equal(volume.voxels, expected, equal_nan=np.issubdtype(expected.dtype, np.floating))


def test_an_infinite_sform_is_an_error_not_a_hung_reader(tmp_path):
    """ITK never returns from reading this header (nnU-Net would hang on it too): QC reports it. Run in a
    subprocess with a timeout so that a regression fails instead of hanging the suite."""
    import subprocess
    import sys

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((8, 3, 5))
    header["vox_offset"] = 352
    header["sform_code"] = 3
    header["srow_y"] = [1.0, 1e-12, np.inf, 0.0]
    path = tmp_path / "inf_sform.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + np.zeros(120, np.int16).tobytes()))
    code = ("import sys; from pathlib import Path; from workflow_scripts.qc import inspect_case; "
            f"t = inspect_case('inf', Path({str(path)!r}), None, [0, 1, 2])[0]; print(t.iloc[0].severity, t.iloc[0].message)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("error cannot read") and "NaN or infinity in srow_y" in result.stdout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(anatomy=st.one_of(nifti_files(), nifti_files(shape=(6, 5, 4), label_like=True)))
def test_any_anatomy_map_gives_an_anatomy_table_never_a_traceback(tmp_path, anatomy):
    """The anatomy-aware label QC reads a map nobody checked (precomputed): whatever the file, a table."""
    import SimpleITK as sitk

    from workflow_scripts.config import section_settings
    from workflow_scripts.qc_anatomy import check_case_anatomy

    rng = np.random.default_rng(0)
    for name, array in (("image", rng.normal(0, 300, (4, 5, 6)).astype(np.int16)),
                        ("label", (rng.random((4, 5, 6)) > 0.8).astype(np.uint8) * 2)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 2.5))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "anatomy.nii.gz").write_bytes(anatomy)
    table = check_case_anatomy("random", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz",
                               tmp_path / "anatomy.nii.gz", section_settings("qc"), [0, 1, 2], "total",
                               tmp_path / "anatomy.tsv", tmp_path / "proposal")
    assert list(table.columns) == COLUMNS and len(table) >= 1 and (table["case"] == "random").all()
    event(table["message"].iloc[0][:40])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                          st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                       lambda inner: st.lists(inner, max_size=3)
                                       | st.dictionaries(st.sampled_from(["labels", "channel_names", "file_ending",
                                                                          "0", "background"]), inner, max_size=4),
                                       max_leaves=10).map(__import__("json").dumps)))
def test_any_dataset_json_gives_config_problems_never_a_traceback(tmp_path, manifest):
    """data.nnunet_raw reads dataset.json, the other new reader: whatever it holds, problems to report."""
    from workflow_scripts.config import _resolve_nnunet_raw

    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / "dataset.json").write_text(manifest)
    problems = _resolve_nnunet_raw({"nnunet_raw": "raw"}, {"background": 0, "primary": 1}, tmp_path)
    assert all(p.startswith("data.nnunet_raw: ") for p in problems)
