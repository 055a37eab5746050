"""Anatomy from TotalSegmentator: its class ids and the structures that rules name, the regions derived from an
anatomy map or a CT (body, cranio-caudal span), and the label maps, computed once per case and reused by every
stage."""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from workflow_scripts.io import atomic_path


def anatomy_class_ids(task: str) -> dict[str, int]:
    """TotalSegmentator's class names and ids for ``task`` (its package imported only when asked)."""
    from totalsegmentator.map_to_binary import class_map

    return {name: int(i) for i, name in class_map[task].items()}


def structure_ids(patterns: list[str], class_ids: dict[str, int]) -> list[int]:
    ids = sorted({i for name, i in class_ids.items() for p in patterns if fnmatch.fnmatchcase(name, p)})
    if not ids:
        raise ValueError(f"no anatomy class matches {patterns}; names are TotalSegmentator class names "
                         "such as 'liver', 'vertebrae_L3', 'hip_left'")
    return ids


def body_mask(image: np.ndarray, body_hu: float) -> np.ndarray:
    """The largest connected region above ``body_hu``, holes (bowel gas, lungs) filled slice by slice."""
    mask = image > body_hu
    components, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def cranio_caudal_axis(direction: tuple[float, ...] | None) -> int:
    """The numpy axis (z, y, x order) that runs closest to the patient's head-foot axis."""
    if direction is None:
        return 0
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: index axes x, y, z in physical space
    return 2 - int(np.argmax(np.abs(matrix[2])))


def span_region(anatomy: np.ndarray, ids: list[int], margin_mm: float, spacing_xyz, axis: int) -> np.ndarray:
    """Slices between the first and last slice holding any of ``ids``, widened by ``margin_mm``."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(np.isin(anatomy, ids).any(axis=other))
    region = np.zeros(anatomy.shape, dtype=bool)
    if present.size == 0:
        return region
    margin = int(np.ceil(margin_mm / spacing_xyz[2 - axis]))
    index = [slice(None)] * 3
    index[axis] = slice(max(0, present[0] - margin), present[-1] + margin + 1)
    region[tuple(index)] = True
    return region


def prepare_totalseg_home(home: Path) -> Path:
    """Use ``home`` for weights and settings, with usage statistics off; weights must already be there."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config_file = home / "config.json"
    settings = json.loads(config_file.read_text()) if config_file.exists() else {}
    if settings.get("send_usage_stats") is not False:
        settings["send_usage_stats"] = False
        with atomic_path(config_file) as tmp:
            tmp.write_text(json.dumps(settings, indent=2))
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    return home


def required_weights(home: Path, task: str, fast: bool, roi_subset: list[str] | None) -> list[Path]:
    """The weights folders TotalSegmentator will look for (it downloads any that is missing)."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.python_api import get_task_config

    task_ids = get_task_config(task, fast=fast, quiet=True)["task_id"]
    task_ids = list(task_ids) if isinstance(task_ids, list) else [task_ids]
    if roi_subset is not None:
        task_ids.append(298)  # the 6 mm model that crops to the region of interest first
    folders = []
    for task_id in task_ids:
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        folders.append(Path(home) / "nnunet" / "results" / info.get("rel_path", "") / info["foldername"])
    return folders


def check_weights(home: Path, task: str, fast: bool, roi_subset: list[str] | None) -> None:
    missing = [f for f in required_weights(home, task, fast, roi_subset) if not f.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"TotalSegmentator weights for task '{task}' (fast={fast}, roi_subset={roi_subset}) are not in "
            f"{home}: missing {', '.join(str(m) for m in missing)}. Compute nodes run offline: on a machine "
            f"with internet run `TOTALSEG_HOME_DIR={home} totalseg_download_weights -t {task}"
            f"{'_fast' if fast else ''}` (or copy that folder), or point config anatomy.totalseg_home at a "
            "folder that has them.")


def segment_anatomy(image: Path, out: Path, home: Path, task: str, fast: bool = True,
                    roi_subset: list[str] | None = None, device: str = "gpu", threads: int = 1) -> None:
    """One real ``totalsegmentator()`` call writing a multilabel map on the image grid."""
    home = prepare_totalseg_home(home)
    check_weights(home, task, fast, roi_subset)
    from totalsegmentator.python_api import totalsegmentator  # reads TOTALSEG_HOME_DIR on import

    with atomic_path(out) as tmp:
        totalsegmentator(str(image), str(tmp), ml=True, task=task, fast=fast, roi_subset=roi_subset,
                         device=device, nr_thr_resamp=threads, nr_thr_saving=threads, quiet=True)


def segment_anatomy_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("segment-anatomy", "TotalSegmentator's anatomy map of one image, offline.")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True)
    cli.add_settings(p, "segment-anatomy")
    p.add_argument("--device", required=True, choices=["gpu", "cpu"], help="gpu where the rule's resources ask "
                   "for one")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    settings = args.settings["anatomy"]
    if not settings.get("totalseg_home"):
        raise SystemExit("error: anatomy.totalseg_home: the folder holding TotalSegmentator's weights is needed")
    segment_anatomy(Path(args.image), Path(args.out), Path(settings["totalseg_home"]), settings["task"],
                    settings["fast"], settings["roi_subset"], args.device, args.threads)
