# Anatomy (TotalSegmentator, once per case, or precomputed maps) and rule-based removal of lesion components.


rule segment_anatomy:
    input:
        lambda w: f"{images_dir('oof' if w.case in TRAIN_CASES else 'test')}/{w.case}.nii.gz",
    output:
        "results/anatomy/{case}.nii.gz",
    params:
        home=CONFIG["anatomy"].get("totalseg_home", ""),
        task=CONFIG["anatomy"]["task"],
        fast="--fast" if CONFIG["anatomy"]["fast"] else "--no-fast",
        roi_subset=as_json(CONFIG["anatomy"]["roi_subset"]),
        device="gpu" if resources_of("segment_anatomy")["gpu"] else "cpu",
    threads: threads_of("segment_anatomy")
    resources:
        **resources_of("segment_anatomy"),
    log:
        "logs/segment_anatomy/{case}.log",
    benchmark:
        "benchmarks/segment_anatomy/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts segment-anatomy --image {input} --out {output} --home {params.home} --task {params.task} "
        "{params.fast} --roi-subset {params.roi_subset:q} --device {params.device} --threads {threads} "
        "> {log} 2>&1"


rule refine_case:
    input:
        seg="results/predictions/{split}/ensemble/{case}.nii.gz",
        anatomy=lambda w: anatomy_map(w.case),
        image=lambda w: f"{images_dir(w.split)}/{w.case}.nii.gz",
    output:
        seg="results/predictions/{split}/refined/{case}.nii.gz",
        removed="results/refinement/{split}/{case}.tsv",
    params:
        rules=as_json(CONFIG["refinement"]["rules"]),
        task=CONFIG["anatomy"]["task"],
    threads: threads_of("refine_case")
    resources:
        **resources_of("refine_case"),
    log:
        "logs/refine_case/{split}/{case}.log",
    benchmark:
        "benchmarks/refine_case/{split}/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts refine-case --case {wildcards.case} --segmentation {input.seg} --anatomy {input.anatomy} "
        "--image {input.image} --rules {params.rules:q} --task {params.task} --out {output.seg} "
        "--removed {output.removed} > {log} 2>&1"
