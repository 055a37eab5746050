# Anatomy (TotalSegmentator, once per case, or precomputed maps), rule-based removal of lesion components chosen
# on the out-of-fold ensemble, and the tumour burden of the refined cases.


rule segment_anatomy:
    input:
        image=lambda w: image_path(w.case),
        qc=QC_PASSED,  # QC names a broken image before TotalSegmentator meets it
    output:
        "results/anatomy/{case}.nii.gz",
    log:
        "logs/segment_anatomy/{case}.log",
    benchmark:
        "benchmarks/segment_anatomy/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("segment_anatomy")
    resources:
        **resources_of("segment_anatomy"),
    params:
        settings=as_json(CONFIG["anatomy"]),
        device="gpu" if resources_of("segment_anatomy")["gpu"] else "cpu",
    shell:
        "python -m workflow_scripts segment-anatomy --image {input.image} --out {output} --settings {params.settings:q} "
        "--device {params.device} --threads {threads} "
        "> {log} 2>&1"


# Every subset of the rules scored per out-of-fold case, on the study's ensemble and on the ensembles the nested
# selection's other folds chose; the two choices below rank these tables.
rule score_refinements:
    input:
        segmentation=prediction("oof", "ensemble", "{case}"),
        selection="results/ensemble/selected.json",
        nested="results/nested/ensembles.tsv",
        probabilities=lambda w: case_probabilities(w.case),
        anatomy=lambda w: anatomy_maps([w.case]),
        image=lambda w: image_path(w.case),
        reference=lambda w: case_references([w.case]),
    output:
        "results/refinement/cases/{case}.tsv",
    log:
        "logs/score_refinements/{case}.log",
    benchmark:
        "benchmarks/score_refinements/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("score_refinements")
    resources:
        **resources_of("score_refinements"),
    params:
        settings=refinement_settings(),
        ensemble_settings=selection_settings(),
    shell:
        "python -m workflow_scripts score-refinements --settings {params.settings:q} "
        "--ensemble-settings {params.ensemble_settings:q} --segmentation {input.segmentation} "
        "--selection {input.selection} --nested-ensembles {input.nested} --probabilities {input.probabilities} "
        "--anatomy {input.anatomy} --image {input.image} --reference {input.reference} --out {output} > {log} 2>&1"


rule select_refinement:
    input:
        scores=lambda w: refinement_case_scores(),
    output:
        table=report(
            "results/refinement/rule_subsets.tsv", caption="report/refinement_rules.rst", category="Refinement"
        ),
        selection="results/refinement/selected_rules.json",
    log:
        "logs/select_refinement.log",
    benchmark:
        "benchmarks/select_refinement.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("select_refinement")
    resources:
        **resources_of("select_refinement"),
    params:
        settings=refinement_settings(),
    shell:
        "python -m workflow_scripts select-refinement --settings {params.settings:q} --case-scores {input.scores} "
        "--out-table {output.table} --out-selection {output.selection} > {log} 2>&1"


rule refine_case:
    input:
        seg=prediction("{split}", "ensemble", "{case}"),
        anatomy=lambda w: anatomy_maps([w.case]),
        image=lambda w: image_path(w.case),
        selection=chosen_refinement(),
    output:
        seg=prediction("{split}", "refined", "{case}"),
        removed="results/refinement/{split}/{case}.tsv",
    log:
        "logs/refine_case/{split}/{case}.log",
    benchmark:
        "benchmarks/refine_case/{split}/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("refine_case")
    resources:
        **resources_of("refine_case"),
    params:
        task=CONFIG["anatomy"]["task"],
    shell:
        "python -m workflow_scripts refine-case --case {wildcards.case} --segmentation {input.seg} --anatomy {input.anatomy} "
        "--image {input.image} --selection {input.selection} --task {params.task} --out {output.seg} "
        "--removed {output.removed} > {log} 2>&1"


rule tumour_burden:
    input:
        segmentations=lambda w: [prediction(w.split, "refined", c) for c in cases(w.split)],
        anatomy=lambda w: anatomy_maps(cases(w.split)),
    output:
        lesions=report(
            "results/burden/{split}/lesions.tsv",
            caption="report/burden_lesions.rst",
            category="Tumour burden",
            labels={"split": "{split}", "table": "lesions"},
        ),
        burden=report(
            "results/burden/{split}/burden.tsv",
            caption="report/burden_cases.rst",
            category="Tumour burden",
            labels={"split": "{split}", "table": "cases"},
        ),
    log:
        "logs/tumour_burden/{split}.log",
    benchmark:
        "benchmarks/tumour_burden/{split}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("tumour_burden")
    resources:
        **resources_of("tumour_burden"),
    params:
        classes=as_json(stage_classes("refined")),
        task=CONFIG["anatomy"]["task"],
    shell:
        "python -m workflow_scripts tumour-burden --segmentations {input.segmentations} "
        "--anatomy {input.anatomy} --classes {params.classes:q} --task {params.task} "
        "--out-lesions {output.lesions} --out-burden {output.burden} > {log} 2>&1"


# Nested selection: per fold, the ensemble (nested_ensembles) and then the rules (nested_selection) chosen on the
# other folds' cases; nested_case segments each case with its fold's choice.
rule nested_ensembles:
    input:
        scores=lambda w: ensemble_case_scores(),
        splits="results/splits/splits_final.json",
    output:
        "results/nested/ensembles.tsv",
    log:
        "logs/nested_ensembles.log",
    benchmark:
        "benchmarks/nested_ensembles.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("nested_ensembles")
    resources:
        **resources_of("nested_ensembles"),
    params:
        ensemble_settings=selection_settings(),
    shell:
        "python -m workflow_scripts nested-ensembles --ensemble-settings {params.ensemble_settings:q} "
        "--splits {input.splits} --case-scores {input.scores} --out {output} > {log} 2>&1"


rule nested_selection:
    input:
        nested="results/nested/ensembles.tsv",
        scores=lambda w: refinement_case_scores(),
    output:
        report("results/nested/folds.tsv", caption="report/nested_folds.rst", category="Ensemble"),
    log:
        "logs/nested_selection.log",
    benchmark:
        "benchmarks/nested_selection.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("nested_selection")
    resources:
        **resources_of("nested_selection"),
    params:
        refinement_settings=refinement_settings(),
    shell:
        "python -m workflow_scripts nested-selection --refinement-settings {params.refinement_settings:q} "
        "--nested-ensembles {input.nested} --case-scores {input.scores} --out-table {output} > {log} 2>&1"


rule nested_case:
    input:
        folds="results/nested/folds.tsv",
        probabilities=lambda w: case_probabilities(w.case),
        reference=lambda w: case_references([w.case]),
        anatomy=lambda w: anatomy_maps([w.case]),
        image=lambda w: image_path(w.case),
    output:
        prediction("oof", NESTED_STAGE, "{case}"),
    log:
        "logs/nested_case/{case}.log",
    benchmark:
        "benchmarks/nested_case/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("nested_case")
    resources:
        **resources_of("nested_case"),
    params:
        ensemble_settings=selection_settings(),
        refinement_settings=refinement_settings(),
    shell:
        "python -m workflow_scripts nested-case --ensemble-settings {params.ensemble_settings:q} "
        "--refinement-settings {params.refinement_settings:q} --folds {input.folds} "
        "--probabilities {input.probabilities} --reference {input.reference} --anatomy {input.anatomy} "
        "--image {input.image} --out {output} > {log} 2>&1"


# With prediction.meshes: each new case's refined segmentation as one STL per class (LPS, mm).
rule export_meshes:
    input:
        prediction("test", "refined", "{case}"),
    output:
        directory("results/meshes/{case}"),
    log:
        "logs/export_meshes/{case}.log",
    conda:
        "../envs/workflow.yaml"
    params:
        classes=as_json(stage_classes("refined")),
    shell:
        "python -m workflow_scripts export-meshes --segmentation {input} --classes {params.classes:q} "
        "--out-dir {output} > {log} 2>&1"
