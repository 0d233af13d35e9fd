import math

import numpy as np
import pandas as pd
import pytest
import torch

from foldwise.errors import InputError
from foldwise.metrics import masked_rmse
from foldwise.data.sources import keypoints as kp
from foldwise.tasks import Keypoints


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("kp") / "data"
    kp.write_sample(root, train=20, test=4, variant="kaggle", sparse_fraction=0.5, seed=3)
    return root


def task():
    return Keypoints(kp.COLUMNS, (96, 96), kp.FLIP_PAIRS)


def test_read_keeps_missing_coordinates_as_missing(sample):
    data = kp.read(sample)
    table = pd.read_csv(sample / "training.csv")
    assert data.targets.shape == (20, 30) and data.images["train"].shape == (20, 96, 96)
    np.testing.assert_array_equal(np.isnan(data.targets), table[list(kp.COLUMNS)].isna().to_numpy())
    assert 0 < np.isnan(data.targets).mean() < 1  # some rows sparse, as in the competition file
    first = np.array(table.loc[0, "Image"].split(), dtype=int).reshape(96, 96)
    np.testing.assert_array_equal(data.images["train"][0], first)


def test_pixel_row_of_the_wrong_length_names_the_line(sample, tmp_path):
    table = pd.read_csv(sample / "training.csv", dtype=str, keep_default_na=False)
    table.loc[3, "Image"] = " ".join(table.loc[3, "Image"].split()[:-5])
    (tmp_path / "d").mkdir()
    table.to_csv(tmp_path / "d/training.csv", index=False)
    for f in ("test.csv", "IdLookupTable.csv"):
        (tmp_path / "d" / f).write_bytes((sample / f).read_bytes())
    with pytest.raises(InputError, match=r"training.csv, line 5: Image has 9211 values, expected 9216"):
        kp.read(tmp_path / "d")


def test_non_numeric_coordinate_names_line_and_column(sample, tmp_path):
    table = pd.read_csv(sample / "training.csv", dtype=str, keep_default_na=False)
    table.loc[6, "nose_tip_x"] = "4O.5"
    (tmp_path / "d").mkdir()
    table.to_csv(tmp_path / "d/training.csv", index=False)
    (tmp_path / "d/test.csv").write_bytes((sample / "test.csv").read_bytes())
    with pytest.raises(InputError, match=r"line 8, column nose_tip_x: '4O.5' is not a number"):
        kp.read(tmp_path / "d")


def test_mirror_moves_x_and_swaps_left_and_right_points():
    t = task()
    pixels = np.full((1, 30), np.nan)
    le, re = kp.POINTS.index("left_eye_center"), kp.POINTS.index("right_eye_center")
    pixels[0, 2 * le:2 * le + 2] = [66.0, 38.0]   # the person's left eye, on the image's right
    pixels[0, 2 * re:2 * re + 2] = [30.0, 37.0]
    mirror = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    moved = t.values(t.augment_targets(t.targets(pixels), mirror))[0]
    # mirrored x = 95 - x on a 96-pixel row; the point that was the right eye is now the left
    np.testing.assert_allclose(moved[2 * le:2 * le + 2], [95 - 30.0, 37.0], atol=1e-4)
    np.testing.assert_allclose(moved[2 * re:2 * re + 2], [95 - 66.0, 38.0], atol=1e-4)
    assert np.isnan(moved[[c for c in range(30) if c // 2 not in (le, re)]]).all()


def test_points_follow_a_shift_and_leave_the_frame_as_missing():
    t = task()
    pixels = np.array([[10.0, 50.0] + [90.0, 50.0] + [np.nan] * 26])
    # the warp samples input at output + (0.25, 0): content moves left by 12 pixels
    shift = torch.tensor([[[1.0, 0.0, 0.25], [0.0, 1.0, 0.0]]])
    moved = t.values(t.augment_targets(t.targets(pixels), shift))[0]
    assert np.isnan(moved[:2]).all()  # x = 10 - 12 leaves the image: masked, not clamped
    np.testing.assert_allclose(moved[2:4], [78.0, 50.0], atol=1e-4)


@pytest.mark.parametrize("height,width", [(96, 96), (64, 160)])
def test_random_warps_keep_points_on_the_drawn_features(height, width):
    """Warp an image and its points together: the dark blob stays under the point, also on a
    non-square image with strong rotations (a rotation in normalised coordinates would shear
    it and move the blob off the point)."""
    rng = np.random.default_rng(0)
    img = np.full((1, 1, height, width), 0.8, dtype=np.float32)
    img[0, 0, 40:44, 60:64] = 0.0  # a dark 4x4 blob centred at (61.5, 41.5)
    t = Keypoints(kp.COLUMNS, (height, width), kp.FLIP_PAIRS)
    pixels = np.full((1, 30), np.nan)
    pixels[0, :2] = [61.5, 41.5]
    from foldwise.train.augment import augment
    gen = torch.Generator().manual_seed(int(rng.integers(1000)))
    from foldwise import params as P
    cfg = P.build(P.Augment, {"shift": 0.05, "scale": 0.1, "rotate": 30, "hflip": False,
                              "crop_area": 1.0, "brightness": 0.0, "contrast": 0.0,
                              "saturation": 0.0, "erase": 0.0, "erase_mode": "pixel"})
    for _ in range(8):
        warped, theta = augment(torch.from_numpy(img), cfg, gen)
        x, y = t.values(t.augment_targets(t.targets(pixels), theta))[0, :2]
        if np.isnan(x):
            continue  # pushed out of the frame
        assert warped[0, 0, int(round(y)), int(round(x))] < 0.3


def test_masked_loss_and_rmse_ignore_missing_coordinates():
    t = task()
    target = np.full((2, 30), np.nan)
    target[0, :4] = [10, 20, 30, 40]
    target[1, 20:22] = [50, 60]
    preds = np.nan_to_num(target, nan=999.0)
    preds[0, 0] += 3.0
    preds[1, 21] -= 4.0
    assert masked_rmse(target, preds) == pytest.approx(math.sqrt((9 + 16) / 6))
    out = torch.as_tensor(t.to_unit(preds), dtype=torch.float32)
    loss = t.loss(out, t.targets(target)).item()
    assert loss == pytest.approx(((3 / 48) ** 2 + (4 / 48) ** 2) / 6, rel=1e-4)


def test_submission_through_the_lookup_table_and_the_course_layout(sample, tmp_path):
    ids = [str(i) for i in range(1, 5)]
    coords = np.tile(np.arange(30, dtype=float), (4, 1)) + np.arange(4)[:, None] * 100
    kp.write_submission(ids, coords, {"root": str(sample)}, tmp_path / "kaggle.csv")
    lookup = pd.read_csv(sample / "IdLookupTable.csv")
    sub = pd.read_csv(tmp_path / "kaggle.csv")
    assert list(sub.columns) == ["RowId", "Location"] and list(sub["RowId"]) == list(lookup["RowId"])
    row = lookup.iloc[len(lookup) - 1]
    expected = coords[ids.index(str(row.ImageId)), kp.COLUMNS.index(row.FeatureName)]
    assert sub["Location"].iloc[-1] == pytest.approx(expected)
    kp.write_submission(ids, coords, {"root": str(tmp_path)}, tmp_path / "course.csv")
    course = pd.read_csv(tmp_path / "course.csv")
    assert list(course.columns) == ["ImageId"] + list(kp.COLUMNS) and len(course) == 4


def test_the_course_variant_has_every_point_no_lookup_and_submits_30_coordinates(tmp_path):
    """The course layout end to end through the source: every coordinate present, no lookup
    table, so the submission is one row of 30 coordinates per test image (ImageId first)."""
    root = tmp_path / "course"
    kp.write_sample(root, train=12, test=5, variant="course", sparse_fraction=0.6, seed=1)
    data = kp.read(root)
    assert not (root / "IdLookupTable.csv").exists() and not np.isnan(data.targets).any()
    coords = np.full((len(data.test), 30), 40.0)
    kp.write_submission(data.test["id"], coords, {"root": str(root)}, tmp_path / "sub.csv")
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["ImageId"] + list(kp.COLUMNS) and len(sub) == 5
    assert sub[list(kp.COLUMNS)].notna().all().all()


def test_predictions_are_clipped_to_the_image():
    clipped = task().postprocess(np.array([[-3.0, 100.0] * 15]), {})
    assert clipped.min() == 0.0 and clipped.max() == 95.0
