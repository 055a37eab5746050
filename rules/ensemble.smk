# Ensemble of configurations on probabilities: the candidates scored on out-of-fold predictions, the best one
# (or the configured one) applied per out-of-fold case, members averaged one file at a time, partial models fused
# into a class.


rule select_ensemble:
    input:
        probabilities=lambda w: oof_probabilities(),
        references=lambda w: references("oof"),
    output:
        table=report("results/ensemble/candidates.tsv", caption="report/ensemble_candidates.rst", category="Ensemble"),
        selection="results/ensemble/selected.json",
    log:
        "logs/select_ensemble.log",
    benchmark:
        "benchmarks/select_ensemble.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("select_ensemble")
    resources:
        **resources_of("select_ensemble"),
    params:
        settings=selection_settings(),
    shell:
        "python -m workflow_scripts select-ensemble --settings {params.settings:q} --references {input.references} "
        "--probabilities {input.probabilities} --out-table {output.table} --out-selection {output.selection} "
        "> {log} 2>&1"


rule ensemble_case:
    input:
        unpack(ensemble_inputs),
    output:
        npz=prediction("{split}", "ensemble", "{case}", "npz"),
        seg=prediction("{split}", "ensemble", "{case}"),
    log:
        "logs/ensemble_case/{split}/{case}.log",
    benchmark:
        "benchmarks/ensemble_case/{split}/{case}.tsv"
    wildcard_constraints:
        split="oof",  # new cases are ensembled in memory by predict_test
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("ensemble_case")
    resources:
        **resources_of("ensemble_case"),
    shell:
        "python -m workflow_scripts ensemble-case --case {wildcards.case} --selection {input.selection} "
        "--probabilities {input.probabilities} --image {input.image} --out {output.npz} > {log} 2>&1"
