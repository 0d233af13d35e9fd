"""`foldwise-report [EXP]`: one DVC experiment (or the workspace) as a self-contained HTML page
and its Markdown twin: what was run against its baseline, the folds, curves, confusion,
calibration, hardest images, the test-neighbour and stack figures where on, the model card and
the links to MLflow; logged to the experiment's MLflow parent run."""
