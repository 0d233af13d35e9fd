"""export: the submission file and the bagged model (torch.export .pt2) that reproduces it.

usage: python stages/export.py DATA_ROOT MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON
                               NEIGHBOURS_DIR NEIGHBOURS_JSON SUBMISSION_CSV MODEL_DIR
params: folds, bag.mean, tta (views inside the model); the temperature and clip bound come
        from METRICS_JSON (fit on OOF by evaluate); with neighbours on, the submission averages
        the model's predictions over NEIGHBOURS_DIR's test graph, clipped at the bound chosen
        after averaging (NEIGHBOURS_JSON); mlflow (the store of the pipeline's parent run)
logs the exported bag as an MLflow model of the parent run that evaluate finished.
"""
import json
from pathlib import Path

import _src  # noqa: F401
import numpy as np
import pandas as pd
import torch

from foldwise import calibration, export, mlmodel, neighbours, params as P, stage, tracking, tta
from foldwise.loader import open_cache
from foldwise.models import load_checkpoint
from foldwise.sources import get_source
from foldwise.tasks import create_task

TOLERANCE = 1e-4  # the exported program against the same networks run eagerly, like for like
DRIFT = 0.05  # vs fold predictions made in bfloat16 or on another device, relative to their scale
TASK_KEYS = ("source", "task", "classes", "target_names", "image_size", "flip_pairs")


def log_to_mlflow(params, runs, model_dir, example, loaded) -> str:
    """The exported bag (`loaded`: its module and meta) as an MLflow model of the pipeline's
    parent run (the one evaluate finished), loadable with mlflow.pyfunc.load_model."""
    experiment = tracking.open_experiment(P.get(params, "mlflow"))
    parent = tracking.evaluated_parent(experiment, runs)
    if parent is None:
        raise RuntimeError("no MLflow parent run holds these folds: run the evaluate stage")
    return mlmodel.log(model_dir, example, parent, loaded=loaded)


def main():
    (root, models, processed, bagged, metrics_json, neighbours_dir, neighbours_json, submission,
     model_dir) = stage.arguments(
        __doc__, ("data_root", "the data set (some submissions follow its lookup table)"),
        ("models_dir", "folder of the fold_k checkpoints"), ("processed_dir", "the preprocess cache"),
        ("bagged_dir", "bag's output (test.csv)"), ("metrics_json", "evaluate's metrics.json"),
        ("neighbours_dir", "the neighbours stage's test graph"),
        ("neighbours_json", "the neighbours stage's scores"),
        ("submission_csv", "the competition file to write"), ("model_dir", "the exported bag's folder"))
    models, processed, bagged, metrics_json = (Path(a) for a in (models, processed, bagged, metrics_json))
    params = P.load()
    meta = json.loads((processed / "meta.json").read_text())
    task = create_task(meta, params)
    mean = P.get(params, "bag.mean")
    oof = json.loads(metrics_json.read_text())["oof"]  # fit on OOF by evaluate:
    clip, temperature = oof.get("clip", 0.0), oof.get("temperature", 1.0)
    near = json.loads(Path(neighbours_json).read_text())
    if near["k"]:  # the bound chosen on OOF predictions averaged as the submission will be
        clip = near["oof"].get("clip", 0.0)
    nets = [tta.wrap(load_checkpoint(models / f"fold_{k}" / "model.pt"), P.get(params, "tta"), meta)
            for k in P.get(params, "folds")]  # the folds' own test-time views, inside the program
    test_images = open_cache(processed / "test.npy")
    bag = export.Bagged(nets, task.activation, mean, *task.output_affine(), temperature=temperature)
    example = torch.zeros((2, *test_images.shape[1:]), dtype=torch.uint8)  # batch size stays dynamic
    export.save(bag, example,
                {**{k: meta[k] for k in TASK_KEYS}, "bag_mean": mean, "folds": len(nets), "clip": clip,
                 "neighbours": near["k"],  # set-level: in the submission, not in predict
                 "tta": P.get(params, "tta"), "temperature": temperature,
                 "preprocess": {k: meta[k] for k in ("height", "width", "crop", "mode")}},
                model_dir)

    device = export.default_device()
    model, shipped_meta = export.load(model_dir, device)
    got = export.run_model(model, test_images, device=device, desc="exported")
    test = pd.read_csv(bagged / "test.csv", dtype={"id": str})
    bagged_preds = test[task.columns].to_numpy()
    if temperature != 1.0:
        bagged_preds = calibration.temper(bagged_preds, temperature)
    drift = float(np.abs(got - bagged_preds).max()) / max(1.0, float(np.abs(bagged_preds).max()))
    runs = [json.loads((models / f"fold_{k}" / "run.json").read_text()) for k in P.get(params, "folds")]
    like = all(r.get("precision") == "float32" and r.get("device") == device.type for r in runs)
    if like:  # the folds predicted the test set exactly as the exported bag does
        worst = drift
    else:  # compare like with like: the same networks, eagerly, in float32 on this device
        eager = export.run_model(bag.to(device), test_images, device=device, desc="eager bag")
        worst = float(np.abs(got - eager).max())
        if drift > DRIFT:
            raise RuntimeError(f"exported model differs from the folds' bagged test predictions "
                               f"({', '.join(sorted({r.get('precision', '?') for r in runs}))} on "
                               f"{', '.join(sorted({r.get('device', '?') for r in runs}))}) by "
                               f"{drift:.2e}: more than precision explains")
    if worst > TOLERANCE:
        raise RuntimeError(f"exported model differs from the bagged networks by {worst:.2e}")
    # the submission is what the shipped model predicts, so foldwise-predict reproduces it;
    # with neighbours, each image's prediction averaged with its test neighbours' (off: unchanged)
    graph = np.load(Path(neighbours_dir) / "graph.npz")
    final = neighbours.smooth(got, graph["idx"], graph["sim"])
    get_source(meta["source"]).write_submission(test["id"], task.postprocess(final, clip),
                                                {**meta, "root": root}, submission)
    uri = log_to_mlflow(params, runs, model_dir, np.asarray(test_images[:2]), (model, shipped_meta))
    print(f"exported {len(nets)} fold models; max |exported - {'bagged' if like else 'eager'}| = "
          f"{worst:.2e}, vs the folds' predictions {drift:.2e}; temperature {temperature:.4g}, "
          f"clip {clip:g}; MLflow model {uri}")


if __name__ == "__main__":
    stage.run(main)
