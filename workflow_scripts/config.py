"""Configuration: the schema, validation with its defaults filled, and the cross-checks between keys."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema" / "config.schema.yaml"
IMAGE_SUFFIX = ".nii.gz"

RESERVED_STAGES = ("ensemble", "refined")
BUNDLE_MANIFEST = "bundle.json"  # in an exported bundle (workflow_scripts/bundle.py)
BUNDLE_CONFIG = "config.yaml"


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


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
    schema = copy.deepcopy(_schema())
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


def path_settings(path: str, given=None):
    """The value at a config path (``""`` the whole config, ``"qc"``, ``"anatomy.task"``): ``given`` validated, every
    key it leaves out filled from the schema's defaults, and, when ``given`` is None, the path's own default (an
    object without one: its keys' defaults). The only place defaults come from outside a workflow run."""
    schema = copy.deepcopy(_schema())
    subschema = schema
    for key in filter(None, path.split(".")):
        subschema = subschema["properties"][key]
    missing = given is None and "default" not in subschema
    if missing and subschema.get("type") != "object":
        raise ConfigError(f"invalid settings (see config/README.md):\n  {path}: required, and it has no default")
    instance = copy.deepcopy(subschema.get("default", {}) if given is None else given)
    validator = _fill_defaults(jsonschema.Draft202012Validator)({"$defs": schema["$defs"], **subschema})
    errors = [f"{'.'.join(filter(None, [path, *map(str, e.absolute_path)])) or '<config>'}: {e.message}"
              for e in validator.iter_errors(instance)]
    if errors and missing:  # an object with keys of its own to give, such as labels
        errors = [f"{path}: required, and it has no default"]
    if errors:
        raise ConfigError("invalid settings (see config/README.md):\n  " + "\n  ".join(errors))
    return instance


def section_settings(section: str, given: dict | None = None) -> dict:
    """One config section (a dotted path, e.g. ``data.dicom``) with every key ``given`` leaves out filled from the
    schema's defaults, validated."""
    return path_settings(section, given if given is not None else {})


def refinement_rules(rules: list[dict]) -> list[dict]:
    """Refinement rules with the keys their kind leaves out filled from the schema (e.g. an older bundle's)."""
    return section_settings("refinement", {"rules": rules})["rules"]


def _resolve_nnunet_raw(data: dict, labels: dict, base: Path) -> list[str]:
    """Fill the image and label folders of an nnU-Net raw dataset folder; the problems found."""
    folder = data["nnunet_raw"]
    given = [key for key in ("images_tr", "labels_tr") if data.get(key)]
    if given:
        return [f"data.nnunet_raw: sets {given} itself; leave them out"]
    root = base / folder
    manifest = root / "dataset.json"
    if not manifest.is_file():
        return [f"data.nnunet_raw: no dataset.json in '{folder}' (an nnU-Net raw dataset folder holds imagesTr/, "
                "labelsTr/ and dataset.json)"]
    import json

    try:
        dataset = json.loads(manifest.read_text())
        given_labels = {str(k): int(v) for k, v in dataset["labels"].items()}
        dataset["channel_names"].items()
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        return [f"data.nnunet_raw: {manifest} is not an nnU-Net dataset.json with 'labels' and 'channel_names' "
                f"({type(err).__name__}: {str(err)[:80]}); rewrite it"]
    problems = []
    if given_labels != labels:
        problems.append(f"data.nnunet_raw: dataset.json's labels {dataset.get('labels')} differ from labels {labels}; "
                        "make them equal")
    if len(dataset.get("channel_names", {})) != 1:
        problems.append(f"data.nnunet_raw: dataset.json names channels {dataset.get('channel_names')}; this workflow "
                        "takes one CT channel")
    if dataset.get("file_ending", IMAGE_SUFFIX) != IMAGE_SUFFIX:
        problems.append(f"data.nnunet_raw: file_ending {dataset['file_ending']!r}; convert the files to {IMAGE_SUFFIX}")
    data.update(images_tr=f"{folder}/imagesTr", labels_tr=f"{folder}/labelsTr", channel_suffix="_0000")
    if not data.get("images_ts") and (root / "imagesTs").is_dir():
        data["images_ts"] = f"{folder}/imagesTs"
    return problems


def _cross_check(config: dict, base: Path) -> None:
    problems = []
    data = config["data"]
    if data["nnunet_raw"]:
        problems += _resolve_nnunet_raw(data, config["labels"], base)
    if not data.get("images_ts"):
        problems.append("data.images_ts: the folder of new cases to segment is needed")
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
    coded = sorted(set(config["dicom_results"]["segment_codes"]) - set(list(labels)[1:]))
    if coded:
        problems.append(f"dicom_results.segment_codes: {coded} are not lesion labels (labels other than the "
                        f"background: {list(labels)[1:]})")
    if config["dicom_results"]["sr"] and not config["dicom_results"]["seg"]:
        problems.append("dicom_results.sr: the measurement report references the Segmentation's segments; set "
                        "dicom_results.seg: true as well")
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
    names = [rule["name"] for rule in config["refinement"]["rules"]]
    if len(set(names)) != len(names):
        problems.append("refinement.rules: rule names must be unique")
    if len(names) > 8:
        problems.append(f"refinement.rules: at most 8 rules (every subset is scored on the out-of-fold cases), "
                        f"got {len(names)}")
    if problems:
        raise ConfigError("invalid configuration (see config/README.md):\n" + "\n".join(f"  {p}" for p in problems))
