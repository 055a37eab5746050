"""The model bundle: what is packed, checksums that catch a damaged copy, and the config of a run with it."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from bundle_fixture import checkpoint, export
from workflow_scripts.bundle import (BundleError, check_runs_no_code, predict_config, used_configurations,
                                     verify_files)
from workflow_scripts.config import ConfigError, validate_config

pytestmark = pytest.mark.unit


def test_the_bundle_holds_the_chosen_ensembles_models_and_settings(study, tmp_path):
    manifest = export(study, tmp_path / "bundle")
    bundle = tmp_path / "bundle"
    assert used_configurations(json.loads(study["selection"].read_text())) == ["a", "c"]
    assert list(manifest["configurations"]) == ["a", "c"]  # b is not in the chosen ensemble: not packed
    assert manifest["configurations"]["c"] == {"folds": [0, 1], "channel_labels": [0, 2], "trainer": "nnUNetTrainer",
                                               "plans": "nnUNetPlans"}
    # Tensors and JSON, no pickle: the weights of each fold as trained, and what nnU-Net's predictor reads besides.
    assert manifest["format"] == 2 and not [p for p in bundle.rglob("*") if p.suffix in (".pth", ".pkl")]
    from safetensors.torch import load_file

    weights = load_file(bundle / "models/a/fold_1/weights.safetensors")
    assert weights.keys() == checkpoint("a", 1)["network_weights"].keys()
    assert all(torch.equal(weights[k], v) for k, v in checkpoint("a", 1)["network_weights"].items())
    assert json.loads((bundle / "models/a/fold_1/checkpoint.json").read_text()) == {
        "trainer_name": "nnUNetTrainer", "configuration": "3d_fullres", "inference_allowed_mirroring_axes": [0, 1, 2],
        "current_epoch": 4}
    assert not (bundle / "models/b").exists()
    assert json.loads((bundle / "ensemble.json").read_text())["members"] == {"a": 1.0}
    assert yaml.safe_load((bundle / "config.yaml").read_text())["labels"] == study["config"]["labels"]
    assert verify_files(bundle) == len(manifest["files"]) == 2 * (3 + 2 * 2) + 4
    assert not (tmp_path / "bundle.partial").exists()
    # A damaged or missing file is named, with the fix.
    (bundle / "models/c/fold_0/weights.safetensors").write_bytes(b"c weights 0 but truncated")
    with pytest.raises(BundleError, match="models/c/fold_0/weights.safetensors differs from the exported file"):
        verify_files(bundle, "models/c/")
    assert verify_files(bundle, "models/a/") == 7  # only the configuration at hand is read
    (bundle / "models/a/plans.json").unlink()
    with pytest.raises(BundleError, match="models/a/plans.json is missing; copy the whole bundle folder again"):
        verify_files(bundle, "models/a/")


def test_an_unfinished_fold_stops_the_export_and_leaves_no_bundle(study, tmp_path):
    fold_folder = Path(json.loads(study["summaries"]["c"][1].read_text())["output_folder"])
    (fold_folder / "checkpoint_final.pth").unlink()
    with pytest.raises(BundleError, match="c: no .*fold_1/checkpoint_final.pth; the fold's training did not finish"):
        export(study, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_run_with_a_bundle_takes_the_studys_config_and_this_runs_data(study, tmp_path, toy_dir):
    export(study, tmp_path / "bundle")
    run = {"bundle": str(tmp_path / "bundle"), "data": {"images_ts": str(toy_dir / "imagesTs")},
           "compute": {"device": "cpu"}}
    config = validate_config(predict_config(run))
    assert config["data"]["images_tr"] is None and config["data"]["images_ts"] == str(toy_dir / "imagesTs")
    assert config["configurations"] == study["config"]["configurations"]
    assert config["compute"]["resources"] == study["config"]["compute"]["resources"]  # laid over, not replaced
    with pytest.raises(ConfigError, match="labels: set by the bundle's study"):
        predict_config({**run, "labels": {"background": 0}})
    with pytest.raises(ConfigError, match="bundle: no config.yaml in"):
        predict_config({**run, "bundle": str(tmp_path)})
    with pytest.raises(ConfigError, match="data.images_tr: a run with a bundle segments new cases only"):
        validate_config({**predict_config(run), "data": {**config["data"], "images_tr": str(toy_dir / "imagesTr")}})
    with pytest.raises(ConfigError, match="data.images_tr: the folder of training cases is needed"):
        validate_config({**study["config"], "data": {**study["config"]["data"], "images_tr": None}})




class WritesAFile:
    """A pickle whose loading runs a command: it writes the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'w').write('ran')",))


def rewrite_checksums(bundle):
    """What an attacker does to make a bundle's manifest match the files they swapped in."""
    from workflow_scripts.bundle import sha256

    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"] = {str(p.relative_to(bundle)): sha256(p) for p in sorted(bundle.rglob("*"))
                         if p.is_file() and p.name != "bundle.json"}
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("attack", ["format 1", "pickle beside", "pickle as weights", "plans import"])
def test_a_bundle_that_would_run_code_is_refused_and_the_code_never_runs(study, tmp_path, toy_dir, attack):
    """Segmenting with a bundle (the predict verb, in its own process) never unpickles: a crafted checkpoint whose
    loading would write a file, with the manifest's checksums rewritten to match, is refused with a message, and
    the file does not appear; so are plans that name something to import and call other than a network layer."""
    import subprocess
    import sys

    from workflow_scripts.config import validate_config
    from workflow_scripts.settings import verb_settings

    bundle = tmp_path / "bundle"
    export(study, bundle)
    check_runs_no_code(bundle, ["a", "c"])  # the exported bundle passes
    ran = tmp_path / "payload_ran"
    payload = tmp_path / "crafted.pth"
    torch.save(WritesAFile(ran), payload)
    fold = bundle / "models/a/fold_0"
    if attack == "format 1":  # the layout this workflow wrote before: nnU-Net's pickled checkpoints
        for name in ("weights.safetensors", "checkpoint.json"):
            (fold / name).unlink()
        shutil.copyfile(payload, fold / "checkpoint_final.pth")
        manifest = rewrite_checksums(bundle)
        (bundle / "bundle.json").write_text(json.dumps({**manifest, "format": 1}))
        expected = "is in format 1, whose checkpoints are pickles that can run code when loaded"
    elif attack == "pickle beside":
        shutil.copyfile(payload, fold / "checkpoint_final.pth")
        rewrite_checksums(bundle)
        expected = "models/a/fold_0/checkpoint_final.pth would be unpickled, which can run code"
    elif attack == "pickle as weights":
        shutil.copyfile(payload, fold / "weights.safetensors")
        rewrite_checksums(bundle)
        expected = "models/a/fold_0/weights.safetensors is not a safetensors file"
    else:
        plans = {"configurations": {"3d_fullres": {"architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"conv_op": "torch.nn.modules.conv.Conv3d", "nonlin": "torch.nn.modules.module.os.system",
                            "nonlin_kwargs": {"command": f"touch {ran}"}},
            "_kw_requires_import": ["conv_op", "nonlin"]}}}}
        (bundle / "models/a/plans.json").write_text(json.dumps(plans))
        rewrite_checksums(bundle)
        expected = r"models/a/plans.json names \['torch.nn.modules.module.os.system'\] for nnU-Net to import"
    with pytest.raises(BundleError, match=expected):
        check_runs_no_code(bundle, ["a", "c"])
    config = validate_config(predict_config({"bundle": str(bundle), "data": {"images_ts": str(toy_dir / "imagesTs")},
                                             "compute": {"device": "cpu"}}))
    named = config["configurations"]  # the fixture's configurations a and c stand for two of the toy's
    config["configurations"] = {"a": named["resenc_multiclass"], "c": named["metastasis_only"]}
    settings = verb_settings(config, "predict", ["a", "c"])
    image = next((toy_dir / "imagesTs").glob("*.nii.gz"))
    segment = subprocess.run(
        [sys.executable, "-m", "workflow_scripts", "predict", "--nnunet-root", str(tmp_path / "nnunet"), "--threads",
         "1", "--bundle", str(bundle), "--configurations", "a", "c", "--selection", str(bundle / "ensemble.json"),
         "--settings", json.dumps(settings), "--images", str(image), "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert segment.returncode != 0 and "Traceback" not in segment.stderr, segment.stderr[-3000:]
    assert re.search(expected, segment.stderr), segment.stderr[-3000:]
    assert not ran.exists() and not (tmp_path / "out").exists()
    # The payload is live: unpickling the crafted file, as nnU-Net's predictor loads a checkpoint, runs it.
    subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
                    str(payload)], capture_output=True, timeout=300)
    assert ran.read_text() == "ran"


def test_the_bundle_carries_its_model_card(study, tmp_path):
    """MODEL_CARD.md and its fields in bundle.json: intended use from the config, the training data as QC measured
    it (the excluded case out of the ranges, named with why), the nested estimate first and the selection-biased
    rows marked, versions and licences; the card is among the checksummed files."""
    config = study["config"]
    config["model_card"] = {**config["model_card"], "intended_use": "Finding ovarian lesions in research CT.",
                            "licence": "CC-BY-NC-4.0"}
    manifest = export(study, tmp_path / "bundle")
    card = manifest["model_card"]
    assert card["intended_use"] == "Finding ovarian lesions in research CT." and card["model_licence"] == "CC-BY-NC-4.0"
    assert card["labels"] == config["labels"]
    codes = config["dicom_results"]["segment_codes"]
    assert card["label_codes"] == {name: codes[name] for name in ("primary", "metastasis")}  # the toy's SNOMED codes
    data = card["training_data"]
    assert data["cases"] == 2 and data["excluded_by_qc"] == {"c3": "label grid differs from the image's"}
    assert data["size_voxels"]["z"] == [30, 40] and data["spacing_mm"]["z"] == [1.25, 2.5]  # c3 (90, 5.0) left out
    assert data["lesions_per_label"] == {"1": 3, "2": 3} and data["cases_with_label"] == {"1": 2, "2": 1}
    assert data["dicom_cases"] == 1 and data["scanner_makers"] == ["Maker A"]
    scores = card["cross_validation"]
    assert [r["stage"] for r in scores] == ["oof_nested"] * 4 + ["ensemble"] * 4  # nsd is not a card metric
    assert all(r["unbiased"] and not r["selection_biased"] for r in scores[:4])
    assert all(r["selection_biased"] and not r["unbiased"] for r in scores[4:])
    assert card["versions"]["nnunetv2"] and card["licences"]["these weights"] == "CC-BY-NC-4.0"
    text = (tmp_path / "bundle/MODEL_CARD.md").read_text()
    assert "Finding ovarian lesions in research CT." in text and "c3 (label grid differs from the image's)" in text
    assert "| metastasis | 2 | Morphologically Altered Structure (SCT 49755003) | Neoplasm, Metastatic (SCT 14799000) |" \
        in text
    assert text.index("| oof_nested |") < text.index("| ensemble |") and "selection-biased |" in text
    assert "MODEL_CARD.md" in manifest["files"]
