"""Per-configuration predictions in the workflow's common format, for out-of-fold and new cases.

Every stage writes, per case, ``<case>.nii.gz`` (label map in the source label values, on the input grid)
and, where the stage has them, ``<case>.npz`` (class probabilities, float16, with the label of each channel).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.io import array_like, image_grid, read_image, read_json, write_image, write_probabilities
from workflow_scripts.nnunet_env import resolve_device


def labels_from_probabilities(probabilities: np.ndarray, labels: list[int]) -> np.ndarray:
    """Argmax over channels (the first channel wins ties), without np.argmax's int64 index map."""
    best = probabilities[0].copy()
    result = np.full(best.shape, labels[0], dtype=np.uint8)
    for label, channel in zip(labels[1:], probabilities[1:]):
        higher = channel > best
        result[higher] = label
        np.maximum(best, channel, out=best)
    return result


def write_prediction(probabilities: np.ndarray, labels: list[int], reference_image: Path | sitk.Image,
                     out_dir: Path, case: str, save_probabilities: bool = True) -> None:
    """``<case>.nii.gz`` (argmax, in source label values) on the reference image's grid, and ``<case>.npz`` (the
    probabilities) where asked."""
    reference = reference_image if isinstance(reference_image, sitk.Image) else read_image(reference_image)
    if probabilities.shape[1:] != reference.GetSize()[::-1]:
        raise ValueError(f"{case}: probabilities of shape {probabilities.shape[1:]} do not match the image grid "
                         f"{reference.GetSize()[::-1]} of {reference_image}")
    if save_probabilities:
        write_probabilities(Path(out_dir) / f"{case}.npz", probabilities, labels)
    write_image(array_like(labels_from_probabilities(probabilities, labels), reference),
                Path(out_dir) / f"{case}.nii.gz")


def gather_out_of_fold(training_summaries: list[Path], class_label_values: list[int], case: str, image: Path,
                       out_dir: Path) -> str:
    """Convert a case's validation probabilities (nnU-Net's export) from the one fold that held it out into the
    common format; returns that fold's output folder."""
    summaries = [read_json(p) for p in training_summaries]
    holding = [s for s in summaries if case in s["validation_cases"]]
    if len(holding) != 1:
        raise RuntimeError(f"{case} was validated in {len(holding)} folds, not exactly one: the folds' summaries "
                           f"{[str(p) for p in training_summaries]} do not come from one split")
    folder = Path(holding[0]["output_folder"])
    with np.load(folder / "validation" / f"{case}.npz") as data:
        probabilities = data["probabilities"]
    write_prediction(probabilities, class_label_values, image, out_dir, case)
    return str(folder)


@functools.cache
def tile_batch_predictor_class():
    """nnU-Net's predictor with the sliding window run ``tile_batch_size`` tiles per network pass (class attribute;
    None: the configuration's training batch size, which fits wherever training did) and ``half_precision``.

    nnU-Net passes one tile at a time. On a CPU, torch runs a 3D convolution of batch 1 on a small input with its
    slow native kernel instead of oneDNN, so small networks (the toy study's) predict 3-6x slower per tile than
    at batch 2; a full-size nnU-Net network gains nothing on a CPU (5 % slower at 2). Same tiles, Gaussian weights
    and float16 sums as nnU-Net.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import empty_cache

    class TileBatchPredictor(nnUNetPredictor):
        tile_batch_size: int | None = None
        half_precision = True

        def tiles_per_pass(self) -> int:
            return int(self.tile_batch_size or self.configuration_manager.batch_size)

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


def make_predictor(model_folder: Path, folds: list[int], device: str, settings: dict, threads: int):
    """nnU-Net's predictor for one trained configuration, its folds loaded once, with the ``prediction`` settings:
    ``tile_step_size``, ``use_mirroring``, ``tile_batch_size`` (tiles per network pass; None: the training batch
    size), ``half_precision`` (float16 autocast on a GPU, nnU-Net's own default; false runs float32) and
    ``export_resampling`` (``nnunet``: the plans' resampling of the logits back to the image grid; ``torch``:
    nnU-Net's torch resampling, on the prediction device).

    nnU-Net must already be configured for this process (``configure_nnunet``).
    """
    torch_device = resolve_device(device)
    predictor = tile_batch_predictor_class()(
        tile_step_size=settings["tile_step_size"], use_gaussian=True, use_mirroring=settings["use_mirroring"],
        perform_everything_on_device=torch_device.type == "cuda", device=torch_device, verbose=False,
        verbose_preprocessing=False, allow_tqdm=False)
    predictor.tile_batch_size = settings.get("tile_batch_size")
    predictor.half_precision = settings["half_precision"]
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    if settings["export_resampling"] == "torch":
        manager = predictor.configuration_manager
        manager.configuration.update(
            resampling_fn_probabilities="resample_torch_fornnunet",
            resampling_fn_probabilities_kwargs={"is_seg": False, "num_threads": threads, "device": torch_device})
        type(manager).resampling_fn_probabilities.fget.cache_clear()  # nnU-Net caches the plans' function
    return predictor


def predict_new_cases(models: dict[str, dict], selection: dict, cases: list[str], images_dir: Path, out_dir: Path,
                      settings: dict, device: str, threads: int) -> None:
    """Segment new cases with every configuration in ``models`` ({name: {"folder", "folds", "labels"}}) and the
    ensemble ``selection`` describes, in one process: each model is loaded once, cases are streamed, and the
    ensemble is built in memory one configuration's probabilities at a time.

    Writes ``out_dir/<configuration>/<case>.nii.gz`` for every configuration and ``out_dir/ensemble/<case>.nii.gz``;
    the ``.npz`` probabilities beside them only with ``settings["save_probabilities"]``. Configurations whose
    probabilities nothing needs (not in the ensemble, or the ensemble's only member when no probabilities are kept)
    are reduced by argmax on the logits, nnU-Net's fast path without softmax.
    """
    import time

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from workflow_scripts.bundle import used_configurations
    from workflow_scripts.ensemble import ensemble_probabilities

    used = used_configurations(selection)
    missing = [n for n in used if n not in models]
    if missing:
        raise ValueError(f"the ensemble uses {missing}, which are not among the models given ({list(models)})")
    keep = settings["save_probabilities"]
    predictors = {name: make_predictor(m["folder"], m["folds"], device, settings, threads)
                  for name, m in models.items()}
    single = used if not selection["fusions"] and len(used) == 1 else []
    with_probabilities = set(models) if keep else set() if single else set(used)
    reader = SimpleITKIO()
    out_dir = Path(out_dir)
    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        image_path = Path(images_dir) / f"{case}.nii.gz"
        image, properties = reader.read_images([str(image_path)])
        reference = image_grid(image_path)  # nnU-Net's reader has the voxels

        def member(name):
            _, probabilities = predictors[name].predict_single_npy_array(image, properties, None, None, True)
            probabilities = np.asarray(probabilities)
            write_prediction(probabilities, models[name]["labels"], reference, out_dir / name, case, keep)
            return probabilities, models[name]["labels"]

        for name in models:
            if name in with_probabilities:
                if name not in used:  # its probabilities are kept, though the ensemble does not read them
                    member(name)
                continue
            indices = predictors[name].predict_single_npy_array(image, properties, None, None, False)
            segmentation = np.asarray(models[name]["labels"], dtype=np.uint8)[np.asarray(indices)]
            for folder in [name] + (["ensemble"] if name in single else []):
                write_image(array_like(segmentation, reference), out_dir / folder / f"{case}.nii.gz")
        if with_probabilities & set(used):
            probabilities, labels = ensemble_probabilities(selection, member)
            write_prediction(probabilities, labels, reference, out_dir / "ensemble", case, keep)
            del probabilities
        print(f"[{i}/{len(cases)}] {case}: {len(models)} configurations and the ensemble in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
