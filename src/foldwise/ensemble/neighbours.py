"""The neighbours stage: each test prediction averaged with those of its k nearest test images
in the bagged models' feature space (cosine), and the same within each validation fold, with
that fold's own model, so that the OOF score with neighbours is honest (the graphs and the
averaging are `knn`'s functions). Off (k = 0), it imports nothing heavy."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from foldwise.files import atomic_dir, write_json
from foldwise.train import outputs
from foldwise.params import Params, flatten


@dataclass(frozen=True)
class Paths:
    models: Annotated[Path, "folder of the fold_k checkpoints"]
    processed: Annotated[Path, "the preprocess cache"]
    bagged: Annotated[Path, "bag's output (oof.csv)"]
    metrics_json: Annotated[Path, "evaluate's metrics.json (the temperature)"]
    out: Annotated[Path, "where the test neighbour graph goes"]
    out_json: Annotated[Path, "OOF scores with and without neighbours"]


def run(params: Params, paths: Paths) -> None:
    """Write the test graph (`out`/graph.npz), with k > 0 the OOF graph and OOF predictions
    averaged over it, and the scores with and without neighbours (`out_json`)."""
    k = params.neighbours.k
    if k:
        average_over_neighbours(params, k, paths)
        return
    # off: an empty graph, which export's averaging leaves every prediction alone; nothing else
    # is read or imported (torch, timm and MLflow cost seconds)
    n_test = len(np.load(paths.processed / "test.npy", mmap_mode="r"))
    with atomic_dir(paths.out) as tmp:
        np.savez(tmp / "graph.npz", idx=np.zeros((n_test, 0), dtype=np.int64),
                 sim=np.zeros((n_test, 0), dtype=np.float32))
    write_json({"k": 0}, paths.out_json)


def features(models: Path, folds, images, test_images, fold_of_row, device):
    """Each training image's features from the model of the fold that validated it; each test
    image's from all fold models, combined."""
    from foldwise.ensemble import knn
    from foldwise.models import load_checkpoint
    from foldwise.train.loader import Rows

    train_f, test_f = None, []
    for k in folds:
        net = load_checkpoint(outputs.checkpoint_path(models, k))
        rows = np.flatnonzero(fold_of_row == k)
        f = knn.embed(net, Rows(images, rows), device, desc=f"features fold {k}")
        train_f = np.zeros((len(images), f.shape[1])) if train_f is None else train_f
        train_f[rows] = f
        test_f.append(knn.embed(net, test_images, device, desc=f"test features fold {k}"))
    return train_f, knn.mean_direction(test_f)


def scores(task, truth, before, after, folds) -> dict:
    """The OOF figures with neighbours, and the monitored ones without (`*_without`)."""
    with_n, _ = task.report(truth, after, folds)
    without, _ = task.report(truth, before, folds)
    out = {k: v for k, v in with_n.items() if k not in task.baselines}
    out.update({f"{k}_without": without[k] for k in task.score(truth, before)})
    return out


def average_over_neighbours(params, k: int, paths: Paths) -> None:
    """The neighbour graphs, the OOF predictions averaged over theirs, the scores with and
    without (also on the pipeline's MLflow parent)."""
    import pandas as pd
    import torch

    from foldwise.data.cache import load_truth, read_meta
    from foldwise.ensemble import calibration, knn
    from foldwise.files import write_csv
    from foldwise.tasks import create_task
    from foldwise.train.loader import open_cache

    models, processed, out = paths.models, paths.processed, paths.out
    test_images = open_cache(processed / "test.npy")
    meta = read_meta(processed)
    task = create_task(meta, params)
    oof = pd.read_csv(paths.bagged / "oof.csv", dtype={"id": str, "group": str})  # training order
    truth, fold_of_row = load_truth(processed), oof["fold"].to_numpy()
    before = oof[task.columns].to_numpy()
    if "temperature" in json.loads(paths.metrics_json.read_text())["oof"]:  # as evaluate scored it
        before, _ = calibration.cross_fitted(before, truth, fold_of_row)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_f, test_f = features(models, params.folds, open_cache(processed / "train.npy"),
                               test_images, fold_of_row, device)
    oof_idx, oof_sim = knn.grouped_graph(train_f, fold_of_row, k)
    after = knn.smooth(before, oof_idx, oof_sim)
    idx, sim = knn.graph(test_f, k)
    summary: dict = {"k": k, "oof": scores(task, truth, before, after, fold_of_row),
                     "test_similarity_mean": float(sim.mean()) if sim.size else 0.0}
    table = pd.DataFrame(after, columns=task.columns)
    table.insert(0, "fold", fold_of_row)
    table.insert(0, "id", oof["id"])
    with atomic_dir(out) as tmp:
        np.savez(tmp / "graph.npz", idx=idx, sim=sim)
        np.savez(tmp / "oof_graph.npz", idx=oof_idx, sim=oof_sim)
        write_csv(table, tmp / "oof.csv", float_format="%.8g")
    write_json(summary, paths.out_json)
    log_to_parent(params, models, summary)
    m = task.monitor
    print(f"out-of-fold {m} without neighbours {summary['oof'][m + '_without']:.4f}, "
          f"with {k} neighbours {summary['oof'][m]:.4f}")


def log_to_parent(params, models: Path, summary: dict) -> None:
    """The OOF scores with and without neighbours on the pipeline's MLflow parent (the one
    evaluate finished), where there is one."""
    from foldwise import tracking
    runs = [outputs.read_run(models, f) for f in params.folds]
    experiment = tracking.open_experiment(params.mlflow)
    parent = tracking.evaluated_parent(experiment, runs)
    if parent is not None:
        tracking.log_to_run(parent, {f"neighbours_oof_{m}": v
                                     for m, v in flatten(summary["oof"]).items()})
