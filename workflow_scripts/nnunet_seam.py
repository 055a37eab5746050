"""The one seam to nnU-Net: its environment, and every use of its internals (names outside its command lines and
documented API), each checked against the nnunetv2 versions it was written for.

nnU-Net reads its folders and pool sizes from the environment at import time: :func:`configure_nnunet` sets them
first, per process. The rest subclasses or patches nnU-Net objects; ``tests/test_prediction.py`` and
``tests/test_training.py`` compare each against nnU-Net's own code, so a new nnunetv2 release is checked there
before :data:`SUPPORTED_NNUNET` is widened.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import types
from importlib import metadata
from pathlib import Path

from workflow_scripts.io import atomic_path

# nnunetv2 versions whose internals this module was written and tested against: [lowest, first unsupported).
SUPPORTED_NNUNET = ("2.8.0", "2.9.0")

FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
CONFIGURATION = "3d_fullres"


def configure_nnunet(root: str | Path, threads: int, augmentation_workers: int = 0,
                     results: str | Path | None = None) -> dict[str, Path]:
    """Point nnU-Net at ``root/<folder>`` and size its worker pools and torch threads to ``threads``;
    ``results``: another folder for ``nnUNet_results`` (the preflight's trainings, kept apart from the study's).

    Must run before the first ``import nnunetv2`` of the process; a second call with other folders fails
    instead of silently using the folders nnU-Net already captured.
    """
    require_supported_nnunet()
    root = Path(root).resolve()
    folders = {name: root / name for name in FOLDERS}
    if results is not None:
        folders["nnUNet_results"] = Path(results).resolve()
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
    require_supported_nnunet()
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


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())


@functools.cache
def require_supported_nnunet() -> str:
    """The installed nnunetv2 version; an error naming it and the fix where this seam was not written for it."""
    installed = metadata.version("nnunetv2")
    low, high = SUPPORTED_NNUNET
    if not _version_key(low) <= _version_key(installed) < _version_key(high):
        raise RuntimeError(
            f"nnunetv2 {installed} is installed, but workflow_scripts/nnunet_seam.py uses nnU-Net internals checked "
            f"against {low} <= nnunetv2 < {high}: install the pinned version (pip install -r requirements.txt), or "
            "port the seam and run its tests (tests/test_prediction.py, tests/test_training.py) before widening "
            "SUPPORTED_NNUNET")
    return installed


# Modules whose work nnU-Net sends to spawned pools: validation (export, scoring) and planning (dataset check,
# fingerprint, preprocessing).
VALIDATION_POOL_MODULES = ["nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnunetv2.evaluation.evaluate_predictions"]
PLANNING_POOL_MODULES = ["nnunetv2.experiment_planning.verify_dataset_integrity",
                         "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
                         "nnunetv2.preprocessing.preprocessors.default_preprocessor"]


@contextlib.contextmanager
def in_process_validation_pools():
    """nnU-Net's validation exports its cases and then scores them in two spawned worker pools: 7 s of a toy
    fold's 42 s. Where nnU-Net is sized to one process (``nnUNet_def_n_proc=1``, a rule with one thread) both run
    as one thread instead (:func:`pools_as_threads`); larger pools stay nnU-Net's processes."""
    from nnunetv2.configuration import default_num_processes

    with pools_as_threads(VALIDATION_POOL_MODULES, enabled=default_num_processes == 1):
        yield


def find_trainer_class(name: str):
    """nnU-Net's own lookup by class name (imports every trainer module, timm and torchvision included)."""
    require_supported_nnunet()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


def find_planner_class(name: str):
    """nnU-Net's experiment planner class by name (as ``nnUNetv2_plan_experiment -pl`` finds it), or None."""
    require_supported_nnunet()
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    return recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "experiment_planning"), name,
                                       current_module="nnunetv2.experiment_planning")


def reseed_each_epoch(trainer, reseed) -> None:
    """Calls ``reseed(epoch)`` as each of nnU-Net's training epochs starts, before its loader draws the epoch's
    batches: what an epoch draws then depends on its number only, not on how many epochs this process ran."""
    start = trainer.on_train_epoch_start

    def on_train_epoch_start():
        reseed(trainer.current_epoch)
        start()

    trainer.on_train_epoch_start = on_train_epoch_start


def plot_progress_every(trainer, every: int) -> None:
    """nnU-Net redraws progress.png as each epoch ends, a large figure costing about 1.3 s of CPU on a short
    toy epoch; draw it after every ``every``-th epoch and after the last one only."""
    plot = trainer.logger.plot_progress_png

    def plot_some(output_folder: str) -> None:
        done = trainer.current_epoch + 1  # on_epoch_end plots before it counts the epoch
        if done % every == 0 or done >= trainer.num_epochs:
            plot(output_folder)

    trainer.logger.plot_progress_png = plot_some


def make_checkpoints_atomic(trainer) -> None:
    """nnU-Net saves with torch.save straight to the final name; a kill mid-write would leave a broken
    checkpoint_latest.pth for the next run to resume from. Write to a temporary name and rename instead."""
    require_supported_nnunet()
    save = trainer.save_checkpoint

    def atomic_save(filename: str) -> None:
        if trainer.disable_checkpointing:
            save(filename)  # nnU-Net only logs that nothing is written
            return
        with atomic_path(filename) as tmp:
            save(str(tmp))

    trainer.save_checkpoint = atomic_save


def training_log(trainer) -> dict:
    """The per-epoch lists nnU-Net's logger keeps (losses, pseudo Dice, learning rates, epoch timestamps)."""
    return trainer.logger.local_logger.my_fantastic_logging


def training_batches(trainer):
    """The batches training draws: nnU-Net's own training pipeline as the trainer builds it (its batch size and
    foreground oversampling, the initial patch size, augmentation and deep-supervision targets), in this process
    (``nnUNet_n_proc_DA`` 0). Each batch is a dict; ``target`` a list of targets, the first at full resolution."""
    require_supported_nnunet()
    trainer._set_batch_size_and_oversample()  # what nnU-Net's initialize() does first
    train, _ = trainer.get_dataloaders()
    return train


def time_training_iterations(trainer, warm_up: int, timed: int) -> list[float]:
    """Seconds of each of ``timed`` training iterations (after ``warm_up`` untimed ones) of nnU-Net's own training
    loop pieces: its start (network, optimiser, loaders, the dataset's checks), its epoch start and ``train_step``
    on the batches its loader draws; then its end, which saves ``checkpoint_final.pth`` and stops the loaders."""
    import time

    import torch

    require_supported_nnunet()
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    seconds = []
    for i in range(warm_up + timed):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        if i >= warm_up:
            seconds.append(time.perf_counter() - start)
    trainer.current_epoch += 1  # on_train_end saves the epoch before the counter, as after a finished epoch
    trainer.on_train_end()
    return seconds


def tiles_per_pass(tile_batch_size: int | None, batch_size: int, tile_batch_divisor: int) -> int:
    """Tiles per network pass: ``tile_batch_size`` (None: the training batch size) divided by the retry's
    ``tile_batch_divisor``, at least one."""
    return max(1, int(tile_batch_size or batch_size) // tile_batch_divisor)


class OutOfDeviceMemory(RuntimeError):
    """CUDA ran out of memory; the message names what ran and the settings to change."""


def out_of_device_memory(error: BaseException, what: str, tiles_per_pass: int) -> OutOfDeviceMemory | None:
    """``error`` as an :class:`OutOfDeviceMemory` naming ``what`` ran out and the fix, if it is CUDA's
    out-of-memory error; else None."""
    import torch

    if not isinstance(error, torch.cuda.OutOfMemoryError):
        return None
    return OutOfDeviceMemory(
        f"CUDA out of memory {what} ({tiles_per_pass} tile(s) per network pass): lower prediction.tile_batch_size "
        f"(each retry of the job halves the tiles per pass; the profiles retry twice), keep "
        f"prediction.half_precision on, or ask compute.resources for a GPU with more memory")


@contextlib.contextmanager
def tile_batched_validation(tile_step_size: float, use_mirroring: bool, tile_batch_divisor: int):
    """nnU-Net's validation builds its predictor through the name ``nnUNetPredictor`` in the trainer's base module
    with a fixed tile step of 0.5 and mirroring; point that name at the tile-batched predictor (training batch size
    per pass, divided by ``tile_batch_divisor``; same tiles and weights) with the study's tile step and mirroring
    while it runs, so that out-of-fold predictions, on which the ensemble and refinement are chosen, are made as
    the new cases' are. A trainer that overrides ``perform_actual_validation`` in its own module keeps nnU-Net's
    predictor."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as base

    class ValidationPredictor(tile_batch_predictor_class()):
        def __init__(self, *args, **kwargs):
            self.tile_batch_divisor = tile_batch_divisor
            super().__init__(*args, **{**kwargs, "tile_step_size": tile_step_size, "use_mirroring": use_mirroring})

    original = base.nnUNetPredictor
    base.nnUNetPredictor = ValidationPredictor
    try:
        yield
    finally:
        base.nnUNetPredictor = original


@contextlib.contextmanager
def encoded_validation_probabilities(encoding: str):
    """nnU-Net's validation saves each case's probabilities as a float32 ``.npz``: at scale its largest files,
    2.5 times the workflow's float16 copy that gather_oof makes of them (docs/scale.md). While it runs, its export
    gets them as the study stores probabilities (``io.encode_probabilities``: float16 or uint8). nnU-Net computes
    its label map before the cast, so that file is unchanged."""
    import numpy as np
    from nnunetv2.inference import export_prediction

    from workflow_scripts.io import encode_probabilities

    encode_probabilities(np.zeros((1, 1)), encoding)  # an unknown encoding fails here, before the validation
    original = export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape

    def encoded(*args, **kwargs):
        result = original(*args, **kwargs)
        if isinstance(result, tuple):  # (segmentation, probabilities) when probabilities are asked for
            segmentation, probabilities = result
            return segmentation, encode_probabilities(np.asarray(probabilities), encoding)
        return result

    export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape = encoded
    try:
        yield
    finally:
        export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape = original


@functools.cache
def tile_batch_predictor_class():
    """nnU-Net's predictor with the sliding window run ``tile_batch_size`` tiles per network pass (class attribute;
    None: the configuration's training batch size, which fits wherever training did) and ``half_precision``.

    nnU-Net passes one tile at a time. On a CPU, torch runs a 3D convolution of batch 1 on a small input with its
    slow native kernel instead of oneDNN, so small networks (the toy study's) predict 3-6x slower per tile than
    at batch 2; a full-size nnU-Net network gains nothing on a CPU (5 % slower at 2). Same tiles, Gaussian weights
    and float16 sums as nnU-Net.
    """
    require_supported_nnunet()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import empty_cache

    class TileBatchPredictor(nnUNetPredictor):
        tile_batch_size: int | None = None
        tile_batch_divisor = 1  # a job retried after running out of GPU memory passes fewer tiles at a time
        half_precision = True

        def tiles_per_pass(self) -> int:
            return tiles_per_pass(self.tile_batch_size, self.configuration_manager.batch_size, self.tile_batch_divisor)

        def predict_probabilities(self, image, properties: dict):
            """The probabilities ``predict_single_npy_array(image, properties, None, None, True)`` returns, as
            ``export_probabilities`` makes them (no label map), with the preprocessed scan let go before the
            export."""
            from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy

            preprocessed = next(PreprocessAdapterFromNpy([image], [None], [properties], [None], self.plans_manager,
                                                         self.dataset_json, self.configuration_manager,
                                                         num_threads_in_multithreaded=1, verbose=self.verbose))
            data, properties = preprocessed.pop("data"), preprocessed["data_properties"]
            logits = self.predict_logits_from_preprocessed_data(data).cpu()
            del data
            return export_probabilities(logits, self, properties)

        def _internal_maybe_mirror_and_predict(self, x):
            if self.device.type == "cuda" and not self.half_precision:
                with torch.autocast("cuda", enabled=False):  # overrides nnU-Net's autocast around it
                    return super()._internal_maybe_mirror_and_predict(x)
            return super()._internal_maybe_mirror_and_predict(x)

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device=True):
            results_device = self.device if do_on_device else torch.device("cpu")
            logits = weights = tiles = predictions = None
            try:
                empty_cache(self.device)
                data = data.to(results_device)
                logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                                     device=results_device)
                weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
                gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                            value_scaling_factor=10, device=results_device) if self.use_gaussian else 1
                step = self.tiles_per_pass()
                for start in range(0, len(slicers), step):
                    batch = slicers[start:start + step]
                    tiles = torch.stack([data[s] for s in batch]).to(self.device)
                    predictions = self._internal_maybe_mirror_and_predict(tiles).to(results_device)
                    for s, prediction in zip(batch, predictions):
                        if self.use_gaussian:
                            prediction *= gaussian
                        logits[s] += prediction
                        weights[s[1:]] += gaussian
                torch.div(logits, weights, out=logits)
                if torch.any(torch.isinf(logits)):
                    raise RuntimeError("inf in the predicted logits (float16 overflow); nnU-Net aborts here too")
                return logits
            except Exception:
                del logits, weights, tiles, predictions  # free the device before nnU-Net's fallback to CPU
                empty_cache(self.device)
                raise

    return TileBatchPredictor


def export_probabilities(logits, predictor, properties: dict, chunk: int = 1 << 18):
    """nnU-Net's export of a configuration's probabilities to the scan's grid (the probabilities of
    ``convert_predicted_logits_to_segmentation_with_correct_shape`` with ``return_probabilities``), the same values
    in less memory: the logits are resampled one class at a time into one float32 map, the softmax runs in place
    ``chunk`` voxels at a time, no label map is made (the workflow labels the ensemble), and the crop is reverted
    without a copy when nnU-Net cropped nothing. nnU-Net's export holds the resampled logits, their softmax and an
    int64 argmax at once, then an uncropped copy.

    With the plans' resampling the values are those of nnU-Net's export run on one thread, bit for bit, on any
    number of threads; with torch's resampling (``export_resampling: torch``) within 1e-6 of them, as its bilinear
    kernel rounds one class's map otherwise than a stack of all. nnU-Net's own values change in the last bit with
    its thread count: torch's CPU softmax splits a map between threads and computes each part's last elements
    otherwise than the rest. For the same reason ``chunk`` must be a multiple of 64, the block it computes alike
    (``tests/unit/test_prediction.py`` checks all of it)."""
    if chunk % 64:
        raise ValueError(f"chunk={chunk} is not a multiple of 64")
    import torch
    from nnunetv2.configuration import default_num_processes

    plans, manager, labels = predictor.plans_manager, predictor.configuration_manager, predictor.label_manager
    if labels.has_regions:
        raise ValueError("region-based (sigmoid) models are not supported by export_probabilities")
    scan_spacing = [properties["spacing"][i] for i in plans.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    spacing = manager.spacing if len(manager.spacing) == len(shape) else [scan_spacing[0], *manager.spacing]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(default_num_processes)  # as nnU-Net's export
    try:
        probabilities = torch.empty((logits.shape[0], *shape), dtype=torch.float32)
        for c in range(logits.shape[0]):  # one class's float32 copy at a time, not all of them
            probabilities[c] = torch.as_tensor(manager.resampling_fn_probabilities(logits[c:c + 1], shape, spacing,
                                                                                   scan_spacing))[0]
        flat = probabilities.view(probabilities.shape[0], -1)
        torch.set_num_threads(1)  # torch's softmax splits a row between threads, and each split rounds its ends
        for start in range(0, flat.shape[1], chunk):
            block = flat[:, start:start + chunk]
            block.copy_(torch.softmax(block, 0))
    finally:
        torch.set_num_threads(old_threads)
    full_shape, box = tuple(properties["shape_before_cropping"]), properties["bbox_used_for_cropping"]
    probabilities = probabilities.numpy()
    if tuple(shape) != full_shape:  # background where nnU-Net cropped, as its revert_cropping_on_probabilities
        probabilities = labels.revert_cropping_on_probabilities(probabilities, box, full_shape)
    return probabilities.transpose([0] + [i + 1 for i in plans.transpose_backward])


def use_torch_resampling(predictor, step: str, threads: int, device) -> None:
    """A loaded predictor resamples with nnU-Net's torch resampling on ``device`` instead of the plans' function:
    step ``data``, a scan to the configuration's spacing before the network (``prediction.input_resampling:
    torch``), ``probabilities``, its logits back to the scan's grid (``prediction.export_resampling: torch``), or
    ``seg``, the nonzero mask nnU-Net's preprocessing makes as it crops a scan. A prediction without a previous
    stage (3d_fullres, as here) resamples that mask and drops it: with the plans' per-label resampling, 7 s of
    a 90 x 379 x 458 scan's preprocessing per configuration, 0.7 s with torch, and nothing read from it changes."""
    manager = predictor.configuration_manager
    manager.configuration.update({f"resampling_fn_{step}": "resample_torch_fornnunet",
                                  f"resampling_fn_{step}_kwargs": {"is_seg": step == "seg", "num_threads": threads,
                                                                   "device": device}})
    getattr(type(manager), f"resampling_fn_{step}").fget.cache_clear()  # nnU-Net caches the plans' function


# A checkpoint that holds tensors only, for bundles copied between machines: nnU-Net's .pth checkpoints are pickles,
# and unpickling a file from elsewhere can run any code. What nnU-Net's predictor reads of a checkpoint is its
# network weights (safetensors) and three plain fields (JSON); nothing else of it is used for prediction.
TENSOR_WEIGHTS, TENSOR_CHECKPOINT = "weights.safetensors", "checkpoint.json"
# Modules whose names a bundle's plans may give nnU-Net to import: its network architectures and torch.nn's layers.
PLANS_IMPORTS = ("dynamic_network_architectures.", "torch.nn.")


def write_tensor_checkpoint(checkpoint: Path, fold_folder: Path) -> list[Path]:
    """``fold_folder``/weights.safetensors and checkpoint.json from one of this study's own nnU-Net checkpoints
    (made by its training here, so unpickling it is as safe as the training was); the files written."""
    import torch
    from safetensors.torch import save_file

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    fold_folder.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().contiguous().clone() for name, tensor in saved["network_weights"].items()}
    with atomic_path(fold_folder / TENSOR_WEIGHTS) as tmp:
        save_file(weights, str(tmp))
    axes = saved.get("inference_allowed_mirroring_axes")
    fields = {"trainer_name": saved["trainer_name"], "configuration": saved["init_args"]["configuration"],
              "inference_allowed_mirroring_axes": None if axes is None else [int(a) for a in axes],
              "current_epoch": int(saved["current_epoch"])}
    from workflow_scripts.io import write_json

    write_json(fields, fold_folder / TENSOR_CHECKPOINT)
    return [fold_folder / TENSOR_WEIGHTS, fold_folder / TENSOR_CHECKPOINT]


def read_tensor_checkpoint(path: str | Path) -> dict:
    """What nnU-Net's predictor reads of a checkpoint, from checkpoint.json and weights.safetensors beside it;
    never unpickles (safetensors holds a JSON header and raw tensor bytes)."""
    import json

    from safetensors.torch import load_file

    path = Path(path)
    if path.name != TENSOR_CHECKPOINT:
        raise ValueError(f"{path}: only {TENSOR_CHECKPOINT} with {TENSOR_WEIGHTS} is read here, never a pickle")
    fields = json.loads(path.read_text())
    axes = fields["inference_allowed_mirroring_axes"]
    return {"trainer_name": fields["trainer_name"], "init_args": {"configuration": fields["configuration"]},
            "inference_allowed_mirroring_axes": None if axes is None else tuple(axes),
            "network_weights": load_file(str(path.parent / TENSOR_WEIGHTS), device="cpu")}


def plans_imports(plans: dict) -> list[str]:
    """What a plans file makes nnU-Net import and call (each configuration's network class, and the layers its
    arguments name) that is not a torch module class of nnU-Net's architectures or of torch.nn: a dotted path
    reaches any attribute (``torch.nn.modules.module.os.system``), so the object found is checked, not the name."""
    import pydoc

    import torch

    named = []
    for configuration in plans.get("configurations", {}).values():
        architecture = configuration.get("architecture", {})
        if "network_class_name" in architecture:
            named.append(architecture["network_class_name"])
        kwargs = architecture.get("arch_kwargs", {})
        named += [kwargs.get(key) for key in architecture.get("_kw_requires_import", [])]
    refused = []
    for name in (n for n in named if n is not None):
        found = pydoc.locate(name) if isinstance(name, str) and name.startswith(PLANS_IMPORTS) else None
        if not (isinstance(found, type) and issubclass(found, torch.nn.Module)
                and found.__module__.startswith(PLANS_IMPORTS)):
            refused.append(str(name))
    return refused


@contextlib.contextmanager
def tensor_checkpoints_only():
    """While nnU-Net's predictor loads a model folder: its ``torch.load`` reads tensor checkpoints
    (``read_tensor_checkpoint``) and nothing else, so no pickle in the folder is ever opened."""
    import torch

    load = torch.load
    torch.load = lambda path, *args, **kwargs: read_tensor_checkpoint(path)
    try:
        yield
    finally:
        torch.load = load
