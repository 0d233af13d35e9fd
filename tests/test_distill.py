"""Distillation's parts: the student's loss and figures against the teacher's probabilities by
hand, a student trained by the real loop that learns to agree with its teacher, the teacher's
targets read from the bag (tempered as export tempers), the stage's settings and its off state,
and bad input named. The stage end to end: test_pipeline.py."""
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
from foldwise.deploy import soft_targets
from foldwise.ensemble import calibration
from foldwise.errors import InputError
from foldwise.models import Normalised
from foldwise.tasks import Classification, Keypoints
from foldwise.train.loop import FitData, Settings, train_fold

ROOT = Path(__file__).resolve().parents[1]


def test_the_loss_and_figures_are_the_cross_entropy_against_the_teacher_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)) * 2
    teacher = rng.dirichlet(np.ones(3), size=6)
    task = soft_targets.Distilled(Classification(["a", "b", "c"]))
    loss = task.loss(torch.tensor(logits), task.targets(teacher).double())
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert float(loss) == pytest.approx(-(teacher * log_p).sum(axis=1).mean(), rel=1e-6)
    student = np.exp(log_p)
    figures = task.score(teacher, student)
    assert figures["logloss"] == pytest.approx(-(teacher * log_p).sum(axis=1).mean(), rel=1e-9)
    assert figures["agreement"] == np.mean(teacher.argmax(1) == logits.argmax(1))


def test_a_student_trained_by_the_loop_learns_to_agree_with_its_teacher():
    """The real loop on toy images: targets are a teacher's soft rows (right 85% of the mass);
    validated on held-out images against the teacher's rows there, the kept epoch's figure is
    the hand-computed cross-entropy of its predictions, and the student agrees with the teacher
    on nearly all of them."""
    x, y = toy_data(n=64)
    teacher = np.where(np.eye(2)[y] == 1, 0.85, 0.15)
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    task = soft_targets.Distilled(Classification(["a", "b"]))
    cfg = P.evolve(CFG, {"epochs": 5, "amp": False, "channels_last": False,
                         "augment": dataclasses.asdict(NO_AUGMENT)})
    result = train_fold(net, task, Settings(cfg, 3e-3, 0, torch.device("cpu")),
                        FitData(x[:48], teacher[:48], x[48:], teacher[48:], x[48:]))
    kept = result.history.iloc[result.best_epoch]
    p = np.clip(result.val_preds, 1e-15, 1)
    assert kept["val_logloss"] == pytest.approx(-(teacher[48:] * np.log(p)).sum(axis=1).mean(), rel=1e-6)
    assert kept["val_agreement"] >= 0.9
    assert kept["val_logloss"] < result.history["val_logloss"].iloc[0] or result.best_epoch == 0
    np.testing.assert_allclose(result.val_preds.sum(axis=1), 1.0, atol=1e-6)


def test_the_teachers_targets_are_the_bags_oof_and_test_rows_tempered_as_export_tempers(tmp_path):
    rng = np.random.default_rng(1)
    cols = ["c0", "c1", "c2"]
    oof = pd.DataFrame(rng.dirichlet(np.ones(3), size=5), columns=cols)
    oof.insert(0, "fold", [0, 1, 0, 1, 0])
    oof.insert(0, "group", list("ppqqr"))
    oof.insert(0, "id", [f"i{k}" for k in range(5)])
    test = pd.DataFrame(rng.dirichlet(np.ones(3), size=4), columns=cols)
    test.insert(0, "id", [f"t{k}" for k in range(4)])
    oof.to_csv(tmp_path / "oof.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "metrics.json").write_text(json.dumps({"oof": {"logloss": 1.0, "temperature": 1.7}}))
    task = Classification(cols)
    train_t, test_t = soft_targets.teacher_predictions(task, tmp_path, tmp_path / "metrics.json", oof["id"])
    np.testing.assert_allclose(train_t, calibration.temper(oof[cols].to_numpy(), 1.7))
    np.testing.assert_allclose(test_t, calibration.temper(test[cols].to_numpy(), 1.7))
    with pytest.raises(InputError, match="oof.csv"):
        soft_targets.teacher_predictions(task, tmp_path, tmp_path / "metrics.json", oof["id"][::-1])


def test_a_task_without_class_probabilities_is_refused_naming_the_key():
    with pytest.raises(InputError, match="distill.model"):
        soft_targets.Distilled(Keypoints(["x", "y"], (96, 96)))
    with pytest.raises(InputError, match="3 class probabilities"):
        soft_targets.Distilled(Classification(["a", "b", "c"])).targets(np.ones((4, 2)))


def stage_paths(tmp_path):
    from foldwise.deploy.student import DistillPaths
    return DistillPaths(*[tmp_path / n for n in ("root", "models", "processed", "bagged", "m.json",
                                                 "near", "stack", "s.json", "out",
                                                 "distill.json", "history.csv")])


def test_off_the_stage_writes_a_folder_that_says_so(tmp_path):
    """Off, its folder holds one file naming the switch (an empty folder made DVC warn
    "'export/distilled' is empty" on every run), and no earlier student."""
    from foldwise.deploy.distill import run
    paths = stage_paths(tmp_path)
    (paths.out).mkdir()
    (paths.out / "stale.pt2").write_text("an earlier student")
    assert run(P.load(ROOT / "params.yaml"), paths) == {"model": ""}
    assert [p.name for p in paths.out.iterdir()] == ["off.json"]
    assert json.loads((paths.out / "off.json").read_text()) == {"off": "distill.model: ''"}
    assert json.loads(paths.out_json.read_text()) == {"model": ""}
    assert pd.read_csv(paths.history_csv).empty


def test_the_students_settings_are_the_folds_recipe_with_its_own_network():
    from foldwise.deploy.distill import student_settings
    base = P.load(ROOT / "params.yaml")
    params = P.evolve(base, {"train": {"weights_file": "weights/folds.pth", "epochs": 9},
                             "distill": {"model": "resnet10t", "epochs": 0}})
    cfg = student_settings(params)
    assert (cfg.model, cfg.epochs, cfg.weights_file, cfg.devices) == ("resnet10t", 9, "", 1)
    assert cfg.lr_per_step == base.train.lr_per_step and cfg.ema == base.train.ema
    same = student_settings(P.evolve(params, {"distill": {"model": base.train.model, "epochs": 3}}))
    assert (same.epochs, same.weights_file) == (3, "weights/folds.pth")  # its own weights still fit
    with pytest.raises(InputError, match="distill.model='resnet_nonesuch'"):
        student_settings(P.evolve(params, {"distill": {"model": "resnet_nonesuch"}}))
    with pytest.raises(InputError, match="distill.epochs=-1"):
        student_settings(P.evolve(params, {"distill": {"epochs": -1}}))


def test_with_distill_test_the_student_learns_the_teachers_test_rows_and_says_they_are_not_held_out():
    """`distill.test`: the test images join the student's training after the training images,
    against the teacher's test rows (one joined view), and it still validates on them. A
    teacher whose test rows disagree with what the training images teach (the test images
    carry a mark, and the teacher flips their class) shows the rows are learnt: the student
    agrees with them only when they are in its training. The figure is then named as not
    held out."""
    from foldwise.deploy.distill_train import fidelity_key, student_data
    from foldwise.deploy.student import Teacher
    x, y = toy_data(n=64)
    x[48:, :2] = 255  # the mark on the test images
    soft = lambda labels: np.where(np.eye(2)[labels] == 1, 0.9, 0.1)
    teacher = Teacher("bag", soft(y[:48]), soft(1 - y[48:]), {}, {})
    plain, joined = (student_data(x[:48], x[48:], teacher, with_test) for with_test in (False, True))
    np.testing.assert_array_equal(plain.x_train, x[:48])
    assert len(joined.x_train) == 64
    np.testing.assert_array_equal(joined.x_train.take(np.arange(64)), x)
    np.testing.assert_array_equal(joined.y_train, np.concatenate([teacher.train, teacher.test]))
    for data in (plain, joined):
        assert data.x_val is data.x_test and data.y_val is teacher.test
    cfg = P.evolve(CFG, {"epochs": 3, "amp": False, "channels_last": False,
                         "augment": dataclasses.asdict(NO_AUGMENT)})
    agreement = {}
    for name, data in (("plain", plain), ("joined", joined)):
        torch.manual_seed(0)
        net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
        result = train_fold(net, soft_targets.Distilled(Classification(["a", "b"])),
                            Settings(cfg, 3e-3, 0, torch.device("cpu")), data)
        agreement[name] = soft_targets.fidelity(teacher.test, result.val_preds)["agreement"]
    assert agreement["plain"] <= 0.25 and agreement["joined"] >= 0.75, agreement
    base = P.load(ROOT / "params.yaml")
    assert base.distill.test is False and fidelity_key(base) == "test_fidelity"
    assert fidelity_key(P.evolve(base, {"distill": {"test": True}})) == "test_fidelity_not_held_out"
