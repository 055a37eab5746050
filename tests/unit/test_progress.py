"""The progress command's readers: nnU-Net's training logs of a fold (resumed or not) and Snakemake's job table."""
import json

import pytest

from workflow_scripts.progress import fold_progress, job_counts

pytestmark = pytest.mark.unit


def epoch_lines(start_minute, epochs, dice, seconds):
    lines = []
    for k, epoch in enumerate(epochs):
        stamp = f"2026-12-07 10:{start_minute + k:02d}:00.000000"
        lines += [f"{stamp}: Epoch {epoch} ", f"{stamp}: Current learning rate: 0.01 ",
                  f"{stamp}: train_loss -0.5 ", f"{stamp}: Pseudo dice [np.float32({dice[k][0]}), np.float32({dice[k][1]})] ",
                  f"{stamp}: Epoch time: {seconds[k]} s "]
    return lines


def test_a_resumed_fold_reads_as_its_epochs_once_with_the_last_dice_and_an_estimated_end(tmp_path):
    fold = tmp_path / "Dataset503_metastasis_only" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_2"
    fold.mkdir(parents=True)
    (fold / "debug.json").write_text(json.dumps({"num_epochs": "10"}))
    first = epoch_lines(0, [0, 1, 2], [(0.1, 0.2), (0.3, 0.4), (0.5, 0.6)], [60, 62, 61])
    first.append("2026-12-07 10:03:00.000000: Epoch 3 ")  # killed during epoch 3: not finished
    second = epoch_lines(10, [3, 4, 5], [(0.7, 0.71), (0.72, 0.73), (0.8, 0.9)], [58, 70, 64])
    (fold / "training_log_2026_12_7_10_00_00.txt").write_text("\n".join(["nnU-Net's banner"] + first) + "\n")
    (fold / "training_log_2026_12_7_10_10_00.txt").write_text("\n".join(second) + "\n")
    table = fold_progress(tmp_path)
    row = table.iloc[0].to_dict()
    assert (row["configuration"], row["fold"], row["state"]) == ("metastasis_only", 2, "running or stopped")
    assert (row["epochs_done"], row["epochs_total"], row["pseudo_dice"]) == (6, 10, "0.800 0.900")
    assert row["epoch_seconds"] == 62.0  # the median of the last five: 62, 61, 58, 70, 64
    assert row["last_log"] == "2026-12-07 10:12:00"
    assert row["estimated_end"] == "2026-12-07 10:16"  # 4 epochs of 62 s after the last line
    (fold / "checkpoint_final.pth").write_bytes(b"")
    assert fold_progress(tmp_path).iloc[0][["state", "estimated_end"]].tolist() == ["finished", ""]


def test_job_counts_read_snakemakes_job_table():
    output = ("Building DAG of jobs...\nJob stats:\njob              count\n---------------  -------\nall     1\n"
              "qc_case         15\ntrain_fold      15\ntotal           31\n\nReasons:\n")
    assert job_counts(output) == {"all": 1, "qc_case": 15, "train_fold": 15}
    assert job_counts("Nothing to be done (all requested files are present and up to date).") == {}
