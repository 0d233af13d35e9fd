"""The exported bag as an MLflow model: `mlflow.pyfunc.load_model(uri).predict(images)` gives
what `foldwise-predict` writes, for images already in the preprocess cache's format (uint8
N x H x W x C, decoded with `foldwise.data.cache.load_image`).

The model's only artifact is the export folder (`bagged.pt2` + `meta.json`); its code is
`mlmodel_code.py` (MLflow's models from code: nothing pickled), whose Python class, below, loads it with `program.load` and predicts through the same loop, then applies the task's
postprocessing (`decision`: what was fit out-of-fold, a clip bound or tag thresholds) as the
submission does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from foldwise.deploy import program
from foldwise.tasks import create_task


class BaggedModel(mlflow.pyfunc.PythonModel):
    # the signature is given when the model is logged (images are an array, not a type hint
    # MLflow knows): no type-hint validation, and no warning advising it at class definition
    # (MLflow forces that warning past the caller's filters; this attribute is its own switch)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.model, self.meta = program.load(context.artifacts["export"])
        self.task = create_task(self.meta)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        images = np.ascontiguousarray(np.asarray(model_input, dtype=np.uint8))
        preds = program.run_model(self.model, images, desc="mlflow predict")
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
    model's URI. `loaded`: the folder's (module, meta) from `program.load`, when the caller has
    them (loading a large bag takes seconds; MLflow loads it once more to check the example)."""
    model_dir = Path(model_dir)
    bag = BaggedModel()
    bag.model, bag.meta = loaded or program.load(model_dir)
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
GROUP = ("foldwise.task", "foldwise.metric", "foldwise.data")  # what versions compete within
SAMPLE = "foldwise.sample"  # "true": trained on the embedded synthetic sample


def registered_name(experiment: str, source: str, root: str, named: str = "") -> str:
    """The registered model's name: `named` (mlflow.model_name) where given, else the
    experiment, the task and the data set (`sample` for the embedded one, else the data
    root's folder name), so that no two tasks or data sets share one `champion`."""
    if named:
        return named
    data = "sample" if is_sample(root) else Path(root).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{experiment}-{source}-{data}").strip("-")


def is_sample(root: str) -> bool:
    """Whether the data root is the embedded sample (the sample stage's data/sample/SOURCE)."""
    path = Path(root)
    return path.parent.name == "sample" and path.parent.parent.name == "data"


def register(model_uri: str, name: str, score: float, group: dict[str, str],
             sample: bool) -> tuple[str, str]:
    """`model_uri` as a new version of the registered model `name`, tagged with its `group`
    (task, metric, data set digest), whether it was trained on the sample, and its figure
    under the metric's name (the OOF figure of what the version computes; lower is better for
    every task's monitor); then `crown`. Returns (this version, the champion's version)."""
    client = MlflowClient()
    with _quiet():
        version = str(mlflow.register_model(model_uri, name).version)
    for key, value in {**group, SAMPLE: str(sample).lower(),
                       group["foldwise.metric"]: repr(float(score))}.items():
        client.set_model_version_tag(name, version, key, value)
    return version, crown(client, name, version)


def crown(client: MlflowClient, name: str, version: str, tries: int = 5) -> str:
    """The alias `champion` on the best version of `version`'s group: the lowest figure among
    versions of the same task, metric and data set (the earliest of equals). A version of the
    embedded sample never takes it from a version of real data. The alias is set and then read
    back with the versions, until no concurrent export's stale choice has undone it (each
    export checks after its own set, so the last one leaves the best)."""
    for _ in range(tries):
        best = _best(client, name, version)
        client.set_registered_model_alias(name, CHAMPION, best)
        if _best(client, name, version) == best and _alias(client, name) == best:
            return best
    return best


def _best(client: MlflowClient, name: str, version: str) -> str:
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    mine = versions[version].tags
    current = versions.get(_alias(client, name) or "")
    if (current is not None and mine.get(SAMPLE) == "true" and current.tags.get(SAMPLE) != "true"
            and _group(current.tags) != _group(mine)):
        return str(current.version)  # a sample's model does not displace a real data set's
    metric = mine["foldwise.metric"]
    scored = [(float(v.tags[metric]), int(v.version)) for v in versions.values()
              if _group(v.tags) == _group(mine) and metric in v.tags]
    return str(min(scored)[1])


def _group(tags: dict) -> tuple:
    return tuple(tags.get(key) for key in GROUP)


def _alias(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


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
