# Config validation, case lists, and the input and parameter helpers of every rule.
import json
import os
import re
import sys

import yaml
from snakemake.exceptions import WorkflowError

# One package, this checkout's: imported here at parse time and by every job through PYTHONPATH (jobs inherit
# this environment: local jobs, SLURM jobs as sbatch exports it, conda envs as activation keeps it).
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))
from workflow_scripts.bundle import predict_config
from workflow_scripts.cases import dicom_folders, input_cases
from workflow_scripts.config import BUNDLE_MANIFEST, RESERVED_STAGES, ConfigError, validate_config
from workflow_scripts.dicom_results import RESULT_FILES as DICOM_RESULT_FILES
from workflow_scripts.settings import ensemble_configurations as configurations_of_ensemble
from workflow_scripts.settings import attempt_resources, job_resources, rule_resources, verb_settings


def _load_config():
    raw = config or yaml.safe_load(open(os.path.join(workflow.basedir, "config", "config.yaml")))
    try:
        if raw.get("bundle"):  # new cases segmented with an exported study: its config, this run's data
            raw = predict_config(raw, base=os.getcwd())
        validated = validate_config(raw, base=os.getcwd())
        found = input_cases(validated)
    except ConfigError as err:
        raise WorkflowError(str(err))
    return validated, found.train, found.test, found.orphan_labels, found.misnamed


# Cases in qc.exclude and images named off data.case_pattern are left out here, so they never reach any rule;
# QC reports them, and the labels without an image.
CONFIG, TRAIN_CASES, TEST_CASES, ORPHAN_LABELS, MISNAMED = _load_config()
# With a bundle: only new cases, and only the configurations its chosen ensemble uses (their models are in it).
BUNDLE = CONFIG["bundle"]
if BUNDLE:
    with open(os.path.join(BUNDLE, BUNDLE_MANIFEST)) as f:
        BUNDLE_MODELS = json.load(f)["configurations"]
    CONFIGURATIONS = list(BUNDLE_MODELS)
else:
    CONFIGURATIONS = list(CONFIG["configurations"])
# New cases are always segmented; they are evaluated only when reference labels are given.
EVALUATED_SPLITS = ([] if BUNDLE else ["oof"]) + (["test"] if CONFIG["data"].get("labels_ts") else [])
STAGES = CONFIGURATIONS + list(RESERVED_STAGES)
# Out-of-fold only: the ensemble and rules chosen on the other folds' cases, fold by fold (nested_selection).
NESTED_STAGE = "oof_nested"
EVALUATED = [(split, stage) for split in EVALUATED_SPLITS for stage in STAGES] + (
    [("oof", NESTED_STAGE)] if "oof" in EVALUATED_SPLITS else []
)
NNUNET_ROOT = "results/nnunet"


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


def cases(split):
    """The cases of a split that go on after QC. With qc.on_error: stop (default), all of them (QC stops the run
    on an error), known at start-up; with exclude, the training cases without errors, known once the qc_gate
    checkpoint has run (call this only inside rule functions then). New cases are never left out automatically."""
    if split == "test":
        return TEST_CASES
    if CONFIG["qc"]["on_error"] == "stop":
        return TRAIN_CASES
    with open(checkpoints.qc_gate.get().output[0]) as f:
        return json.load(f)["train"]


def _configured_images_dir(split):
    return CONFIG["data"]["images_tr"] if split == "oof" else CONFIG["data"]["images_ts"]


# DICOM series folders ({case: folder}) are converted; a split holding one gets a folder of NIfTI images under
# results/inputs/ (converted series, links to the NIfTI cases) that every rule reads in place of the configured one.
INPUT_CASES = {"oof": TRAIN_CASES, "test": TEST_CASES}  # before QC
DICOM_CASES = {
    case: folder
    for split in ("oof", "test")
    if _configured_images_dir(split)
    for case, folder in dicom_folders(_configured_images_dir(split)).items()
    if case in INPUT_CASES[split]
}
# New cases that came as DICOM series get DICOM results (dicom_results.smk); those given as NIfTI get none.
DICOM_TEST_CASES = [case for case in TEST_CASES if case in DICOM_CASES]
NIFTI_TEST_CASES = [case for case in TEST_CASES if case not in DICOM_CASES]
# The DICOM results the config asks for, by file name (workflow_scripts/dicom_results.py).
DICOM_RESULTS = [name for kind, name in DICOM_RESULT_FILES.items() if CONFIG["dicom_results"][kind]]


def dicom_result(case, name):
    return f"results/dicom/test/{case}/{name}"


# Images named with nnU-Net's channel suffix (<case>_0000.nii.gz) are linked as <case>.nii.gz, every split.
CHANNEL_SUFFIX = CONFIG["data"]["channel_suffix"]
STAGED_SPLITS = [
    split for split in ("oof", "test") if CHANNEL_SUFFIX or any(case in DICOM_CASES for case in INPUT_CASES[split])
]
INPUT_FOLDERS = {"oof": "train", "test": "test"}
QC_PASSED = "results/qc/passing_cases.json"
# {case: split} of every case QC reports on, the images named off data.case_pattern included.
QC_SPLITS = {
    **{c: "train" for c in TRAIN_CASES},
    **{c: "test" for c in TEST_CASES},
    **{name: split for name, (split, path) in MISNAMED.items()},
}


def images_dir(split):
    return f"results/inputs/{INPUT_FOLDERS[split]}" if split in STAGED_SPLITS else _configured_images_dir(split)


def case_split(case):
    return "oof" if case in TRAIN_CASES else "test"


def image_path(case):
    return f"{images_dir(case_split(case))}/{case}.nii.gz"


def reference_dir(split):
    return CONFIG["data"]["labels_tr"] if split == "oof" else CONFIG["data"]["labels_ts"]


def case_references(case_list):
    """The reference labels of cases. A missing one is left out here, so that the DAG builds and QC reports it
    (label_exists) with every other problem; QC stops the run (or leaves the case out) before any rule reads the
    labels."""
    paths = [f"{reference_dir(case_split(case))}/{case}.nii.gz" for case in case_list]
    return [path for path in paths if os.path.exists(path)]


def references(split):
    return case_references(cases(split))


def labelled_cases():
    """The cases whose labels QC checks against anatomy: the training cases, and the new ones with labels."""
    return cases("oof") + (cases("test") if CONFIG["data"].get("labels_ts") else [])


def images(split):
    return [image_path(case) for case in cases(split)]


def configuration(name):
    return CONFIG["configurations"][name]


def as_json(value):
    return json.dumps(value, separators=(",", ":"))


def settings_json(verb, configurations=None):
    """A verb's --settings (workflow_scripts/settings.py): the part of the config it reads, as JSON."""
    return as_json(verb_settings(CONFIG, verb, configurations))


def resources_of(rule_name):
    """A rule's resources; memory and runtime grow with the attempt (compute.retry_growth)."""
    grown = lambda key: lambda wildcards, attempt: attempt_resources(CONFIG, rule_name, attempt)[key]
    return {**job_resources(CONFIG, rule_name), "mem_mb": grown("mem_mb"), "runtime": grown("runtime")}


def tile_batch_divisor(wildcards, attempt):
    """Tiles per network pass halved on each retry (--tile-batch-divisor): a job that ran out of GPU memory."""
    return 2 ** (attempt - 1)


def threads_of(rule_name):
    return rule_resources(CONFIG, rule_name)["threads"]


# train_fold waits for the preflight's gate; ancient: a rerun preflight does not make trained folds look stale.
PREFLIGHT_PASSED = "results/preflight/passed.json"


def preflight_passed():
    return [ancient(PREFLIGHT_PASSED)] if CONFIG["preflight"]["enabled"] and not BUNDLE else []


def training_summaries(name):
    return expand(
        "results/training/{configuration}/fold_{fold}.json", configuration=name, fold=configuration(name)["folds"]
    )


PREDICTIONS = "results/predictions"


def prediction(split, stage, case, ext="nii.gz"):
    return f"{PREDICTIONS}/{split}/{stage}/{case}.{ext}"


# New cases in prediction.parts jobs: contiguous runs of the sorted cases.
PARTS = max(1, min(CONFIG["prediction"]["parts"], len(TEST_CASES)))


def part_cases(part):
    ordered = sorted(TEST_CASES)
    return ordered[part * len(ordered) // PARTS : (part + 1) * len(ordered) // PARTS]


def case_part(case):
    return next(part for part in range(PARTS) if case in part_cases(part))


def ensemble_case_scores():
    return [f"results/ensemble/cases/{case}.tsv" for case in cases("oof")]


def refinement_case_scores():
    return [f"results/refinement/cases/{case}.tsv" for case in cases("oof")]


def case_probabilities(case):
    """A training case's out-of-fold probabilities of every configuration the ensemble candidates use."""
    return [prediction("oof", c, case, "npz") for c in ensemble_configurations()]


def anatomy_map(case):
    if CONFIG["anatomy"]["source"] == "precomputed":
        return os.path.join(CONFIG["anatomy"]["precomputed_dir"], f"{case}.nii.gz")
    return f"results/anatomy/{case}.nii.gz"


def anatomy_maps(case_list):
    """The anatomy maps of cases. A precomputed map that is missing is left out here, so that the DAG builds and
    QC reports it (anatomy_exists) with every other problem before any rule reads the maps."""
    paths = [anatomy_map(case) for case in case_list]
    if CONFIG["anatomy"]["source"] == "precomputed":
        paths = [path for path in paths if os.path.exists(path)]
    return paths


# crop.enabled: the lesion models read each case cut to its anatomy box (results/crop/) and their outputs are pasted
# back on the full grid.
CROP = CONFIG["crop"]["enabled"]


def model_image(case):
    return f"results/crop/{case}.nii.gz" if CROP else image_path(case)


def crop_boxes(case_list):
    return [f"results/crop/{case}.json" for case in case_list] if CROP else []


def flag_args(name, values):
    """``[name, *values]``, or nothing without values: a params list that the shell command quotes item by item."""
    values = [values] if isinstance(values, str) else list(values)
    return [name, *values] if values else []


def ensemble_configurations():
    """Configurations an ensemble may draw on (with a bundle: those its chosen ensemble uses)."""
    return CONFIGURATIONS if BUNDLE else configurations_of_ensemble(CONFIG)


def ensemble_inputs(w):
    return {
        "probabilities": [prediction(w.split, c, w.case, "npz") for c in ensemble_configurations()],
        "selection": chosen_ensemble(),
        "image": image_path(w.case),
    }


def chosen_ensemble():
    return os.path.join(BUNDLE, "ensemble.json") if BUNDLE else "results/ensemble/selected.json"


def chosen_refinement():
    return os.path.join(BUNDLE, "refinement.json") if BUNDLE else "results/refinement/selected_rules.json"


def model_inputs():
    """What predicting new cases reads: every configuration's fold summaries, or the bundle's manifest."""
    if BUNDLE:
        return [os.path.join(BUNDLE, BUNDLE_MANIFEST)]
    return [s for c in CONFIGURATIONS for s in training_summaries(c)]


def model_arguments():
    if BUNDLE:
        return ["--bundle", BUNDLE]
    return ["--training-summaries", as_json({c: training_summaries(c) for c in CONFIGURATIONS})]


def metric_tables():
    return [f"results/metrics/{split}/{stage}.tsv" for split, stage in EVALUATED]


def stage_predictions(split, stage):
    """What evaluate_stage reads: the stage's segmentation of every case."""
    return [prediction(split, stage, c) for c in cases(split)]


def all_targets(runtime=True):
    targets = ["results/qc/qc_table.tsv", QC_PASSED, "results/qc/anatomy_table.tsv"]
    if CONFIG["preflight"]["enabled"] and not BUNDLE:
        targets.append(PREFLIGHT_PASSED)
    if not BUNDLE:
        targets += ["results/ensemble/candidates.tsv", "results/refinement/rule_subsets.tsv"]
    if EVALUATED_SPLITS:
        targets.append("results/metrics/summary.tsv")
    targets += metric_tables()
    targets += [prediction("test", "refined", case) for case in TEST_CASES]
    targets += ["results/burden/test/burden.tsv"]
    targets += [f"results/overlays/test/{case}.png" for case in TEST_CASES]
    if CONFIG["prediction"]["meshes"]:
        targets += [f"results/meshes/{case}" for case in TEST_CASES]
    targets += [dicom_result(case, name) for case in DICOM_TEST_CASES for name in DICOM_RESULTS]
    if not BUNDLE:
        targets += [f"results/training/{c}/folds.png" for c in CONFIGURATIONS] + ["results/overlays/oof_worst"]
    if runtime:
        targets.append("results/runtime/runtime.tsv")
    return targets
