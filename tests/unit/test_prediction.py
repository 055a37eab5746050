import json

import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.io import read_probabilities
from workflow_scripts.prediction import gather_out_of_fold

pytestmark = pytest.mark.unit


def fold(tmp_path, k, validation_cases, shape):
    """A fold's summary and nnU-Net's validation export of its held-out cases (probabilities (C, z, y, x))."""
    folder = tmp_path / f"fold_{k}"
    (folder / "validation").mkdir(parents=True)
    for i, case in enumerate(validation_cases):
        probabilities = np.zeros((3, *shape), dtype=np.float32)
        probabilities[0] = 1.0
        probabilities[0, 0, 0, : k + i + 1] = 0.0
        probabilities[2, 0, 0, : k + i + 1] = 1.0  # metastasis voxels: k + i + 1, so the source fold shows
        np.savez(folder / "validation" / f"{case}.npz", probabilities=probabilities)
    summary = tmp_path / f"fold_{k}.json"
    summary.write_text(json.dumps({"output_folder": str(folder), "validation_cases": validation_cases}))
    return summary


def test_a_case_is_gathered_from_the_one_fold_that_held_it_out(tmp_path):
    shape = (2, 3, 8)
    image = sitk.GetImageFromArray(np.zeros(shape, dtype=np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / "b.nii.gz"))
    summaries = [fold(tmp_path, 0, ["a", "b"], shape), fold(tmp_path, 1, ["c"], shape)]
    source = gather_out_of_fold(summaries, [0, 1, 2], "b", tmp_path / "b.nii.gz", tmp_path / "out", encoding="float16")
    assert source == str(tmp_path / "fold_0")
    probabilities, labels = read_probabilities(tmp_path / "out" / "b.npz")
    assert labels == [0, 1, 2] and probabilities.shape == (3, *shape)
    segmentation = sitk.ReadImage(str(tmp_path / "out" / "b.nii.gz"))
    np.testing.assert_allclose(segmentation.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    assert (sitk.GetArrayFromImage(segmentation) == 2).sum() == 2  # fold 0, second case
    with pytest.raises(RuntimeError, match="z was validated in 0 folds"):
        gather_out_of_fold(summaries, [0, 1, 2], "z", tmp_path / "b.nii.gz", tmp_path / "out", encoding="float16")
    summaries.append(fold(tmp_path, 2, ["b"], shape))
    with pytest.raises(RuntimeError, match="b was validated in 2 folds"):
        gather_out_of_fold(summaries, [0, 1, 2], "b", tmp_path / "b.nii.gz", tmp_path / "out", encoding="float16")


def sliding_window_predictors(tile_batch_size, use_mirroring):
    """nnU-Net's own predictor and the tile-batched one around the same small random network."""
    import torch
    from types import SimpleNamespace

    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from workflow_scripts.nnunet_seam import tile_batch_predictor_class

    torch.manual_seed(0)
    network = PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=(4, 8, 16), conv_op=torch.nn.Conv3d,
                            kernel_sizes=3, strides=(1, 2, 2), n_conv_per_stage=1, num_classes=3,
                            n_conv_per_stage_decoder=1, norm_op=torch.nn.InstanceNorm3d,
                            norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU).eval()
    predictors = []
    for cls in (nnUNetPredictor, tile_batch_predictor_class()):
        predictor = cls(tile_step_size=0.5, use_mirroring=use_mirroring, perform_everything_on_device=False,
                        device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        predictor.network = network
        predictor.configuration_manager = SimpleNamespace(patch_size=[8, 16, 16], batch_size=2)
        predictor.label_manager = SimpleNamespace(num_segmentation_heads=3)
        predictor.allowed_mirroring_axes = (0, 1, 2)
        predictors.append(predictor)
    predictors[1].tile_batch_size = tile_batch_size
    return predictors


@pytest.mark.parametrize("tile_batch_size,use_mirroring", [(1, False), (2, True), (3, False), (None, False)])
def test_tile_batches_give_nnunets_sliding_window_logits(tile_batch_size, use_mirroring):
    import torch

    nnunet, batched = sliding_window_predictors(tile_batch_size, use_mirroring)
    image = torch.randn((1, 13, 37, 30), generator=torch.Generator().manual_seed(1))  # 3 x 4 x 3 tiles, uneven
    assert len(nnunet._internal_get_sliding_window_slicers(image.shape[1:])) == 36
    expected = nnunet.predict_sliding_window_return_logits(image)
    passes = []  # batch size of every network pass
    batched.network.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape[0]))
    got = batched.predict_sliding_window_return_logits(image)
    assert got.shape == expected.shape == (3, 13, 37, 30)
    per_pass = tile_batch_size or 2  # None: the configuration's training batch size
    assert passes == [min(per_pass, 36 - i) for i in range(0, 36, per_pass)] * (8 if use_mirroring else 1)
    if tile_batch_size == 1:
        assert torch.equal(got, expected)  # the same operations in the same order
    else:  # float16 sums of float32 logits: batch size only changes torch's convolution kernel
        torch.testing.assert_close(got.float(), expected.float(), atol=2e-3, rtol=2e-3)


def test_study_models_come_from_the_fold_summaries(tmp_path):
    """The predict verb's models of a study: one folder per configuration, the folds its summaries name."""
    import json

    from workflow_scripts.prediction import study_models

    folder = tmp_path / "nnUNet_results" / "Dataset501_a" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    summaries = []
    for fold in (0, 1):
        path = tmp_path / f"fold_{fold}.json"
        path.write_text(json.dumps({"fold": fold, "output_folder": str(folder / f"fold_{fold}")}))
        summaries.append(path)
    models = study_models({"a": summaries}, {"a": [0, 1, 2]})
    assert models == {"a": {"folder": folder, "folds": [0, 1], "labels": [0, 1, 2]}}
    summaries[1].write_text(json.dumps({"fold": 1, "output_folder": str(tmp_path / "elsewhere" / "fold_1")}))
    with pytest.raises(ValueError, match="trained in several folders"):
        study_models({"a": summaries}, {"a": [0, 1, 2]})


def test_a_uint8_validation_export_is_gathered_and_stored_as_the_study_asks(tmp_path):
    """nnU-Net's validation files hold what the seam gave its export (float16 or uint8); gather_oof decodes either
    and stores its own copy in the study's encoding."""
    shape = (2, 3, 8)
    image = sitk.GetImageFromArray(np.zeros(shape, dtype=np.int16))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    probabilities = np.random.default_rng(3).dirichlet([1, 1, 1], size=shape).transpose(3, 0, 1, 2)
    (tmp_path / "fold_0" / "validation").mkdir(parents=True)
    np.savez(tmp_path / "fold_0/validation/a.npz", probabilities=np.rint(probabilities * 255).astype(np.uint8))
    summary = tmp_path / "fold_0.json"
    summary.write_text(json.dumps({"output_folder": str(tmp_path / "fold_0"), "validation_cases": ["a"]}))
    for encoding, dtype in (("uint8", np.uint8), ("float16", np.float16)):
        gather_out_of_fold([summary], [0, 1, 2], "a", tmp_path / "a.nii.gz", tmp_path / encoding, encoding=encoding)
        with np.load(tmp_path / encoding / "a.npz") as data:
            assert data["probabilities"].dtype == dtype
        gathered, _ = read_probabilities(tmp_path / encoding / "a.npz")
        np.testing.assert_allclose(gathered, probabilities, atol=0.5 / 255 + 1e-3)
    uint8, _ = read_probabilities(tmp_path / "uint8" / "a.npz")
    assert np.array_equal(np.rint(uint8 * 255), np.rint(probabilities * 255))  # no second rounding


class FixedPredictor:
    """A stand-in for nnU-Net's predictor: fixed probabilities whatever the image."""

    def __init__(self, probabilities):
        self.probabilities = probabilities

    def predict_single_npy_array(self, image, properties, segmentation_previous_stage, output_file, return_probabilities):
        indices = np.argmax(self.probabilities, axis=0)
        return (indices, self.probabilities) if return_probabilities else indices

    def predict_probabilities(self, image, properties):
        return self.probabilities.copy()  # the workflow rounds and accumulates in place


@pytest.mark.parametrize("encoding", ["float16", "uint8"])
@pytest.mark.parametrize("keep", [True, False])
def test_new_cases_break_near_ties_as_the_stored_stages_do(tmp_path, monkeypatch, encoding, keep):
    """One tie rule on every path: label maps come from probabilities as stored (``as_stored``), the lowest label
    winning an exact tie. At two voxels both configurations put the metastasis 2e-5 ahead of the primary, less
    than either encoding's rounding: as stored it is an exact tie, so primary. The new case's maps are then those
    ``ensemble_case`` builds from the stored files, as the out-of-fold and test stages are built."""
    from workflow_scripts import prediction
    from workflow_scripts.ensemble import ensemble_case
    from workflow_scripts.io import as_stored, labels_from_probabilities

    shape = (1, 2, 2)
    near_tie, clear, background = [0.2, 0.39999, 0.40001], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]
    voxels = np.array([near_tie, clear, background, near_tie], np.float32)  # (voxel, class)
    probabilities = voxels.T.reshape(3, *shape)
    assert labels_from_probabilities(probabilities, [0, 1, 2]).ravel().tolist() == [2, 2, 0, 2]  # unrounded
    stored = as_stored(probabilities.copy(), encoding)
    assert stored[1, 0, 0, 0] == stored[2, 0, 0, 0]  # rounding made the near tie exact
    assert labels_from_probabilities(stored, [0, 1, 2]).ravel().tolist() == [1, 2, 0, 1]
    monkeypatch.setattr(prediction, "make_predictor", lambda *args: FixedPredictor(probabilities))
    (tmp_path / "images").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.int16)), str(tmp_path / "images" / "new.nii.gz"))
    models = {name: {"folder": tmp_path, "folds": [0], "labels": [0, 1, 2]} for name in ("a", "b")}
    selection = {"members": {"a": 1.0, "b": 1.0}, "fusions": []}
    prediction.predict_new_cases(models, selection, ["new"], tmp_path / "images", tmp_path / "out",
                                 {"save_probabilities": keep, "probability_encoding": encoding}, "cpu", 1)
    ensemble = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out/ensemble/new.nii.gz")))
    assert ensemble.ravel().tolist() == [1, 2, 0, 1]
    for name in models:  # each configuration's map too
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / name / "new.nii.gz")))
        assert labels.ravel().tolist() == [1, 2, 0, 1]
    if keep:  # the study's path from the stored files gives the same map
        ensemble_case(selection, tmp_path / "out", tmp_path / "images/new.nii.gz", tmp_path / "study", "new")
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "study/new.nii.gz"))), ensemble)


@pytest.mark.parametrize("tile_batch_size,divisor,per_pass", [(None, 2, 1), (4, 2, 2), (3, 4, 1), (2, 1, 2)])
def test_a_retry_passes_fewer_tiles_at_a_time(tile_batch_size, divisor, per_pass):
    """--tile-batch-divisor (2^(attempt - 1) from the rules): the network sees the tiles in passes that many
    times smaller, at least one tile, and the logits stay nnU-Net's."""
    import torch

    nnunet, batched = sliding_window_predictors(tile_batch_size, False)
    batched.tile_batch_divisor = divisor
    image = torch.randn((1, 13, 37, 30), generator=torch.Generator().manual_seed(1))
    passes = []
    batched.network.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape[0]))
    got = batched.predict_sliding_window_return_logits(image)
    assert passes == [min(per_pass, 36 - i) for i in range(0, 36, per_pass)]
    torch.testing.assert_close(got.float(), nnunet.predict_sliding_window_return_logits(image).float(),
                               atol=2e-3, rtol=2e-3)


class OutOfMemoryPredictor(FixedPredictor):
    def predict_single_npy_array(self, *args):
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    predict_probabilities = predict_single_npy_array

    def tiles_per_pass(self):
        return 2


def test_running_out_of_gpu_memory_names_the_case_and_the_settings_to_change(tmp_path, monkeypatch):
    from workflow_scripts import prediction
    from workflow_scripts.nnunet_seam import OutOfDeviceMemory, out_of_device_memory

    monkeypatch.setattr(prediction, "make_predictor", lambda *args: OutOfMemoryPredictor(None))
    (tmp_path / "images").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 2, 2), np.int16)), str(tmp_path / "images" / "new.nii.gz"))
    models = {"a": {"folder": tmp_path, "folds": [0], "labels": [0, 1]}}
    with pytest.raises(OutOfDeviceMemory) as caught:
        prediction.predict_new_cases(models, {"members": {"a": 1.0}, "fusions": []}, ["new"], tmp_path / "images",
                                     tmp_path / "out", {"save_probabilities": True, "probability_encoding": "float16"},
                                     "cpu", 1)
    message = str(caught.value)
    assert message.startswith("CUDA out of memory predicting new (2 tile(s) per network pass)")
    assert "prediction.tile_batch_size" in message and "halves" in message and "compute.resources" in message
    assert out_of_device_memory(RuntimeError("shape mismatch"), "predicting new", 2) is None  # other errors stay


@pytest.mark.parametrize("input_resampling, export_resampling", [("nnunet", "nnunet"), ("torch", "nnunet"),
                                                                 ("nnunet", "torch"), ("torch", "torch")])
def test_resampling_settings_choose_nnunets_function_per_direction(input_resampling, export_resampling):
    """Each direction resamples with the plans' function or nnU-Net's torch resampling, as the settings say, and
    the function nnU-Net cached for the plans is not the one used after the change."""
    from types import SimpleNamespace

    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from workflow_scripts.prediction import with_resampling_settings

    plans = {"architecture": {}, "resampling_fn_data": "resample_data_or_seg_to_shape",
             "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
             "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
             "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                    "force_separate_z": None},
             "resampling_fn_seg": "resample_data_or_seg_to_shape",
             "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}}
    manager = ConfigurationManager(plans)
    assert manager.resampling_fn_data.func.__name__ == "resample_data_or_seg_to_shape"  # cached now
    assert manager.resampling_fn_probabilities.func.__name__ == "resample_data_or_seg_to_shape"
    predictor = SimpleNamespace(configuration_manager=manager, device=torch.device("cpu"))
    with_resampling_settings(predictor, {"input_resampling": input_resampling,
                                         "export_resampling": export_resampling}, threads=2)
    expected = {"nnunet": "resample_data_or_seg_to_shape", "torch": "resample_torch_fornnunet"}
    for function, setting in ((manager.resampling_fn_data, input_resampling),
                              (manager.resampling_fn_probabilities, export_resampling)):
        assert function.func.__name__ == expected[setting]
        if setting == "torch":
            assert function.keywords == {"is_seg": False, "num_threads": 2, "device": torch.device("cpu")}
    # The nonzero mask preprocessing resamples and prediction drops: always torch's, as a label map.
    assert manager.resampling_fn_seg.func.__name__ == "resample_torch_fornnunet"
    assert manager.resampling_fn_seg.keywords == {"is_seg": True, "num_threads": 2, "device": torch.device("cpu")}
    mask = np.zeros((1, 8, 12, 12), np.int8)
    mask[:, :, :2] = -1
    assert set(np.unique(manager.resampling_fn_seg(mask, (6, 18, 18), (1.0, 0.8, 0.8), (1.33, 0.53, 0.53)))) == {-1, 0}
    # Either function brings a scan to the same shape: (channels, z, y, x).
    data = np.random.default_rng(0).random((1, 8, 12, 12), dtype=np.float32)
    resampled = manager.resampling_fn_data(data, (6, 18, 18), (1.0, 0.8, 0.8), (1.33, 0.53, 0.53))
    assert np.asarray(resampled).shape == (1, 6, 18, 18)


@pytest.mark.parametrize("export_resampling", ["nnunet", "torch"])
@pytest.mark.parametrize("logits_dtype", ["float16", "float32"])
@pytest.mark.parametrize("cropped", [True, False])
def test_the_lean_export_gives_nnunets_probabilities_bit_for_bit(export_resampling, logits_dtype, cropped):
    """``export_probabilities`` (one class resampled at a time, the softmax in place by chunks, no label map) gives
    the probabilities of nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` on one thread,
    the same values bit for bit with the plans' resampling (within 1e-6 with torch's), with anisotropic spacings
    (separate z), odd shapes, a crop to revert or none, and the float16 logits of the sliding window or float32
    ones."""
    from types import SimpleNamespace

    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from workflow_scripts.nnunet_seam import export_probabilities
    from workflow_scripts.prediction import with_resampling_settings

    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    configuration = {"spacing": [2.5, 0.8, 0.8], "architecture": {}, "patch_size": [8, 16, 16], "batch_size": 2,
                     **{f"resampling_fn_{step}": "resample_data_or_seg_to_shape" for step in
                        ("data", "seg", "probabilities")},
                     "resampling_fn_data_kwargs": {**resampling, "order": 3},
                     "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
                     "resampling_fn_probabilities_kwargs": resampling}
    plans = PlansManager({"dataset_name": "Dataset999_x", "plans_name": "p", "transpose_forward": [0, 1, 2],
                          "transpose_backward": [0, 1, 2], "original_median_spacing_after_transp": [2.5, 0.8, 0.8],
                          "configurations": {"3d_fullres": configuration}, "label_manager": "LabelManager",
                          "image_reader_writer": "SimpleITKIO"})
    predictor = SimpleNamespace(plans_manager=plans, configuration_manager=plans.get_configuration("3d_fullres"),
                                label_manager=plans.get_label_manager({"labels": {"background": 0, "a": 1, "b": 2}}),
                                device=torch.device("cpu"))
    with_resampling_settings(predictor, {"input_resampling": "nnunet", "export_resampling": export_resampling}, 2)
    shape = (17, 21, 26)  # the cropped scan's grid at 1 x 0.7 x 0.7 mm
    full, box = ((20, 25, 26), [[1, 18], [2, 23], [0, 26]]) if cropped else (shape, [[0, 17], [0, 21], [0, 26]])
    properties = {"spacing": [1.0, 0.7, 0.7], "shape_after_cropping_and_before_resampling": shape,
                  "shape_before_cropping": full, "bbox_used_for_cropping": box}
    logits = torch.from_numpy(np.random.default_rng(3).normal(0, 4, (3, 7, 18, 23)).astype(logits_dtype))
    expected = {threads: convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), plans, predictor.configuration_manager, predictor.label_manager, properties,
        return_probabilities=True, num_threads_torch=threads)[1] for threads in (1, 8)}
    got = export_probabilities(logits.clone(), predictor, properties, chunk=128)  # many chunks, the last odd
    assert got.dtype == expected[1].dtype == np.float32 and got.shape == expected[1].shape == (3, *full)
    if export_resampling == "nnunet":
        assert np.array_equal(got, expected[1])
    else:  # torch's bilinear kernel rounds a map of one class otherwise than a stack of three (separate z)
        np.testing.assert_allclose(got, expected[1], rtol=0, atol=1e-6)
    # nnU-Net's own values on 8 threads: its softmax may round some voxels' last bit otherwise.
    np.testing.assert_allclose(got, expected[8], rtol=0, atol=1e-6 if export_resampling == "torch" else 2.0 ** -23)
    if cropped:  # background outside the crop, as nnU-Net's
        assert (got[0, 0] == 1).all() and (got[1:, 0] == 0).all()


@pytest.mark.parametrize("encoding", ["float16", "uint8"])
def test_rounding_to_the_stored_values_in_place_equals_a_round_trip_through_the_file_encoding(encoding):
    from workflow_scripts.io import as_stored, decode_probabilities, encode_probabilities

    probabilities = np.random.default_rng(4).dirichlet([1, 1, 1], (11, 5, 6)).transpose(3, 0, 1, 2)
    probabilities = probabilities.astype(np.float32)
    expected = decode_probabilities(encode_probabilities(probabilities, encoding))
    rounded = as_stored(probabilities, encoding, slab=4)
    assert rounded is probabilities and np.array_equal(rounded, expected)
    with pytest.raises(ValueError, match="float32"):
        as_stored(probabilities.astype(np.float64), encoding)
