"""Per-configuration predictions in the workflow's common format, for out-of-fold and new cases.

Every stage writes, per case, ``<case>.nii.gz`` (label map in the source label values, on the input grid)
and, where the stage has them, ``<case>.npz`` (class probabilities, float16 or uint8 as
``prediction.probability_encoding`` says, with the label of each channel).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow_scripts.crop import paste_labels, paste_probabilities
from workflow_scripts.io import (array_like, as_stored, decode_probabilities, image_grid, read_json, write_image,
                                 write_prediction)
from workflow_scripts.nnunet_seam import (TENSOR_CHECKPOINT, OutOfDeviceMemory, out_of_device_memory, resolve_device,
                                          tensor_checkpoints_only, tile_batch_predictor_class,
                                          use_torch_resampling)


def gather_out_of_fold(training_summaries: list[Path], class_label_values: list[int], case: str, image: Path,
                       out_dir: Path, crop_box: dict | None = None, *, encoding: str) -> str:
    """Convert a case's validation probabilities (nnU-Net's export, in any encoding) from the one fold that held it
    out into the common format, stored as ``encoding``, pasted on the full grid where the model saw the case
    cropped; returns that fold's output folder."""
    summaries = [read_json(p) for p in training_summaries]
    holding = [s for s in summaries if case in s["validation_cases"]]
    if len(holding) != 1:
        raise RuntimeError(f"{case} was validated in {len(holding)} folds, not exactly one: the folds' summaries "
                           f"{[str(p) for p in training_summaries]} do not come from one split")
    folder = Path(holding[0]["output_folder"])
    with np.load(folder / "validation" / f"{case}.npz") as data:
        probabilities = decode_probabilities(data["probabilities"])
    if crop_box is not None:
        probabilities = paste_probabilities(probabilities, crop_box)
    write_prediction(probabilities, class_label_values, image, out_dir, case, encoding=encoding)
    return str(folder)


def make_predictor(model_folder: Path, folds: list[int], device: str, settings: dict, threads: int,
                   tensors_only: bool = False):
    """nnU-Net's predictor for one trained configuration, its folds loaded once, with the ``prediction`` settings:
    ``tile_step_size``, ``use_mirroring``, ``tile_batch_size`` (tiles per network pass; None: the training batch
    size), ``half_precision`` (float16 autocast on a GPU, nnU-Net's own default; false runs float32) and
    ``input_resampling`` and ``export_resampling`` (``nnunet``: the plans' resampling of the scan to the
    configuration's spacing, of the logits back to the scan's grid; ``torch``: nnU-Net's torch resampling, on the
    prediction device).

    ``tensors_only``: the folds hold tensor checkpoints (a bundle's), read without unpickling anything.

    nnU-Net must already be configured for this process (``configure_nnunet``).
    """
    predictor = unloaded_predictor(device, settings)
    if tensors_only:
        with tensor_checkpoints_only():
            predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                           checkpoint_name=TENSOR_CHECKPOINT)
    else:
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name="checkpoint_final.pth")
    return with_resampling_settings(predictor, settings, threads)


def unloaded_predictor(device: str, settings: dict):
    """The predictor ``make_predictor`` builds, before any model is loaded into it."""
    torch_device = resolve_device(device)
    predictor = tile_batch_predictor_class()(
        tile_step_size=settings["tile_step_size"], use_gaussian=True, use_mirroring=settings["use_mirroring"],
        perform_everything_on_device=torch_device.type == "cuda", device=torch_device, verbose=False,
        verbose_preprocessing=False, allow_tqdm=False)
    predictor.tile_batch_size = settings["tile_batch_size"]
    predictor.half_precision = settings["half_precision"]
    return predictor


def with_resampling_settings(predictor, settings: dict, threads: int):
    """A loaded predictor with ``input_resampling`` and ``export_resampling`` applied, and the nonzero mask
    that preprocessing resamples and drops resampled with torch (``use_torch_resampling``)."""
    use_torch_resampling(predictor, "seg", threads, predictor.device)
    for step, key in (("data", "input_resampling"), ("probabilities", "export_resampling")):
        if settings[key] == "torch":
            use_torch_resampling(predictor, step, threads, predictor.device)
    return predictor


def predict_new_cases(models: dict[str, dict], selection: dict, cases: list[str], images_dir: Path, out_dir: Path,
                      settings: dict, device: str, threads: int,
                      crops: dict[str, tuple[Path, dict]] | None = None, tile_batch_divisor: int = 1) -> None:
    """Segment new cases with every configuration in ``models`` ({name: {"folder", "folds", "labels"}}) and the
    ensemble ``selection`` describes, in one process: each model is loaded once, cases are streamed, and the
    ensemble is built in memory one configuration's probabilities at a time.

    Writes ``out_dir/<configuration>/<case>.nii.gz`` for every configuration and ``out_dir/ensemble/<case>.nii.gz``;
    the ``.npz`` probabilities beside them only with ``settings["save_probabilities"]``. Configurations whose
    probabilities nothing needs (not in the ensemble, or the ensemble's only member when no probabilities are kept)
    are reduced by argmax on the logits, nnU-Net's fast path without softmax. With ``crops`` ({case: (cropped
    image, crop box)}) the models read the cropped image and their outputs are pasted on the full grid.
    """
    import time

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from workflow_scripts.bundle import used_configurations
    from workflow_scripts.ensemble import ensemble_probabilities

    used = used_configurations(selection)
    missing = [n for n in used if n not in models]
    if missing:
        raise ValueError(f"the ensemble uses {missing}, which are not among the models given ({list(models)})")
    keep, encoding = settings["save_probabilities"], settings["probability_encoding"]
    predictors = {name: make_predictor(m["folder"], m["folds"], device, settings, threads, m.get("tensors_only", False))
                  for name, m in models.items()}
    for predictor in predictors.values():
        predictor.tile_batch_divisor = tile_batch_divisor
    single = used if not selection["fusions"] and len(used) == 1 else []
    with_probabilities = set(models) if keep else set() if single else set(used)
    reader = SimpleITKIO()
    out_dir = Path(out_dir)

    def segment(case):
        image_path = Path(images_dir) / f"{case}.nii.gz"
        box = crops[case][1] if crops else None
        image, properties = reader.read_images([str(crops[case][0] if crops else image_path)])
        reference = image_grid(image_path)  # nnU-Net's reader has the voxels

        def member(name):
            probabilities = predictors[name].predict_probabilities(image, properties)
            # As stored, kept or not: the ensemble and label maps of new cases come from the values the study's
            # out-of-fold and test stages read from their files, so a near tie breaks the same way on both.
            probabilities = as_stored(probabilities, encoding)
            if box is not None:
                probabilities = paste_probabilities(probabilities, box)
            write_prediction(probabilities, models[name]["labels"], reference, out_dir / name, case,
                             encoding if keep else None)
            return probabilities, models[name]["labels"]

        for name in models:
            if name in with_probabilities:
                if name not in used:  # its probabilities are kept, though the ensemble does not read them
                    member(name)
                continue
            indices = predictors[name].predict_single_npy_array(image, properties, None, None, False)
            segmentation = np.asarray(models[name]["labels"], dtype=np.uint8)[np.asarray(indices)]
            if box is not None:
                segmentation = paste_labels(segmentation, box, background=models[name]["labels"][0])
            for folder in [name] + (["ensemble"] if name in single else []):
                write_image(array_like(segmentation, reference), out_dir / folder / f"{case}.nii.gz")
        if with_probabilities & set(used):
            probabilities, labels = ensemble_probabilities(selection, member)
            write_prediction(probabilities, labels, reference, out_dir / "ensemble", case, encoding if keep else None)
            del probabilities

    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        try:
            segment(case)
        except Exception as error:  # CUDA's out-of-memory error named as such, with the settings to change
            tiles = max(p.tiles_per_pass() for p in predictors.values())
            raise out_of_device_memory(error, f"predicting {case}", tiles) or error
        print(f"[{i}/{len(cases)}] {case}: {len(models)} configurations and the ensemble in "
              f"{time.perf_counter() - start:.1f} s", flush=True)


def study_models(training_summaries: dict[str, list[Path]], channel_labels: dict[str, list[int]]) -> dict[str, dict]:
    """{configuration: {"folder", "folds", "labels"}} of a study's trained folds (their summary JSON files)."""
    models = {}
    for name, paths in training_summaries.items():
        folds = [read_json(p) for p in paths]
        folders = {str(Path(f["output_folder"]).parent) for f in folds}
        if len(folders) != 1:
            raise ValueError(f"the folds of {name} were trained in several folders {sorted(folders)}")
        models[name] = {"folder": Path(folders.pop()), "folds": [f["fold"] for f in folds],
                        "labels": channel_labels[name]}
    return models


def bundle_models(bundle: Path, configurations: list[str], channel_labels: dict[str, list[int]]) -> dict[str, dict]:
    """The same for an exported bundle; every model file is checked against the manifest, and the bundle for
    anything whose loading could run code, before use (``BundleError`` names the first problem)."""
    from workflow_scripts.bundle import check_runs_no_code, verify_files
    from workflow_scripts.config import BUNDLE_MANIFEST

    manifest = read_json(Path(bundle) / BUNDLE_MANIFEST)["configurations"]
    check_runs_no_code(Path(bundle), configurations)
    models = {}
    for name in configurations:
        checked = verify_files(Path(bundle), f"models/{name}/")
        print(f"bundle: {checked} model files of {name} match the manifest", flush=True)
        models[name] = {"folder": Path(bundle) / "models" / name, "folds": manifest[name]["folds"],
                        "labels": channel_labels[name], "tensors_only": True}
    return models


def gather_oof_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import channel_labels

    p = cli.parser("gather-oof", "A training case's out-of-fold probabilities of every configuration, from the "
                   "fold that held it out, in the common format.")
    p.add_argument("--training-summaries", type=cli.json_value, required=True,
                   help="JSON {configuration: [fold summary JSON]}")
    cli.add_settings(p, "gather-oof")
    p.add_argument("--case", required=True)
    p.add_argument("--image", required=True, help="the case's image (the grid of the outputs)")
    p.add_argument("--crop-box", help="crop.enabled: the case's crop box JSON (the models saw the crop)")
    p.add_argument("--out", nargs="+", required=True,
                   help="the case's .npz of each configuration, in the order of --training-summaries")
    args = p.parse_args(argv)
    if len(args.out) != len(args.training_summaries):
        raise SystemExit(f"error: {len(args.out)} outputs for {len(args.training_summaries)} configurations")
    labels, encoding = channel_labels(args.settings), args.settings["prediction"]["probability_encoding"]
    for (configuration, summaries), out in zip(args.training_summaries.items(), args.out):
        if Path(out).name != f"{args.case}.npz":
            raise SystemExit(f"error: output {out} is not {args.case}.npz")
        folder = gather_out_of_fold([Path(s) for s in summaries], labels[configuration], args.case,
                                    Path(args.image), Path(out).parent,
                                    read_json(args.crop_box) if args.crop_box else None, encoding=encoding)
        print(f"{args.case}: {configuration} out-of-fold probabilities from {folder}")


def predict_entry(argv=None) -> None:
    import sys

    from workflow_scripts import cli
    from workflow_scripts.bundle import BundleError
    from workflow_scripts.settings import channel_labels

    p = cli.parser("predict", "Segment new cases with every configuration and the chosen ensemble, in one process.")
    cli.add_nnunet(p)
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--training-summaries", type=cli.json_value,
                        help="JSON {configuration: [fold summary JSON]} (a study's models)")
    models.add_argument("--bundle", help="an exported bundle")
    p.add_argument("--configurations", nargs="+", required=True)
    p.add_argument("--selection", required=True, help="the chosen ensemble (JSON)")
    cli.add_settings(p, "predict")
    p.add_argument("--images", nargs="+", required=True, help="the new cases' images, <case>.nii.gz")
    p.add_argument("--cropped-images", nargs="+", help="crop.enabled: the cases' cropped images, same order")
    p.add_argument("--crop-boxes", nargs="+", help="crop.enabled: the cases' crop box JSON, same order")
    outputs = p.add_mutually_exclusive_group(required=True)
    outputs.add_argument("--outputs", nargs="+",
                         help="the files to write, <folder>/<configuration or ensemble>/<case>.nii.gz (and .npz)")
    outputs.add_argument("--out-dir", help="a folder that gets <configuration or ensemble>/<case>.nii.gz (and .npz)")
    cli.add_tile_batch_divisor(p)
    args = p.parse_args(argv)
    cli.configure_nnunet(args, 0)
    images_dir, cases = cli.case_folder(args.images, "--images")
    crops = None
    if args.cropped_images or args.crop_boxes:
        _, cropped_cases = cli.case_folder(args.cropped_images or [], "--cropped-images")
        box_cases = [Path(b).name[: -len(".json")] for b in args.crop_boxes or []]
        if not cropped_cases == box_cases == cases:
            raise SystemExit("error: --cropped-images and --crop-boxes must name the cases of --images, in order")
        crops = {case: (Path(image), read_json(box))
                 for case, image, box in zip(cases, args.cropped_images, args.crop_boxes)}
    if args.bundle:
        try:
            models = bundle_models(Path(args.bundle), args.configurations, channel_labels(args.settings))
        except BundleError as err:
            sys.exit(f"error: {err}")
    else:
        models = study_models({name: args.training_summaries[name] for name in args.configurations},
                              channel_labels(args.settings))
    selection = read_json(args.selection)
    prediction, device = args.settings["prediction"], args.settings["compute"]["device"]
    print(f"{len(cases)} cases, ensemble {selection.get('candidate', selection['members'])}, "
          f"settings {prediction}", flush=True)
    out_dir = Path(args.out_dir) if args.out_dir else cli.stage_root(args.outputs, "--outputs")
    try:
        predict_new_cases(models, selection, cases, images_dir, out_dir, prediction, device, args.threads, crops,
                          args.tile_batch_divisor)
    except OutOfDeviceMemory as err:
        sys.exit(f"error: {err}")
    missing = [o for o in args.outputs or [] if not Path(o).is_file()]
    if missing:
        raise SystemExit(f"error: the settings wrote no {missing[:3]}")


def place_predictions_entry(argv=None) -> None:
    """A part's predictions linked where every later rule reads them (relative symbolic links: no copy)."""
    import os

    from workflow_scripts import cli

    p = cli.parser("place-predictions", "Link a case's predictions from its part's folder to <folder>/<stage>/.")
    p.add_argument("--part-dir", required=True, help="the part's folder: <stage>/<case>.<ext>")
    p.add_argument("--outputs", nargs="+", required=True, help="<folder>/<stage>/<case>.<ext> to link")
    args = p.parse_args(argv)
    for out in map(Path, args.outputs):
        source = Path(args.part_dir) / out.parent.name / out.name
        if not source.is_file():
            raise SystemExit(f"error: {source} is missing: the part's prediction did not write it")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_symlink() or out.exists():
            out.unlink()
        out.symlink_to(os.path.relpath(source, out.parent))
    print(f"{len(args.outputs)} prediction file(s) linked from {args.part_dir}")
