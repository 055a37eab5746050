"""Anatomy label maps from TotalSegmentator, computed once per case and reused by every stage."""
from __future__ import annotations

import json
import os
from pathlib import Path

from workflow_scripts.io import atomic_path


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


def segment_anatomy(image: Path, out: Path, home: Path, task: str = "total", fast: bool = True,
                    roi_subset: list[str] | None = None, device: str = "gpu", threads: int = 1) -> None:
    """One real ``totalsegmentator()`` call writing a multilabel map on the image grid."""
    prepare_totalseg_home(home)
    from totalsegmentator.python_api import totalsegmentator  # reads TOTALSEG_HOME_DIR on import

    with atomic_path(out) as tmp:
        totalsegmentator(str(image), str(tmp), ml=True, task=task, fast=fast, roi_subset=roi_subset,
                         device=device, nr_thr_resamp=threads, nr_thr_saving=threads, quiet=True)
