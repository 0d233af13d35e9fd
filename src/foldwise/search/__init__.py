"""Hyperparameter search (`foldwise-search`): an Optuna study whose trials are DVC experiments
and MLflow runs (`space` reads search.yaml, `study` keeps the study and its MLflow run,
`trial` runs one trial, `checkouts` the workers' checkouts, `cli` the command)."""
