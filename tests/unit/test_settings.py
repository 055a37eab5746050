"""Each verb's settings, one route: what a rule builds from the validated config, the verb reads back unchanged."""
import copy

import pytest

from workflow_scripts.__main__ import VERBS
from workflow_scripts.config import ConfigError, validate_config
from workflow_scripts.settings import (VERB_SETTINGS, ensemble_configurations, read_settings, stage_classes,
                                       verb_settings)

pytestmark = pytest.mark.unit

NOT_RULES = {"make-toy-data", "config-readme", "progress"}  # verbs a person runs, with flags of their own


def test_every_rule_verb_lists_its_settings():
    assert set(VERB_SETTINGS) == set(VERBS) - NOT_RULES


@pytest.mark.parametrize("verb", sorted(VERB_SETTINGS))
def test_what_a_rule_builds_its_verb_reads_back_unchanged(verb, toy_config):
    """The config is validated (defaults filled) before the rules build settings from it, so the verb's own
    validation adds nothing and changes nothing: a second source of defaults would show here."""
    config = validate_config(toy_config)
    for configurations in ([None] if "configurations" not in VERB_SETTINGS[verb] else
                           [None, ["metastasis_only"]]):
        built = verb_settings(config, verb, configurations)
        assert read_settings(verb, copy.deepcopy(built)) == built


METASTASIS_ONLY = {"m": {"dataset_id": 503, "planner": "ExperimentPlanner", "trainer": "nnUNetTrainer",
                         "label_mapping": {"background": [0, 1], "metastasis": [2]}, "folds": [0]}}


def test_a_partial_setting_is_filled_from_the_schema_and_a_wrong_one_is_named():
    filled = read_settings("train-fold", {"configurations": METASTASIS_ONLY, "compute": {"device": "cpu"}})
    assert filled["prediction"]["probability_encoding"] == "float16"  # the schema's default, from nowhere else
    assert filled["compute"] == {"device": "cpu", "augmentation_workers": 0}
    assert filled["configurations"]["m"]["training_seed"] == 0 and filled["configurations"]["m"]["plans_overrides"] == {}
    with pytest.raises(ConfigError, match="prediction.probability_encoding: 'int4' is not one of"):
        read_settings("gather-oof", {"configurations": METASTASIS_ONLY, "prediction": {"probability_encoding": "int4"}})
    with pytest.raises(ConfigError, match="compute.device: required, and it has no default"):
        read_settings("train-fold", {"configurations": METASTASIS_ONLY})
    with pytest.raises(ConfigError, match=r"settings of refine-case: \['anatomy.source'\] are not among"):
        read_settings("refine-case", {"anatomy": {"task": "total", "source": "precomputed"}})


def test_stage_classes_and_ensemble_configurations(toy_config):
    config = validate_config(toy_config)
    settings = verb_settings(config, "evaluate-stage")
    assert stage_classes(settings, "metastasis_only") == {"metastasis": 2}
    assert stage_classes(settings, "resenc_multiclass") == {"primary": 1, "metastasis": 2}
    assert stage_classes(settings, "refined") == stage_classes(settings, "oof_nested") == {"primary": 1,
                                                                                           "metastasis": 2}
    assert ensemble_configurations(config) == ["resenc_multiclass", "isotropic_multiclass", "metastasis_only"]


def test_a_retried_job_asks_for_more_memory_and_time(toy_config):
    from workflow_scripts.settings import attempt_resources

    config = validate_config(toy_config)
    assert config["compute"]["retry_growth"] == 1.5  # the schema's default
    train = {**config["compute"]["resources"]["default"], **config["compute"]["resources"]["train_fold"]}
    first, second, third = (attempt_resources(config, "train_fold", attempt) for attempt in (1, 2, 3))
    assert (first["mem_mb"], first["runtime"]) == (train["mem_mb"], train["runtime"]) == (4000, 30)
    assert (second["mem_mb"], second["runtime"]) == (6000, 45)
    assert (third["mem_mb"], third["runtime"]) == (9000, 68)  # 67.5 rounded up
    assert first["gpu"] == third["gpu"]
    config["compute"]["retry_growth"] = 1
    assert attempt_resources(config, "train_fold", 3)["mem_mb"] == 4000
