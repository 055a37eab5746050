"""A model bundle: what segmenting new cases needs from a trained study, in one folder another machine can use.

Layout::

    bundle.json                       manifest: configurations (folds, labels), files with SHA-256, versions
    config.yaml                       the study's validated configuration
    ensemble.json                     the ensemble chosen under cross-validation (results/ensemble/selected.json)
    refinement.json                   the refinement rules chosen (results/refinement/selected_rules.json)
    models/<configuration>/           nnU-Net's model folder: plans.json, dataset.json, dataset_fingerprint.json,
                                      fold_<k>/checkpoint_final.pth

Only the configurations the chosen ensemble uses are packed. The folder is written under a temporary name and
renamed when complete.
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
                  training_summaries: dict[str, list[Path]], channel_labels: dict[str, list[int]]) -> dict:
    """Pack the models of the configurations the chosen ensemble uses, the study's configuration and the chosen
    ensemble and refinement into ``out``; returns the manifest."""
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
            _place(checkpoint, partial / "models" / name / f"fold_{fold}" / CHECKPOINT)
        configurations[name] = {"folds": folds, "channel_labels": channel_labels[name],
                                "trainer": summaries[0]["trainer"], "plans": summaries[0]["plans"]}
    shutil.copyfile(selection_path, partial / "ensemble.json")
    shutil.copyfile(refinement_path, partial / "refinement.json")
    (partial / BUNDLE_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))  # label order matters
    files = {str(p.relative_to(partial)): sha256(p) for p in sorted(partial.rglob("*")) if p.is_file()}
    manifest = {"format": 1, "configurations": configurations, "files": files,
                "versions": {package: metadata.version(package) for package in ("nnunetv2", "torch")}}
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


def export_bundle_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("export-bundle", "Pack the chosen ensemble's models, plans, choices and the study's config.")
    cli.add_settings(p, "export-bundle")
    p.add_argument("--selection", required=True, help="the chosen ensemble (results/ensemble/selected.json)")
    p.add_argument("--refinement", required=True, help="the chosen rules (results/refinement/selected_rules.json)")
    p.add_argument("--training-summaries", type=cli.json_value, required=True,
                   help="JSON {configuration: [fold summary JSON]}")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    summaries = {name: [Path(s) for s in paths] for name, paths in args.training_summaries.items()}
    from workflow_scripts.settings import channel_labels

    manifest = export_bundle(Path(args.out), args.settings, Path(args.selection), Path(args.refinement), summaries,
                             channel_labels(args.settings))
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"bundle {args.out}: configurations {list(manifest['configurations'])}, {len(manifest['files'])} files, "
          f"{size / 1e6:.1f} MB")
