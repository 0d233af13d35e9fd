"""The exported bag as an MLflow model: `mlflow.pyfunc.load_model(uri).predict(images)` gives
what `foldwise-predict` writes, for images already in the preprocess cache's format (uint8
N x H x W x C, decoded with `foldwise.data.cache.load_image`).

The model's only artifact is the export folder (`bagged.pt2` + `meta.json`); its code is
`mlmodel_code.py` (MLflow's models from code: nothing pickled), whose Python class, below, loads it with `export.load` and predicts through the same loop, then applies the task's
postprocessing (`decision`: what was fit out-of-fold, a clip bound or tag thresholds) as the
submission does.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from foldwise.deploy import export
from foldwise.tasks import create_task


class BaggedModel(mlflow.pyfunc.PythonModel):
    # the signature is given when the model is logged (images are an array, not a type hint
    # MLflow knows): no type-hint validation, and no warning advising it at class definition
    # (MLflow forces that warning past the caller's filters; this attribute is its own switch)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.model, self.meta = export.load(context.artifacts["export"])
        self.task = create_task(self.meta)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        images = np.ascontiguousarray(np.asarray(model_input, dtype=np.uint8))
        preds = export.run_model(self.model, images, desc="mlflow predict")
        return self.task.postprocess(preds, self.meta.get("decision", {}))


def requirements() -> list[str]:
    """What loading the model needs besides foldwise's own code (copied into the model)."""
    from importlib.metadata import version
    # a local label (torch 2.14.1+cu128) names a build no registry serves: the release only
    return [f"{name}=={version(name).split('+')[0]}" for name in
            ("torch", "torchvision", "timm", "numpy", "pandas", "pillow", "tqdm", "mlflow")]


def log(model_dir: str | Path, example: np.ndarray, run_id: str, name: str = "bagged",
        loaded: tuple | None = None) -> str:
    """Log the export folder as an MLflow model under the run `run_id` (its Models column),
    with `example` images as the input example and the signature they give; returns the
    model's URI. `loaded`: the folder's (module, meta) from `export.load`, when the caller has
    them (loading a large bag takes seconds; MLflow loads it once more to check the example)."""
    model_dir = Path(model_dir)
    bag = BaggedModel()
    bag.model, bag.meta = loaded or export.load(model_dir)
    bag.task = create_task(bag.meta)
    signature = infer_signature(example, bag.predict(None, example))
    with mlflow.start_run(run_id=run_id), _quiet():
        info = mlflow.pyfunc.log_model(name=name, python_model=str(Path(__file__).with_name("mlmodel_code.py")),
                                       artifacts={"export": str(model_dir)}, signature=signature,
                                       input_example=example,
                                       code_paths=[str(Path(__file__).parents[1])],  # foldwise itself
                                       pip_requirements=requirements())
    return info.model_uri


CHAMPION = "champion"


def register(model_uri: str, name: str, metric: str, score: float) -> tuple[str, str]:
    """`model_uri` as a new version of the registered model `name`, tagged `metric` = `score`
    (the OOF figure of what the version computes: the pipeline's, or its second-level model's
    where the program holds it; lower is better for every task's monitor), and the alias
    `champion` moved to the version with the lowest such figure (a version without the tag:
    its run's metric `metric`). Returns (this version, the champion's version)."""
    client = MlflowClient()
    with _quiet():
        version = mlflow.register_model(model_uri, name).version
    client.set_model_version_tag(name, version, metric, repr(float(score)))
    scored = []
    for v in client.search_model_versions(f"name = '{name}'"):
        value = float(v.tags[metric]) if metric in v.tags else (
            client.get_run(v.run_id).data.metrics.get(metric) if v.run_id else None)
        if value is not None:
            scored.append((value, int(v.version)))
    champion = str(min(scored)[1]) if scored else str(version)
    client.set_registered_model_alias(name, CHAMPION, champion)
    return str(version), champion


@contextlib.contextmanager
def _quiet():
    """Logging the model without MLflow's progress bar and its INFO lines about validating
    the input example (it is validated; a failure still shows as its warning)."""
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
