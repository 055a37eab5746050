"""Each verb's settings, one route: a rule builds them from the validated config (``verb_settings``), the verb reads
them back validated against the same schema (``read_settings``, through ``cli.add_settings``).

Settings are a partial config: the config paths a verb lists in ``VERB_SETTINGS``, shaped as in the config, every
key left out filled from the schema's defaults (the only place defaults come from). Files, case ids and the job's
resources (threads, a GPU) are flags, never settings. What a verb derives from its settings (the classes a stage
predicts, the ensemble candidates) is derived here, once.
"""
from __future__ import annotations

import copy
import math

from workflow_scripts.config import ConfigError, path_settings

# verb: the config paths it takes ("" is the whole config). Verbs that read configurations get those of the job.
VERB_SETTINGS = {
    "convert-dicom": ("data.dicom",),
    "dicom-results": ("labels", "data.dicom", "dicom_results", "model_card"),
    "qc-case": ("qc", "labels"),
    "qc-aggregate": ("qc", "labels", "data.case_pattern", "data.channel_suffix"),
    "qc-gate": ("qc",),
    "qc-anatomy": ("qc", "labels", "anatomy.task"),
    "qc-anatomy-report": ("qc",),
    "make-splits": ("splits", "labels"),
    "crop-case": ("crop", "anatomy.task"),
    "convert-dataset": ("configurations",),
    "plan-and-preprocess": ("configurations",),
    "preflight": ("configurations", "prediction", "compute", "anatomy.source", "anatomy.task", "anatomy.fast",
                  "anatomy.roi_subset", "preflight", "ensemble", "labels"),
    "preflight-gate": (),
    "train-fold": ("configurations", "prediction", "compute.device", "compute.augmentation_workers"),
    "plot-folds": (),
    "gather-oof": ("configurations", "prediction"),
    "predict": ("configurations", "prediction", "compute.device"),
    "place-predictions": (),
    "export-bundle": ("",),
    "score-ensembles": ("labels", "ensemble", "evaluation"),
    "select-ensemble": ("labels", "ensemble", "evaluation"),
    "ensemble-case": (),
    "segment-anatomy": ("anatomy",),
    "score-refinements": ("labels", "ensemble", "refinement", "anatomy.task", "evaluation"),
    "select-refinement": ("labels", "refinement", "anatomy.task", "evaluation"),
    "refine-case": ("anatomy.task",),
    "nested-ensembles": ("labels", "ensemble", "evaluation"),
    "nested-selection": ("labels", "refinement", "anatomy.task", "evaluation"),
    "nested-case": ("labels", "ensemble", "refinement", "anatomy.task", "evaluation"),
    "tumour-burden": ("labels", "anatomy.task"),
    "evaluate-stage": ("labels", "configurations", "evaluation"),
    "summarize-metrics": ("evaluation", "ensemble.selection.enabled", "refinement.apply"),
    "summarize-runtime": (),
    "overlay-case": ("labels",),
    "export-meshes": ("labels",),
    "overlay-worst": ("labels",),
}

def _get(tree: dict, path: str):
    """The value at a dotted path ("" the whole tree); None where it is not there."""
    if not path:
        return tree
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict, path: str, value) -> dict:
    if not path:
        return value
    *parents, last = path.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return tree


def verb_settings(config: dict, verb: str, configurations: list[str] | None = None) -> dict:
    """The settings of one job of ``verb`` from the validated config; ``configurations``: those the job reads (all
    of the config's when None)."""
    settings = {}
    for path in VERB_SETTINGS[verb]:
        value = copy.deepcopy(_get(config, path))
        if path == "configurations" and configurations is not None:
            value = {name: value[name] for name in configurations}
        settings = _set(settings, path, value)
    return settings


def read_settings(verb: str, given: dict) -> dict:
    """``given`` validated as ``verb``'s settings, with the schema's defaults filled; a key the verb does not take
    is refused (a rule and its verb disagree)."""
    paths = VERB_SETTINGS[verb]
    if "" not in paths:
        unknown = _unknown_paths(given, paths)
        if unknown:
            raise ConfigError(f"settings of {verb}: {unknown} are not among its settings {list(paths)}")
    settings = {}
    for path in paths:
        settings = _set(settings, path, path_settings(path, _get(given, path)))
    return settings


def _unknown_paths(given, paths, prefix: str = "") -> list[str]:
    if not isinstance(given, dict):
        return [prefix or "<settings>"]
    unknown = []
    for key, value in given.items():
        path = f"{prefix}{key}"
        if path in paths:
            continue
        if any(p.startswith(path + ".") for p in paths):
            unknown += _unknown_paths(value, paths, path + ".")
        else:
            unknown.append(path)
    return unknown


# What verbs derive from their settings.

def lesion_classes(settings: dict) -> dict[str, int]:
    """{name: label} of every class but the background."""
    return {name: value for name, value in settings["labels"].items() if value != 0}


def class_label_values(label_mapping: dict[str, list[int]]) -> list[int]:
    """The source label each output channel stands for: 0 for the first (background) class, else its one value."""
    values = []
    for index, (name, sources) in enumerate(label_mapping.items()):
        if index == 0:
            values.append(0)
        elif len(sources) == 1:
            values.append(int(sources[0]))
        else:
            raise ValueError(f"class '{name}' merges labels {sources}; only the background class may merge labels")
    return values


def channel_labels(settings: dict) -> dict[str, list[int]]:
    """{configuration: source label value of each output channel}."""
    return {name: class_label_values(c["label_mapping"]) for name, c in settings["configurations"].items()}


def stage_classes(settings: dict, stage: str) -> dict[str, int]:
    """Classes a stage predicts ({name: label}): a configuration only its own, an ensemble stage every lesion."""
    lesions = lesion_classes(settings)
    if stage in settings.get("configurations", {}):
        values = set(class_label_values(settings["configurations"][stage]["label_mapping"]))
        return {n: v for n, v in lesions.items() if v in values}
    return lesions


def only_configuration(settings: dict) -> tuple[str, dict]:
    """The one configuration a per-configuration job reads."""
    configurations = settings["configurations"]
    if len(configurations) != 1:
        raise ConfigError(f"settings: one configuration expected, got {sorted(configurations)}")
    return next(iter(configurations.items()))


def ensemble_configurations(config: dict) -> list[str]:
    """Configurations an ensemble may draw on: the full-label members and the fused partial models."""
    members = list(config["ensemble"]["members"])
    fused = [f["configuration"] for f in config["ensemble"]["fusions"]]
    return members + [c for c in dict.fromkeys(fused) if c not in members]


def ensemble_selection(settings: dict) -> dict:
    """What the ensemble selection reads: members, fusions into label values, whether to select, strategies,
    metric, classes and the evaluation conventions."""
    ensemble = settings["ensemble"]
    fusions = [{"configuration": f["configuration"], "into": settings["labels"][f["into"]], "strategy": f["strategy"]}
               for f in ensemble["fusions"]]
    return {"members": ensemble["members"], "fusions": fusions, "select": ensemble["selection"]["enabled"],
            "strategies": ensemble["selection"]["fusion_strategies"], "metric": ensemble["selection"]["metric"],
            "classes": lesion_classes(settings), "conventions": settings["evaluation"]}


def refinement_selection(settings: dict) -> dict:
    """What the refinement selection reads: rules, how they apply, metric, TotalSegmentator task, classes and the
    evaluation conventions."""
    refinement = settings["refinement"]
    return {"rules": refinement["rules"], "apply": refinement["apply"], "metric": refinement["metric"],
            "task": settings["anatomy"]["task"], "classes": lesion_classes(settings),
            "conventions": settings["evaluation"]}


def selection_biased_stages(settings: dict) -> list[str]:
    """Out-of-fold stages chosen on the very cases they are scored on: the ensemble when candidates are selected,
    and the refined stage after it or when rules are kept only if they improve the score."""
    ensemble = settings["ensemble"]["selection"]["enabled"]
    refined = ensemble or settings["refinement"]["apply"] == "if_improves"
    return [stage for stage, biased in (("ensemble", ensemble), ("refined", refined)) if biased]


def job_resources(config: dict, rule: str) -> dict:
    """Memory, runtime and a GPU (where the config asks for one) of a rule's jobs, from compute.resources."""
    r = rule_resources(config, rule)
    return {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "gpu": 1 if r["gpu"] else 0}


def attempt_resources(config: dict, rule: str, attempt: int) -> dict:
    """``job_resources`` of a rule's job at Snakemake's ``attempt`` (1 for the first run): memory and runtime
    times compute.retry_growth per earlier attempt, rounded up."""
    resources = job_resources(config, rule)
    factor = config["compute"]["retry_growth"] ** (attempt - 1)
    return {**resources, "mem_mb": math.ceil(resources["mem_mb"] * factor),
            "runtime": math.ceil(resources["runtime"] * factor)}


# Rules that run on another rule's resources: the preflight proves train_fold's node, so it asks for the same.
RESOURCES_LIKE = {"preflight_checks": "train_fold"}


def rule_resources(config: dict, rule: str) -> dict:
    """Threads, memory, runtime and GPU of a rule: its own entry of compute.resources over 'default'."""
    resources = config["compute"]["resources"]
    rule = RESOURCES_LIKE.get(rule, rule)
    return {**resources["default"], **resources.get(rule, {})}
