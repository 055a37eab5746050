# Ensemble of configurations on probabilities: the candidates scored on out-of-fold predictions, the best one
# (or the configured one) applied per out-of-fold case, members averaged one file at a time, partial models fused
# into a class.


rule select_ensemble:
    input:
        probabilities=lambda w: expand(
            "results/predictions/oof/{configuration}/{case}.npz",
            configuration=ensemble_configurations(),
            case=cases("oof"),
        ),
        references=lambda w: expand("{folder}/{case}.nii.gz", folder=CONFIG["data"]["labels_tr"], case=cases("oof")),
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
        cases=lambda w: " ".join(cases("oof")),
        references_dir=lambda w, input: os.path.dirname(input.references[0]),
    shell:
        "python -m workflow_scripts select-ensemble --settings {params.settings:q} --cases {params.cases} "
        "--oof-dir results/predictions/oof --references-dir {params.references_dir} --out-table {output.table} "
        "--out-selection {output.selection} > {log} 2>&1"


rule ensemble_case:
    input:
        unpack(ensemble_inputs),
    output:
        npz="results/predictions/{split}/ensemble/{case}.npz",
        seg="results/predictions/{split}/ensemble/{case}.nii.gz",
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
        "--predictions-dir results/predictions/{wildcards.split} --image {input.image} "
        "--out-dir results/predictions/{wildcards.split}/ensemble > {log} 2>&1"
