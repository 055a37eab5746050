"""The model bundle: what is packed, checksums that catch a damaged copy, and the config of a run with it."""
import json
from pathlib import Path

import pytest
import yaml

from workflow_scripts.bundle import BundleError, export_bundle, predict_config, used_configurations, verify_files
from workflow_scripts.config import ConfigError, validate_config


def trained_configuration(root, name, folds=(0, 1)):
    """A configuration's fold summaries and nnU-Net model folder as a study leaves them (small fake files)."""
    model = root / "nnUNet_results" / f"Dataset_{name}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    summaries = []
    for fold in folds:
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(f"{name} weights {fold}".encode())
        (model / f"fold_{fold}" / "checkpoint_best.pth").write_bytes(b"not packed")
        summary = root / f"{name}_fold_{fold}.json"
        summary.write_text(json.dumps({"output_folder": str(model / f"fold_{fold}"), "fold": fold,
                                       "trainer": "nnUNetTrainer", "plans": "nnUNetPlans"}))
        summaries.append(summary)
    for file in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (model / file).write_text(json.dumps({"name": name, "file": file}))
    return summaries


@pytest.fixture
def study(tmp_path, toy_config):
    summaries = {name: trained_configuration(tmp_path, name) for name in ("a", "b", "c")}
    selection = tmp_path / "selected.json"
    selection.write_text(json.dumps({"members": {"a": 1.0}, "fusions": [{"configuration": "c", "into": 2,
                                                                          "strategy": "mean"}]}))
    refinement = tmp_path / "selected_rules.json"
    refinement.write_text(json.dumps({"rules": []}))
    return {"summaries": summaries, "selection": selection, "refinement": refinement,
            "config": validate_config(toy_config), "channel_labels": {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 2]}}


def export(study, out):
    return export_bundle(out, study["config"], study["selection"], study["refinement"], study["summaries"],
                         study["channel_labels"])


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


@pytest.mark.dag
def test_a_run_with_a_bundle_of_a_cropped_study_crops_new_cases_as_the_study_did(study, tmp_path, toy_dir):
    """The crop is the study's, stored in the bundle: the run cuts each new case to its anatomy box before the
    models and pastes their outputs back; a run may not set its own crop."""
    from tests.test_workflow import PROFILES, snakemake

    crop = {"enabled": True, "structures": ["liver", "hip_left"], "margin_mm": 12.5}
    names = ("resenc_multiclass", "metastasis_only")  # the toy config's names, which the run's rules look up
    study["summaries"] = {name: trained_configuration(tmp_path / "study", name) for name in names}
    study["selection"].write_text(json.dumps({"members": {names[0]: 1.0}, "fusions": [
        {"configuration": names[1], "into": 2, "strategy": "mean"}]}))
    study["channel_labels"] = {names[0]: [0, 1, 2], names[1]: [0, 2]}
    study["config"] = validate_config({**study["config"], "crop": crop})
    export(study, tmp_path / "bundle")
    run = {"bundle": str(tmp_path / "bundle"), "data": {"images_ts": str(toy_dir / "imagesTs")},
           "anatomy": {"source": "precomputed", "precomputed_dir": str(toy_dir / "anatomy")},
           "compute": {"device": "cpu"}, "prediction": {"parts": 1}}
    assert validate_config(predict_config(run))["crop"] == study["config"]["crop"]
    with pytest.raises(ConfigError, match="crop: set by the bundle's study"):
        predict_config({**run, "crop": {"enabled": False}})
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "predict.yaml").write_text(yaml.safe_dump(run))
    result = snakemake(batch, "-n", "-p", "--profile", PROFILES["local"], "--configfile", batch / "predict.yaml")
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (toy_dir / "imagesTs").iterdir())
    assert result.stdout.count("rule crop_case:") == len(cases) == 2
    assert "train_fold" not in result.stdout and "convert_dataset" not in result.stdout
    settings = '"structures":["liver","hip_left"],"margin_mm":12.5'
    assert result.stdout.count(settings) == len(cases)  # each crop_case job gets the study's settings
    predict = result.stdout[result.stdout.index("rule predict_test:"):]
    predict = predict[: predict.index("\n\n")]
    assert ("--cropped-images " + " ".join(f"results/crop/{c}.nii.gz" for c in cases)) in predict
    assert ("--crop-boxes " + " ".join(f"results/crop/{c}.json" for c in cases)) in predict
