import numpy as np
import pandas as pd
import pytest

from foldwise.errors import InputError
from foldwise.data.sources import dogscats, folders
from foldwise.tasks import Classification


def test_dogscats_labels_come_from_file_names_and_test_ids_sort_numerically(tmp_path):
    dogscats.write_sample(tmp_path / "d", per_class=3, test=11, seed=2)
    data = dogscats.read(tmp_path / "d")
    assert dict(zip(data.train["id"], data.train["label"]))["dog.2.jpg"] == 1
    assert dict(zip(data.train["id"], data.train["label"]))["cat.0.jpg"] == 0
    assert list(data.test["id"])[:3] == ["1.jpg", "2.jpg", "3.jpg"] and list(data.test["id"])[-1] == "11.jpg"


def test_dogscats_rejects_a_file_name_that_fits_no_pattern(tmp_path):
    dogscats.write_sample(tmp_path / "d", per_class=2, test=2, seed=0)
    (tmp_path / "d/train/cat.0.jpg").rename(tmp_path / "d/train/kitten.0.jpg")
    with pytest.raises(InputError, match=r"train/kitten.0.jpg: file name fits neither"):
        dogscats.read(tmp_path / "d")


def test_dogscats_submission_is_id_and_probability_of_dog_in_numeric_order(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    dogscats.write_submission(["10.jpg", "2.jpg", "1.jpg"], probs, {"classes": ["cat", "dog"]},
                              tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines == ["id,label", "1,0.5", "2,0.8", "10,0.1"]


def test_clip_bound_is_chosen_on_out_of_fold_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400)
    p_dog = np.where(labels == 1, 0.999, 0.001)
    wrong = rng.choice(400, size=8, replace=False)  # confident mistakes, as mislabelled images make
    p_dog[wrong] = 1 - p_dog[wrong]
    probs = np.stack([1 - p_dog, p_dog], axis=1)
    folds = np.arange(400) % 4
    summary, _ = Classification(["cat", "dog"]).report(labels, probs, folds)
    assert summary["clip"] > 0.001
    assert summary["logloss_clipped"] < summary["logloss"] - 0.01
    assert "prior_logloss" in summary


def test_the_clip_bounds_figure_is_cross_fitted_not_scored_on_the_rows_that_chose_it():
    """The bound was chosen on the same OOF rows it was scored on: an optimistic figure. Each
    fold's rows must be clipped with the bound the other folds chose; checked against
    scikit-learn's log loss of that construction by hand."""
    from sklearn.metrics import log_loss

    from foldwise.tasks import CLIP_GRID
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=400)
    folds = np.arange(400) % 4
    p_dog = np.where(labels == 1, 0.99, 0.01)
    wrong = rng.choice(np.flatnonzero(folds == 0), size=6, replace=False)  # fold 0's mistakes only
    p_dog[wrong] = 1 - p_dog[wrong]
    probs = np.stack([1 - p_dog, p_dog], axis=1)

    def clipped(p, c):
        q = np.clip(p, c, 1 - c)
        return q / q.sum(1, keepdims=True)

    def best(rows):
        return CLIP_GRID[np.argmin([log_loss(labels[rows], clipped(probs[rows], c), labels=[0, 1])
                                    for c in CLIP_GRID])]

    by_hand = np.empty_like(probs)
    for k in range(4):
        by_hand[folds == k] = clipped(probs[folds == k], best(folds != k))
    summary, _ = Classification(["cat", "dog"]).report(labels, probs, folds)
    assert summary["clip"] == best(np.ones(400, dtype=bool))
    assert summary["logloss_clipped"] == pytest.approx(log_loss(labels, by_hand), rel=1e-9)
    in_sample = log_loss(labels, clipped(probs, summary["clip"]))
    assert summary["logloss_clipped"] > in_sample + 0.005  # the in-sample figure flattered it


def test_folders_read_both_layouts_with_the_same_classes(tmp_path):
    folders.write_sample(tmp_path / "f", classes=5, per_class=3, test=2, layout="folders", seed=0)
    folders.write_sample(tmp_path / "c", classes=5, per_class=3, test=2, layout="csv", seed=0)
    a, b = folders.read(tmp_path / "f"), folders.read(tmp_path / "c")
    assert a.classes == b.classes and len(a.classes) == 5 and len(a.train) == len(b.train) == 15
    assert a.train["group"].isna().all() and b.train["group"].nunique() == 3


def test_folders_reject_an_empty_class_folder_and_a_missing_listed_image(tmp_path):
    folders.write_sample(tmp_path / "f", classes=3, per_class=2, test=1, layout="csv", seed=0)
    (tmp_path / "f/labels.csv").rename(tmp_path / "f/labels.bak")
    (tmp_path / "f/train/species_03").mkdir()
    with pytest.raises(InputError, match=r"train/species_03: class folder holds no images"):
        folders.read(tmp_path / "f")
    (tmp_path / "f/train/species_03").rmdir()
    (tmp_path / "f/labels.bak").rename(tmp_path / "f/labels.csv")
    (tmp_path / "f/train/species_01/species_01_001.jpg").unlink()
    with pytest.raises(InputError, match=r"labels.csv, line 5: image .*species_01_001.jpg is listed but missing"):
        folders.read(tmp_path / "f")


def test_folders_submission_gives_the_label_then_every_probability(tmp_path):
    probs = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    folders.write_submission(["a.jpg", "b.jpg"], probs, {"classes": ["x", "y", "z"]}, tmp_path / "s.csv")
    sub = pd.read_csv(tmp_path / "s.csv")
    assert list(sub.columns) == ["image", "label", "x", "y", "z"]
    assert list(sub["label"]) == ["y", "x"]
    np.testing.assert_allclose(sub[["x", "y", "z"]], probs)
