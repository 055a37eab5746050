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


rule select_refinement:
    input:
        segmentations=lambda w: [prediction("oof", "ensemble", case) for case in cases("oof")],
        anatomy=lambda w: anatomy_maps(cases("oof")),
        images=lambda w: images("oof"),
        references=lambda w: references("oof"),
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
        "python -m workflow_scripts select-refinement --settings {params.settings:q} --segmentations {input.segmentations} "
        "--anatomy {input.anatomy} --images {input.images} --references {input.references} "
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


rule nested_selection:
    input:
        probabilities=lambda w: oof_probabilities(),
        scores=lambda w: ensemble_case_scores(),
        references=lambda w: references("oof"),
        anatomy=lambda w: anatomy_maps(cases("oof")),
        images=lambda w: images("oof"),
        splits="results/splits/splits_final.json",
    output:
        segmentations=directory(f"{PREDICTIONS}/oof/{NESTED_STAGE}"),
        table=report("results/nested/folds.tsv", caption="report/nested_folds.rst", category="Ensemble"),
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
        ensemble_settings=selection_settings(),
        refinement_settings=refinement_settings(),
    shell:
        "python -m workflow_scripts nested-selection --ensemble-settings {params.ensemble_settings:q} "
        "--refinement-settings {params.refinement_settings:q} --splits {input.splits} "
        "--references {input.references} --probabilities {input.probabilities} --case-scores {input.scores} "
        "--anatomy {input.anatomy} "
        "--images {input.images} --out-dir {output.segmentations} --out-table {output.table} "
        "> {log} 2>&1"


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
