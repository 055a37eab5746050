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
        settings=settings_json("export-bundle"),
        summaries=lambda w: as_json({c: training_summaries(c) for c in ensemble_configurations()}),
    shell:
        "python -m workflow_scripts export-bundle --settings {params.settings:q} --selection {input.selection:q} "
        "--refinement {input.refinement:q} --training-summaries {params.summaries:q} "
        "--out {output:q} > {log:q} 2>&1"
