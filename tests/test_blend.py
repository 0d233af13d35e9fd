"""Blending: weights on the simplex fit on OOF predictions, a cross-validated score checked
against an independent grid search scored with scikit-learn, and the submission's format."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import gmean
from sklearn.metrics import log_loss

from foldwise.ensemble import blend
from foldwise.ensemble.bag import average
from foldwise.errors import InputError

CLASSES = [f"c{k}" for k in range(10)]
META = {"task": "classification", "classes": CLASSES, "source": "statefarm"}
N, FOLDS = 400, 4


def noisy(truth, rng, strength, noise):
    logits = rng.normal(0, noise, (len(truth), len(CLASSES)))
    logits[np.arange(len(truth)), truth] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def member(name, ids, folds, probs, test_probs, rng=None):
    oof = pd.DataFrame(probs, columns=CLASSES)
    oof.insert(0, "fold", folds)
    oof.insert(0, "id", ids)
    if rng is not None:  # a member may list its rows in another order
        oof = oof.iloc[rng.permutation(len(oof))]
    test = pd.DataFrame(test_probs, columns=CLASSES)
    test.insert(0, "id", [f"img_{k}.jpg" for k in range(len(test_probs))])
    return blend.Member(name, oof, test)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, len(CLASSES), N)
    ids = pd.Series([f"train_{k}" for k in range(N)])
    folds = np.arange(N) % FOLDS
    test_truth = rng.integers(0, len(CLASSES), 50)
    good = member("good", ids, folds, noisy(truth, rng, 2.5, 1.0), noisy(test_truth, rng, 2.5, 1.0), rng)
    other = member("other", ids, folds, noisy(truth, rng, 2.0, 1.2), noisy(test_truth, rng, 2.0, 1.2))
    junk = member("junk", ids, folds, noisy(truth, rng, 0.0, 1.0), noisy(test_truth, rng, 0.0, 1.0))
    return truth, ids, folds, [good, other, junk]


def test_weights_are_on_the_simplex_and_ignore_a_useless_member(data):
    truth, ids, _, members = data
    out = blend.blend(members, truth, META, ids).summary
    w = np.array(list(out["weights"].values()))
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert out["weights"]["junk"] < 0.05 and out["weights"]["good"] > out["weights"]["other"]
    best_member = min(s["logloss"] for s in out["member_scores"].values())
    assert out["fitted_in_sample"]["logloss"] <= best_member + 1e-9
    assert out["fitted_in_sample"]["logloss"] <= out["equal_weights"]["logloss"] + 1e-9
    # scored on rows the weights never saw, the blend can only look worse than in-sample
    assert out["cross_validated"]["logloss"] >= out["fitted_in_sample"]["logloss"] - 1e-9


def test_cross_validated_score_matches_a_grid_search_scored_by_sklearn(data):
    truth, ids, folds, members = data
    two = members[:2]
    out = blend.blend(two, truth, META, ids).summary
    a = two[0].oof.set_index("id").loc[ids, CLASSES].to_numpy()
    b = two[1].oof.set_index("id").loc[ids, CLASSES].to_numpy()
    grid = np.linspace(0, 1, 2001)
    blended = np.empty_like(a)
    for k in range(FOLDS):
        rest, rows = folds != k, folds == k
        losses = [log_loss(truth[rest], w * a[rest] + (1 - w) * b[rest], labels=range(10)) for w in grid]
        w = grid[int(np.argmin(losses))]
        blended[rows] = w * a[rows] + (1 - w) * b[rows]
        assert out["folds"][str(k)]["weights"][0] == pytest.approx(w, abs=2e-3)
    assert out["cross_validated"]["logloss"] == pytest.approx(log_loss(truth, blended, labels=range(10)), abs=1e-5)


def test_equal_geometric_blend_is_the_bag_stages_geometric_mean(data):
    truth, ids, _, members = data
    stack, _, _, _ = blend.align(members, ids, CLASSES)
    g = gmean(np.clip(stack, 1e-15, 1.0), axis=0)  # scipy's, the independent reference
    np.testing.assert_allclose(average(stack, "geometric", [1 / 3] * 3), g / g.sum(axis=1, keepdims=True),
                               atol=1e-12)
    np.testing.assert_allclose(average(stack, "geometric"), g / g.sum(axis=1, keepdims=True), atol=1e-12)
    out = blend.blend(members, truth, META, ids, blend.Blending(mean="geometric")).summary
    assert out["weights"]["junk"] < 0.05


def test_a_temperature_is_cross_fitted_with_the_weights(data):
    truth, ids, _, members = data
    plain = blend.blend(members, truth, META, ids).summary
    tempered = blend.blend(members, truth, META, ids, blend.Blending(temperature=True)).summary
    assert tempered["temperature"] != 1.0
    assert tempered["fitted_in_sample"]["logloss"] < plain["fitted_in_sample"]["logloss"]
    assert all(f["temperature"] != 1.0 for f in tempered["folds"].values())


def test_writes_the_competitions_submission_and_the_blend_report(data, tmp_path):
    truth, ids, _, members = data
    result = blend.blend(members, truth, META, ids)
    blend.write(result, ids, META, "unused", tmp_path / "blend")
    sub = pd.read_csv(tmp_path / "blend" / "submission.csv")
    assert list(sub.columns) == ["img"] + CLASSES and len(sub) == 50
    np.testing.assert_allclose(sub[CLASSES].sum(axis=1), 1.0, atol=1e-5)
    w = result.summary["weights"]
    expected = sum(w[m.name] * m.test[CLASSES].to_numpy() for m in members)
    np.testing.assert_allclose(sub[CLASSES].to_numpy(), expected, atol=1e-5)
    oof = pd.read_csv(tmp_path / "blend" / "oof.csv", dtype={"id": str})
    assert log_loss(truth, oof[CLASSES].to_numpy(), labels=range(10)) == pytest.approx(
        result.summary["fitted_in_sample"]["logloss"], abs=1e-6)
    assert "cross_validated" in (tmp_path / "blend" / "blend.json").read_text()


def test_members_of_another_data_set_or_task_are_refused_by_name(data):
    truth, ids, folds, members = data
    short = blend.Member("short", members[1].oof.iloc[:-1], members[1].test)
    with pytest.raises(InputError, match="short: its out-of-fold table lists other training images"):
        blend.blend([members[0], short], truth, META, ids)
    renamed = blend.Member("renamed", members[1].oof.rename(columns={"c3": "x"}), members[1].test)
    with pytest.raises(InputError, match="renamed: no prediction column 'c3'"):
        blend.blend([members[0], renamed], truth, META, ids)
    with pytest.raises(InputError, match="at least two"):
        blend.resolve([])


def test_keypoints_blend_arithmetically_on_rmse():
    rng = np.random.default_rng(1)
    names = ["eye_x", "eye_y", "nose_x", "nose_y"]
    meta = {"task": "keypoints", "target_names": names, "image_size": [96, 96], "flip_pairs": []}
    truth = rng.uniform(10, 80, (120, 4))
    truth[::7, 2:] = np.nan  # missing labels are not scored
    ids = pd.Series([str(k) for k in range(120)])
    folds = np.arange(120) % 3

    def kp(name, noise):
        oof = pd.DataFrame(np.nan_to_num(truth, nan=48.0) + rng.normal(0, noise, truth.shape), columns=names)
        oof.insert(0, "fold", folds)
        oof.insert(0, "id", ids)
        test = pd.DataFrame(rng.uniform(10, 80, (5, 4)), columns=names)
        test.insert(0, "id", [str(k) for k in range(5)])
        return blend.Member(name, oof, test)

    members = [kp("a", 2.0), kp("b", 2.0)]
    out = blend.blend(members, truth, meta, ids).summary
    assert out["monitor"] == "rmse"
    # two equally good, independent members: about half each, and better than either
    assert 0.3 < out["weights"]["a"] < 0.7
    assert out["fitted_in_sample"]["rmse"] < min(s["rmse"] for s in out["member_scores"].values())
    with pytest.raises(InputError, match="arithmetically"):
        blend.blend(members, truth, meta, ids, blend.Blending(mean="geometric"))


def test_per_class_weights_take_each_member_where_it_is_good():
    """Member a knows classes 0-4 and guesses at 5-9, member b the reverse: one weight per
    member cannot tell them apart, a weight per class can, and scores better out of fold."""
    rng = np.random.default_rng(1)
    truth = rng.integers(0, len(CLASSES), N)
    ids = pd.Series([f"train_{k}" for k in range(N)])
    folds = np.arange(N) % FOLDS
    test_truth = rng.integers(0, len(CLASSES), 50)

    def half(y, first):
        strength = np.where((y < 5) == first, 3.0, 0.0)
        logits = rng.normal(0, 1.0, (len(y), len(CLASSES)))
        logits[np.arange(len(y)), y] += strength
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)
    members = [member("a", ids, folds, half(truth, True), half(test_truth, True)),
               member("b", ids, folds, half(truth, False), half(test_truth, False))]
    one = blend.blend(members, truth, META, ids)
    per = blend.blend(members, truth, META, ids, blend.Blending(per_class=True))
    w = np.array([per.summary["weights"]["a"], per.summary["weights"]["b"]])
    assert w.shape == (2, 10) and (w >= 0).all() and np.allclose(w.sum(axis=0), 1.0, atol=1e-6)
    assert (w[0, :5] > 0.6).all() and (w[1, 5:] > 0.6).all()
    assert per.summary["cross_validated"]["logloss"] < one.summary["cross_validated"]["logloss"] - 0.05
    assert per.summary["fitted_in_sample"]["logloss"] == pytest.approx(
        log_loss(truth, per.oof, labels=range(10)), abs=1e-6)
    np.testing.assert_allclose(per.test.sum(axis=1), 1.0)
    with pytest.raises(InputError, match="--per-class weights blend arithmetically"):
        blend.blend(members, truth, META, ids, blend.Blending(mean="geometric", per_class=True))
