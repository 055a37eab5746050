"""A model bundle: what segmenting new cases needs from a trained study, in one folder another machine can use.

Layout::

    bundle.json                       manifest: configurations (folds, labels), files with SHA-256, versions
    config.yaml                       the study's validated configuration
    MODEL_CARD.md                     the model card: intended use, labels, training data, choices, cross-validation
                                      results, versions, licences (its fields also in bundle.json)
    ensemble.json                     the ensemble chosen under cross-validation (results/ensemble/selected.json)
    refinement.json                   the refinement rules chosen (results/refinement/selected_rules.json)
    models/<configuration>/           nnU-Net's model folder: plans.json, dataset.json, dataset_fingerprint.json,
                                      fold_<k>/weights.safetensors and fold_<k>/checkpoint.json

Only the configurations the chosen ensemble uses are packed. The folder is written under a temporary name and
renamed when complete. A bundle runs no code of its own: its checkpoints are tensors (safetensors) and JSON, not
nnU-Net's pickled .pth files, and segmenting with it checks that before loading anything (``check_runs_no_code``).
"""
from __future__ import annotations

import copy
import hashlib
import shutil
from importlib import metadata
from pathlib import Path

import yaml

from workflow_scripts.config import BUNDLE_CONFIG, BUNDLE_MANIFEST, ConfigError
from workflow_scripts.io import read_json, write_json
from workflow_scripts.nnunet_seam import TENSOR_WEIGHTS, plans_imports, write_tensor_checkpoint

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


MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
CHECKPOINT = "checkpoint_final.pth"
FORMAT = 2  # 1: nnU-Net's pickled checkpoints; 2: tensors only
MODEL_CARD = "MODEL_CARD.md"
PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".bin")  # torch and pickle files


class BundleError(RuntimeError):
    """A bundle that is incomplete or damaged; the message names the file and the fix."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def used_configurations(selection: dict) -> list[str]:
    """Configurations an ensemble selection reads: its members, then its fused partial models."""
    fused = [f["configuration"] for f in selection["fusions"]]
    return list(selection["members"]) + [c for c in fused if c not in selection["members"]]


def _place(source: Path, target: Path) -> None:
    """A copy (not a link: a later training would overwrite a linked checkpoint in place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def export_bundle(out: Path, config: dict, selection_path: Path, refinement_path: Path,
                  training_summaries: dict[str, list[Path]], channel_labels: dict[str, list[int]],
                  evidence: dict) -> dict:
    """Pack the models of the configurations the chosen ensemble uses, the study's configuration, the chosen
    ensemble and refinement and the model card into ``out``; returns the manifest. ``evidence``: what the card
    reports of the study: ``measurements`` (QC's per case), ``passing`` (QC's passing cases), ``dicom_findings``
    (the DICOM conversions') and ``summary`` (the metrics summary table)."""
    from workflow_scripts.model_card import card_markdown, cross_validation, model_card, training_data

    out = Path(out)
    selection = read_json(selection_path)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    configurations = {}
    for name in used_configurations(selection):
        summaries = [read_json(p) for p in training_summaries[name]]
        model_folder = Path(summaries[0]["output_folder"]).parent
        for file in MODEL_FILES:
            _place(model_folder / file, partial / "models" / name / file)
        folds = sorted(s["fold"] for s in summaries)
        for fold in folds:
            checkpoint = model_folder / f"fold_{fold}" / CHECKPOINT
            if not checkpoint.is_file():
                raise BundleError(f"{name}: no {checkpoint}; the fold's training did not finish")
            write_tensor_checkpoint(checkpoint, partial / "models" / name / f"fold_{fold}")
        configurations[name] = {"folds": folds, "channel_labels": channel_labels[name],
                                "trainer": summaries[0]["trainer"], "plans": summaries[0]["plans"]}
    shutil.copyfile(selection_path, partial / "ensemble.json")
    shutil.copyfile(refinement_path, partial / "refinement.json")
    (partial / BUNDLE_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))  # label order matters
    card = model_card(config, selection, read_json(refinement_path), configurations,
                      training_data(evidence["measurements"], evidence["passing"], evidence["dicom_findings"]),
                      cross_validation(evidence["summary"]))
    (partial / MODEL_CARD).write_text(card_markdown(card))
    files = {str(p.relative_to(partial)): sha256(p) for p in sorted(partial.rglob("*")) if p.is_file()}
    manifest = {"format": FORMAT, "configurations": configurations, "files": files,
                "versions": {package: metadata.version(package) for package in ("nnunetv2", "torch")},
                "model_card": card}
    write_json(manifest, partial / BUNDLE_MANIFEST)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


def verify_files(bundle: Path, prefix: str = "") -> int:
    """Check the SHA-256 of the bundle's files (those under ``prefix``); returns how many were checked."""
    bundle = Path(bundle)
    manifest = read_json(bundle / BUNDLE_MANIFEST)
    checked = 0
    for relative, expected in manifest["files"].items():
        if not relative.startswith(prefix):
            continue
        path = bundle / relative
        if not path.is_file():
            raise BundleError(f"bundle {bundle}: {relative} is missing; copy the whole bundle folder again")
        if sha256(path) != expected:
            raise BundleError(f"bundle {bundle}: {relative} differs from the exported file (checksum); copy the "
                              "whole bundle folder again")
        checked += 1
    return checked


def check_runs_no_code(bundle: Path, configurations: list[str]) -> None:
    """Refuse a bundle whose loading could run code from it, before anything of it is loaded: another format
    (format 1 held pickled checkpoints), a file that would be unpickled, weights that are not safetensors, or plans
    that make nnU-Net import something other than its network classes and torch.nn's layers."""
    bundle = Path(bundle)
    manifest = read_json(bundle / BUNDLE_MANIFEST)
    again = ("export it again from its study with this version (`snakemake export_bundle --configfile <the study's "
             "config>`)")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {bundle} is in format {manifest.get('format')}, whose checkpoints are pickles "
                          f"that can run code when loaded; it is refused: {again}")
    for name in configurations:
        folder = bundle / "models" / name
        pickles = sorted(str(p.relative_to(bundle)) for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise BundleError(f"bundle {bundle}: {pickles[0]} would be unpickled, which can run code; a bundle holds "
                              f"tensors only: remove it, or {again}")
        for weights in sorted(folder.glob(f"fold_*/{TENSOR_WEIGHTS}")):
            if not _is_safetensors(weights):
                raise BundleError(f"bundle {bundle}: {weights.relative_to(bundle)} is not a safetensors file; {again}")
        refused = plans_imports(read_json(folder / "plans.json"))
        if refused:
            raise BundleError(f"bundle {bundle}: models/{name}/plans.json names {refused} for nnU-Net to import and "
                              f"call; a bundle's plans may name only torch modules of nnU-Net's architectures and "
                              f"torch.nn: {again}")


def _is_safetensors(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except Exception:  # safetensors raises its own error type for a damaged or foreign header
        return False
    return True


def export_bundle_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("export-bundle", "Pack the chosen ensemble's models, plans, choices and the study's config.")
    cli.add_settings(p, "export-bundle")
    p.add_argument("--selection", required=True, help="the chosen ensemble (results/ensemble/selected.json)")
    p.add_argument("--refinement", required=True, help="the chosen rules (results/refinement/selected_rules.json)")
    p.add_argument("--training-summaries", type=cli.json_value, required=True,
                   help="JSON {configuration: [fold summary JSON]}")
    p.add_argument("--qc-measurements", nargs="+", required=True, help="QC's <case>.json of the training cases")
    p.add_argument("--passing-cases", required=True, help="QC's passing_cases.json")
    p.add_argument("--dicom-findings", nargs="*", default=[], help="the DICOM conversions' <case>.json")
    p.add_argument("--metrics-summary", required=True, help="results/metrics/summary.tsv")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    summaries = {name: [Path(s) for s in paths] for name, paths in args.training_summaries.items()}
    import pandas as pd

    from workflow_scripts.settings import channel_labels

    evidence = {"measurements": [read_json(p) for p in args.qc_measurements],
                "passing": read_json(args.passing_cases),
                "dicom_findings": [read_json(p) for p in args.dicom_findings],
                "summary": pd.read_csv(args.metrics_summary, sep="\t")}
    manifest = export_bundle(Path(args.out), args.settings, Path(args.selection), Path(args.refinement), summaries,
                             channel_labels(args.settings), evidence)
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"bundle {args.out}: configurations {list(manifest['configurations'])}, {len(manifest['files'])} files, "
          f"{size / 1e6:.1f} MB")
