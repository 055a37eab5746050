# Export of a trained study for segmenting new cases elsewhere: the chosen ensemble's models, plans, the chosen
# ensemble and refinement, and the study's configuration. A run whose config names a bundle (config/predict.yaml)
# segments new cases with it and trains nothing.


rule export_bundle:
    input:
        summaries=lambda w: [s for c in ensemble_configurations() for s in training_summaries(c)],
        selection="results/ensemble/selected.json",
        refinement="results/refinement/selected_rules.json",
    output:
        directory("results/bundle"),
    log:
        "logs/export_bundle.log",
    conda:
        "../envs/workflow.yaml"
    params:
        config=as_json(CONFIG),
        summaries=lambda w: as_json({c: training_summaries(c) for c in ensemble_configurations()}),
        channel_labels=as_json({c: channel_labels(c) for c in CONFIGURATIONS}),
    shell:
        "python -m workflow_scripts export-bundle --config {params.config:q} --selection {input.selection} "
        "--refinement {input.refinement} --training-summaries {params.summaries:q} "
        "--channel-labels {params.channel_labels:q} --out {output} > {log} 2>&1"
