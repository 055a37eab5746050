"""Configuration: schema validation, cross-checks, and the case lists derived from the input folders."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import NamedTuple

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema" / "config.schema.yaml"
IMAGE_SUFFIX = ".nii.gz"

RESERVED_STAGES = ("ensemble", "refined")
DEFAULT_RESOURCES = {
    "default": {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": False},
}


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict, base: str | Path = ".") -> dict:
    """Return a validated copy of ``config`` with defaults filled; raise ``ConfigError`` with one message.

    ``base`` is the folder relative input paths are resolved against (the working directory of the run).
    """
    config = copy.deepcopy(config)
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
            message = error.message
            if error.validator == "additionalProperties":
                message = f"unknown key: {message}"
            lines.append(f"  {key}: {message}")
        raise ConfigError("invalid configuration (see config/README.md):\n" + "\n".join(lines))
    _cross_check(config, Path(base))
    return config


def section_defaults(section: str) -> dict:
    """The schema's defaults of one optional config section (for callers outside a workflow run)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    instance = {}
    validator = _fill_defaults(jsonschema.Draft202012Validator)({"$defs": schema["$defs"],
                                                                 **schema["properties"][section]})
    for error in validator.iter_errors(instance):
        raise ConfigError(f"{section}: {error.message}")
    return instance


def _cross_check(config: dict, base: Path) -> None:
    problems = []
    data = config["data"]
    for key in ("images_tr", "labels_tr"):
        if config["bundle"] and data[key]:
            problems.append(f"data.{key}: a run with a bundle segments new cases only; leave {key} out")
        elif not config["bundle"] and not data[key]:
            problems.append(f"data.{key}: the folder of training cases is needed (or give a bundle to segment new "
                            "cases with)")
    if config["bundle"] and not (base / config["bundle"] / BUNDLE_MANIFEST).is_file():
        problems.append(f"bundle: no {BUNDLE_MANIFEST} in '{config['bundle']}'; export one with "
                        "`snakemake export_bundle --configfile <the study's config>`")
    for key in ("images_tr", "labels_tr", "images_ts", "labels_ts"):
        if data.get(key) and not (base / data[key]).is_dir():
            problems.append(f"data.{key}: folder '{data[key]}' does not exist")
    if data.get("patients") and not (base / data["patients"]).is_file():
        problems.append(f"data.patients: file '{data['patients']}' does not exist")
    labels = config["labels"]
    if sorted(labels.values())[0] != 0 or list(labels.values())[0] != 0:
        problems.append("labels: the first label must be the background with value 0")
    reserved = sorted(set(config["configurations"]) & set(RESERVED_STAGES))
    if reserved:
        problems.append(f"configurations: the names {reserved} are reserved for ensemble stages; rename them")
    n_folds = config["splits"]["n_folds"]
    ids = {}
    for name, conf in config["configurations"].items():
        sources = [v for values in conf["label_mapping"].values() for v in values]
        if sorted(sources) != sorted(labels.values()):
            problems.append(f"configurations.{name}.label_mapping: must use every label {sorted(labels.values())} "
                            f"exactly once, got {sorted(sources)}")
        if sorted(conf["folds"]) != list(range(n_folds)):
            problems.append(f"configurations.{name}.folds: cross-validation stages need every fold "
                            f"{list(range(n_folds))} (splits.n_folds)")
        if conf["dataset_id"] in ids:
            problems.append(f"configurations.{name}.dataset_id: {conf['dataset_id']} is also used by "
                            f"{ids[conf['dataset_id']]}")
        ids[conf["dataset_id"]] = name
    ensemble = config["ensemble"]
    for member in ensemble["members"]:
        if member not in config["configurations"]:
            problems.append(f"ensemble.members: '{member}' is not a configuration")
        elif list(config["configurations"][member]["label_mapping"]) != list(labels):
            problems.append(f"ensemble.members: '{member}' does not predict every label; fuse it instead")
    for fusion in ensemble["fusions"]:
        if fusion["configuration"] not in config["configurations"]:
            problems.append(f"ensemble.fusions: '{fusion['configuration']}' is not a configuration")
        elif fusion["into"] not in config["configurations"][fusion["configuration"]]["label_mapping"]:
            problems.append(f"ensemble.fusions: '{fusion['configuration']}' has no class '{fusion['into']}'")
        if fusion["into"] not in labels:
            problems.append(f"ensemble.fusions: '{fusion['into']}' is not in labels")
    anatomy = config["anatomy"]
    if anatomy["source"] == "precomputed":
        folder = anatomy.get("precomputed_dir")
        if not folder or not (base / folder).is_dir():
            problems.append(f"anatomy.precomputed_dir: folder '{folder}' does not exist (needed by "
                            "anatomy.source: precomputed)")
    elif not anatomy.get("totalseg_home"):
        problems.append("anatomy.totalseg_home: needed by anatomy.source: totalsegmentator (the folder holding "
                        "TotalSegmentator's weights; runs are offline)")
    for rule in config["refinement"]["rules"]:
        needed = {"drop_inside": ["structures"], "keep_within_span": ["structures"],
                  "drop_smaller_than": ["min_volume_mm3"]}.get(rule["kind"], [])
        for key in needed:
            if key not in rule:
                problems.append(f"refinement.rules.{rule['name']}: kind {rule['kind']} needs '{key}'")
    names = [rule["name"] for rule in config["refinement"]["rules"]]
    if len(set(names)) != len(names):
        problems.append("refinement.rules: rule names must be unique")
    if len(names) > 8:
        problems.append(f"refinement.rules: at most 8 rules (every subset is scored on the out-of-fold cases), "
                        f"got {len(names)}")
    if problems:
        raise ConfigError("invalid configuration (see config/README.md):\n" + "\n".join(f"  {p}" for p in problems))


BUNDLE_MANIFEST = "bundle.json"
BUNDLE_CONFIG = "config.yaml"
# What a run with a bundle may set; everything else (labels, configurations, ensemble, refinement) is the study's.
PREDICT_KEYS = {"bundle", "data", "qc", "compute", "prediction", "anatomy", "evaluation"}


def _merged(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged


def predict_config(config: dict, base: str | Path = ".") -> dict:
    """A run with a bundle: the study's configuration stored in the bundle, with this run's data (new cases
    only) and any qc, compute, prediction, anatomy or evaluation settings laid over it."""
    unknown = sorted(set(config) - PREDICT_KEYS)
    if unknown:
        raise ConfigError(f"invalid configuration (see config/README.md):\n  {', '.join(unknown)}: set by the "
                          f"bundle's study; a run with a bundle may set only {sorted(PREDICT_KEYS)}")
    stored = Path(base) / config["bundle"] / BUNDLE_CONFIG
    if not stored.is_file():
        raise ConfigError(f"invalid configuration (see config/README.md):\n  bundle: no {BUNDLE_CONFIG} in "
                          f"'{config['bundle']}'; export one with `snakemake export_bundle --configfile <the "
                          "study's config>`")
    study = yaml.safe_load(stored.read_text())
    study.pop("bundle", None)
    study["data"] = {"images_tr": None, "labels_tr": None, "labels_ts": None}
    return _merged(study, config)


def load_config(path: str | Path, base: str | Path = ".") -> dict:
    return validate_config(yaml.safe_load(Path(path).read_text()), base)


def discover_cases(folder: str | Path, pattern: str) -> tuple[list[str], dict[str, str]]:
    """Case ids in ``folder``: ``<case>.nii.gz`` files and ``<case>/`` DICOM series folders (hidden entries are
    skipped); and the entries whose name is off ``pattern`` ({name: path}), which QC reports as errors (no rule
    can use them). An id given both ways is an error."""
    folder = Path(folder)
    entries = {p.name[: -len(IMAGE_SUFFIX)]: str(p) for p in folder.glob(f"*{IMAGE_SUFFIX}")}
    series = dicom_folders(folder)
    both = sorted(set(entries) & set(series))
    if both:
        raise ConfigError(f"cases {both} in {folder} are given both as <case>{IMAGE_SUFFIX} and as a DICOM folder "
                          "<case>/; keep one")
    entries.update(series)
    if not entries:
        raise ConfigError(f"no '*{IMAGE_SUFFIX}' images or DICOM series folders in {folder}")
    misnamed = {name: path for name, path in sorted(entries.items()) if not re.match(pattern, name)}
    return sorted(set(entries) - set(misnamed)), misnamed


def dicom_folders(folder: str | Path) -> dict[str, str]:
    """{case: folder} of the DICOM series folders among a folder's entries."""
    return {p.name: str(p) for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")}


class InputCases(NamedTuple):
    train: list[str]                  # training case ids, without the ones in qc.exclude
    test: list[str]                   # new case ids, without the ones in qc.exclude
    orphan_labels: dict[str, str]     # {case: label path} of labels without an image
    misnamed: dict[str, list[str]]    # {name: [split, path]} of images whose name is off data.case_pattern


def input_cases(config: dict) -> InputCases:
    """The cases of the image folders; the labels without an image and the misnamed images, which QC reports."""
    data, qc = config["data"], config["qc"]
    found, misnamed = {"train": []}, {}
    for split, key in (("train", "images_tr"), ("test", "images_ts")):
        if not data[key]:  # a run with a bundle: new cases only
            continue
        found[split], bad = discover_cases(data[key], data["case_pattern"])
        misnamed.update({name: [split, path] for name, path in bad.items()})
    known = set(found["train"]) | set(found["test"])
    unknown = sorted((set(qc["exclude"]) - known - set(misnamed)) | (set(qc["allow"]) - known))
    named_off = set(misnamed)
    misnamed = {name: entry for name, entry in misnamed.items() if name not in qc["exclude"]}
    if unknown:
        raise ConfigError(f"qc.exclude / qc.allow name cases {unknown} that are in neither {data['images_tr']} nor "
                          f"{data['images_ts']} (or, for qc.allow, off data.case_pattern: rename them); fix the ids")
    kept = {split: [c for c in cases if c not in qc["exclude"]] for split, cases in found.items()}
    for split, key in (("train", "images_tr"), ("test", "images_ts")):
        if data[key] and not kept[split]:
            raise ConfigError(f"no case left in {data[key]}: every image is in qc.exclude or named off "
                              f"data.case_pattern '{data['case_pattern']}'")
    orphans = {}
    for split, key in (("train", "labels_tr"), ("test", "labels_ts")):
        if data.get(key):
            for path in sorted(Path(data[key]).glob(f"*{IMAGE_SUFFIX}")):
                case = path.name[: -len(IMAGE_SUFFIX)]
                if case not in found[split] and case not in named_off:
                    orphans[case] = str(path)
    return InputCases(kept["train"], kept["test"], orphans, misnamed)


def rule_resources(config: dict, rule: str) -> dict:
    """Threads, memory, runtime and GPU of a rule: its own entry over 'default' over built-in defaults."""
    resources = dict(DEFAULT_RESOURCES["default"])
    configured = config["compute"].get("resources", {})
    resources.update(configured.get("default", {}))
    resources.update(configured.get(rule, {}))
    return resources
