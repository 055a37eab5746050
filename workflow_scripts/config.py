"""Configuration: schema validation, cross-checks, and the case lists derived from the input folders."""
from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import NamedTuple

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema" / "config.schema.yaml"
IMAGE_SUFFIX = ".nii.gz"

RESERVED_STAGES = ("ensemble", "refined")

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


def section_settings(section: str, given: dict | None = None) -> dict:
    """One config section (a dotted path, e.g. ``data.dicom``): ``given`` with every key it leaves out filled from
    the schema's defaults, validated; the only place defaults come from outside a workflow run."""
    schema = copy.deepcopy(_schema())
    subschema = schema
    for key in section.split("."):
        subschema = subschema["properties"][key]
    instance = copy.deepcopy(given) if given is not None else {}
    validator = _fill_defaults(jsonschema.Draft202012Validator)({"$defs": schema["$defs"], **subschema})
    errors = [f"{'.'.join([section, *map(str, e.absolute_path)])}: {e.message}" for e in validator.iter_errors(instance)]
    if errors:
        raise ConfigError("invalid settings (see config/README.md):\n  " + "\n  ".join(errors))
    return instance


README = SCHEMA.parent.parent / "README.md"
GENERATED = re.compile(r"(<!-- schema table: (?P<section>[\w.<>]+) -->\n)(.*?)(<!-- end of schema table -->)", re.S)


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _rows(schema: dict, prefix: str = "") -> list[str]:
    rows, required = [], schema.get("required", [])
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "description" in sub or "properties" not in sub:
            default = "required" if name in required else f"`{_flow(sub['default'])}`" if "default" in sub else "-"
            rows.append(f"| `{key}` | {default} | {sub.get('description', '')} |")
        if "properties" in sub:
            rows += _rows(sub, key + ".")
    return rows


def _kind_rows(rule: dict) -> list[str]:
    kinds = {kind: ([], []) for kind in rule["properties"]["kind"]["enum"]}
    for case in rule["allOf"]:
        condition = case["if"]["properties"]["kind"]
        for kind in condition.get("enum", [condition.get("const")]):
            kinds[kind][0].extend(case["then"].get("required", []))
            kinds[kind][1].extend(f"`{k}: {_flow(v['default'])}`" for k, v in case["then"].get("properties", {}).items())
    return [f"| `{kind}` | {', '.join(f'`{k}`' for k in needs) or '-'} | {', '.join(defaults) or '-'} |"
            for kind, (needs, defaults) in kinds.items()]


def schema_table(section: str) -> str:
    """config/README.md's table of one section, from the schema's descriptions and defaults. ``section``: a
    top-level key, ``configurations.<name>``, ``refinement.rules`` or ``refinement.rules.kind``."""
    schema = _schema()["properties"]
    if section == "configurations.<name>":
        node, prefix = schema["configurations"]["additionalProperties"], ""
    elif section.startswith("refinement.rules"):
        node, prefix = schema["refinement"]["properties"]["rules"]["items"], ""
        if section.endswith(".kind"):
            return "\n".join(["| kind | needs | defaults |", "| --- | --- | --- |", *_kind_rows(node)]) + "\n"
    else:
        node, prefix = schema[section], ""
    return "\n".join(["| key | default | meaning |", "| --- | --- | --- |", *_rows(node, prefix)]) + "\n"


def config_readme(text: str) -> str:
    """``text`` with every generated table replaced by the schema's."""
    return GENERATED.sub(lambda m: m.group(1) + schema_table(m.group("section")) + m.group(4), text)


def config_readme_entry(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m workflow_scripts config-readme",
                                description="Regenerate config/README.md's tables from the schema's descriptions.")
    p.add_argument("--check", action="store_true", help="only report whether the file is in sync")
    args = p.parse_args(argv)
    text = README.read_text()
    generated = config_readme(text)
    if args.check:
        raise SystemExit(0 if generated == text else f"{README} is out of sync with the schema; run "
                         "python -m workflow_scripts config-readme")
    README.write_text(generated)
    print(f"wrote {README}")


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


def discover_cases(folder: str | Path, pattern: str, channel_suffix: str = "") -> tuple[list[str], dict[str, str]]:
    """Case ids in ``folder``: ``<case><channel_suffix>.nii.gz`` files and ``<case>/`` DICOM series folders (hidden
    entries are skipped); and the entries whose name is off ``pattern`` or lacks the suffix ({name: path}), which
    QC reports as errors (no rule can use them). An id given both ways is an error."""
    folder = Path(folder)
    entries = {p.name[: -len(IMAGE_SUFFIX)]: str(p) for p in folder.glob(f"*{IMAGE_SUFFIX}")}
    if channel_suffix:
        entries = {name[: -len(channel_suffix)] if name.endswith(channel_suffix) else name: path
                   for name, path in entries.items()}
        off_suffix = {name for name, path in entries.items() if not Path(path).name.endswith(channel_suffix + IMAGE_SUFFIX)}
    else:
        off_suffix = set()
    series = dicom_folders(folder)
    both = sorted(set(entries) & set(series))
    if both:
        raise ConfigError(f"cases {both} in {folder} are given both as <case>{IMAGE_SUFFIX} and as a DICOM folder "
                          "<case>/; keep one")
    entries.update(series)
    if not entries:
        raise ConfigError(f"no '*{IMAGE_SUFFIX}' images or DICOM series folders in {folder}")
    misnamed = {name: path for name, path in sorted(entries.items())
                if not re.match(pattern, name) or (name in off_suffix and name not in series)}
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
        found[split], bad = discover_cases(data[key], data["case_pattern"], data["channel_suffix"])
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
    """Threads, memory, runtime and GPU of a rule: its own entry of compute.resources over 'default'."""
    resources = config["compute"]["resources"]
    return {**resources["default"], **resources.get(rule, {})}
