from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from scipy import ndimage

from workflow_scripts.config import section_settings
from workflow_scripts.io import write_table
from workflow_scripts.qc import QCError, inspect_case, qc_table, qc_verdict, write_case_qc

pytestmark = pytest.mark.unit


def check_case(case, image_path, label_path, label_values, settings=None):
    """The case's QC table: one row per check; 'error' blocks the run, 'warning' is reported, 'info' records."""
    return inspect_case(case, image_path, label_path, label_values, settings)[0]

VALUES = [0, 1, 2]


def aggregate_qc(case_tables: list[Path], out: Path, exclude: dict[str, str] | None = None,
                 allow: dict[str, list[str]] | None = None, orphan_labels: dict[str, Path] | None = None,
                 dataset_rows: list[dict] | None = None, on_error: str = "stop",
                 splits: dict[str, str] | None = None, misnamed: dict[str, str] | None = None,
                 case_pattern: str = "") -> pd.DataFrame:
    """What qc_report and qc_gate do in turn: ``qc_table`` written to ``out``, then ``qc_verdict``."""
    table = qc_table(case_tables, on_error, exclude, allow, orphan_labels, dataset_rows, splits, misnamed,
                     case_pattern)
    write_table(table, out)
    qc_verdict(table, out, on_error, splits or {})
    return table


def errors(table):
    return table[table["severity"] == "error"]


TOY_QC = {**section_settings("qc"), "min_field_of_view_mm": 60}  # as config/toy.yaml


def test_good_case_passes(toy_dir):
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz", VALUES,
                       TOY_QC)
    assert set(table["severity"]) == {"info"}, table.to_string()
    assert set(table["check"]) == {"image_geometry", "image_intensity", "image_content", "label_voxels", "label_volume"}
    messages = dict(zip(table["check"], table["message"]))
    assert "orientation LPS" in messages["image_geometry"] and messages["image_intensity"].startswith("range [-1000,")
    volumes = table[table["check"] == "label_volume"]["message"].tolist()
    assert volumes[0].startswith("label 1: ") and volumes[1].startswith("label 2: ") and "mean 1" in volumes[0]


def write_case(toy_dir, tmp_path, name, image_array=None, label_array=None, spacing=None, image_type=None):
    """toy_001 with its image and/or label voxels replaced (and optionally both re-spaced): a broken case."""
    image = sitk.ReadImage(str(toy_dir / "imagesTr/toy_001.nii.gz"))
    label = sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))
    out = []
    for original, array, kind in ((image, image_array, "image"), (label, label_array, "label")):
        new = sitk.GetImageFromArray(array) if array is not None else sitk.Image(original)
        new.CopyInformation(original)
        if spacing is not None:
            new.SetSpacing(spacing)
        path = tmp_path / f"{name}_{kind}.nii.gz"
        sitk.WriteImage(new, str(path))
        out.append(path)
    return out


def toy_arrays(toy_dir):
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(toy_dir / "imagesTr/toy_001.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz")))
    return image, label


def flagged(table):
    """{check: severity} of every row that is not information."""
    rows = table[table["severity"] != "info"]
    return dict(zip(rows["check"], rows["severity"]))


def test_geometry_outside_the_configured_ranges_is_a_warning(toy_dir, tmp_path):
    image, label = write_case(toy_dir, tmp_path, "thick", spacing=(2.0, 2.0, 7.5))
    table = check_case("thick", image, label, VALUES, TOY_QC)
    assert flagged(table) == {"slice_thickness": "warning", "in_plane_spacing": "warning"}
    message = dict(zip(table["check"], table["message"]))
    assert "7.5 mm is outside [0.5, 5.0]" in message["slice_thickness"] and "qc.slice_thickness_mm" in \
        message["slice_thickness"]
    # The toy phantoms are 67-86 mm across: a cropped field of view under the real template's threshold.
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz", VALUES)
    assert flagged(table) == {"field_of_view": "warning"}


def test_image_not_in_hounsfield_units_or_with_raw_values_is_a_warning(toy_dir, tmp_path):
    image, label = toy_arrays(toy_dir)
    unscaled, _ = write_case(toy_dir, tmp_path, "unscaled", image_array=(image.astype(np.int32) + 1024).astype(np.uint16))
    _, good_label = write_case(toy_dir, tmp_path, "ok")
    table = check_case("unscaled", unscaled, good_label, VALUES, TOY_QC)
    assert flagged(table) == {"hounsfield_units": "warning"}
    assert "lowest value 24 is above -500" in table[table["check"] == "hounsfield_units"]["message"].item()
    raw = image.astype(np.int32) * 20
    raw_path, _ = write_case(toy_dir, tmp_path, "raw", image_array=raw)
    assert flagged(check_case("raw", raw_path, good_label, VALUES, TOY_QC)) == {"intensity_range": "warning"}


def test_nan_in_a_float_image_is_an_error(toy_dir, tmp_path):
    image, _ = toy_arrays(toy_dir)
    image = image.astype(np.float32)
    image[3, 10, 10] = np.nan
    image[4, 10, 10] = np.inf
    path, label = write_case(toy_dir, tmp_path, "nan", image_array=image)
    table = check_case("nan", path, label, VALUES, TOY_QC)
    assert flagged(table) == {"image_finite": "error"}
    assert "2 voxels are NaN or infinite" in table[table["check"] == "image_finite"]["message"].item()


def test_empty_annotation_and_stray_voxels_are_warnings(toy_dir, tmp_path):
    _, label = toy_arrays(toy_dir)
    _, empty = write_case(toy_dir, tmp_path, "empty", label_array=np.zeros_like(label))
    table = check_case("empty", toy_dir / "imagesTr/toy_001.nii.gz", empty, VALUES, TOY_QC)
    assert flagged(table) == {"label_empty": "warning"}
    stray = label.copy()
    stray[1, 5, 5] = 2  # one voxel (~4 mm3) in air, far from every lesion
    _, stray_path = write_case(toy_dir, tmp_path, "stray", label_array=stray)
    table = check_case("stray", toy_dir / "imagesTr/toy_001.nii.gz", stray_path, VALUES, TOY_QC)
    assert flagged(table) == {"label_tiny_components": "warning"}
    message = table[table["check"] == "label_tiny_components"]["message"].item()
    metastases = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))[1]  # QC's 26-connectivity
    assert metastases >= 2 and message.startswith(f"label 2: 1 of {metastases + 1} component(s) below 10 mm3 or "
                                                  "3 voxels (smallest 1 voxel(s)")


def test_one_voxel_lesion_at_coarse_spacing_is_flagged_by_its_voxel_count(toy_dir, tmp_path):
    """At 3 mm voxels one stray voxel is 27 mm3, above the 10 mm3 floor: the voxel count flags it."""
    image, label = (sitk.ReadImage(str(toy_dir / f"{folder}/toy_001.nii.gz")) for folder in ("imagesTr", "labelsTr"))
    array = sitk.GetArrayFromImage(label)
    array[1, 5, 5] = 2
    coarse = sitk.GetImageFromArray(array)
    coarse.CopyInformation(label)
    for item, name in ((image, "image"), (coarse, "label")):
        item.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(item, str(tmp_path / f"{name}.nii.gz"))
    table = check_case("coarse", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", VALUES, TOY_QC)
    message = table[table["check"] == "label_tiny_components"]["message"].item()
    assert "smallest 1 voxel(s), 27 mm3" in message
    table = check_case("coarse", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", VALUES,
                       {**TOY_QC, "min_component_voxels": 1})
    assert "label_tiny_components" not in set(table["check"])


def test_label_shifted_off_the_tissue_is_a_warning(toy_dir, tmp_path):
    image, label = toy_arrays(toy_dir)
    # The lesions moved into the air in front of the body (a label written for another scan or flipped): the
    # scan gets an air margin in front as deep as the lesions reach, and the label moves into it.
    z, y, x = np.nonzero(label)
    padded = np.pad(image, ((0, 0), (y.max() + 1, 0), (0, 0)), constant_values=-1000)
    shifted = np.zeros(padded.shape, dtype=label.dtype)
    shifted[z, y - y.min(), x] = label[z, y, x]
    assert padded[shifted > 0].mean() < -500
    geometry = sitk.ReadImage(str(toy_dir / "imagesTr/toy_001.nii.gz"))
    paths = []
    for array, kind in ((padded, "image"), (shifted, "label")):
        written = sitk.GetImageFromArray(array)
        written.SetSpacing(geometry.GetSpacing())
        written.SetDirection(geometry.GetDirection())
        written.SetOrigin(geometry.GetOrigin())
        paths.append(tmp_path / f"shifted_{kind}.nii.gz")
        sitk.WriteImage(written, str(paths[-1]))
    table = check_case("shifted", *paths, VALUES, TOY_QC)
    checks = table[table["severity"] != "info"]
    in_air = checks[checks["check"] == "label_in_air"]["message"].tolist()
    assert in_air and in_air[0].startswith("label 1: ") and "(qc.lesion_max_air_fraction)" in in_air[0]
    assert set(checks["check"]) <= {"label_in_air", "label_mean_hu"} and set(checks["severity"]) == {"warning"}
    # On fat rather than air: the mean HU of the lesion gives it away.
    fatty = image.copy()
    fatty[label == 1] = -100
    path, label_path = write_case(toy_dir, tmp_path, "fatty", image_array=fatty)
    table = check_case("fatty", path, label_path, VALUES, TOY_QC)
    assert flagged(table) == {"label_mean_hu": "warning"}
    assert table[table["check"] == "label_mean_hu"]["message"].item().startswith("label 1: mean -100 HU")


def test_label_with_another_orientation_is_an_error_naming_both(toy_dir, tmp_path):
    label = sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))
    label.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(label, str(tmp_path / "flipped.nii.gz"))
    table = check_case("flipped", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "flipped.nii.gz", VALUES, TOY_QC)
    assert flagged(table) == {"label_grid": "error"}
    assert "direction RAS vs image LPS" in table[table["check"] == "label_grid"]["message"].item()


def test_label_on_another_grid_is_an_error(toy_dir, tmp_path):
    label = sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))
    label.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(label, str(tmp_path / "shifted.nii.gz"))
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "shifted.nii.gz", VALUES)
    (row,) = errors(table).itertuples()
    assert row.check == "label_grid" and "origin" in row.message and "Resample" in row.message


def test_unknown_label_value_is_an_error(toy_dir, tmp_path):
    label = sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(tmp_path / "bad.nii.gz"))
    table = check_case("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "bad.nii.gz", VALUES)
    (row,) = errors(table).itertuples()
    assert row.check == "label_values" and "[7]" in row.message


def test_missing_label_unreadable_image_and_2d_image(toy_dir, tmp_path):
    table = check_case("x", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "none.nii.gz", VALUES)
    assert list(errors(table)["check"]) == ["label_exists"]
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    table = check_case("y", tmp_path / "broken.nii.gz", None, VALUES)
    assert list(errors(table)["check"]) == ["image_readable"]
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    table = check_case("z", tmp_path / "flat.nii.gz", None, VALUES)
    assert list(errors(table)["check"]) == ["image_3d"]


def suggested(err) -> dict:
    """The config lines a QC stop message suggests (its YAML tail)."""
    message = str(err.value)
    return yaml.safe_load(message[message.index("\nqc:\n") + 1:])["qc"]


def test_aggregate_names_every_failing_case(toy_dir, tmp_path):
    good = write_case_qc("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz",
                         VALUES, tmp_path / "good.tsv")
    assert errors(good).empty
    write_case_qc("lost_a", toy_dir / "imagesTr/toy_003.nii.gz", tmp_path / "missing_a.nii.gz", VALUES,
                  tmp_path / "a.tsv")
    write_case_qc("lost_b", toy_dir / "imagesTr/toy_002.nii.gz", tmp_path / "missing_b.nii.gz", VALUES,
                  tmp_path / "b.tsv")
    with pytest.raises(QCError) as err:
        aggregate_qc([tmp_path / "good.tsv", tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "table.tsv")
    message = str(err.value)
    assert "2 case(s)" in message and "lost_a: [label_exists]" in message and "lost_b" in message
    assert "  toy_001:" not in message
    table = aggregate_qc([tmp_path / "good.tsv"], tmp_path / "table.tsv")
    assert (tmp_path / "table.tsv").exists() and set(table["case"]) == {"toy_001"}


def test_on_error_exclude_leaves_out_failing_training_cases_only(toy_dir, tmp_path):
    from workflow_scripts.qc import passing_cases

    write_case_qc("toy_001", toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz", VALUES,
                  tmp_path / "good.tsv", TOY_QC)
    write_case_qc("lost", toy_dir / "imagesTr/toy_003.nii.gz", tmp_path / "missing.nii.gz", VALUES,
                  tmp_path / "lost.tsv", TOY_QC)
    write_case_qc("new_1", toy_dir / "imagesTs/toy_100.nii.gz", None, VALUES, tmp_path / "new.tsv", TOY_QC)
    splits = {"toy_001": "train", "lost": "train", "new_1": "test", "Toy-4": "train"}
    tables = [tmp_path / "good.tsv", tmp_path / "lost.tsv", tmp_path / "new.tsv"]
    misnamed = {"Toy-4": "imagesTr/Toy-4.nii.gz"}  # an image named off the case pattern
    with pytest.raises(QCError, match="qc.on_error: exclude would leave out") as err:  # the default stops, naming it
        aggregate_qc(tables, tmp_path / "table.tsv", splits=splits, misnamed=misnamed, case_pattern="^[a-z0-9_]+$")
    assert ("Toy-4: [case_name] imagesTr/Toy-4.nii.gz: the id 'Toy-4' does not match data.case_pattern "
            "'^[a-z0-9_]+$', so no rule can use it; rename the image (and its label)") in str(err.value)
    assert suggested(err) == {"exclude": {"lost": "QC errors: label_exists", "Toy-4": "QC errors: case_name"}}
    table = aggregate_qc(tables, tmp_path / "table.tsv", exclude={"old": "phantom scan"}, on_error="exclude",
                         splits=splits, misnamed=misnamed, case_pattern="^[a-z0-9_]+$")
    excluded = table[table["check"] == "excluded"].set_index("case")["message"]
    assert excluded["lost"] == ("excluded by qc.on_error: exclude after errors in label_exists: never used for "
                                "training or evaluation")
    assert excluded["Toy-4"].startswith("excluded by qc.on_error: exclude after errors in case_name")
    assert sorted(errors(table)["case"]) == ["Toy-4", "lost"]  # the errors themselves stay in the table
    assert passing_cases(table, splits) == {"train": ["toy_001"], "test": ["new_1"],
                                            "excluded": {"old": excluded["old"], "lost": excluded["lost"],
                                                         "Toy-4": excluded["Toy-4"]}}
    # An id no pattern can make safe (a space, a quote, brackets, '$', accents) is named with its rename.
    unsafe = {"Patienten (2024) d'été $HOME": "imagesTr/Patienten (2024) d'été $HOME.nii.gz"}
    table = aggregate_qc(tables, tmp_path / "table.tsv", on_error="exclude", misnamed=unsafe, case_pattern=".*",
                         splits={**splits, **{name: "train" for name in unsafe}})
    message = table[table["check"] == "case_name"]["message"].item()
    assert message == ("imagesTr/Patienten (2024) d'été $HOME.nii.gz: the id 'Patienten (2024) d'été $HOME' holds "
                       "characters a case id cannot have here (ASCII letters, digits, '_', '-' and '.' only; it names "
                       "files in nnU-Net's datasets and Snakemake's jobs), so no rule can use it; rename the image "
                       "(and its label) to 'Patienten_2024_d_ete_HOME'")
    # A new case is never left out automatically: it was asked for.
    write_case_qc("new_2", toy_dir / "imagesTs/toy_101.nii.gz", tmp_path / "missing.nii.gz", VALUES,
                  tmp_path / "new_2.tsv", TOY_QC)
    with pytest.raises(QCError, match="new_2: .label_exists.") as err:
        aggregate_qc(tables + [tmp_path / "new_2.tsv"], tmp_path / "table.tsv", on_error="exclude",
                     splits={**splits, "new_2": "test"})
    assert "  lost:" not in str(err.value) and "not a new case you asked to segment" in str(err.value)
    with pytest.raises(QCError, match="every training case has QC errors"):
        aggregate_qc([tmp_path / "lost.tsv", tmp_path / "new.tsv"], tmp_path / "table.tsv", on_error="exclude",
                     splits={"lost": "train", "new_1": "test"})


def test_truncated_gzip_and_4d_volumes_are_errors(toy_dir, tmp_path):
    data = (toy_dir / "imagesTr/toy_001.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    assert sitk.ReadImage(str(tmp_path / "cut.nii.gz")).GetSize() == (64, 64, 32)  # ITK alone would not notice
    table = check_case("cut", tmp_path / "cut.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz", VALUES, TOY_QC)
    assert flagged(table) == {"image_readable": "error"}
    assert "cut.nii.gz" in table["message"].item() and "re-export" in table["message"].item()
    label = (toy_dir / "labelsTr/toy_001.nii.gz").read_bytes()
    (tmp_path / "cut_label.nii.gz").write_bytes(label[:-20])  # the gzip trailer (CRC, length) is gone
    table = check_case("cut_label", toy_dir / "imagesTr/toy_001.nii.gz", tmp_path / "cut_label.nii.gz", VALUES, TOY_QC)
    assert flagged(table) == {"label_readable": "error"}
    series = sitk.JoinSeries([sitk.ReadImage(str(toy_dir / "imagesTr/toy_001.nii.gz"))] * 2)
    sitk.WriteImage(series, str(tmp_path / "4d.nii.gz"))
    table = check_case("4d", tmp_path / "4d.nii.gz", None, VALUES, TOY_QC)
    assert flagged(table) == {"image_3d": "error"} and "is 4D with 2 volumes of 64 x 64 x 32;" in table["message"].item()
    rgb = sitk.Compose([sitk.ReadImage(str(toy_dir / "labelsTr/toy_001.nii.gz"))] * 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    table = check_case("rgb", tmp_path / "rgb.nii.gz", None, VALUES, TOY_QC)
    assert flagged(table) == {"image_3d": "error"} and "3D of 64 x 64 x 32, 3 components per voxel" in table["message"].item()


def test_dataset_level_duplicates_orphans_exclusions_and_allowances(toy_dir, tmp_path):
    image, label = toy_dir / "imagesTr/toy_001.nii.gz", toy_dir / "labelsTr/toy_001.nii.gz"
    write_case_qc("toy_001", image, label, VALUES, tmp_path / "a.tsv", TOY_QC)
    write_case_qc("copy_of_1", image, label, VALUES, tmp_path / "b.tsv", TOY_QC)  # the same scan under a new id
    write_case_qc("toy_002", toy_dir / "imagesTr/toy_002.nii.gz", toy_dir / "labelsTr/toy_002.nii.gz", VALUES,
                  tmp_path / "c.tsv", TOY_QC)
    tables = [tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"]
    with pytest.raises(QCError) as err:
        aggregate_qc(tables, tmp_path / "table.tsv", exclude={"toy_009": "scanner test"},
                     orphan_labels={"toy_007": "labelsTr/toy_007.nii.gz"})
    message = str(err.value)
    assert "errors in 2 case(s)" in message
    assert "toy_001: [duplicate_image] same voxels and geometry as copy_of_1" in message
    assert "copy_of_1: [duplicate_image] same voxels and geometry as toy_001" in message
    assert suggested(err) == {"allow": {"copy_of_1": ["duplicate_image"], "toy_001": ["duplicate_image"]}}
    table = pd.read_csv(tmp_path / "table.tsv", sep="\t")  # written before stopping: the whole picture
    assert flagged(table[table["case"] == "toy_002"]) == {}
    assert flagged(table[table["case"] == "toy_007"]) == {"label_without_image": "warning"}
    excluded = table[table["check"] == "excluded"]
    assert excluded["case"].tolist() == ["toy_009"] and "scanner test" in excluded["message"].item()
    table = aggregate_qc(tables, tmp_path / "table.tsv", allow={"toy_001": ["duplicate_image"],
                                                                 "copy_of_1": ["duplicate_image"]})
    allowed = table[table["check"] == "duplicate_image"]
    assert set(allowed["severity"]) == {"warning"} and allowed["message"].str.startswith("allowed by qc.allow").all()


@pytest.mark.parametrize("compress", [True, False])
def test_read_volume_matches_itk_and_nibabel_including_scaling(tmp_path, totalseg_example, compress):
    from workflow_scripts.io import read_volume

    real = read_volume(totalseg_example / "example_ct_sm.nii.gz")
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_example / "example_ct_sm.nii.gz")))
    assert np.array_equal(real.voxels, itk.T) and real.size == itk.shape[::-1]
    # Stored as unsigned with a rescale, as many exporters write CT: voxels come back in HU.
    import nibabel as nib

    stored = np.random.default_rng(0).integers(0, 3000, (7, 5, 4)).astype(np.uint16)
    image = nib.Nifti1Image(stored, np.diag([0.8, 0.8, 2.5, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / ("scaled.nii.gz" if compress else "scaled.nii")
    nib.save(image, str(path))
    volume = read_volume(path)
    assert np.array_equal(volume.voxels, stored.astype(np.float64) - 1024)
    assert np.array_equal(volume.voxels, sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T)
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))


def test_dataset_summary_flags_the_case_from_another_protocol(toy_dir, tmp_path):
    from workflow_scripts.qc import dataset_summary, plot_dataset

    labels = {"background": 0, "primary": 1, "metastasis": 2}
    files, splits = [], {}
    for k, case in enumerate(sorted(p.name[:-7] for p in (toy_dir / "imagesTr").glob("*.nii.gz"))):
        splits[case] = "train"
        files.append(tmp_path / f"{case}.json")
        write_case_qc(case, toy_dir / f"imagesTr/{case}.nii.gz", toy_dir / f"labelsTr/{case}.nii.gz", VALUES,
                      tmp_path / f"{case}.tsv", TOY_QC, files[-1])
    image, label = write_case(toy_dir, tmp_path, "thick", spacing=(0.8, 0.8, 7.5))
    write_case_qc("thick", image, label, VALUES, tmp_path / "thick.tsv", TOY_QC, tmp_path / "thick.json")
    files.append(tmp_path / "thick.json")
    splits["thick"] = "test"
    summary, rows = dataset_summary(files, splits, labels)
    assert list(summary["case"]) == list(splits) and list(summary["split"]) == list(splits.values())
    assert {"spacing_z_mm", "field_x_mm", "orientation", "primary_ml", "metastasis_lesions"} <= set(summary.columns)
    assert (summary["primary_ml"] > 0).all()
    flagged_cases = {(r["case"], r["check"], r["severity"]) for r in rows}
    assert ("thick", "dataset_outlier", "warning") in flagged_cases
    assert all(r["case"] == "thick" for r in rows if "slice spacing" in r["message"])
    plot_dataset(summary, labels, tmp_path / "dataset.png")
    assert sitk.ReadImage(str(tmp_path / "dataset.png")).GetSize()[0] > 500


def test_qc_case_verb_fills_a_partial_settings_section(toy_dir, tmp_path, capsys):
    """The verb's help says the schema's defaults fill what a --settings section leaves out; they do."""
    from workflow_scripts.qc import qc_case_entry

    image = sorted((toy_dir / "imagesTr").glob("*.nii.gz"))[0]
    case = image.name[: -len(".nii.gz")]
    labels = '"labels": {"background": 0, "primary": 1, "metastasis": 2}'
    qc_case_entry(["--case", case, "--image", str(image), "--label", str(toy_dir / "labelsTr" / image.name),
                   "--settings", '{"qc": {"min_component_mm3": 30}, %s}' % labels, "--out", str(tmp_path / "qc.tsv")])
    table = pd.read_csv(tmp_path / "qc.tsv", sep="\t")
    assert set(table["case"]) == {case} and "field_of_view" in set(table["check"])  # min_field_of_view_mm: 150
    with pytest.raises(SystemExit):
        qc_case_entry(["--case", case, "--image", str(image), "--settings",
                       '{"qc": {"min_component_mm3": "big"}, %s}' % labels, "--out", str(tmp_path / "bad.tsv")])
    assert "qc.min_component_mm3: 'big' is not of type 'number'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the labels have no default: the verb names them
        qc_case_entry(["--case", case, "--image", str(image), "--out", str(tmp_path / "bad.tsv")])
    assert "labels: required, and it has no default" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a setting the verb does not take: the rule and the verb disagree
        qc_case_entry(["--case", case, "--image", str(image), "--out", str(tmp_path / "bad.tsv"), "--settings",
                       '{"qc": {}, "crop": {}, %s}' % labels])
    assert "settings of qc-case: ['crop'] are not among its settings ['qc', 'labels']" in capsys.readouterr().err
