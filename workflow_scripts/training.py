"""Training of one (configuration, fold) with nnU-Net's own trainer, resumed from its latest checkpoint."""
from __future__ import annotations

from pathlib import Path

from workflow_scripts.io import write_json
from workflow_scripts.nnunet_env import CONFIGURATION, resolve_device

# Trainer attributes the config may set (the toy config shortens training; the real config keeps defaults).
TRAINER_SETTINGS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every",
                    "initial_lr", "oversample_foreground_percent")


def find_trainer_class(name: str):
    """nnU-Net's own lookup by class name (imports every trainer module, timm and torchvision included)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


def train_fold(dataset: str, plans_identifier: str, trainer_name: str, fold: int, settings: dict,
               device: str, summary_out: Path) -> dict:
    """Train one fold and export its validation probabilities; resumes from checkpoint_latest.pth if present.

    A fold with checkpoint_final.pth is not trained again, only its validation is (re)exported.
    nnU-Net must already be configured for this process (``configure_nnunet``).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results

    unknown = set(settings) - set(TRAINER_SETTINGS)
    if unknown:
        raise ValueError(f"unknown trainer settings {sorted(unknown)}; allowed: {TRAINER_SETTINGS}")
    preprocessed = Path(nnUNet_preprocessed) / dataset
    plans = load_json(str(preprocessed / f"{plans_identifier}.json"))
    trainer_class = find_trainer_class(trainer_name)

    # Peek at the output folder to know whether this is a resume before the trainer opens its log.
    probe_folder = Path(nnUNet_results) / dataset / f"{trainer_name}__{plans_identifier}__{CONFIGURATION}" \
        / f"fold_{fold}"
    final, latest = probe_folder / "checkpoint_final.pth", probe_folder / "checkpoint_latest.pth"
    plans["continue_training"] = final.exists() or latest.exists()
    trainer = trainer_class(plans=plans, configuration=CONFIGURATION, fold=fold,
                            dataset_json=load_json(str(preprocessed / "dataset.json")),
                            device=resolve_device(device))
    for key, value in settings.items():
        setattr(trainer, key, value)
    if Path(trainer.output_folder) != probe_folder:
        raise RuntimeError(f"nnU-Net writes fold {fold} to {trainer.output_folder}, expected {probe_folder}")

    resumed_from = None
    if final.exists():
        trainer.load_checkpoint(str(final))
        resumed_from = "final"
    else:
        if latest.exists():
            trainer.load_checkpoint(str(latest))
            resumed_from = f"epoch {trainer.current_epoch}"
            trainer.print_to_log_file(f"Resuming from {latest} at epoch {trainer.current_epoch}")
        trainer.run_training()
    trainer.perform_actual_validation(save_probabilities=True)

    log = trainer.logger.local_logger.my_fantastic_logging
    summary = {
        "dataset": dataset, "trainer": trainer_name, "plans": plans_identifier, "fold": fold,
        "output_folder": str(probe_folder), "epochs": trainer.current_epoch, "resumed_from": resumed_from,
        "settings": {k: getattr(trainer, k) for k in TRAINER_SETTINGS},
        "train_losses": [float(v) for v in log.get("train_losses", [])],
        "val_losses": [float(v) for v in log.get("val_losses", [])],
        "ema_fg_dice": [float(v) for v in log.get("ema_fg_dice", [])],
        "validation_cases": sorted(p.name[: -len(".npz")] for p in (probe_folder / "validation").glob("*.npz")),
    }
    write_json(summary, summary_out)
    return summary
