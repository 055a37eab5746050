import pytest

from workflow_scripts.splits import lesion_strata, make_splits

pytestmark = pytest.mark.unit


def test_folds_partition_the_cases_and_balance_strata():
    cases = [f"c{i:02d}" for i in range(23)]
    strata = {c: ("primary+metastasis" if i % 3 else "primary") for i, c in enumerate(cases)}
    splits = make_splits(cases, strata, n_folds=5, seed=1)
    vals = [set(f["val"]) for f in splits]
    assert sorted(c for v in vals for c in v) == cases, "every case validated exactly once"
    for fold in splits:
        assert set(fold["train"]).isdisjoint(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(cases)
    for stratum in set(strata.values()):
        per_fold = [sum(strata[c] == stratum for c in v) for v in vals]
        assert max(per_fold) - min(per_fold) <= 1, f"{stratum} unbalanced: {per_fold}"
    assert make_splits(cases, strata, 5, seed=1) == splits
    assert make_splits(cases, strata, 5, seed=2) != splits


def test_too_few_cases_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        make_splits(["a", "b"], {"a": "x", "b": "x"}, n_folds=5, seed=0)


def test_strata_from_labels(toy_dir):
    labels = {"background": 0, "primary": 1, "metastasis": 2}
    strata = lesion_strata(["toy_000", "toy_001"], toy_dir / "labelsTr", labels)
    assert strata == {"toy_000": "primary", "toy_001": "primary+metastasis"}


def test_cases_of_one_patient_share_a_fold(tmp_path):
    cases = [f"c{i:02d}" for i in range(20)]
    patients = {c: f"p{i // 3}" for i, c in enumerate(cases)}  # 7 patients, up to 3 scans each
    strata = {c: ("primary+metastasis" if i % 2 else "primary") for i, c in enumerate(cases)}
    splits = make_splits(cases, strata, n_folds=5, seed=0, patients=patients)
    assert sorted(c for f in splits for c in f["val"]) == cases
    for fold in splits:
        val_patients = {patients[c] for c in fold["val"]}
        assert val_patients.isdisjoint(patients[c] for c in fold["train"]), "a patient on both sides"
    sizes = [len(f["val"]) for f in splits]
    assert max(sizes) - min(sizes) <= 3, sizes
    with pytest.raises(ValueError, match="3 patients"):
        make_splits(cases[:9], strata, n_folds=5, seed=0, patients=patients)


def test_patients_file(tmp_path):
    from workflow_scripts.splits import read_patients

    path = tmp_path / "patients.tsv"
    path.write_text("case\tpatient\na\tp1\nb\tp1\n")
    assert read_patients(path, ["a", "b"]) == {"a": "p1", "b": "p1"}
    with pytest.raises(ValueError, match=r"\['c'\] have no patient"):
        read_patients(path, ["a", "c"])
