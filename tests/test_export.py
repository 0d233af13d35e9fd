import numpy as np
import timm
import torch

from foldwise.deploy import program
from foldwise.tasks import Softmax
from foldwise.ensemble.bag import average
from foldwise.models import Normalised


def nets(n=3):
    torch.manual_seed(0)
    return [Normalised(timm.create_model("resnet10t", num_classes=4), [0.4] * 3, [0.2] * 3).eval()
            for _ in range(n)]


def fold_probs(models, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return [m(x).softmax(1).double().numpy() for m in models]


def test_exported_bag_matches_the_numpy_bagging_for_both_means(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(5, 24, 32, 3), dtype=np.uint8)
    models = nets()
    for mean in ("arithmetic", "geometric"):
        out = tmp_path / mean
        program.save(program.Bagged(models, Softmax(), mean), torch.from_numpy(images[:2]),
                    {"bag_mean": mean}, out)
        loaded, meta = program.load(out)
        assert meta == {"bag_mean": mean}
        got = program.run_model(loaded, images, batch_size=3)  # another batch size than traced
        np.testing.assert_allclose(got, average(fold_probs(models, images), mean), atol=1e-6)


def predict_meta(change=None) -> dict:
    """meta.json of a 4-class image-folders export of 8x8 images, with `change` applied."""
    meta = {"source": "folders", "task": "classification", "classes": list("abcd"),
            "target_names": [], "image_size": [8, 8], "flip_pairs": [], "decision": {},
            "preprocess": {"height": 8, "width": 8, "crop": [0, 0, 1, 1], "mode": "RGB"},
            "neighbours": 0, "stack": {"model": ""}}
    return {**meta, **(change or {})}


def image_folder(folder, n=9):
    """`n` distinct 8x8 PNGs; returns them as the uint8 array predict decodes, in name order."""
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8) for _ in range(n)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}.png")
    return np.stack(arrays)


def test_predict_refuses_a_second_level_model_the_export_cannot_hold(tmp_path):
    """foldwise-predict and the MLflow model dropped steps of the submission without a word; a
    boosted stack (or a logistic one that never saw a class) has no form the export holds, so
    predict refuses it by name, and `set_level` keeps every set-level step from being served."""
    import json

    import pytest

    from foldwise.deploy.predict import Reading, predict_folder
    from foldwise.errors import InputError
    image_folder(tmp_path / "images")
    bag = program.Bagged(nets(1), Softmax(), "arithmetic")
    boosted = {"model": "hist_gradient_boosting", "neighbours": 0, "in_program": False, "weights": False}
    cases = [({}, [], []),
             ({"stack": {"model": "logistic", "neighbours": 0, "in_program": True}}, [], []),
             ({"stack": boosted}, *[["stack.model=hist_gradient_boosting (not a layer of the program)"]] * 2),
             ({"neighbours": 2, "stack": {"model": "logistic", "neighbours": 2, "in_program": False,
                                          "weights": False}},
              *[["stack.model=logistic with stack.neighbours=2 (not a layer of the program)"]] * 2),
             ({"neighbours": 3}, ["neighbours.k=3 (averaging over the whole test set)"], []),
             # a stack in the program is the submission: the neighbours then only feed stacks
             ({"neighbours": 3, "stack": {"model": "logistic", "neighbours": 0, "in_program": True}}, [], [])]
    for change, served, refused in cases:
        program.save(bag, torch.zeros((2, 8, 8, 3), dtype=torch.uint8), predict_meta(change), tmp_path / "m")
        meta = json.loads((tmp_path / "m/meta.json").read_text())
        assert (program.set_level(meta), program.unreproducible(meta)) == (served, refused)
        if refused:
            with pytest.raises(InputError, match="foldwise-predict would not reproduce it") as err:
                predict_folder(tmp_path / "m", tmp_path / "images", tmp_path / "p.csv", Reading(workers=1))
            assert all(n in str(err.value) for n in refused)
        if not change.get("neighbours"):  # (those need the feature program: the test below)
            predict_folder(tmp_path / "m", tmp_path / "images", tmp_path / "p.csv",
                           Reading(workers=1, bag_only=bool(refused)))


def test_predict_reproduces_neighbour_averaging_and_a_logistic_stack_over_neighbours(tmp_path):
    """The set-level steps from the export's files alone: each image's prediction averaged over
    its nearest images of the folder (features: each fold's normalised pre-logits, averaged, as
    the neighbours stage embeds them eagerly), or scikit-learn's own predict_proba of a logistic
    regression over the stack's neighbour features."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from foldwise.deploy import setlevel
    from foldwise.deploy.predict import Reading, predict_folder
    from foldwise.ensemble import knn, stack_model
    images = image_folder(tmp_path / "images")
    models = nets(2)
    bag = program.Bagged(models, Softmax(), "arithmetic")
    probs = average(fold_probs(models, images), "arithmetic")
    direction = knn.mean_direction(
        [knn.embed(m, images, torch.device("cpu")) for m in models])
    idx, sim = knn.graph(direction, 3)
    rng = np.random.default_rng(2)  # a logistic stack fit on some rows of neighbour features
    x = stack_model.features(rng.dirichlet(np.ones(4), size=40), rng.integers(0, 40, size=(40, 2)),
                       rng.random((40, 2)), 2)
    model = LogisticRegression(max_iter=500).fit(x, np.arange(40) % 4)
    want = {"neighbours": knn.smooth(probs, idx, sim),
            "stack": model.predict_proba(stack_model.features(probs, idx, sim, 2))}
    stacked = {"model": "logistic", "neighbours": 2, "in_program": False, "weights": True}
    for name, change, weights in (("neighbours", {"neighbours": 3}, None),
                                  ("stack", {"neighbours": 3, "stack": stacked},
                                   stack_model.linear_weights(model, 4))):
        example = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
        program.save(bag, example, predict_meta(change), tmp_path / name,
                    lambda folder: setlevel.save(folder, models, example, weights))
        assert program.unreproducible(predict_meta(change)) == []
        predict_folder(tmp_path / name, tmp_path / "images", tmp_path / f"{name}.csv", Reading(workers=1))
        got = pd.read_csv(tmp_path / f"{name}.csv")
        assert list(got["image"]) == [f"{i}.png" for i in range(len(images))]
        np.testing.assert_allclose(got[list("abcd")].to_numpy(), want[name], atol=2e-5)
        assert np.abs(want[name] - probs).max() > 1e-3  # the step changed the bag's predictions
