"""Fold-honest pseudo-labels: fold k's labels come from fold k's own model only (a planted leak,
the bag's other folds or a model from another split, is refused by name; a round's labels are
shown to be its own fold's previous round's predictions by retraining that by hand), the soft
and hard targets and the weighted loss by hand, the joined row view the rounds train on, and
bad settings refused before training. The stage end to end: test_pipeline.py."""
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CFG, NO_AUGMENT, toy_data

from foldwise import params as P
from foldwise.errors import InputError
from foldwise.models import Normalised
from foldwise.tasks import Classification, Keypoints
from foldwise.train import loader, outputs, pseudo_labels
from foldwise.train.loop import Around, FitData, Settings, train_fold


def split(n=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"img{i}" for i in range(n)], "fold": rng.permutation(np.arange(n) % k)})


def test_only_the_folds_own_model_never_saw_its_validation_labels():
    folds = split()
    for k in range(3):
        val = folds.loc[folds["fold"] == k, "id"]
        assert pseudo_labels.leaked(val, folds, k) == []
        for j in set(range(3)) - {k}:  # every other fold's model trained on fold k's images
            assert pseudo_labels.leaked(val, folds, j) == sorted(val)


def test_a_planted_leak_is_refused_naming_the_model_and_the_images():
    folds = split()
    bag = [(folds, j) for j in range(3)]  # the bag's test predictions: every fold's model
    with pytest.raises(InputError, match=r"fold 1: fold 0's model trained on 4 of the fold's 4"):
        pseudo_labels.check_sources(1, folds, bag, [f"fold {j}'s model" for j in range(3)])
    other = split(seed=5)  # another split's fold 1 shares some images with ours, not all
    shared = pseudo_labels.leaked(folds.loc[folds["fold"] == 1, "id"], other, 1)
    assert 0 < len(shared) < 4
    with pytest.raises(InputError, match=f"trained on {len(shared)} of"):
        pseudo_labels.check_sources(1, folds, [(other, 1)], ["exp-b fold 1"])
    pseudo_labels.check_sources(1, folds, [(folds, 1)], ["fold 1's model"])  # the honest one passes


def test_soft_and_hard_targets_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.05, 0.05, 0.9]])
    rows, y = pseudo_labels.targets(p, "soft", 0.0)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_allclose(y, p)
    rows, y = pseudo_labels.targets(p, "hard", 0.6)
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(y, [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(InputError, match="pseudo.mode"):
        pseudo_labels.targets(p, "sharp", 0.6)
    with pytest.raises(InputError, match="pseudo.threshold"):
        pseudo_labels.targets(p, "hard", 1.5)


def round_1_folder(models, fold, val_ids, test_ids, cols):
    """A round-1 folder as the train stage writes it, its model having validated on `val_ids`."""
    oof = outputs.oof_table(val_ids, ["g"] * len(val_ids), fold, np.zeros(len(val_ids), dtype=int),
                            np.full((len(val_ids), len(cols)), 0.5), cols)
    test = outputs.prediction_table(test_ids, np.full((len(test_ids), len(cols)), 0.5), cols)
    outputs.write(outputs.fold_dir(models, fold), {"spec": {}, "state_dict": {}, "fold": fold}, oof,
                  test, {"best_epoch": 0}, pd.DataFrame({"epoch": [0]}))


def test_further_rounds_refuse_a_first_labeller_that_saw_the_folds_validation_labels(tmp_path):
    """The guard in the path every further round takes (`first_round`, which the pseudo stage
    calls): a round-1 folder of another split (another split.seed, a stale copy) trained on
    some of this fold's validation images, and would label its test images; refused by name.
    (`leaked` and `check_sources` were called by tests alone.)"""
    folds, other = split(), split(seed=5)
    ids, cols, tests = folds["id"], ["a", "b"], ["t0", "t1"]
    val = folds.loc[folds["fold"] == 1, "id"]
    shared = pseudo_labels.leaked(val, other, 1)
    assert 0 < len(shared) < len(val)
    round_1_folder(tmp_path, 1, list(other.loc[other["fold"] == 1, "id"]), tests, cols)
    with pytest.raises(InputError, match=f"fold 1: the model in .*fold_1 trained on {len(shared)} of "
                                         f"the fold's {len(val)} validation images"):
        pseudo_labels.first_round(tmp_path, 1, Classification(cols), ids, val, tests)
    round_1_folder(tmp_path, 1, list(val), tests, cols)  # the fold's own round 1: taken
    first = pseudo_labels.first_round(tmp_path, 1, Classification(cols), ids, val, tests)
    assert first.val_preds.shape == (len(val), 2)


def test_the_weighted_loss_by_hand():
    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(5, 3)))
    soft = rng.dirichlet(np.ones(3), size=2)
    y = pseudo_labels.round_targets(np.array([0, 2, 1]), 3, soft, 0.25)
    assert y.shape == (5, 4) and list(y[:, -1]) == [1, 1, 1, 0.25, 0.25]
    task = pseudo_labels.PseudoLabelled(Classification(["a", "b", "c"]))
    log_p = torch.log_softmax(logits, dim=1).numpy()
    each = -(y[:, :3] * log_p).sum(axis=1)
    want = (y[:, 3] * each).sum() / y[:, 3].sum()
    assert float(task.loss(logits, task.targets(y).double())) == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(task.values(task.targets(y)), [0, 2, 1, *soft.argmax(1)])


def test_the_joined_view_gathers_rows_of_both_arrays_in_order():
    a = np.arange(6 * 2 * 2 * 1, dtype=np.uint8).reshape(6, 2, 2, 1)
    b = 100 + np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    joined = loader.Joined(loader.Rows(a, [5, 1, 3]), loader.Rows(b, [2, 0]))
    want = np.concatenate([a[[5, 1, 3]], b[[2, 0]]])
    assert joined.shape == want.shape and len(joined) == 5
    idx = np.array([4, 0, 3, 2])
    np.testing.assert_array_equal(joined.take(idx), want[idx])
    np.testing.assert_array_equal(joined[3], want[3])
    got = list(loader.device_batches(joined, [np.array([0, 4]), np.array([1, 2, 3])], torch.device("cpu")))
    np.testing.assert_array_equal(torch.cat(got).numpy(), want[[0, 4, 1, 2, 3]])
    with pytest.raises(ValueError, match="image shape"):
        loader.Joined(a, np.zeros((2, 3, 2, 1), dtype=np.uint8))


@pytest.mark.parametrize("validation, lr", [(False, 0.0), (True, 0.0), (False, 1e-3)],
                         ids=["test", "test+validation", "test, fine-tuned"])
def test_a_second_round_trains_on_its_own_folds_first_round_labels(validation, lr):
    """Round 1 by `train_fold` (the train stage), then `further_rounds` (the pseudo stage,
    round 1's rows replayed), against the same rounds by hand: round 2 from its kept weights on the training rows plus the test images labelled by round 1's test
    predictions (hard, at 0.6), weighted 0.5, and with `pseudo.validation` the fold's own
    validation images labelled by round 1's validation predictions (never by their labels),
    still scored against their labels. Round 2 restarts round 1's schedule (its lr and warm-up
    epoch), or with `pseudo.lr` fine-tunes: from that lr, without warm-up. Same seeds on the
    CPU: the same numbers."""
    x, y = toy_data(n=64)
    cfg = P.evolve(CFG, {"epochs": 2, "amp": False, "channels_last": False, "warmup_epochs": 1,
                         "augment": dataclasses.asdict(NO_AUGMENT)})
    settings = Settings(cfg, 3e-3, 0, torch.device("cpu"))
    data = FitData(x[:32], y[:32], loader.Rows(x, np.arange(32, 48)), y[32:48], x[48:])
    task = Classification(["a", "b"])
    rounds = P.build(P.Pseudo, {"rounds": 1, "mode": "hard", "threshold": 0.6, "weight": 0.5,
                                "epochs": 1, "validation": validation, "lr": lr})

    def net():
        torch.manual_seed(0)
        import timm
        return Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)

    rows_seen = []
    trained = net()
    got = pseudo_labels.further_rounds(
        trained, task, settings, data,
        pseudo_labels.Rounds(rounds, train_fold(trained, task, settings, data), replay=True),
        Around(on_epoch=rows_seen.append))
    first_net = net()
    first = train_fold(first_net, task, settings, data)
    keep, labels = pseudo_labels.targets(first.test_preds, "hard", 0.6)
    images = [x[:32], x[48:][keep]]
    if validation:
        keep_val, val_labels = pseudo_labels.targets(first.val_preds, "hard", 0.6)
        images.append(x[32:48][keep_val])
        labels = np.concatenate([labels, val_labels])
    schedule = {"epochs": 1, "warmup_epochs": 0} if lr else {"epochs": 1}
    by_hand = train_fold(first_net, pseudo_labels.PseudoLabelled(task),
                         dataclasses.replace(settings, lr=lr or settings.lr,
                                             cfg=P.evolve(cfg, schedule)),
                         FitData(np.concatenate(images), pseudo_labels.round_targets(y[:32], 2, labels, 0.5),
                                 x[32:48], y[32:48], x[48:]))
    np.testing.assert_allclose(got.val_preds, by_hand.val_preds, atol=1e-6)
    np.testing.assert_allclose(got.test_preds, by_hand.test_preds, atol=1e-6)
    assert list(got.history["round"]) == [1, 1, 2] and list(got.history["epoch"]) == [0, 1, 2]
    assert list(got.history["pseudo_images"]) == [0, 0, len(labels)]
    assert len(labels) > len(keep) if validation else len(labels) == len(keep)
    assert got.best_epoch == 2 and [r["round"] for r in rows_seen] == [1, 1, 2]


def test_bad_pseudo_settings_are_refused_before_training_naming_the_key():
    full = P.load(Path(__file__).resolve().parents[1] / "params.yaml")
    base = full.pseudo
    classes = Classification(["a", "b"])
    pseudo_labels.check(P.evolve(base, {"rounds": 0}), Keypoints(["x", "y"], (9, 9)))  # off
    for change, key in (({"rounds": -1}, "pseudo.rounds"), ({"rounds": 1, "mode": "sharp"}, "pseudo.mode"),
                        ({"rounds": 1, "threshold": 0.0, "mode": "hard"}, "pseudo.threshold"),
                        ({"rounds": 1, "lr": -1e-3}, "pseudo.lr"),
                        ({"rounds": 1, "weight": 0.0}, "pseudo.weight")):
        with pytest.raises(InputError, match=key):  # the schema's rule, or the pseudo check's
            pseudo_labels.check(P.evolve(full, {"pseudo": change}).pseudo, classes)
    with pytest.raises(InputError, match="pseudo.rounds"):
        pseudo_labels.check(P.evolve(base, {"rounds": 1}), Keypoints(["x", "y"], (9, 9)))


def test_a_later_round_is_read_only_while_built_from_the_round_1_beside_it(tmp_path):
    """Every reader of a fold's final folder goes through `final_dir`: a pseudo folder whose
    recorded round 1 is not the one in models/ now is refused, naming both folders."""
    import json

    from foldwise.errors import InputError
    from foldwise.train import outputs
    first, later = outputs.fold_dir(tmp_path, 0), outputs.pseudo_dir(tmp_path, 0)
    first.mkdir()
    later.mkdir()
    (first / "model.pt").write_bytes(b"round 1 of this run")
    (first / "run.json").write_text(json.dumps({"best_val_logloss": 0.9}))
    (later / "model.pt").write_bytes(b"round 2")
    (later / "run.json").write_text(json.dumps({"best_val_logloss": 0.3,
                                                "round_1": outputs.round_1_digest(tmp_path, 0)}))
    assert outputs.final_dir(tmp_path, 0) == later
    assert outputs.read_run(tmp_path, 0)["best_val_logloss"] == 0.3
    (first / "model.pt").write_bytes(b"round 1 of a later run, pseudo-labels off")
    with pytest.raises(InputError, match=r"pseudo_0 was trained from another round 1 than .*fold_0"):
        outputs.read_run(tmp_path, 0)
    (later / "run.json").write_text(json.dumps({"best_val_logloss": 0.3}))  # written before
    with pytest.raises(InputError, match="dvc repro pseudo@0"):             # the digest was
        outputs.final_dir(tmp_path, 0)
    (later / "model.pt").unlink()  # pseudo.rounds 0 leaves only rounds.json: round 1 is final
    assert outputs.final_dir(tmp_path, 0) == first
