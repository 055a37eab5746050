"""What each prediction speed option buys, step by step, on one realistic-size scan and one trained configuration.

    python -m benchmarks.bench_predict_options --study <a finished study's folder> [--shape 200 512 512]

One synthetic scan (the toy generator at ``--shape``, z y x) is preprocessed for one fold of ``--configuration``,
and each step is timed against nnU-Net's default for it, in this one process:

- sliding window, on a ``--window`` crop of the network input (the time per tile does not depend on the scan):
  tile step 0.5 (default) against 0.75 and 1.0; one tile per network pass (default) against the training batch
  size and 4; test-time mirroring (8 passes per tile in 3D) against none, at
  step 1.0 (forced on for the timing even where the trainer disallows it);
- export of full-size logits (made from the scan's own label, so the labels have its structure) to the scan's
  grid: nnU-Net's resampling against torch resampling, each with probabilities (softmax: what an ensemble needs)
  and with the argmax taken on the logits;
- writing: the float16 probabilities as compressed ``.npz`` (``--save_probabilities``) against the label map only.

Printed: seconds, the ratio to the default, and the fraction of voxels whose label equals the default's.
Half precision is a GPU setting (autocast); on a CPU it is not timed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--configuration", default="resenc_multiclass")
    parser.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], help="z y x")
    parser.add_argument("--window", type=int, nargs=3, default=[48, 160, 160], help="z y x crop for the sliding window")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from workflow_scripts.nnunet_seam import configure_nnunet

    configure_nnunet(args.study / "results/nnunet", args.threads)
    import SimpleITK as sitk
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from workflow_scripts.config import section_settings
    from workflow_scripts.io import read_json, write_image, write_probabilities
    from workflow_scripts.prediction import make_predictor
    from workflow_scripts.toy_data import _to_image, make_phantom

    work = Path(tempfile.mkdtemp(prefix="bench_predict_options_"))
    phantom = make_phantom(np.random.default_rng(1), shape=tuple(args.shape))
    scan = work / "scan.nii.gz"
    write_image(_to_image(phantom.image, phantom.spacing), scan)
    image, properties = SimpleITKIO().read_images([str(scan)])
    summary = read_json(args.study / f"results/training/{args.configuration}/fold_0.json")
    folder = Path(summary["output_folder"]).parent
    base = section_settings("prediction", {"tile_step_size": 0.5, "use_mirroring": False, "half_precision": True,
                                           "export_resampling": "nnunet"})  # the rest: the schema's defaults
    predictor = make_predictor(folder, [0], "cpu", base, args.threads)
    print(f"scan {tuple(args.shape)} at {phantom.spacing} mm; {args.configuration} fold 0 "
          f"(patch {predictor.configuration_manager.patch_size}); {args.threads} threads", flush=True)

    seconds, item = timed(lambda: next(PreprocessAdapterFromNpy(
        [image], [None], [properties], [None], predictor.plans_manager, predictor.dataset_json,
        predictor.configuration_manager, num_threads_in_multithreaded=1)))
    data, data_properties = item["data"], item["data_properties"]
    print(f"preprocessing (same for every option): {seconds:.1f} s, network input {tuple(data.shape[1:])}")

    rows = []

    def report(step, option, seconds, default_seconds, agreement=None):
        rows.append((step, option, seconds, default_seconds / seconds if default_seconds else 1.0, agreement))
        agree = "" if agreement is None else f", labels equal to the default's: {agreement:.5f}"
        print(f"  {step:<15} {option:<42} {seconds:8.1f} s  {default_seconds / seconds:6.2f}x{agree}", flush=True)

    def argmax(logits):
        return logits.float().argmax(0).numpy()

    centre = [max(0, (n - w) // 2) for n, w in zip(data.shape[1:], args.window)]  # the body, not a corner
    crop = data[(slice(None), *[slice(c, c + w) for c, w in zip(centre, args.window)])]
    print(f"sliding window (one fold, crop {tuple(crop.shape[1:])} of the network input):")
    logits = {}
    predictor.tile_batch_size = 1  # nnU-Net's one tile per network pass, for the step and mirroring rows
    for step in (0.5, 0.75, 1.0):
        predictor.tile_step_size = step
        seconds, logits[step] = timed(predictor.predict_logits_from_preprocessed_data, crop)
        default = rows[0][2] if rows else seconds
        report("sliding window", f"tile step {step}" + (" (default)" if step == 0.5 else ""), seconds, default,
               None if step == 0.5 else float((argmax(logits[step]) == argmax(logits[0.5])).mean()))
    predictor.tile_step_size = 0.5
    for batch in (None, 4):
        predictor.tile_batch_size = batch
        seconds, batched = timed(predictor.predict_logits_from_preprocessed_data, crop)
        report("sliding window", f"step 0.5, {predictor.tiles_per_pass()} tiles per pass"
               + (" (training batch)" if batch is None else ""), seconds, rows[0][2],
               float((argmax(batched) == argmax(logits[0.5])).mean()))
    predictor.tile_batch_size = 1
    predictor.tile_step_size = 1.0
    predictor.use_mirroring, allowed = True, predictor.allowed_mirroring_axes
    predictor.allowed_mirroring_axes = (0, 1, 2)
    mirrored, _ = timed(predictor.predict_logits_from_preprocessed_data, crop)
    predictor.use_mirroring, predictor.allowed_mirroring_axes = False, allowed
    unmirrored = rows[2][2]
    report("sliding window", "mirroring on, step 1.0 (the default)", mirrored, mirrored)
    report("sliding window", "mirroring off, step 1.0", unmirrored, mirrored)

    # Full-size logits with the scan's structure: its label, at the network input's shape, one-hot plus noise.
    label = torch.from_numpy(phantom.label[None, None].astype(np.float32))
    label = torch.nn.functional.interpolate(label, size=tuple(data.shape[1:]), mode="nearest")[0, 0].long()
    channels = len(predictor.label_manager.all_labels)
    full_logits = torch.nn.functional.one_hot(label.clamp(max=channels - 1), channels).permute(3, 0, 1, 2).half()
    full_logits = full_logits * 6 - 3 + torch.randn(full_logits.shape).half()
    print(f"export to the scan's grid (logits {tuple(full_logits.shape)}):")
    manager = predictor.configuration_manager
    original = dict(manager.configuration)
    reference = None
    for resampling in ("nnunet", "torch"):
        manager.configuration.clear()
        manager.configuration.update(original)
        if resampling == "torch":
            manager.configuration.update(resampling_fn_probabilities="resample_torch_fornnunet",
                                         resampling_fn_probabilities_kwargs={"is_seg": False,
                                                                             "num_threads": args.threads,
                                                                             "device": torch.device("cpu")})
        type(manager).resampling_fn_probabilities.fget.cache_clear()  # nnU-Net caches the function
        for probabilities in (True, False):
            seconds, result = timed(convert_predicted_logits_to_segmentation_with_correct_shape,
                                    full_logits.clone(), predictor.plans_manager, manager, predictor.label_manager,
                                    data_properties, return_probabilities=probabilities,
                                    num_threads_torch=args.threads)
            segmentation = result[0] if probabilities else result
            first = reference is None
            if first:
                reference, default, kept = segmentation, seconds, result[1]
            what = "probabilities" if probabilities else "argmax on logits"
            report("export", f"{resampling} resampling, {what}" + (" (default)" if first else ""), seconds, default,
                   None if first else float((segmentation == reference).mean()))
    manager.configuration.clear()
    manager.configuration.update(original)

    print("writing:")
    grid = sitk.ReadImage(str(scan))
    seconds_npz, _ = timed(write_probabilities, work / "probabilities.npz", kept, [0, 1, 2], "float16")
    label = sitk.GetImageFromArray(reference.astype(np.uint8))
    label.CopyInformation(grid)
    seconds_nii, _ = timed(write_image, label, work / "labels.nii.gz")
    report("writing", "float16 probabilities .npz + label map (default)", seconds_npz + seconds_nii,
           seconds_npz + seconds_nii)
    report("writing", "label map only", seconds_nii, seconds_npz + seconds_nii)
    for path in work.iterdir():
        os.remove(path)
    work.rmdir()


if __name__ == "__main__":
    main()
