"""The refit stage (AutoGluon's `refit_full`): one network of the folds' own recipe (`train.*`,
`seed`, `lr`) trained on every training image with its labels, exported as the bag is
(`export/refit/model`: the one network under the bag's test-time views, temperature and
decision, all three fit out of fold on the folds' models), its submission written from what
that program predicts, its run a child of the pipeline's MLflow parent with its history,
learning curve and the program as its MLflow model.

How long: `refit.epochs` epochs, or with `auto` the median over the folds of the epochs their
kept weights had trained (`best_epoch + 1` in each fold's run.json, round 1), the schedule
stretched over them as the folds' was over theirs. An epoch of the refit network covers all the
images, k/(k-1) times a fold's. It keeps its last epoch's weights: the moving average's
(`train.ema`) where most folds kept theirs, else the network's own. Nothing is held out to
choose on.

Honest figures (`metrics/refit.json`): every training image trained it, so it has no
out-of-fold figure (`oof: null`, and `no_oof` says why). Each epoch is scored on a fixed subset
of the training images, in-sample (`insample_*` columns, never `val_*`), to show the fit; the
test images are held out, and the network is compared with the bag there (`vs_bag_on_test`:
the same predictions or not, no labels). Its accuracy on labels it never saw is a benchmark's
(docs/benchmarks.md). Off (`refit.epochs: 0`) the stage writes an empty folder and imports
nothing heavy.
"""
from __future__ import annotations

from foldwise.deploy.refit_plan import HELD, RefitPaths as Paths, plan
from foldwise.files import write_csv, write_json, write_off
from foldwise.params import Params


def run(params: Params, paths: Paths) -> dict:
    """Plan, train, export, verify and write the refit network for the task preprocess
    recorded. Returns its figures (`{"epochs": 0}` when off)."""
    if not params.refit.epochs:
        write_off(paths.out, "refit.epochs: 0")
        write_json({"epochs": 0}, paths.out_json)
        import pandas as pd
        write_csv(pd.DataFrame({"epoch": [], f"{HELD}_metric": []}), paths.history_csv)
        return {"epochs": 0}
    from foldwise.deploy import refit_train
    from foldwise.data.cache import read_meta
    meta = read_meta(paths.processed)
    return refit_train.train_and_ship(params, meta, paths, plan(params, paths.models))
