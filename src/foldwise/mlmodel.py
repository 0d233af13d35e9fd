"""The exported bag as an MLflow model: `mlflow.pyfunc.load_model(uri).predict(images)` gives
what `foldwise-predict` writes, for images already in the preprocess cache's format (uint8
N x H x W x C, decoded with `foldwise.cache.load_image`).

The model's only artifact is the export folder (`bagged.pt2` + `meta.json`); the Python class
below loads it with `export.load` and predicts through the same loop, then applies the task's
postprocessing (the clip bound chosen out-of-fold) as the submission does.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import infer_signature

from foldwise import export
from foldwise.tasks import create_task


class BaggedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model, self.meta = export.load(context.artifacts["export"])
        self.task = create_task(self.meta)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        images = np.ascontiguousarray(np.asarray(model_input, dtype=np.uint8))
        preds = export.run_model(self.model, images, desc="mlflow predict")
        return self.task.postprocess(preds, self.meta.get("clip", 0.0))


def requirements() -> list[str]:
    """What loading the model needs besides foldwise's own code (copied into the model)."""
    from importlib.metadata import version
    return [f"{name}=={version(name)}" for name in
            ("torch", "torchvision", "timm", "numpy", "pandas", "pillow", "tqdm", "mlflow")]


def log(model_dir: str | Path, example: np.ndarray, run_id: str, name: str = "bagged") -> str:
    """Log the export folder as an MLflow model under the run `run_id` (its Models column),
    with `example` images as the input example and the signature they give; returns the
    model's URI."""
    model_dir = Path(model_dir)
    loaded = BaggedModel()
    loaded.model, loaded.meta = export.load(model_dir)
    loaded.task = create_task(loaded.meta)
    signature = infer_signature(example, loaded.predict(None, example))
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # the signature is given: MLflow's advice to infer it from type hints does not apply
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        info = mlflow.pyfunc.log_model(name=name, python_model=BaggedModel(),
                                       artifacts={"export": str(model_dir)}, signature=signature,
                                       input_example=example,
                                       code_paths=[str(Path(__file__).parent)],  # foldwise itself
                                       pip_requirements=requirements())
    return info.model_uri
