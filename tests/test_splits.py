import pytest

from workflow_scripts.splits import lesion_strata, make_splits


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
        make_splits(["a", "b"], {"a": "x", "b": "x"}, n_folds=5)


def test_strata_from_labels(toy_dir):
    labels = {"background": 0, "primary": 1, "metastasis": 2}
    strata = lesion_strata(["toy_000", "toy_001"], toy_dir / "labelsTr", labels)
    assert strata == {"toy_000": "primary", "toy_001": "primary+metastasis"}
