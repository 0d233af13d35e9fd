"""Multi-label scenes: the source reads Planet's layout and refuses bad rows in one line, the
task's figures match scikit-learn's, per-tag thresholds are fit for F2 and cross-fitted, and
the submission is Planet's `image_name,tags`."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import fbeta_score, log_loss

from foldwise import metrics
from foldwise.data.sources import multilabel as ml
from foldwise.deploy.program import Bagged
from foldwise.errors import InputError
from foldwise.tasks import MultiLabel


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml") / "data"
    ml.write_sample(root, train=30, test=5, tags=5, seed=2)
    return root


def planted(n=400, tags=4, seed=0):
    """Targets and probabilities that carry information, each tag with its own bias."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, tags)) < 0.4).astype(float)
    p = np.clip(0.5 * y + rng.uniform(0, 0.6, (n, tags)) - 0.1 * np.arange(tags), 0.01, 0.99)
    return y, p


def test_the_sample_reads_as_tags_per_image(sample):
    data = ml.read(sample)
    assert data.task == "multilabel" and data.target_names == ml.TAGS[:5]
    assert data.targets.shape == (30, 5) and set(np.unique(data.targets)) <= {0.0, 1.0}
    assert (data.targets.sum(axis=1) >= 1).all() and len(data.test) == 5
    labels = pd.read_csv(sample / "labels.csv")
    first = labels["tags"][0].split()
    assert [t for t, on in zip(data.target_names, data.targets[0]) if on] == \
        [t for t in data.target_names if t in first]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.assign(tags=t["tags"].where(t.index != 3, "clear smoke")),
     "line 5: unknown tag 'smoke' (tags.txt lists clear, cloudy, primary, water, road)"),
    (lambda t: t.assign(tags=t["tags"].where(t.index != 0, " ")),
     "line 2: image 'train_0' has no tags"),
    (lambda t: pd.concat([t, t.iloc[[4]]]),
     "lines [6, 32]: image 'train_4' listed twice"),
    (lambda t: t.assign(image_name=t["image_name"].where(t.index != 1, "gone")),
     "line 3: image"),
])
def test_a_bad_row_is_one_line_naming_file_and_row(sample, tmp_path, change, message):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(sample, root)
    table = pd.read_csv(root / "labels.csv", keep_default_na=False)
    change(table).to_csv(root / "labels.csv", index=False)
    with pytest.raises(InputError) as err:
        ml.read(root)
    assert str(err.value).startswith(f"{root / 'labels.csv'}, {message}"), str(err.value)


def test_log_loss_and_f2_match_scikit_learn():
    y, p = planted()
    by_tag = np.mean([log_loss(y[:, k], p[:, k], labels=[0, 1]) for k in range(y.shape[1])])
    assert metrics.binary_logloss(y, p) == pytest.approx(by_tag, rel=1e-9)
    decided = p >= 0.45
    want = fbeta_score(y, decided, beta=2, average="samples", zero_division=0)
    assert metrics.f_beta_samples(y, decided) == pytest.approx(want, rel=1e-12)


def test_thresholds_fit_for_f2_and_the_cross_fitted_score_is_honest():
    """Per-tag thresholds beat 0.5 on F2 in sample; the cross-fitted F2 decides each fold with
    thresholds fit on the others (recomputed here by hand) and is no higher than in sample."""
    y, p = planted()
    t = metrics.fit_thresholds(y, p)
    assert metrics.f_beta_samples(y, p >= t) > metrics.f_beta_samples(y, p >= 0.5)
    folds = np.arange(len(y)) % 4
    task = MultiLabel(["a", "b", "c", "d"])
    summary, table = task.report(y, p, folds)
    decided = np.zeros_like(p, dtype=bool)
    for k in range(4):
        rows = folds == k
        decided[rows] = p[rows] >= metrics.fit_thresholds(y[~rows], p[~rows])
    assert summary["f2_thresholds"] == pytest.approx(metrics.f_beta_samples(y, decided))
    assert summary["f2_thresholds"] <= metrics.f_beta_samples(y, p >= t) + 1e-12
    assert summary["thresholds"] == dict(zip("abcd", t.tolist()))
    assert list(table["tag"]) == ["a", "b", "c", "d"]
    assert summary["prior_f2"] < summary["f2_thresholds"] and summary["logloss"] < summary["prior_logloss"]


def test_loss_is_binary_cross_entropy_and_the_exported_head_is_the_sigmoid():
    task = MultiLabel(["a", "b", "c"])
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    p = logits.sigmoid()
    by_hand = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert task.loss(logits, y).item() == pytest.approx(by_hand.item(), rel=1e-6)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[: x.shape[0]]

    images = torch.zeros((2, 4, 4, 3), dtype=torch.uint8)
    bagged = Bagged([Fixed(), Fixed()], task.head(), "arithmetic", task.tempering(1.0))(images)
    torch.testing.assert_close(bagged, task.activate(logits))


def test_the_submission_lists_the_tags_past_each_threshold(sample, tmp_path):
    task = MultiLabel(ml.TAGS[:3])
    probs = np.array([[0.9, 0.2, 0.35], [0.1, 0.1, 0.1]])
    decided = task.postprocess(probs, {"thresholds": [0.5, 0.5, 0.3]})
    ml.write_submission(["test_0.jpg", "test_1.jpg"], decided, {"target_names": ml.TAGS[:3]},
                        tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_text() == "image_name,tags\ntest_0,clear primary\ntest_1,\n"
