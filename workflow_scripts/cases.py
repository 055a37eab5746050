"""The cases of a study: the ids found in its image folders (NIfTI files and DICOM series folders), those QC must
report (named off the pattern, labels without an image), and what a case id may hold."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

from workflow_scripts.config import IMAGE_SUFFIX, ConfigError

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
                if not re.match(pattern, name) or not SAFE_CASE_ID.fullmatch(name)
                or (name in off_suffix and name not in series)}
    return sorted(set(entries) - set(misnamed)), misnamed


# What a case id may hold whatever data.case_pattern admits: it names files inside nnU-Net's datasets, Snakemake
# wildcards and table rows, and DICOM results; the folders around it may be named anything.
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def safe_case_id(name: str) -> str:
    """A rename of ``name`` that SAFE_CASE_ID admits: accents dropped, every other run of characters one ``_``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    renamed = re.sub(r"[^A-Za-z0-9_.-]+", "_", ascii_name).strip("_.-")
    return renamed or "case"


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
