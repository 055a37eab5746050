# The shared split, then per configuration: nnU-Net raw dataset, fingerprint, plans and preprocessing.


rule make_splits:
    input:
        qc="results/qc/qc_table.tsv",
        patients=CONFIG["data"]["patients"] or [],
    output:
        "results/splits/splits_final.json",
    log:
        "logs/make_splits.log",
    conda:
        "../envs/workflow.yaml"
    params:
        cases=lambda w: " ".join(cases("oof")),
        labels_dir=CONFIG["data"]["labels_tr"],
        labels=as_json(CONFIG["labels"]),
        n_folds=CONFIG["splits"]["n_folds"],
        seed=CONFIG["splits"]["seed"],
        patients=lambda w, input: f"--patients {input.patients}" if input.patients else "",
    shell:
        "python -m workflow_scripts make-splits --cases {params.cases} --labels-dir {params.labels_dir} "
        "--labels {params.labels:q} --n-folds {params.n_folds} --seed {params.seed} {params.patients} "
        "--out {output} > {log} 2>&1"


rule convert_dataset:
    input:
        "results/qc/qc_table.tsv",
    output:
        "results/datasets/{configuration}/dataset_summary.json",
    log:
        "logs/convert_dataset/{configuration}.log",
    benchmark:
        "benchmarks/convert_dataset/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("convert_dataset")
    resources:
        **resources_of("convert_dataset"),
    params:
        cases=lambda w: " ".join(cases("oof")),
        nnunet_root=NNUNET_ROOT,
        images_dir=images_dir("oof"),
        labels_dir=CONFIG["data"]["labels_tr"],
        dataset_id=lambda w: configuration(w.configuration)["dataset_id"],
        label_mapping=lambda w: as_json(configuration(w.configuration)["label_mapping"]),
    shell:
        "python -m workflow_scripts convert-dataset --nnunet-root {params.nnunet_root} --cases {params.cases} "
        "--images-dir {params.images_dir} --labels-dir {params.labels_dir} "
        "--dataset-id {params.dataset_id} --name {wildcards.configuration} "
        "--label-mapping {params.label_mapping:q} --out {output} > {log} 2>&1"


rule plan_and_preprocess:
    input:
        dataset="results/datasets/{configuration}/dataset_summary.json",
        splits="results/splits/splits_final.json",
    output:
        "results/datasets/{configuration}/plans_summary.json",
    log:
        "logs/plan_and_preprocess/{configuration}.log",
    benchmark:
        "benchmarks/plan_and_preprocess/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("plan_and_preprocess")
    resources:
        **resources_of("plan_and_preprocess"),
    params:
        nnunet_root=NNUNET_ROOT,
        dataset_id=lambda w: configuration(w.configuration)["dataset_id"],
        planner=lambda w: configuration(w.configuration)["planner"],
        target_spacing=lambda w: as_json(configuration(w.configuration).get("target_spacing")),
        overrides=lambda w: as_json(configuration(w.configuration).get("plans_overrides", {})),
    shell:
        "python -m workflow_scripts plan-and-preprocess --nnunet-root {params.nnunet_root} --threads {threads} "
        "--dataset-id {params.dataset_id} --planner {params.planner} "
        "--target-spacing {params.target_spacing:q} --plans-overrides {params.overrides:q} "
        "--splits {input.splits} --out {output} > {log} 2>&1"
