"""nnU-Net reads its folders and pool sizes from the environment at import time: set them first, per process."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from pathlib import Path

FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
CONFIGURATION = "3d_fullres"


def configure_nnunet(root: str | Path, threads: int, augmentation_workers: int = 0) -> dict[str, Path]:
    """Point nnU-Net at ``root/<folder>`` and size its worker pools and torch threads to ``threads``.

    Must run before the first ``import nnunetv2`` of the process; a second call with other folders fails
    instead of silently using the folders nnU-Net already captured.
    """
    root = Path(root).resolve()
    folders = {name: root / name for name in FOLDERS}
    wanted = {name: str(path) for name, path in folders.items()}
    wanted.update(nnUNet_def_n_proc=str(max(1, threads)), nnUNet_n_proc_DA=str(max(0, augmentation_workers)),
                  nnUNet_compile="f")
    if "nnunetv2.paths" in sys.modules:
        clash = {k: os.environ.get(k) for k in wanted if os.environ.get(k) != wanted[k]}
        if clash:
            raise RuntimeError(f"nnU-Net was already imported with other settings {clash}; "
                               "run each nnU-Net step in its own process")
    os.environ.update(wanted)
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(max(1, threads))
    return folders


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def resolve_device(device: str):
    """'auto' takes a GPU when one is visible; 'cuda' without one is an error naming the fix."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config compute.device is 'cuda' but no GPU is visible; set it to 'cpu' or 'auto'")
    return torch.device(device)


class _ThreadPoolContext:
    """What ``multiprocessing.get_context("spawn")`` gives nnU-Net, with threads for processes."""

    @staticmethod
    def Pool(processes=None, *args, **kwargs):  # noqa: N802 (multiprocessing's name)
        from multiprocessing.pool import ThreadPool

        return ThreadPool(processes)


@contextlib.contextmanager
def pools_as_threads(modules: list[str], enabled: bool = True):
    """While inside, the worker pools that the named nnU-Net modules open with
    ``multiprocessing.get_context("spawn").Pool(n)`` are thread pools of n threads. A spawned worker imports torch
    and nnU-Net again (4-5 s here) before any work; with one worker (a rule with one thread) a thread does the same
    work without that start. ``enabled=False`` leaves nnU-Net's processes."""
    if not enabled:
        yield
        return
    targets = [importlib.import_module(name) for name in modules]
    originals = [module.multiprocessing for module in targets]
    threads = types.SimpleNamespace(get_context=lambda method=None: _ThreadPoolContext)
    for module in targets:
        module.multiprocessing = threads
    try:
        yield
    finally:
        for module, original in zip(targets, originals):
            module.multiprocessing = original
