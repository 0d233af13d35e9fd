"""The deploy step: the exported bag (`torch.export`), its check against the folds, the MLflow
model and `foldwise-predict`."""
