"""The second-level model's parts: its features, its cross-fitting (a fold's rows never fit on
their own labels), its OOF figure against scikit-learn's own fit and log loss, what neighbour
features buy where neighbours share labels, and bad settings named."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from foldwise.ensemble import knn, stack_model
from foldwise.errors import InputError


def probs(rng, n, c):
    p = rng.dirichlet(np.ones(c), size=n)
    return p / p.sum(axis=1, keepdims=True)


def test_features_are_log_probabilities_then_each_neighbours_then_their_weighted_mean():
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    idx = np.array([[1, 2], [0, 2], [1, 0]])
    sim = np.array([[0.9, 0.5], [0.9, -0.1], [0.5, 0.4]])
    x = stack_model.features(p, idx, sim, 2)
    assert x.shape == (3, 2 + 2 * 2 + 2 + 2)
    np.testing.assert_allclose(x[:, :2], np.log(p))
    np.testing.assert_allclose(x[0, 2:4], np.log(p[1]))  # the nearest first
    np.testing.assert_allclose(x[0, 4:6], np.log(p[2]))
    np.testing.assert_allclose(x[:, 6:8], sim)
    # row 0 by hand: itself weight 1, neighbours 0.9 and 0.5
    mean0 = (p[0] + 0.9 * p[1] + 0.5 * p[2]) / 2.4
    np.testing.assert_allclose(np.exp(x[0, 8:]), mean0, rtol=1e-9)
    # and the neighbours stage's own average (negative similarity counts 0) for every row
    np.testing.assert_allclose(np.exp(x[:, 8:]), knn.smooth(p, idx, sim), rtol=1e-9)
    assert stack_model.features(p, idx, sim, 0).shape == (3, 2)
    np.testing.assert_allclose(stack_model.features(p, idx, sim, 1)[:, 2:4], np.log(p[idx[:, 0]]))


def test_a_folds_rows_are_predicted_by_a_model_that_never_saw_their_labels():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 4)), rng.integers(0, 3, 120)
    folds = np.repeat([0, 1, 2], 40)

    def make():
        return LogisticRegression(C=1.0, max_iter=2000)
    base = stack_model.cross_fitted(x, y, folds, make)
    shuffled = y.copy()
    shuffled[folds == 0] = rng.permutation(y[folds == 0])[::-1]  # fold 0's labels changed
    again = stack_model.cross_fitted(x, shuffled, folds, make)
    np.testing.assert_array_equal(again[folds == 0], base[folds == 0])  # unaffected
    assert np.abs(again[folds != 0] - base[folds != 0]).max() > 1e-3  # the others fit on them
    np.testing.assert_allclose(base.sum(axis=1), 1.0)


def test_the_cross_fitted_figure_is_scikit_learns_fit_and_log_loss_fold_by_fold():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    p = probs(rng, 200, 4) * 0.5 + np.eye(4)[y] * 0.5
    folds = rng.integers(0, 4, 200)
    got = stack_model.cross_fitted(stack_model.features(p, None, None, 0), y, folds,
                             lambda: stack_model.make_model("logistic", 0.5, 0))
    for k in range(4):
        rows = folds == k
        ref = LogisticRegression(C=0.5, max_iter=2000).fit(np.log(p[~rows]), y[~rows])
        np.testing.assert_allclose(got[rows], ref.predict_proba(np.log(p[rows])), atol=1e-8)
    assert log_loss(y, got) < log_loss(y, np.full((200, 4), 0.25))


def test_neighbour_features_help_where_neighbours_share_the_label():
    """Images in clusters of 5 of one class (one driver's frames of one pose), each image's own
    prediction noisy: the neighbours' predictions carry the label, so the stack with them
    scores far better out of fold than without."""
    rng = np.random.default_rng(2)
    clusters, size, c = 80, 5, 4
    y = np.repeat(rng.integers(0, c, clusters), size)
    logits = rng.normal(size=(len(y), c)) * 1.5 + np.eye(c)[y] * 1.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    members = np.arange(len(y)).reshape(clusters, size)
    idx = np.array([[m for m in members[i // size] if m != i] for i in range(len(y))])
    sim = np.full(idx.shape, 0.9)
    folds = np.repeat(np.arange(4), len(y) // 4)  # whole clusters per fold

    def oof(n):
        x = stack_model.features(p, idx, sim, n)
        return log_loss(y, stack_model.cross_fitted(x, y, folds, lambda: stack_model.make_model("logistic", 1.0, 0)))
    assert oof(4) < oof(0) - 0.1  # measured: 1.08 against 1.27


def test_hist_gradient_boosting_is_a_stack_model_too():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 150)
    p = probs(rng, 150, 3) * 0.4 + np.eye(3)[y] * 0.6
    got = stack_model.cross_fitted(np.log(p), y, np.arange(150) % 3,
                             lambda: stack_model.make_model("hist_gradient_boosting", 1.0, 0))
    assert got.shape == (150, 3) and (got.argmax(1) == y).mean() > 0.8


def test_bad_settings_name_the_key():
    with pytest.raises(InputError, match=r"stack.model='forest' must be '' \(off\) or one of logistic"):
        stack_model.make_model("forest", 1.0, 0)
    p = np.full((4, 2), 0.5)
    with pytest.raises(InputError, match=r"stack.neighbours=3 needs a neighbour graph of at least 3 "
                                         r"\(neighbours.k is 2\)"):
        stack_model.features(p, np.zeros((4, 2), dtype=int), np.zeros((4, 2)), 3)


def test_a_class_missing_from_a_fit_gets_zero_probability_not_a_shifted_column():
    x = np.array([[0.0], [0.1], [1.0], [1.1], [2.0], [2.1]])
    y = np.array([0, 0, 1, 1, 2, 2])
    folds = np.array([0, 1, 0, 1, 2, 2])  # fold 2's rows hold the only class-2 labels
    got = stack_model.cross_fitted(x, y, folds, lambda: LogisticRegression(max_iter=2000))
    assert (got[folds == 2, 2] == 0).all() and np.allclose(got.sum(axis=1), 1.0)
    model = stack_model.fit(x[:4], y[:4], lambda: LogisticRegression(max_iter=2000))
    assert stack_model.predict(model, x, 3)[:, 2].tolist() == [0.0] * 6


def test_a_task_without_class_probabilities_is_refused_before_anything_is_read(tmp_path):
    import json
    from pathlib import Path

    from foldwise import params as P
    from foldwise.ensemble import stack
    base = P.load(Path(__file__).resolve().parents[1] / "params.yaml")
    params = P.evolve(base, {"stack": {"model": "logistic"}})
    meta = {"task": "keypoints", "target_names": ["nose_x", "nose_y"], "image_size": [96, 96],
            "flip_pairs": []}
    (tmp_path / "processed").mkdir()
    (tmp_path / "processed/meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"stack.model='logistic': a second-level model needs class "
                                         r"probabilities"):
        stack.run(params, stack.Paths(*(tmp_path / n for n in (
            "models", "processed", "bagged", "m.json", "near", "out", "s.json"))))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("classes", [10, 2])
def test_a_logistic_stack_without_neighbours_is_a_layer_of_the_exported_program(classes, tmp_path):
    """`linear_form` in the exported bag (torch.export, saved and loaded): its outputs are
    scikit-learn's predict_proba on the features the stack stage gives the bag's predictions,
    for many classes (softmax) and two (scikit-learn's sigmoid)."""
    import torch

    from foldwise.deploy import program
    from foldwise.tasks import Classification, Softmax

    rng = np.random.default_rng(classes)
    torch.manual_seed(classes)
    nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, classes)) for _ in range(2)]
    train_p = probs(rng, 300, classes)
    y = np.array([rng.choice(classes, p=p) for p in train_p])
    empty = np.zeros((300, 0), dtype=np.int64)
    model = LogisticRegression(max_iter=2000).fit(stack_model.features(train_p, empty, empty, 0), y)
    weight, bias = stack_model.linear_form(model, 0, classes)
    task = Classification([f"c{k}" for k in range(classes)])
    bag = program.Bagged(nets, Softmax(), "arithmetic", task.tempering(1.3),
                        program.LinearStack(weight, bias))
    images = rng.integers(0, 255, size=(7, 4, 4, 3), dtype=np.uint8)
    program.save(bag, torch.from_numpy(images[:2]), {}, tmp_path / "model")
    loaded, _ = program.load(tmp_path / "model")
    got = program.run_model(loaded, images, batch_size=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        bagged = np.mean([net(x).softmax(1).double().numpy() for net in nets], axis=0)
    from foldwise.ensemble import calibration
    tempered = calibration.temper(bagged, 1.3)
    x = stack_model.features(tempered, empty[:7], empty[:7], 0)
    np.testing.assert_allclose(got, model.predict_proba(x), atol=1e-6)
    assert np.abs(got - tempered).max() > 1e-3  # the stack did change them


def test_only_a_logistic_stack_of_an_images_own_features_that_saw_every_class_is_a_layer():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(90, 3)), rng.integers(0, 3, 90)
    assert stack_model.linear_form(LogisticRegression().fit(x, y), 0, 3) is not None
    assert stack_model.linear_form(LogisticRegression().fit(x, y), 2, 3) is None  # neighbours: set-level
    assert stack_model.linear_form(stack_model.make_model("hist_gradient_boosting", 1.0, 0).fit(x, y), 0, 3) is None
    assert stack_model.linear_form(LogisticRegression().fit(x, y % 2), 0, 3) is None  # a class unseen



def test_the_stacks_features_use_the_cross_fitted_temperature_and_its_gain_is_over_the_calibrated_bag(tmp_path):
    """The stack's OOF features were tempered with the temperature fit on every OOF row (it had
    seen the labels they are scored on), and its gain was measured against the uncalibrated bag,
    crediting calibration to the stack."""
    import json

    import pandas as pd

    from foldwise.ensemble import calibration, stack
    from foldwise.tasks import Classification
    rng = np.random.default_rng(5)
    task = Classification(["a", "b", "c"])
    p = probs(rng, 240, 3) ** 3  # overconfident
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row ** (1 / 3) / (row ** (1 / 3)).sum()) for row in p])
    folds = np.arange(240) % 4
    oof = pd.DataFrame(p, columns=task.columns).assign(fold=folds)
    calibrated = calibration.cross_fitted(p, y, folds)[0]
    metrics = {"logloss": task.score(y, p)["logloss"], "accuracy": task.score(y, p)["accuracy"],
               "temperature": calibration.fit(p, y),
               "logloss_calibrated": task.score(y, calibrated)["logloss"]}
    (tmp_path / "metrics.json").write_text(json.dumps({"oof": metrics}))
    got = stack.bag_predictions(oof, task, tmp_path / "metrics.json", y)
    np.testing.assert_allclose(got, calibrated)
    assert np.abs(got - calibration.temper(p, metrics["temperature"])).max() > 1e-4
    (tmp_path / "near").mkdir()
    shipped = stack.shipped_bag(task, y, folds, tmp_path / "metrics.json", tmp_path / "near")
    assert shipped["oof_bag"]["logloss"] == metrics["logloss_calibrated"] < metrics["logloss"]
    assert shipped["oof_bag_is"] == "bag, calibrated (cross-fitted)"
