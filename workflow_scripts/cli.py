"""What the verbs' command lines share. Each stage module owns its verbs (``<verb>_entry(argv)`` beside the
function it runs); ``python -m workflow_scripts <verb>`` dispatches to them.

One convention: files, case ids and the job's resources are flags; settings are one JSON value, ``--settings``,
the part of the config the verb reads (workflow_scripts/settings.py; keys left out take the schema's defaults).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workflow_scripts.config import IMAGE_SUFFIX, ConfigError


def parser(verb: str, description: str) -> argparse.ArgumentParser:
    # Rule logs are files: flush every line so progress is visible and a killed job loses nothing.
    sys.stdout.reconfigure(line_buffering=True)
    return argparse.ArgumentParser(prog=f"python -m workflow_scripts {verb}", description=description)


def json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text[:80]}")


def add_settings(p: argparse.ArgumentParser, verb: str) -> None:
    """``--settings``: the verb's settings as JSON, a partial config (workflow_scripts/settings.py); keys left out
    take the schema's defaults."""
    from workflow_scripts.settings import VERB_SETTINGS, read_settings

    def settings(text: str) -> dict:
        try:
            return read_settings(verb, json_value(text))
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err))

    paths = ", ".join(path or "the whole config" for path in VERB_SETTINGS[verb])
    p.add_argument("--settings", type=settings, default="{}",
                   help=f"JSON, the config's {paths} (keys left out: the schema's defaults)")


def add_nnunet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nnunet-root", required=True, help="folder of nnU-Net's raw, preprocessed and results folders")
    p.add_argument("--threads", type=int, default=1, help="worker pools and torch threads (the rule's threads)")


def add_tile_batch_divisor(p: argparse.ArgumentParser) -> None:
    """Not a setting: the rules pass 2^(attempt - 1), so that a job retried after running out of GPU memory
    predicts fewer tiles per network pass."""
    p.add_argument("--tile-batch-divisor", type=int, default=1,
                   help="tiles per network pass divided by this (the rules halve them on each retry)")


def configure_nnunet(args, augmentation_workers: int) -> None:
    """Before nnU-Net's first import in this process: its folders and pool sizes."""
    from workflow_scripts.nnunet_seam import configure_nnunet as configure

    configure(args.nnunet_root, args.threads, augmentation_workers)


def case_folder(paths: list[str], what: str) -> tuple[Path, list[str]]:
    """The folder and case ids of ``<folder>/<case>.nii.gz`` files that a rule declares; the functions read
    exactly these files. Files in several folders are a rule error."""
    folders = {str(Path(p).parent) for p in paths}
    if len(folders) != 1 or not all(p.endswith(IMAGE_SUFFIX) for p in paths):
        raise SystemExit(f"error: {what}: expected <case>{IMAGE_SUFFIX} files in one folder, got {paths[:3]}...")
    return Path(folders.pop()), [Path(p).name[: -len(IMAGE_SUFFIX)] for p in paths]


def one_case(files: dict[str, str]) -> str:
    """The case that ``{flag: <folder>/<case>.nii.gz}`` all name; files of different cases are a rule error."""
    cases = {flag: case_folder([path], flag)[1][0] for flag, path in files.items()}
    if len(set(cases.values())) != 1:
        raise SystemExit(f"error: the files name different cases: {cases}")
    return next(iter(cases.values()))


def case_paths(paths: list[str], cases: list[str]) -> dict[str, Path]:
    """{case: path} of files given in the order of ``cases``."""
    if len(paths) != len(cases):
        raise SystemExit(f"error: {len(paths)} files for {len(cases)} cases")
    return {case: Path(p) for case, p in zip(cases, paths)}


def stage_root(paths: list[str], what: str) -> Path:
    """The folder of ``<folder>/<stage>/<case>.<ext>`` files that a rule declares."""
    roots = {str(Path(p).parent.parent) for p in paths}
    if len(roots) != 1:
        raise SystemExit(f"error: {what}: expected <folder>/<stage>/<case> files under one folder, got {sorted(roots)}")
    return Path(roots.pop())


def probability_root(paths: list[str], cases: list[str]) -> Path:
    """The folder of ``<folder>/<configuration>/<case>.npz`` files that a rule declares; every case's file of
    each configuration must be among them."""
    root = stage_root(paths, "--probabilities")
    given = {str(Path(p)) for p in paths}
    configurations = sorted({Path(p).parent.name for p in paths})
    missing = [f"{c}/{case}.npz" for c in configurations for case in cases if str(root / c / f"{case}.npz") not in given]
    if missing:
        raise SystemExit(f"error: --probabilities lacks {missing[:3]}")
    return root
