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
        "results/benchmarks/segment_anatomy/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("segment_anatomy")
    resources:
        **resources_of("segment_anatomy"),
    params:
        settings=settings_json("segment-anatomy"),
        device="gpu" if resources_of("segment_anatomy")["gpu"] else "cpu",
    shell:
        "python -m workflow_scripts segment-anatomy --image {input.image:q} --out {output:q} --settings {params.settings:q} "
        "--device {params.device:q} --threads {threads} "
        "> {log:q} 2>&1"


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
        "results/benchmarks/score_refinements/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("score_refinements")
    resources:
        **resources_of("score_refinements"),
    params:
        settings=settings_json("score-refinements"),
    shell:
        "python -m workflow_scripts score-refinements --settings {params.settings:q} --segmentation {input.segmentation:q} "
        "--selection {input.selection:q} --nested-ensembles {input.nested:q} --probabilities {input.probabilities:q} "
        "--anatomy {input.anatomy:q} --image {input.image:q} --reference {input.reference:q} --out {output:q} > {log:q} 2>&1"


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
        "results/benchmarks/select_refinement.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("select_refinement")
    resources:
        **resources_of("select_refinement"),
    params:
        settings=settings_json("select-refinement"),
    shell:
        "python -m workflow_scripts select-refinement --settings {params.settings:q} --case-scores {input.scores:q} "
        "--out-table {output.table:q} --out-selection {output.selection:q} > {log:q} 2>&1"


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
        "results/benchmarks/refine_case/{split}/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("refine_case")
    resources:
        **resources_of("refine_case"),
    params:
        settings=settings_json("refine-case"),
    shell:
        "python -m workflow_scripts refine-case --case {wildcards.case:q} --segmentation {input.seg:q} --anatomy {input.anatomy:q} "
        "--image {input.image:q} --selection {input.selection:q} --settings {params.settings:q} --out {output.seg:q} "
        "--removed {output.removed:q} > {log:q} 2>&1"


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
        "results/benchmarks/tumour_burden/{split}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("tumour_burden")
    resources:
        **resources_of("tumour_burden"),
    params:
        settings=settings_json("tumour-burden"),
    shell:
        "python -m workflow_scripts tumour-burden --segmentations {input.segmentations:q} "
        "--anatomy {input.anatomy:q} --settings {params.settings:q} "
        "--out-lesions {output.lesions:q} --out-burden {output.burden:q} > {log:q} 2>&1"


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
        "results/benchmarks/nested_ensembles.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("nested_ensembles")
    resources:
        **resources_of("nested_ensembles"),
    params:
        settings=settings_json("nested-ensembles"),
    shell:
        "python -m workflow_scripts nested-ensembles --settings {params.settings:q} "
        "--splits {input.splits:q} --case-scores {input.scores:q} --out {output:q} > {log:q} 2>&1"


rule nested_selection:
    input:
        nested="results/nested/ensembles.tsv",
        scores=lambda w: refinement_case_scores(),
    output:
        report("results/nested/folds.tsv", caption="report/nested_folds.rst", category="Ensemble"),
    log:
        "logs/nested_selection.log",
    benchmark:
        "results/benchmarks/nested_selection.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("nested_selection")
    resources:
        **resources_of("nested_selection"),
    params:
        settings=settings_json("nested-selection"),
    shell:
        "python -m workflow_scripts nested-selection --settings {params.settings:q} "
        "--nested-ensembles {input.nested:q} --case-scores {input.scores:q} --out-table {output:q} > {log:q} 2>&1"


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
        "results/benchmarks/nested_case/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("nested_case")
    resources:
        **resources_of("nested_case"),
    params:
        settings=settings_json("nested-case"),
    shell:
        "python -m workflow_scripts nested-case --settings {params.settings:q} --folds {input.folds:q} "
        "--probabilities {input.probabilities:q} --reference {input.reference:q} --anatomy {input.anatomy:q} "
        "--image {input.image:q} --out {output:q} > {log:q} 2>&1"


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
    threads: threads_of("export_meshes")
    resources:
        **resources_of("export_meshes"),
    params:
        settings=settings_json("export-meshes"),
    shell:
        "python -m workflow_scripts export-meshes --segmentation {input:q} --settings {params.settings:q} "
        "--out-dir {output:q} > {log:q} 2>&1"
