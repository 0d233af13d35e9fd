"""The refit network's parts: its epochs from the folds' run.json (the median kept epoch count,
half up) and its kept weights (the moving average's where most folds kept theirs), the loop
keeping the last epoch's weights where nothing is held out to choose on, its figures beside the
bag tempered as the exported bag is, its in-sample names, its params refused with the key named
and its off state. The stage end to end: test_pipeline.py."""
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from helpers import CFG, NO_AUGMENT, toy_data

from foldwise import params as P
from foldwise.deploy import refit, refit_train
from foldwise.ensemble import calibration
from foldwise.errors import InputError
from foldwise.models import Normalised
from foldwise.tasks import Classification, Keypoints
from foldwise.train.loop import Around, FitData, Settings, train_fold
from foldwise.train.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def folds(tmp_path, runs) -> Path:
    for k, run in enumerate(runs):
        (tmp_path / f"fold_{k}").mkdir(parents=True)
        (tmp_path / f"fold_{k}/run.json").write_text(json.dumps(run))
    return tmp_path


def params_with(k: int, epochs, ema: float = 0.0):
    base = P.load(ROOT / "params.yaml")
    return P.evolve(base, {"folds": list(range(k)), "refit": {"epochs": epochs},
                           "train": {"ema": {"decay": ema, "warmup": True}}})


def test_auto_is_the_median_of_the_folds_kept_epoch_counts_half_up(tmp_path):
    runs = [{"best_epoch": b, "kept_weights": "raw"} for b in (3, 7, 4)]  # kept 4, 8, 5 epochs
    plan = refit.plan(params_with(3, "auto"), folds(tmp_path / "a", runs))
    assert (plan.epochs, plan.weights) == (5, "raw") and "[4, 8, 5]" in plan.why
    runs.append({"best_epoch": 5, "kept_weights": "raw"})  # 4, 8, 5, 6: median 5.5
    assert refit.plan(params_with(4, "auto"), folds(tmp_path / "b", runs)).epochs == 6
    assert refit.plan(params_with(4, 11), tmp_path / "b").epochs == 11  # as given


def test_it_keeps_the_moving_average_where_most_folds_kept_theirs(tmp_path):
    runs = [{"best_epoch": 1, "kept_weights": w} for w in ("ema", "ema", "raw")]
    models = folds(tmp_path, runs)
    assert refit.plan(params_with(3, "auto", ema=0.99), models).weights == "ema"
    assert refit.plan(params_with(3, "auto", ema=0.0), models).weights == "raw"  # none to keep
    runs = [{"best_epoch": 1, "kept_weights": w} for w in ("ema", "raw")]  # a tie: not most
    assert refit.plan(params_with(2, "auto", ema=0.99), folds(tmp_path / "t", runs)).weights == "raw"


def test_a_missing_fold_run_is_named(tmp_path):
    folds(tmp_path, [{"best_epoch": 1}])
    with pytest.raises(InputError, match=r"fold_1/run\.json: not found"):
        refit.plan(params_with(2, "auto"), tmp_path)


@pytest.mark.parametrize("value, says", [(-1, "refit.epochs=-1 is out of range; allowed: >= 0 or 'auto'"),
                                         ("autox", "refit.epochs='autox'"), (2.5, "refit.epochs=2.5"),
                                         (True, "refit.epochs=True")])
def test_bad_epochs_are_refused_naming_the_key(value, says):
    with pytest.raises(InputError, match=says.replace("(", r"\(").replace(".", r"\.")):
        params_with(2, value)


def fit(keep: str, ema: float = 0.0):
    """resnet10t on toy images whose validation labels are the opposite of the truth: the
    better it learns, the worse it validates, so the best epoch is the first."""
    x, y = toy_data(n=64)
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    cfg = P.evolve(CFG, {"epochs": 4, "patience": 4, "amp": False, "channels_last": False,
                         "augment": dataclasses.asdict(NO_AUGMENT),
                         "ema": {"decay": ema, "warmup": False}})
    states = []
    result = train_fold(net, Classification(["a", "b"]), Settings(cfg, 3e-3, 0, torch.device("cpu"), keep=keep),
                        FitData(x[:48], y[:48], x[48:], 1 - y[48:], x[48:]),
                        Around(on_epoch=lambda row: states.append(copy.deepcopy(net.state_dict()))))
    return result, states


def test_the_loop_keeps_the_last_epochs_weights_when_told_and_the_best_otherwise():
    best, _ = fit("best")
    assert best.best_epoch == int(best.history["val_metric"].idxmin()) < 3
    last, states = fit("raw")
    assert last.best_epoch == 3 and last.weights == "raw"
    for name, value in states[-1].items():
        torch.testing.assert_close(last.state_dict[name], value)
    averaged, _ = fit("ema", ema=0.9)
    assert averaged.best_epoch == 3 and averaged.weights == "ema"


def test_beside_the_bag_the_bag_is_tempered_as_the_exported_bag_is(tmp_path):
    rng = np.random.default_rng(1)
    bag, got = rng.dirichlet(np.ones(3), size=8), rng.dirichlet(np.ones(3), size=8)
    ids = [f"i{k}" for k in range(8)]
    (tmp_path / "bagged").mkdir()
    (tmp_path / "processed").mkdir()
    pd.DataFrame({"id": ids, **{c: bag[:, k] for k, c in enumerate("abc")}}).to_csv(
        tmp_path / "bagged/test.csv", index=False)
    pd.DataFrame({"id": ids}).to_csv(tmp_path / "processed/test.csv", index=False)
    task = Classification(["a", "b", "c"])
    near = refit_train.beside_bag(task, tmp_path / "bagged", tmp_path / "processed",
                                  task.tempering(1.7), got)
    tempered = calibration.temper(bag, 1.7)
    assert near["mean_abs_diff"] == pytest.approx(np.abs(got - tempered).mean(), rel=1e-6)
    assert near["agreement"] == np.mean(tempered.argmax(1) == got.argmax(1))
    assert near["logloss"] == pytest.approx(-(tempered * np.log(got)).sum(axis=1).mean(), rel=1e-6)
    points = Keypoints(["left_eye_x", "left_eye_y"], (96, 96), [])  # no classes: the difference only
    pd.DataFrame({"id": ids, "left_eye_x": bag[:, 0], "left_eye_y": bag[:, 1]}).to_csv(
        tmp_path / "bagged/test.csv", index=False)
    near = refit_train.beside_bag(points, tmp_path / "bagged", tmp_path / "processed", None, got[:, :2])
    assert set(near) == {"mean_abs_diff"}
    pd.DataFrame({"id": ids[::-1]}).to_csv(tmp_path / "processed/test.csv", index=False)
    with pytest.raises(InputError, match="list different images"):
        refit_train.beside_bag(points, tmp_path / "bagged", tmp_path / "processed", None, got[:, :2])


def test_its_views_are_the_bags_or_none():
    from foldwise.train.tta import TTA
    params = P.evolve(params_with(2, 3), {"tta": {"hflip": True, "shift": 0.04, "scale": 0.0}})
    net, task = torch.nn.Linear(2, 2), Classification(["a", "b"])
    assert refit_train.refit_tta(params) == params.tta
    assert isinstance(refit_train.views(params, task, {"hflip_safe": True})(net), TTA)
    one_pass = P.evolve(params, {"refit": {"tta": False}})
    assert not refit_train.refit_tta(one_pass).hflip and refit_train.refit_tta(one_pass).shift == 0
    assert refit_train.views(one_pass, task, {"hflip_safe": True})(net) is net


def test_its_epochs_figures_are_named_in_sample_and_shown_without_a_best_mark():
    row = {"epoch": 2, "lr": 1e-3, "train_loss": 0.5, "val_logloss": 0.4, "val_accuracy": 0.9,
           "val_metric": 0.4, "ema_val_logloss": 0.41, "val_is_ema": 0.0, "images_per_s": 100.0}
    assert {refit_train.renamed(k) for k in row} == {
        "epoch", "lr", "train_loss", "insample_logloss", "insample_accuracy", "insample_metric",
        "ema_insample_logloss", "insample_is_ema", "images_per_s"}
    line = Progress("refit", 5, "logloss", held="in-sample").line(row)
    assert "in-sample logloss 0.4000  accuracy" in line and "*" not in line and "refit" in line
    assert "val logloss 0.4000 *" in Progress("fold 0", 5, "logloss").line(row)


def test_off_the_stage_writes_a_folder_that_says_so(tmp_path):
    paths = refit.Paths(*(tmp_path / n for n in ("root", "models", "processed", "bagged",
                                                 "metrics.json", "refit", "refit.json",
                                                 "refit.csv")))
    paths.out.mkdir()
    (paths.out / "stale.pt2").write_text("an earlier refit network")
    assert refit.run(P.load(ROOT / "params.yaml"), paths) == {"epochs": 0}
    assert [p.name for p in paths.out.iterdir()] == ["off.json"]
    assert json.loads(paths.out_json.read_text()) == {"epochs": 0}
    assert pd.read_csv(paths.history_csv).empty
