"""The line each epoch prints: readable figures, the best marked, and the time left from the
pace of the epochs trained in this process (replayed ones are not a pace)."""
from foldwise.train import progress
from foldwise.train.progress import Progress


def row(epoch, val, lr=1e-3):
    return {"epoch": epoch, "lr": lr, "train_loss": 0.5123456, "train_logloss": 0.51,
            "val_logloss": val, "val_accuracy": 0.875, "val_metric": val, "images_per_s": 812.4}


def test_each_epoch_is_one_line_with_its_figures_the_best_marked_and_the_time_left(monkeypatch):
    clock = iter([130.0, 160.0, 190.0])  # created at 100 s; epochs of 30 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    show = Progress("fold 1", epochs=10, monitor="logloss", folds_after=2, last=100.0)
    first = show.line(row(0, 0.9))
    assert first.startswith("fold 1  epoch  1/10  loss 0.5123  val logloss 0.9000 *  accuracy 0.8750")
    assert "lr 1.0e-03  812 img/s" in first
    assert first.endswith("fold 4m30s left, up to 2 more folds ~10m00s")  # 9 x 30 s; 2 x 10 x 30 s
    worse = show.line(row(1, 0.95))
    assert "val logloss 0.9500  " in worse and "*" not in worse and "fold 4m00s left" in worse
    assert "val logloss 0.8000 *" in show.line(row(2, 0.8))
    assert "{" not in first  # no raw dict


def test_replayed_epochs_show_as_they_were_marked_and_without_a_pace(monkeypatch):
    """Rows the loop reports again after a resume (marked `REPLAYED`) print as they were, end
    with `(resumed)`, and neither they nor the set-up before them count as an epoch's pace."""
    times = [51.0, 51.001, 81.0]  # two rows replayed 2 s after the start, then one trained
    monkeypatch.setattr(progress.time, "monotonic", lambda: times.pop(0))
    show = Progress("fold 0 pseudo-labels", epochs=4, monitor="rmse", last=49.0)
    replayed = [show.line({**row(e, 2.0 - e), "val_rmse": 2.0 - e, progress.REPLAYED: 1.0})
                for e in range(2)]
    assert "epoch 1/4" in replayed[0] and "val rmse 2.0000 *" in replayed[0]
    assert all(line.endswith("812 img/s  (resumed)") for line in replayed)
    trained = show.line({**row(2, 0.5), "val_rmse": 0.5})
    assert "epoch 3/4" in trained and "val rmse 0.5000 *" in trained
    assert trained.endswith("fold 30s left")  # one epoch left at the one trained epoch's pace
    assert progress.duration(3725) == "1h02m" and progress.duration(59.6) == "1m00s"


def test_with_ema_the_line_says_which_weights_scored_not_a_raw_flag(monkeypatch):
    """With EMA on, the row carries `val_is_ema` (1: the moving average validated better); the
    line printed it as `is_ema 0`. Now `(ema)` follows the figure the average scored."""
    monkeypatch.setattr(progress.time, "monotonic", lambda: 130.0)
    show = Progress("fold 0", epochs=8, monitor="logloss", last=100.0)
    raw = show.line({**row(0, 0.9), "val_is_ema": 0.0})
    ema = show.line({**row(1, 0.8), "val_is_ema": 1.0})
    assert "is_ema" not in raw + ema
    assert "val logloss 0.9000 *  accuracy" in raw
    assert "val logloss 0.8000 (ema) *  accuracy 0.8750" in ema
