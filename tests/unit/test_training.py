import os
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from workflow_scripts.nnunet_seam import make_checkpoints_atomic, plot_progress_every
from workflow_scripts.training import TRAINER_SETTINGS, training_curves

pytestmark = pytest.mark.unit


def test_training_curves_from_nnunet_log():
    log = {"train_losses": [0.5, 0.1, -0.2], "val_losses": [0.4, 0.0, -0.1], "mean_fg_dice": [0.1, 0.4, 0.6],
           "ema_fg_dice": [0.01, 0.05, 0.1], "lrs": [0.01, 0.007, 0.004],
           "epoch_start_timestamps": [0.0, 10.0, 20.0], "epoch_end_timestamps": [9.0, 19.5, 29.0],
           "dice_per_class_or_region": [[0.2, 0.0], [0.7, 0.1], [0.9, 0.3]]}
    table = training_curves(log)
    assert list(table["epoch"]) == [0, 1, 2]
    assert list(table["epoch_seconds"]) == [9.0, 9.5, 9.0]
    assert list(table["pseudo_dice_class_2"]) == [0.0, 0.1, 0.3]
    # An epoch still running (timestamps logged, losses not yet) is left out.
    log["epoch_start_timestamps"].append(30.0)
    assert len(training_curves(log)) == 3


def test_checkpoints_are_written_under_a_temporary_name_then_renamed(tmp_path):
    seen = []

    def save_checkpoint(filename):
        seen.append(filename)
        with open(filename, "wb") as fh:
            fh.write(b"weights")

    trainer = SimpleNamespace(save_checkpoint=save_checkpoint, disable_checkpointing=False)
    make_checkpoints_atomic(trainer)
    target = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(target))
    assert target.read_bytes() == b"weights"
    assert seen[0] != str(target) and not os.path.exists(seen[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"epoch 2")

    def broken_save(filename):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    trainer = SimpleNamespace(save_checkpoint=broken_save, disable_checkpointing=False)
    make_checkpoints_atomic(trainer)
    with pytest.raises(OSError):
        trainer.save_checkpoint(str(target))
    assert target.read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_settings_are_nnunet_trainer_attributes():
    from workflow_scripts.nnunet_seam import find_trainer_class

    trainer_class = find_trainer_class("nnUNetTrainer")
    source = __import__("inspect").getsource(trainer_class.__init__)
    for name in TRAINER_SETTINGS:
        assert f"self.{name} =" in source, name


def test_validation_predicts_with_the_tile_batched_predictor_and_restores_nnunets():
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as base
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from workflow_scripts.nnunet_seam import tile_batch_predictor_class, tile_batched_validation

    assert base.nnUNetPredictor is nnUNetPredictor
    with pytest.raises(KeyboardInterrupt), tile_batched_validation(tile_step_size=1.0, use_mirroring=False,
                                                                   tile_batch_divisor=2):
        assert issubclass(base.nnUNetPredictor, tile_batch_predictor_class())
        assert issubclass(base.nnUNetPredictor, nnUNetPredictor)
        # nnU-Net's own call (tile step 0.5, mirroring) gets the study's settings instead.
        predictor = base.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                         perform_everything_on_device=True, device=torch.device("cpu"),
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        assert predictor.tile_step_size == 1.0 and predictor.use_mirroring is False
        assert predictor.tile_batch_divisor == 2  # a retried training's validation: half the tiles per pass
        raise KeyboardInterrupt  # a killed validation
    assert base.nnUNetPredictor is nnUNetPredictor


def test_one_process_validation_pools_run_as_threads_and_nnunets_are_restored(monkeypatch):
    import multiprocessing
    from multiprocessing.pool import ThreadPool

    import nnunetv2.configuration
    import nnunetv2.evaluation.evaluate_predictions as evaluation
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as base

    from workflow_scripts.nnunet_seam import in_process_validation_pools

    monkeypatch.setattr(nnunetv2.configuration, "default_num_processes", 1)
    with pytest.raises(KeyboardInterrupt), in_process_validation_pools():
        for module in (base, evaluation):
            with module.multiprocessing.get_context("spawn").Pool(1) as pool:
                assert isinstance(pool, ThreadPool)
                assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
                assert all(worker.is_alive() for worker in pool._pool)  # what nnU-Net checks of its workers
        raise KeyboardInterrupt  # a killed validation
    assert base.multiprocessing is multiprocessing and evaluation.multiprocessing is multiprocessing

    monkeypatch.setattr(nnunetv2.configuration, "default_num_processes", 2)  # larger pools stay processes
    with in_process_validation_pools():
        assert base.multiprocessing is multiprocessing and evaluation.multiprocessing is multiprocessing


def test_an_nnunet_outside_the_supported_range_stops_with_the_fix(monkeypatch):
    from workflow_scripts import nnunet_seam

    installed = nnunet_seam.metadata.version("nnunetv2")
    assert nnunet_seam.require_supported_nnunet() == installed  # the pinned version is supported
    nnunet_seam.require_supported_nnunet.cache_clear()
    monkeypatch.setattr(nnunet_seam.metadata, "version", lambda package: "2.9.0")
    try:
        with pytest.raises(RuntimeError, match=r"nnunetv2 2.9.0 is installed.*pip install -r requirements.txt"):
            nnunet_seam.require_supported_nnunet()
        with pytest.raises(RuntimeError, match="nnunetv2 2.9.0"):
            nnunet_seam.find_trainer_class("nnUNetTrainer")
    finally:
        nnunet_seam.require_supported_nnunet.cache_clear()



def test_folds_are_overlaid_in_one_figure(tmp_path):
    from workflow_scripts.training import plot_folds_entry

    curves = []
    for fold in range(3):
        path = tmp_path / f"fold_{fold}_curves.tsv"
        pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [0.5, 0.1, -0.2], "val_loss": [0.4, 0.0, -0.1],
                      "pseudo_dice_mean": [0.2, 0.5, 0.7], "pseudo_dice_ema": [0.2, 0.3, 0.45]}).to_csv(
            path, sep="\t", index=False)
        curves.append(str(path))
    plot_folds_entry(["--configuration", "resenc", "--curves", *curves, "--out", str(tmp_path / "folds.png")])
    assert (tmp_path / "folds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



@pytest.mark.parametrize("encoding", ["float16", "uint8"])
def test_validation_export_saves_encoded_probabilities_and_nnunets_function_is_restored(tmp_path, encoding):
    """nnU-Net's own export (export_prediction_from_logits, unchanged) writes the .npz; inside the context the
    probabilities it gets are encoded as the study stores them and the label map is the one computed before."""
    import numpy as np
    from nnunetv2.inference import export_prediction

    from workflow_scripts.io import encode_probabilities
    from workflow_scripts.nnunet_seam import encoded_validation_probabilities

    probabilities = np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 5, 6)).transpose(3, 0, 1, 2)
    segmentation = probabilities.argmax(0).astype(np.uint8)

    def convert(*args, return_probabilities=False, **kwargs):  # stands in for the resampling to the image grid
        return (segmentation, probabilities.astype(np.float32)) if return_probabilities else segmentation

    class LabelsAndWriter:  # what export_prediction_from_logits asks of the plans
        def get_label_manager(self, dataset_json):
            return None

        def image_reader_writer_class(self):
            return self

        def write_seg(self, seg, path, properties):
            np.save(path, seg)

    original = export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape
    export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape = convert
    try:
        with encoded_validation_probabilities(encoding):
            export_prediction.export_prediction_from_logits(None, {}, None, LabelsAndWriter(), {"file_ending": ".npy"},
                                                            str(tmp_path / "case_0"), save_probabilities=True)
        assert export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape is convert
    finally:
        export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape = original
    with np.load(tmp_path / "case_0.npz") as data:
        assert data["probabilities"].dtype == np.dtype(encoding)
        assert np.array_equal(data["probabilities"], encode_probabilities(probabilities.astype(np.float32), encoding))
    assert np.array_equal(np.load(tmp_path / "case_0.npy"), segmentation)


def test_seeded_runs_draw_the_same_numbers_and_fold_epoch_or_seed_change_them():
    """nnU-Net draws weights, patches and augmentation from Python's, NumPy's and torch's global generators."""
    import random

    import numpy as np

    from workflow_scripts.training import seed_training

    def draws(seed, fold, epoch):
        used = seed_training(seed, fold, epoch)
        return used, (random.random(), float(np.random.uniform()), float(torch.rand(1)))

    first = draws(0, 1, 0)
    assert draws(0, 1, 0) == first
    others = [draws(1, 1, 0), draws(0, 2, 0), draws(0, 1, 3)]
    for used, numbers in others:
        assert used != first[0]
        assert all(a != b for a, b in zip(numbers, first[1]))  # each generator reseeded
    # None leaves the generators where they are: the draws go on with the sequence, not from its start.
    def three():
        return random.random(), float(np.random.uniform()), float(torch.rand(1))

    seed_training(0, 1, 0)
    three()
    second = three()
    seed_training(0, 1, 0)
    three()
    assert seed_training(None, 1, 0) is None
    assert three() == second != first[1]


@pytest.mark.parametrize("every, epochs, plotted", [(1, 4, [0, 1, 2, 3]), (4, 4, [3]), (3, 10, [2, 5, 8, 9])])
def test_progress_plot_is_drawn_every_nth_epoch_and_after_the_last(every, epochs, plotted):
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # Where nnU-Net draws it: once per epoch, in on_epoch_end, before the epoch counter moves on.
    source = inspect.getsource(nnUNetTrainer.on_epoch_end)
    assert source.index("self.logger.plot_progress_png(self.output_folder)") < source.index("self.current_epoch += 1")
    drawn = []
    trainer = SimpleNamespace(current_epoch=0, num_epochs=epochs, logger=SimpleNamespace(
        plot_progress_png=lambda folder: drawn.append((trainer.current_epoch, folder))))
    plot_progress_every(trainer, every)
    for epoch in range(epochs):  # what on_epoch_end does each epoch
        trainer.current_epoch = epoch
        trainer.logger.plot_progress_png("fold_0")
    assert drawn == [(epoch, "fold_0") for epoch in plotted]
