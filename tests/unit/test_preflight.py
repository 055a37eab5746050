"""The preflight's checks, each failure injected on the toy study's images: CUDA asked for and absent, too little
disk, TotalSegmentator's weights missing, nnU-Net outside the seam's window; and the gate's one message."""
import json
import math

import pandas as pd
import pytest

from workflow_scripts import preflight
from workflow_scripts.config import validate_config
from workflow_scripts.settings import read_settings, verb_settings

pytestmark = pytest.mark.unit


def settings_of(config, **changes):
    config = json.loads(json.dumps(config))
    for path, value in changes.items():
        section, key = path.split(".")
        config.setdefault(section, {})[key] = value
    return read_settings("preflight", verb_settings(validate_config(config), "preflight"))


def toy_images(toy_config):
    from pathlib import Path

    train = sorted(Path(toy_config["data"]["images_tr"]).glob("*.nii.gz"))
    test = sorted(Path(toy_config["data"]["images_ts"]).glob("*.nii.gz"))
    assert train and test
    return train, test


def checks(table, check):
    return table[table["check"] == check]


def run_checks(settings, toy_config, tmp_path):
    train, test = toy_images(toy_config)
    # No plans: every case here stops before the probes, which would need them.
    return preflight.run_preflight(settings, {}, train, test, tmp_path / "results", tmp_path / "work", threads=1)


def gate_message(table, tmp_path):
    path = tmp_path / "preflight.tsv"
    table.to_csv(path, sep="\t", index=False)
    with pytest.raises(SystemExit) as stop:
        preflight.preflight_gate(path, tmp_path / "passed.json")
    assert not (tmp_path / "passed.json").exists()
    return str(stop.value)


def test_cuda_asked_without_a_gpu_fails_naming_the_fix_and_runs_no_probe(toy_config, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine; also on a GPU one
    table = run_checks(settings_of(toy_config, **{"compute.device": "cuda"}), toy_config, tmp_path)
    device = checks(table, "device").iloc[0]
    assert device["status"] == "fail"
    assert "sees no GPU" in device["detail"] and "compute.resources.train_fold.gpu: true" in device["detail"]
    assert "which is false now" in device["detail"]  # the toy config asks for no GPU
    assert "compute.device: cpu" in device["detail"]
    assert checks(table, "training")["status"].tolist() == ["skipped"]
    assert checks(table, "prediction")["status"].tolist() == ["skipped"]
    message = gate_message(table, tmp_path)
    assert message.startswith("error: preflight: 1 check(s) failed; nothing was trained")
    assert "- device (cuda): compute.device is 'cuda'" in message and "Traceback" not in message


def test_too_little_disk_fails_with_the_projection_and_the_fix(toy_config, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = settings_of(toy_config, **{"compute.device": "cuda", "preflight.disk_margin": 1e9})
    table = run_checks(settings, toy_config, tmp_path)
    disk = checks(table, "disk").set_index("measure")
    assert set(disk["status"]) == {"fail"}
    assert disk.loc["needed_gb", "value"] > disk.loc["free_gb", "value"] > 0
    assert "probability_encoding: uint8" in disk.loc["needed_gb", "detail"]
    assert "checkpoints not counted" in disk.loc["needed_gb", "detail"]  # no training ran to measure them
    # The same study with the default margin fits: the threshold is what failed.
    fits = checks(run_checks(settings_of(toy_config, **{"compute.device": "cuda"}), toy_config, tmp_path), "disk")
    assert set(fits["status"]) == {"pass"}
    message = gate_message(table, tmp_path)
    assert "2 check(s) failed" in message  # the device and the disk, each named once
    assert message.count("- disk (results):") == 1 and message.count("- device (cuda):") == 1


def test_the_disk_projection_adds_each_folder_by_voxels_encoding_and_checkpoints():
    channels, folds = {"multi": 3, "metastasis": 2}, {"multi": 5, "metastasis": 5}
    parts = preflight.projected_bytes(10**6, 10**5, channels, folds, {"multi": 100.0, "metastasis": 50.0}, "float16",
                                      keep_test_probabilities=True)
    assert parts == {"nnUNet_preprocessed": pytest.approx(10**6 * 1.16 * 2),
                     "validation_copies_and_out_of_fold": pytest.approx(2 * 10**6 * 1.2 * 5),
                     "new_case_probabilities": pytest.approx(10**5 * 1.2 * 5),
                     "checkpoints": pytest.approx((100 + 50) * 2 * 5)}
    smaller = preflight.projected_bytes(10**6, 10**5, channels, folds, {}, "uint8", keep_test_probabilities=False)
    assert smaller["new_case_probabilities"] == 0 and smaller["checkpoints"] == 0
    assert smaller["validation_copies_and_out_of_fold"] == pytest.approx(
        parts["validation_copies_and_out_of_fold"] * 0.16 / 1.2)


def test_missing_totalsegmentator_weights_fail_with_the_download_command(toy_config, tmp_path):
    from totalseg_fixture import build_tiny_totalseg_home

    anatomy = {"source": "totalsegmentator", "totalseg_home": str(tmp_path / "empty_home"), "task": "total"}
    settings = settings_of({**toy_config, "anatomy": anatomy})["anatomy"]
    missing = preflight.weights_check(settings, tmp_path / "empty_home")[0]
    assert missing["status"] == "fail" and "totalseg_download_weights -t total_fast" in missing["detail"]
    assert str(tmp_path / "empty_home") in missing["detail"]
    home = build_tiny_totalseg_home(tmp_path / "home")
    present = preflight.weights_check(settings, home)[0]
    assert present["status"] == "pass"
    assert preflight.weights_check(settings_of(toy_config)["anatomy"], None)[0]["status"] == "skipped"  # precomputed


def test_nnunet_outside_the_seams_window_fails_with_its_fix(monkeypatch):
    from workflow_scripts import nnunet_seam

    def unsupported():
        raise RuntimeError("nnunetv2 2.9.1 is installed, but ... install the pinned version")

    monkeypatch.setattr(nnunet_seam, "require_supported_nnunet", unsupported)
    check = preflight.nnunet_version_check()[0]
    assert check["status"] == "fail" and "install the pinned version" in check["detail"]


def test_a_passing_table_goes_through_the_gate_with_the_study_projections(tmp_path):
    rows = [preflight.row("device", "pass", "cpu", "cpu"),
            *preflight.measured("training", "a", "", {"projected_training_hours": (2.5, "h")}),
            *preflight.measured("training", "b", "", {"projected_training_hours": (1.5, "h")}),
            *preflight.measured("prediction", "case", "", {"projected_new_case_hours": (0.25, "h")}),
            *preflight.measured("disk", "results", "", {"free_gb": (100.0, "GB"), "needed_gb": (10.0, "GB")}),
            preflight.row("totalsegmentator_weights", "skipped", "precomputed")]
    path = tmp_path / "preflight.tsv"
    pd.DataFrame(rows, columns=preflight.COLUMNS).to_csv(path, sep="\t", index=False)
    summary = preflight.preflight_gate(path, tmp_path / "passed.json")
    assert summary == json.loads((tmp_path / "passed.json").read_text())
    assert summary["training_hours"] == 4.0 and summary["new_case_hours"] == 0.25
    assert summary["totalsegmentator_hours"] is None and summary["disk_needed_gb"] == 10.0
    assert not math.isnan(summary["disk_free_gb"])
