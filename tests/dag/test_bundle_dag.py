"""A run with the bundle of a cropped study, as Snakemake plans it."""
import json

import pytest
import yaml

from bundle_fixture import export, trained_configuration
from workflow_scripts.bundle import predict_config
from workflow_scripts.config import ConfigError, validate_config

pytestmark = pytest.mark.dag


def test_a_run_with_a_bundle_of_a_cropped_study_crops_new_cases_as_the_study_did(study, tmp_path, toy_dir):
    """The crop is the study's, stored in the bundle: the run cuts each new case to its anatomy box before the
    models and pastes their outputs back; a run may not set its own crop."""
    from workflow_helpers import PROFILES, snakemake

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
