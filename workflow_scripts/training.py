"""Training of one (configuration, fold) with nnU-Net's own trainer, resumed from its latest checkpoint."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.io import copy_file, pyplot, write_figure, write_json, write_table
from workflow_scripts.nnunet_seam import (CONFIGURATION, OutOfDeviceMemory, encoded_validation_probabilities,
                                          find_trainer_class, in_process_validation_pools, make_checkpoints_atomic,
                                          out_of_device_memory, plot_progress_every, reseed_each_epoch,
                                          resolve_device, tile_batched_validation, tiles_per_pass, training_log)

# Trainer attributes the config may set (the toy config shortens training; the real config keeps defaults).
# probabilistic_oversampling: each patch centred on a foreground voxel with probability
# oversample_foreground_percent; nnU-Net's default forces the last round(batch x (1 - p)) items of a batch, so at
# batch size 2 0.33 and 0.5 both give one patch of two.
TRAINER_SETTINGS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every",
                    "initial_lr", "oversample_foreground_percent", "probabilistic_oversampling")


def training_curves(log: dict) -> pd.DataFrame:
    """Per-epoch losses, pseudo Dice (per class and EMA), learning rate and epoch time from nnU-Net's logger."""
    n = min(len(log[k]) for k in ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs",
                                  "epoch_start_timestamps", "epoch_end_timestamps"))
    table = pd.DataFrame({
        "epoch": range(n),
        "train_loss": log["train_losses"][:n],
        "val_loss": log["val_losses"][:n],
        "pseudo_dice_mean": log["mean_fg_dice"][:n],
        "pseudo_dice_ema": log["ema_fg_dice"][:n],
        "learning_rate": log["lrs"][:n],
        "epoch_seconds": [e - s for s, e in zip(log["epoch_start_timestamps"][:n], log["epoch_end_timestamps"][:n])],
    })
    per_class = log.get("dice_per_class_or_region", [])[:n]
    for k in range(len(per_class[0]) if per_class else 0):
        table[f"pseudo_dice_class_{k + 1}"] = [float(d[k]) for d in per_class]
    return table.astype({c: float for c in table.columns if c != "epoch"})


def plot_folds(curves: dict[int, Path], configuration: str, out: Path) -> None:
    """One configuration's folds overlaid: losses (left) and pseudo Dice (right; solid the mean, dashed the
    EMA nnU-Net selects on), one colour per fold."""
    plt = pyplot()
    fig, (loss, dice) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (fold, path) in enumerate(sorted(curves.items())):
        table = pd.read_csv(path, sep="\t")
        colour = f"C{k}"
        loss.plot(table["epoch"], table["train_loss"], color=colour, label=f"fold {fold} train")
        loss.plot(table["epoch"], table["val_loss"], color=colour, linestyle=":", label=f"fold {fold} validation")
        dice.plot(table["epoch"], table["pseudo_dice_mean"], color=colour, label=f"fold {fold}")
        dice.plot(table["epoch"], table["pseudo_dice_ema"], color=colour, linestyle="--")
    loss.set(xlabel="epoch", ylabel="loss", title=f"{configuration}: losses (dotted: validation)")
    dice.set(xlabel="epoch", ylabel="pseudo Dice", ylim=(0, 1), title=f"{configuration}: pseudo Dice (dashed: EMA)")
    loss.legend(fontsize=7, ncol=2)
    dice.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, out)


def plot_folds_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("plot-folds", "One figure of a configuration's folds' training curves overlaid.")
    p.add_argument("--configuration", required=True)
    p.add_argument("--curves", nargs="+", required=True, help="the folds' curves TSV, fold_<k>_curves.tsv")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    folds = {int(Path(c).name.split("_")[1]): Path(c) for c in args.curves}
    plot_folds(folds, args.configuration, Path(args.out))
    print(f"{args.configuration}: {len(folds)} folds plotted")


def make_trainer(dataset: str, plans_identifier: str, trainer_name: str, fold: int, settings: dict, device):
    """nnU-Net's trainer of one fold, found by name, with the config's ``trainer_settings`` set on it.
    nnU-Net must already be configured for this process (``configure_nnunet``)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results

    unknown = set(settings) - set(TRAINER_SETTINGS)
    if unknown:
        raise ValueError(f"unknown trainer settings {sorted(unknown)}; allowed: {TRAINER_SETTINGS}")
    preprocessed = Path(nnUNet_preprocessed) / dataset
    plans = load_json(str(preprocessed / f"{plans_identifier}.json"))
    trainer_class = find_trainer_class(trainer_name)
    # Know whether this is a resume before the trainer opens its log.
    folder = Path(nnUNet_results) / dataset / f"{trainer_name}__{plans_identifier}__{CONFIGURATION}" / f"fold_{fold}"
    plans["continue_training"] = any((folder / f"checkpoint_{kind}.pth").exists() for kind in ("final", "latest"))
    trainer = trainer_class(plans=plans, configuration=CONFIGURATION, fold=fold,
                            dataset_json=load_json(str(preprocessed / "dataset.json")), device=device)
    for key, value in settings.items():
        setattr(trainer, key, value)
    if Path(trainer.output_folder) != folder:
        raise RuntimeError(f"nnU-Net writes fold {fold} to {trainer.output_folder}, expected {folder}")
    return trainer


def seed_training(seed: int | None, fold: int, epoch: int) -> int | None:
    """Seed Python's, NumPy's and torch's generators from (``seed``, ``fold``, ``epoch``); the seed used.

    nnU-Net draws initial weights, patches and augmentation from these global generators (in this process when
    augmentation runs in it) and does not seed them; its checkpoints do not keep their state. So they are seeded
    as a run starts and again as each epoch starts (``reseed_each_epoch``): a run resumed at epoch k draws what
    the uninterrupted run drew from epoch k on. ``None`` leaves them as they are.
    """
    if seed is None:
        return None
    import random

    import numpy as np
    import torch

    derived = int(np.random.SeedSequence([seed, fold, epoch]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)
    return derived


def train_fold(dataset: str, plans_identifier: str, trainer_name: str, fold: int, settings: dict,
               device: str, summary_out: Path, curves_out: Path | None = None,
               progress_out: Path | None = None, seed: int | None = None, *, validation: dict,
               probability_encoding: str, tile_batch_divisor: int, progress_plot_every: int) -> dict:
    """Train one fold and export its validation probabilities; resumes from checkpoint_latest.pth if present.
    ``validation``: ``tile_step_size`` and ``use_mirroring`` of the validation (the prediction settings');
    ``tile_batch_divisor``: its tiles per network pass are the training batch size divided by this (a retry after
    running out of GPU memory halves them).
    ``progress_plot_every``: nnU-Net's progress.png is drawn after every n-th epoch and the last.
    ``seed``: see ``seed_training`` (``None``: unseeded). ``probability_encoding``: how nnU-Net's validation
    ``.npz`` files hold the probabilities (``io.encode_probabilities``).

    A fold with checkpoint_final.pth is not trained again, only its validation is (re)exported.
    nnU-Net must already be configured for this process (``configure_nnunet``).
    """
    import torch

    torch_device = resolve_device(device)
    trainer = make_trainer(dataset, plans_identifier, trainer_name, fold, settings, torch_device)
    folder = Path(trainer.output_folder)
    final, latest = folder / "checkpoint_final.pth", folder / "checkpoint_latest.pth"
    make_checkpoints_atomic(trainer)
    plot_progress_every(trainer, progress_plot_every)

    resumed_from, derived_seed = None, None
    if final.exists():
        trainer.load_checkpoint(str(final))
        resumed_from = "final"
        print(f"fold {fold} already trained ({final}); exporting its validation only", flush=True)
    else:
        if latest.exists():
            trainer.load_checkpoint(str(latest))
            resumed_from = f"epoch {trainer.current_epoch}"
            trainer.print_to_log_file(f"Resuming from {latest} at epoch {trainer.current_epoch}")  # also prints
        derived_seed = seed_training(seed, fold, trainer.current_epoch)
        if seed is not None:
            reseed_each_epoch(trainer, lambda epoch: seed_training(seed, fold, epoch))
        trainer.run_training()
    try:
        with tile_batched_validation(**validation, tile_batch_divisor=tile_batch_divisor), \
                in_process_validation_pools(), encoded_validation_probabilities(probability_encoding):
            trainer.perform_actual_validation(save_probabilities=True)
    except Exception as error:
        tiles = tiles_per_pass(None, trainer.configuration_manager.batch_size, tile_batch_divisor)
        raise out_of_device_memory(error, f"in the validation of fold {fold}", tiles) or error

    log = training_log(trainer)
    curves = training_curves(log)
    summary = {
        "dataset": dataset, "trainer": trainer_name, "plans": plans_identifier, "fold": fold,
        "output_folder": str(folder), "epochs": trainer.current_epoch, "resumed_from": resumed_from,
        "training_seed": seed, "derived_seed": derived_seed, "probability_encoding": probability_encoding,
        "device": str(torch_device),
        "settings": {k: getattr(trainer, k) for k in TRAINER_SETTINGS},
        "validation": validation,
        "train_losses": curves["train_loss"].tolist(),
        "ema_fg_dice": curves["pseudo_dice_ema"].tolist(),
        "median_epoch_seconds": float(curves["epoch_seconds"].median()) if len(curves) else None,
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated(torch_device) / 2 ** 20
                               if torch_device.type == "cuda" else None),
        "validation_cases": sorted(p.name[: -len(".npz")] for p in (folder / "validation").glob("*.npz")),
    }
    if curves_out is not None:
        write_table(curves, curves_out)
    if progress_out is not None:
        copy_file(folder / "progress.png", progress_out)
    write_json(summary, summary_out)
    return summary


def train_fold_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.io import read_json
    from workflow_scripts.settings import only_configuration

    p = cli.parser("train-fold", "Train one fold of a configuration (resumed from its latest checkpoint) and "
                   "export its validation probabilities.")
    cli.add_nnunet(p)
    p.add_argument("--plans-summary", required=True, help="JSON written by plan-and-preprocess")
    p.add_argument("--fold", type=int, required=True)
    # The prediction section's tile_step_size and use_mirroring make the out-of-fold predictions, stored as its
    # probability_encoding: made as the new cases' are, since the ensemble and refinement are chosen on them.
    cli.add_settings(p, "train-fold")
    p.add_argument("--out", required=True)
    p.add_argument("--curves", help="TSV of per-epoch losses and pseudo Dice")
    p.add_argument("--progress", help="copy of nnU-Net's progress.png")
    cli.add_tile_batch_divisor(p)
    args = p.parse_args(argv)
    cli.configure_nnunet(args, args.settings["compute"]["augmentation_workers"])
    plans = read_json(args.plans_summary)
    _, configuration = only_configuration(args.settings)
    prediction = args.settings["prediction"]
    try:
        summary = train_fold(plans["dataset"], plans["plans_identifier"], configuration["trainer"], args.fold,
                             configuration["trainer_settings"], args.settings["compute"]["device"], Path(args.out),
                             Path(args.curves) if args.curves else None, Path(args.progress) if args.progress else None,
                             configuration["training_seed"],
                             validation={k: prediction[k] for k in ("tile_step_size", "use_mirroring")},
                             probability_encoding=prediction["probability_encoding"],
                             tile_batch_divisor=args.tile_batch_divisor,
                             progress_plot_every=configuration["progress_plot_every"])
    except OutOfDeviceMemory as err:
        raise SystemExit(f"error: {err}")
    print(f"fold {args.fold}: {summary['epochs']} epochs, resumed from {summary['resumed_from']}")
