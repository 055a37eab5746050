"""Per-configuration predictions in the workflow's common format, for out-of-fold and new cases.

Every stage writes, per case, ``<case>.nii.gz`` (label map in the source label values, on the input grid)
and, where the stage has them, ``<case>.npz`` (class probabilities, float16, with the label of each channel).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow_scripts.io import array_like, read_image, read_json, write_image, write_probabilities
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


def write_prediction(probabilities: np.ndarray, labels: list[int], reference_image: Path, out_dir: Path,
                     case: str) -> None:
    reference = read_image(reference_image)
    if probabilities.shape[1:] != reference.GetSize()[::-1]:
        raise ValueError(f"{case}: probabilities of shape {probabilities.shape[1:]} do not match the image grid "
                         f"{reference.GetSize()[::-1]} of {reference_image}")
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


def predict_cases(model_folder: Path, folds: list[int], cases: list[str], images_dir: Path,
                  class_label_values: list[int], device: str, tile_step_size: float, use_mirroring: bool,
                  out_dir: Path) -> None:
    """Predict new cases with the mean of the folds' softmax outputs; models are loaded once for all cases.

    nnU-Net must already be configured for this process (``configure_nnunet``).
    """
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch_device = resolve_device(device)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    reader = SimpleITKIO()
    for i, case in enumerate(cases, 1):
        image_path = Path(images_dir) / f"{case}.nii.gz"
        image, properties = reader.read_images([str(image_path)])
        _, probabilities = predictor.predict_single_npy_array(image, properties, None, None, True)
        write_prediction(np.asarray(probabilities), class_label_values, image_path, out_dir, case)
        print(f"[{i}/{len(cases)}] predicted {case}", flush=True)
