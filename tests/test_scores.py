"""The evaluate stage's reports: the reliability table by hand, the per-fold curves table, and
a contact sheet on which small images can be seen."""
import numpy as np
import pandas as pd
from PIL import Image

from foldwise.ensemble import scores
from foldwise.tasks import Classification, Keypoints


def test_reliability_bins_confidence_against_observed_accuracy():
    task = Classification(["a", "b"])
    # confidences 0.55, 0.58 (bin 0.5-0.6), 0.95, 0.97, 0.99 (bin 0.9-1.0)
    p = np.array([0.55, 0.58, 0.95, 0.97, 0.99])
    oof = pd.DataFrame({"a": p, "b": 1 - p})
    truth = np.array([0, 1, 0, 0, 1])  # right, wrong, right, right, wrong
    table = scores.reliability(task, oof, truth)
    assert list(table["images"]) == [2, 3]
    np.testing.assert_allclose(table["confidence"], [(0.55 + 0.58) / 2, (0.95 + 0.97 + 0.99) / 3])
    np.testing.assert_allclose(table["accuracy"], [0.5, 2 / 3])
    np.testing.assert_allclose(table["perfect"], table["confidence"])
    assert scores.reliability(Keypoints(["a", "b"], (8, 8)), oof, truth).empty


def test_curves_put_every_fold_in_one_long_table():
    h = pd.DataFrame({"epoch": [0, 1], "val_metric": [1.0, 0.5], "train_loss": [2.0, 1.0],
                      "lr": [0.1, 0.05], "val_logloss": [1.0, 0.5]})
    table = scores.curves({0: h, 3: h.assign(val_metric=[0.9, 0.4])})
    assert list(table.columns) == ["epoch", "fold", "val_metric", "train_loss", "lr"]
    assert list(table["fold"]) == [0, 0, 3, 3] and list(table["val_metric"]) == [1.0, 0.5, 0.9, 0.4]


def test_contact_sheet_enlarges_small_images_to_the_cell(tmp_path):
    images = np.zeros((3, 28, 28, 1), dtype=np.uint8)
    images[:, 7:21, 7:21] = 255  # a white square inside black: its size on the sheet is measurable
    table = pd.DataFrame({"row": [0, 1, 2], "id": ["a", "b", "c"], "loss": [3.0, 2.0, 1.0],
                          "label": ["x", "y", "x"], "predicted": ["y", "x", "y"]})
    scores.contact_sheet(images, table, tmp_path / "sheet.png", columns=3, cell=160)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("L"))
    first = sheet[:160, :160]
    # scaled 160/28: the 14-px square covers about 80 x 80 px and the black frame the rest
    assert 75 * 75 < (first > 235).sum() < 85 * 85
    assert (first < 20).sum() > 160 * 160 - 85 * 85 - 200
