"""The model bundle: what is packed, checksums that catch a damaged copy, and the config of a run with it."""
import json
from pathlib import Path

import pytest
import yaml

from bundle_fixture import export
from workflow_scripts.bundle import BundleError, predict_config, used_configurations, verify_files
from workflow_scripts.config import ConfigError, validate_config

pytestmark = pytest.mark.unit


def test_the_bundle_holds_the_chosen_ensembles_models_and_settings(study, tmp_path):
    manifest = export(study, tmp_path / "bundle")
    bundle = tmp_path / "bundle"
    assert used_configurations(json.loads(study["selection"].read_text())) == ["a", "c"]
    assert list(manifest["configurations"]) == ["a", "c"]  # b is not in the chosen ensemble: not packed
    assert manifest["configurations"]["c"] == {"folds": [0, 1], "channel_labels": [0, 2], "trainer": "nnUNetTrainer",
                                               "plans": "nnUNetPlans"}
    assert (bundle / "models/a/fold_1/checkpoint_final.pth").read_bytes() == b"a weights 1"
    assert not list(bundle.rglob("checkpoint_best.pth")) and not (bundle / "models/b").exists()
    assert json.loads((bundle / "ensemble.json").read_text())["members"] == {"a": 1.0}
    assert yaml.safe_load((bundle / "config.yaml").read_text())["labels"] == study["config"]["labels"]
    assert verify_files(bundle) == len(manifest["files"]) == 2 * (3 + 2) + 3
    assert not (tmp_path / "bundle.partial").exists()
    # A damaged or missing file is named, with the fix.
    (bundle / "models/c/fold_0/checkpoint_final.pth").write_bytes(b"c weights 0 but truncated")
    with pytest.raises(BundleError, match="models/c/fold_0/checkpoint_final.pth differs from the exported file"):
        verify_files(bundle, "models/c/")
    assert verify_files(bundle, "models/a/") == 5  # only the configuration at hand is read
    (bundle / "models/a/plans.json").unlink()
    with pytest.raises(BundleError, match="models/a/plans.json is missing; copy the whole bundle folder again"):
        verify_files(bundle, "models/a/")


def test_an_unfinished_fold_stops_the_export_and_leaves_no_bundle(study, tmp_path):
    fold_folder = Path(json.loads(study["summaries"]["c"][1].read_text())["output_folder"])
    (fold_folder / "checkpoint_final.pth").unlink()
    with pytest.raises(BundleError, match="c: no .*fold_1/checkpoint_final.pth; the fold's training did not finish"):
        export(study, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_run_with_a_bundle_takes_the_studys_config_and_this_runs_data(study, tmp_path, toy_dir):
    export(study, tmp_path / "bundle")
    run = {"bundle": str(tmp_path / "bundle"), "data": {"images_ts": str(toy_dir / "imagesTs")},
           "compute": {"device": "cpu"}}
    config = validate_config(predict_config(run))
    assert config["data"]["images_tr"] is None and config["data"]["images_ts"] == str(toy_dir / "imagesTs")
    assert config["configurations"] == study["config"]["configurations"]
    assert config["compute"]["resources"] == study["config"]["compute"]["resources"]  # laid over, not replaced
    with pytest.raises(ConfigError, match="labels: set by the bundle's study"):
        predict_config({**run, "labels": {"background": 0}})
    with pytest.raises(ConfigError, match="bundle: no config.yaml in"):
        predict_config({**run, "bundle": str(tmp_path)})
    with pytest.raises(ConfigError, match="data.images_tr: a run with a bundle segments new cases only"):
        validate_config({**predict_config(run), "data": {**config["data"], "images_tr": str(toy_dir / "imagesTr")}})
    with pytest.raises(ConfigError, match="data.images_tr: the folder of training cases is needed"):
        validate_config({**study["config"], "data": {**study["config"]["data"], "images_tr": None}})


