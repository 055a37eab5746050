import copy
import re
from pathlib import Path

import pytest
import yaml

from workflow_scripts.cases import discover_cases
from workflow_scripts.config import ConfigError, refinement_rules, section_settings, validate_config
from workflow_scripts.config_readme import README, config_readme
from workflow_scripts.settings import rule_resources
from workflow_scripts.metrics import Conventions

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_toy_config_is_valid_and_gets_defaults(toy_config):
    config = validate_config(toy_config)
    assert config["ensemble"]["fusions"][0]["strategy"] == "mean"
    assert config["data"]["case_pattern"]  # default filled
    assert "case_pattern" not in toy_config["data"], "validation must not mutate its input"
    assert list(config["configurations"]) == ["resenc_multiclass", "isotropic_multiclass", "metastasis_only"]


def test_real_template_is_valid_once_its_folders_exist(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key in ("images_tr", "labels_tr", "images_ts"):
        (tmp_path / config["data"][key]).mkdir(parents=True)
    validated = validate_config(config, base=tmp_path)
    assert validated["configurations"]["resenc_multiclass"]["trainer_settings"] == {"save_every": 10}, \
        "the real config keeps nnU-Net's training defaults; only checkpoints come more often"
    assert validated["configurations"]["resenc_multiclass"]["plans_overrides"] == {}  # nnU-Net's own plans
    assert rule_resources(validated, "train_fold")["gpu"] is True


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.update(bogus=1), "unknown key"),
    (lambda c: c["splits"].update(n_folds="five"), "splits.n_folds: 'five' is not of type 'integer'"),
    (lambda c: c["configurations"]["resenc_multiclass"].update(trainer_settings={"num_epoch": 3}),
     "configurations.resenc_multiclass.trainer_settings: unknown key"),
    (lambda c: c["data"].update(images_tr="/does/not/exist"), "data.images_tr: folder '/does/not/exist' does not exist"),
    (lambda c: c["ensemble"]["members"].update(nope=1.0), "ensemble.members: 'nope' is not a configuration"),
    (lambda c: c["ensemble"]["members"].update(metastasis_only=1.0), "'metastasis_only' does not predict every label"),
    (lambda c: c["configurations"]["metastasis_only"].update(dataset_id=501), "501 is also used by"),
    (lambda c: c["configurations"]["metastasis_only"].update(label_mapping={"background": [0], "metastasis": [2]}),
     "must use every label"),
    (lambda c: c["configurations"]["metastasis_only"].update(folds=[0, 1]), "need every fold"),
    (lambda c: c["configurations"].update(ensemble=c["configurations"].pop("metastasis_only")), "reserved"),
    (lambda c: c.setdefault("qc", {}).update(allow={"toy_001": ["label_values"]}),
     "qc.allow.toy_001.0: 'label_values' is not one of ['duplicate_image'"),
    (lambda c: c["refinement"]["rules"].append({"name": "bone", "kind": "drop_inside"}),
     "refinement.rules.3: 'structures' is a required property"),
    (lambda c: c["refinement"]["rules"].append({"name": "small", "kind": "drop_smaller_than"}),
     "refinement.rules.3: 'min_volume_mm3' is a required property"),
    (lambda c: c["dicom_results"].update(seg=False, sr=True), "dicom_results.sr: the measurement report references"),
])
def test_config_errors_name_the_key(toy_config, edit, expected):
    config = copy.deepcopy(toy_config)
    edit(config)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert expected in str(err.value)


def test_discover_cases_sets_misnamed_images_apart(tmp_path):
    (tmp_path / "case_1.nii.gz").touch()
    (tmp_path / "case 2.nii.gz").touch()
    cases, misnamed = discover_cases(tmp_path, r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    assert cases == ["case_1"] and misnamed == {"case 2": str(tmp_path / "case 2.nii.gz")}
    for path in tmp_path.iterdir():
        path.unlink()
    with pytest.raises(ConfigError, match=r"no '\*\.nii\.gz' images or DICOM series folders in"):
        discover_cases(tmp_path, r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def test_case_ids_stay_safe_whatever_the_pattern_admits(tmp_path):
    """data.case_pattern may be widened, but an id with characters that name no file or job safely (a space, a
    quote, brackets, '$', accents) is still set apart for QC, which proposes the rename."""
    from workflow_scripts.cases import safe_case_id

    folder = tmp_path / "données [1] $HOME 'x'"  # the folder itself may be named anything
    folder.mkdir()
    names = ["case_1", "CT.2024-01", "case 2", "pat'3", "scan[4]", "$HOME", "données", "x{y}"]
    for name in names:
        (folder / f"{name}.nii.gz").touch()
    cases, misnamed = discover_cases(folder, ".*")
    assert cases == ["CT.2024-01", "case_1"]
    assert sorted(misnamed) == sorted(names[2:])
    assert [safe_case_id(n) for n in names[2:]] == ["case_2", "pat_3", "scan_4", "HOME", "donnees", "x_y"]
    # the renames are ids that pass
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", safe_case_id(n)) for n in names)


def test_excluded_cases_leave_every_list_and_orphan_labels_are_found(toy_config, tmp_path):
    import shutil

    from workflow_scripts.cases import input_cases

    config = copy.deepcopy(toy_config)
    images = tmp_path / "imagesTr"
    shutil.copytree(config["data"]["images_tr"], images)
    (images / "toy_003.nii.gz").unlink()  # its label stays: a label without an image
    config["data"]["images_tr"] = str(images)
    config["qc"] = {"exclude": {"toy_001": "motion artefacts", "toy_101": "no contrast"},
                    "allow": {"toy_002": ["duplicate_image"]}}
    shutil.copyfile(images / "toy_004.nii.gz", images / "toy 4 copy.nii.gz")  # off the case pattern
    shutil.copyfile(images / "toy_004.nii.gz", images / "toy#5.nii.gz")
    config["qc"]["exclude"]["toy#5"] = "a test export"  # a misnamed image may be excluded by its name
    train, test, orphans, misnamed = input_cases(validate_config(config))
    assert train == ["toy_000", "toy_002", "toy_004", "toy_005"]
    assert test == ["toy_100"]
    assert orphans == {"toy_003": str(Path(config["data"]["labels_tr"]) / "toy_003.nii.gz")}
    assert misnamed == {"toy 4 copy": ["train", str(images / "toy 4 copy.nii.gz")]}
    config["qc"]["allow"]["toy 4 copy"] = ["duplicate_image"]
    with pytest.raises(ConfigError, match=r"qc.exclude / qc.allow name cases \['toy 4 copy'\] .* rename them"):
        input_cases(validate_config(config))
    config["qc"]["allow"].pop("toy 4 copy")
    config["qc"]["exclude"].pop("toy#5")
    config["qc"]["exclude"]["toy_999"] = "typo"
    with pytest.raises(ConfigError, match=r"qc.exclude / qc.allow name cases \['toy_999'\]"):
        input_cases(validate_config(config))
    config["qc"] = {"exclude": {"toy_100": "a", "toy_101": "b"}}
    with pytest.raises(ConfigError, match="no case left in .*: every image is in qc.exclude or named off"):
        input_cases(validate_config(config))


def test_config_readme_tables_are_the_schemas():
    """config/README.md's tables are generated from the schema (`python -m workflow_scripts config-readme`), and
    every key there has a description."""
    text = README.read_text()
    assert config_readme(text) == text, "run: python -m workflow_scripts config-readme"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 70
    assert not [row for row in rows if row.rstrip().endswith("|  |")]


def test_defaults_come_from_the_schema_only(toy_config):
    """A section left out, or given in part, is completed from the schema: refinement rules by kind, resources,
    splits, the metric conventions."""
    config = copy.deepcopy(toy_config)
    del config["splits"], config["compute"]["resources"]
    config["refinement"]["rules"] = [{"name": "bone", "kind": "drop_inside", "structures": ["sacrum"]},
                                     {"name": "body", "kind": "drop_outside_body"},
                                     {"name": "span", "kind": "keep_within_span", "structures": ["liver"]}]
    validated = validate_config(config)
    assert validated["splits"] == {"n_folds": 5, "seed": 0}
    assert rule_resources(validated, "train_fold") == {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": False}
    bone, body, span = validated["refinement"]["rules"]
    assert bone["min_fraction"] == 0.5 and "body_hu" not in bone and "margin_mm" not in bone
    assert body == {"name": "body", "kind": "drop_outside_body", "body_hu": -500.0, "min_fraction": 0.5}
    assert span["margin_mm"] == 0.0 and span["min_fraction"] == 0.5
    assert refinement_rules([{"name": "body", "kind": "drop_outside_body"}]) == [body]
    assert section_settings("qc", {"min_component_mm3": 30})["slice_thickness_mm"] == [0.5, 5.0]
    assert section_settings("data.dicom")["series"] == "most_slices"
    assert Conventions.from_settings({"hd_percentile": 90}).nsd_tolerances_mm == (1.0, 2.0)
    with pytest.raises(TypeError):
        Conventions()  # no defaults of its own
    with pytest.raises(ConfigError, match="qc.min_component_mm3: -1 is less than the minimum"):
        section_settings("qc", {"min_component_mm3": -1})


def test_qc_allow_accepts_exactly_the_checks_qc_calls_allowable():
    from workflow_scripts.config import _schema
    from workflow_scripts.qc import ALLOWABLE_CHECKS

    allow = _schema()["properties"]["qc"]["properties"]["allow"]["additionalProperties"]["items"]["enum"]
    assert tuple(allow) == ALLOWABLE_CHECKS
