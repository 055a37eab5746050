# Ensemble of configurations on probabilities: the candidates scored on out-of-fold predictions (one job per case,
# so that the scoring spreads over the cluster as the cases grow), the best one
# (or the configured one) applied per out-of-fold case, members averaged one file at a time, partial models fused
# into a class.


rule score_ensembles:
    input:
        probabilities=lambda w: case_probabilities(w.case),
        reference=lambda w: case_references([w.case]),
    output:
        "results/ensemble/cases/{case}.tsv",
    log:
        "logs/score_ensembles/{case}.log",
    benchmark:
        "results/benchmarks/score_ensembles/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("score_ensembles")
    resources:
        **resources_of("score_ensembles"),
    params:
        settings=settings_json("score-ensembles"),
    shell:
        "python -m workflow_scripts score-ensembles --settings {params.settings:q} --reference {input.reference:q} "
        "--probabilities {input.probabilities:q} --out {output:q} > {log:q} 2>&1"


rule select_ensemble:
    input:
        scores=lambda w: ensemble_case_scores(),
    output:
        table=report("results/ensemble/candidates.tsv", caption="report/ensemble_candidates.rst", category="Ensemble"),
        selection="results/ensemble/selected.json",
    log:
        "logs/select_ensemble.log",
    benchmark:
        "results/benchmarks/select_ensemble.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("select_ensemble")
    resources:
        **resources_of("select_ensemble"),
    params:
        settings=settings_json("select-ensemble"),
    shell:
        "python -m workflow_scripts select-ensemble --settings {params.settings:q} --case-scores {input.scores:q} "
        "--out-table {output.table:q} --out-selection {output.selection:q} > {log:q} 2>&1"


rule ensemble_case:
    input:
        unpack(ensemble_inputs),
    output:
        prediction("{split}", "ensemble", "{case}"),
    log:
        "logs/ensemble_case/{split}/{case}.log",
    benchmark:
        "results/benchmarks/ensemble_case/{split}/{case}.tsv"
    wildcard_constraints:
        split="oof",  # new cases are ensembled in memory by predict_test
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("ensemble_case")
    resources:
        **resources_of("ensemble_case"),
    shell:
        "python -m workflow_scripts ensemble-case --case {wildcards.case:q} --selection {input.selection:q} "
        "--probabilities {input.probabilities:q} --image {input.image:q} --out {output:q} > {log:q} 2>&1"
