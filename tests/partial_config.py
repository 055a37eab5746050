"""The verbs' ``--settings`` in tests: the partial config whose derived selection settings are those the tests
hand the selection functions directly, so one test drives both and compares them."""
import json

from workflow_scripts.settings import verb_settings


def selection_config(ensemble: dict | None = None, refinement: dict | None = None) -> dict:
    """The config sections that give ``ensemble`` (as ``settings.ensemble_selection`` derives it) and
    ``refinement`` (as ``settings.refinement_selection`` does)."""
    source = ensemble or refinement
    labels = {"background": 0, **source["classes"]}
    config = {"labels": labels, "evaluation": source["conventions"]}
    if ensemble:
        names = {value: name for name, value in labels.items()}
        config["ensemble"] = {
            "members": ensemble["members"],
            "fusions": [{**f, "into": names[f["into"]]} for f in ensemble["fusions"]],
            "selection": {"enabled": ensemble["select"], "fusion_strategies": ensemble["strategies"],
                          "metric": ensemble["metric"]}}
    if refinement:
        config["refinement"] = {key: refinement[key] for key in ("rules", "apply", "metric")}
        config["anatomy"] = {"task": refinement["task"]}
    return config


def settings_arg(config: dict, verb: str) -> str:
    """``verb``'s --settings value, built as the rules build it."""
    return json.dumps(verb_settings(config, verb))
