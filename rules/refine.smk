# Anatomy (TotalSegmentator, once per case, or precomputed maps), rule-based removal of lesion components chosen
# on the out-of-fold ensemble, and the tumour burden of the refined cases.


rule segment_anatomy:
    input:
        lambda w: image_path(w.case),
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
        home=CONFIG["anatomy"].get("totalseg_home", ""),
        task=CONFIG["anatomy"]["task"],
        fast="--fast" if CONFIG["anatomy"]["fast"] else "--no-fast",
        roi_subset=as_json(CONFIG["anatomy"]["roi_subset"]),
        device="gpu" if resources_of("segment_anatomy")["gpu"] else "cpu",
    shell:
        "python -m workflow_scripts segment-anatomy --image {input} --out {output} --home {params.home} --task {params.task} "
        "{params.fast} --roi-subset {params.roi_subset:q} --device {params.device} --threads {threads} "
        "> {log} 2>&1"


rule select_refinement:
    input:
        segmentations=lambda w: [prediction("oof", "ensemble", case) for case in cases("oof")],
        anatomy=lambda w: [anatomy_map(case) for case in cases("oof")],
        images=lambda w: [image_path(case) for case in cases("oof")],
        references=lambda w: [f"{reference_dir('oof')}/{case}.nii.gz" for case in cases("oof")],
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
        cases=lambda w: " ".join(cases("oof")),
        anatomy=lambda w, input: as_json(dict(zip(cases("oof"), input.anatomy))),
        images_dir=lambda w, input: os.path.dirname(input.images[0]),
        references_dir=lambda w, input: os.path.dirname(input.references[0]),
        segmentation_dir=lambda w, input: os.path.dirname(input.segmentations[0]),
    shell:
        "python -m workflow_scripts select-refinement --settings {params.settings:q} --cases {params.cases} "
        "--segmentation-dir {params.segmentation_dir} --anatomy {params.anatomy:q} --images-dir {params.images_dir} "
        "--references-dir {params.references_dir} --out-table {output.table} --out-selection {output.selection} "
        "> {log} 2>&1"


rule refine_case:
    input:
        seg="results/predictions/{split}/ensemble/{case}.nii.gz",
        anatomy=lambda w: anatomy_map(w.case),
        image=lambda w: image_path(w.case),
        selection=chosen_refinement(),
    output:
        seg="results/predictions/{split}/refined/{case}.nii.gz",
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
        anatomy=lambda w: [anatomy_map(c) for c in cases(w.split)],
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
        cases=lambda w: " ".join(cases(w.split)),
        anatomy=lambda w, input: as_json(dict(zip(cases(w.split), input.anatomy))),
        classes=as_json(stage_classes("refined")),
        task=CONFIG["anatomy"]["task"],
        segmentation_dir=lambda w, input: os.path.dirname(input.segmentations[0]),
    shell:
        "python -m workflow_scripts tumour-burden --cases {params.cases} --segmentation-dir {params.segmentation_dir} "
        "--anatomy {params.anatomy:q} --classes {params.classes:q} --task {params.task} "
        "--out-lesions {output.lesions} --out-burden {output.burden} > {log} 2>&1"


rule nested_selection:
    input:
        probabilities=lambda w: expand(
            "results/predictions/oof/{configuration}/{case}.npz",
            configuration=ensemble_configurations(),
            case=cases("oof"),
        ),
        references=lambda w: [f"{reference_dir('oof')}/{case}.nii.gz" for case in cases("oof")],
        anatomy=lambda w: [anatomy_map(case) for case in cases("oof")],
        images=lambda w: [image_path(case) for case in cases("oof")],
        splits="results/splits/splits_final.json",
    output:
        segmentations=directory(f"results/predictions/oof/{NESTED_STAGE}"),
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
        anatomy=lambda w, input: as_json(dict(zip(cases("oof"), input.anatomy))),
        images_dir=lambda w, input: os.path.dirname(input.images[0]),
        references_dir=lambda w, input: os.path.dirname(input.references[0]),
    shell:
        "python -m workflow_scripts nested-selection --ensemble-settings {params.ensemble_settings:q} "
        "--refinement-settings {params.refinement_settings:q} --splits {input.splits} "
        "--oof-dir results/predictions/oof --anatomy {params.anatomy:q} --images-dir {params.images_dir} "
        "--references-dir {params.references_dir} --out-dir {output.segmentations} --out-table {output.table} "
        "> {log} 2>&1"
