import dataclasses
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from pathlib import Path

from foldwise import params as P
from foldwise.errors import InputError
from foldwise.models import Normalised
from foldwise.tasks import Classification
from foldwise.train.augment import augment, check
from foldwise.train.loop import Around, FitData, Settings, batches_of, train_fold
from helpers import CFG, NO_AUGMENT, toy_data

ROOT = Path(__file__).resolve().parents[1]

def fit(net, task, lr, cfg, seed, x, y, **kwargs):
    """`train_fold` on the toy data: 32 training rows, the rest validation, 5 test rows."""
    return train_fold(net, task, Settings(cfg, lr, seed, torch.device("cpu")),
                      FitData(x[:32], y[:32], x[32:], y[32:], x[:5]), Around(**kwargs))


def run(seed=0, **overrides):
    torch.manual_seed(seed)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    x, y = toy_data()
    return fit(net, Classification(["a", "b"]), 3e-3, P.evolve(CFG, overrides), seed, x, y)


def test_same_seed_gives_identical_predictions():
    a, b = run(seed=1), run(seed=1)
    np.testing.assert_array_equal(a.val_preds, b.val_preds)
    np.testing.assert_array_equal(a.test_preds, b.test_preds)


def test_kept_epoch_is_the_one_with_the_lowest_validation_logloss():
    result = run()
    h = result.history
    assert result.best_epoch == int(h["val_logloss"].idxmin())
    best_row = h.iloc[result.best_epoch]
    from foldwise.metrics import multiclass_logloss
    _, y = toy_data()
    assert multiclass_logloss(y[32:], result.val_preds) == pytest.approx(best_row["val_logloss"], rel=1e-5)
    assert set(h.columns) >= {"epoch", "lr", "train_loss", "train_accuracy", "val_logloss", "val_accuracy"}


class WorseningTask(Classification):
    """Reports a validation loss that grows every epoch, so epoch 0 stays the best."""

    calls = 0

    def score(self, targets, preds):
        self.calls += 1
        return {"logloss": float(self.calls), "accuracy": 0.0}


def test_early_stopping_after_patience_epochs_without_improvement():
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    x, y = toy_data()
    result = fit(net, WorseningTask(["a", "b"]), 1e-3, P.evolve(CFG, {"epochs": 10, "patience": 2}),
                 0, x, y)
    assert list(result.history["epoch"]) == [0, 1, 2] and result.best_epoch == 0


def test_horizontal_flip_is_refused_where_it_changes_labels():
    with pytest.raises(InputError, match="train.augment.hflip"):
        check(P.evolve(NO_AUGMENT, {"hflip": True}), hflip_safe=False)
    check(P.evolve(NO_AUGMENT, {"hflip": True}), hflip_safe=True)


def test_augment_without_settings_is_the_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 8, 10)
    gen = torch.Generator().manual_seed(0)
    none = NO_AUGMENT
    out, _ = augment(x, none, gen)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    flips = [augment(x, P.evolve(none, {"hflip": True}), gen)[0] for _ in range(8)]
    assert any(torch.allclose(f, x.flip(-1), atol=1e-6) for f in flips)
    assert any(torch.allclose(f, x, atol=1e-6) for f in flips)


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_is_torchvisions_brightness_contrast_saturation(channels):
    """Each image's drawn factors, applied by torchvision's own functional ops in the same
    order, give the same batch; brightness is a gain, so a black background stays black."""
    from torchvision.transforms.v2 import functional as TF
    from foldwise.train.augment import apply, draw
    cfg = P.evolve(NO_AUGMENT, {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4})
    x = torch.rand(6, channels, 10, 12)
    x[:, :, :, :4] = 0.0  # a black band
    d = draw(6, cfg, torch.Generator().manual_seed(3))
    out = apply(x, d, cfg)
    for i in range(6):
        saturation, contrast, brightness = d.colour[i].tolist()
        want = TF.adjust_contrast(TF.adjust_brightness(x[i], brightness), contrast)
        if channels == 3:
            want = TF.adjust_saturation(want, saturation)
        torch.testing.assert_close(out[i], want, atol=1e-4, rtol=0)  # red weighed 0.299, not 0.2989
    bright = apply(x, d, P.evolve(cfg, {"contrast": 0.0, "saturation": 0.0}))
    assert bright[:, :, :, :4].abs().max() == 0.0
    assert not torch.allclose(bright, x)  # it did change the rest


FULL_RECIPE = {"lr_per_step": True, "clip_grad": 1.0, "ema": {"decay": 0.9, "warmup": True},
               "mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}}


@pytest.mark.parametrize("recipe", [{}, FULL_RECIPE], ids=["plain", "ema-mixup-clip-per-step"])
def test_a_fold_killed_mid_training_resumes_to_the_same_result(tmp_path, recipe):
    x, y = toy_data()
    ckpt = tmp_path / "resume.pt"
    cfg = P.evolve(CFG, recipe)

    def fresh():
        torch.manual_seed(5)
        return Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)

    def args(net):
        return net, Classification(["a", "b"]), 3e-3, cfg, 5, x, y

    whole = fit(*args(fresh()))

    def crash_at_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(*args(fresh()), on_epoch=crash_at_epoch_2, resume=ckpt)
    assert ckpt.is_file()
    seen = []
    resumed = fit(*args(fresh()), on_epoch=seen.append, resume=ckpt)
    assert [r["epoch"] for r in seen] == [0, 1, 2, 3]  # restored rows are reported again,
    assert [r.get("replayed", 0.0) for r in seen] == [1.0, 1.0, 0.0, 0.0]  # marked as such
    np.testing.assert_array_equal(resumed.val_preds, whole.val_preds)
    assert resumed.best_epoch == whole.best_epoch
    pd.testing.assert_frame_equal(resumed.history.drop(columns="images_per_s"),
                                  whole.history.drop(columns="images_per_s"))


def test_rotation_is_a_rotation_in_pixels_on_non_square_images():
    """grid_sample's frame stretches x by 2/W and y by 2/H: the warp, taken back to pixels,
    must be orthogonal (no shear), whatever the aspect ratio."""
    from foldwise.train.augment import random_affine
    gen = torch.Generator().manual_seed(0)
    cfg = P.evolve(NO_AUGMENT, {"rotate": 40})
    height, width = 96, 128
    theta = random_affine(16, cfg, gen, aspect=width / height)
    s = torch.diag(torch.tensor([width, height], dtype=torch.float32))
    pixel = s @ theta[:, :, :2] @ torch.linalg.inv(s)
    eye = torch.eye(2).expand(16, 2, 2)
    torch.testing.assert_close(pixel @ pixel.transpose(1, 2), eye, atol=1e-5, rtol=0)
    assert theta[:, 0, 1].abs().max() > 0.1  # it did rotate
    sheared = random_affine(16, cfg, torch.Generator().manual_seed(0), aspect=1.0)
    p2 = s @ sheared[:, :, :2] @ torch.linalg.inv(s)
    assert not torch.allclose(p2 @ p2.transpose(1, 2), eye, atol=1e-3)


@pytest.mark.parametrize("sched", ["step", "plateau"])
def test_step_and_plateau_schedules_decay_the_learning_rate(sched):
    """params.yaml's decay_epochs and decay_rate reach timm's scheduler; plateau is fed the
    validation loss (WorseningTask's grows every epoch, so it must decay)."""
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    x, y = toy_data()
    cfg = P.evolve(CFG, {"scheduler": sched, "epochs": 6, "decay_epochs": 2, "decay_rate": 0.1,
                         "patience": 10})
    result = fit(net, WorseningTask(["a", "b"]), 1e-2, cfg, 0, x, y)
    lrs = list(result.history["lr"])
    assert lrs[0] == pytest.approx(1e-2)
    assert min(lrs) <= 1e-3 + 1e-12, lrs


def test_a_fold_whose_loss_is_never_finite_stops_with_a_clear_error():
    class NanTask(Classification):
        def score(self, targets, preds):
            return {"logloss": float("nan"), "accuracy": 0.0}

    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    x, y = toy_data()
    with pytest.raises(InputError, match="training diverged: validation logloss was never finite"):
        fit(net, NanTask(["a", "b"]), 1e-3, P.evolve(CFG, {"epochs": 3, "patience": 2}), 0, x, y)


@pytest.mark.extended  # torch.compile: inductor builds C++ kernels, about a minute
def test_compiled_training_learns_the_same_as_eager_and_keeps_plain_weight_names(caplog):
    """train.compile: true goes through torch.compile (inductor, here on the CPU); the kept
    weights load into the plain network, and predictions agree with eager training up to
    the compiled kernels' rounding; the first compiled step matched eager's and the compiled
    steps updated the network's own BatchNorm statistics (no fall-back to eager training)."""
    with caplog.at_level("INFO", logger="foldwise.train.compiled"):
        compiled = run(seed=1, compile=True, epochs=2)
    eager = run(seed=1, compile=False, epochs=2)
    assert "compiled step checked against eager" in caplog.text
    assert "uncompiled" not in caplog.text
    assert set(compiled.state_dict) == set(eager.state_dict)
    assert not any("_orig_mod" in k for k in compiled.state_dict)
    assert np.abs(compiled.val_preds - eager.val_preds).max() < 0.05
    assert compiled.best_epoch == eager.best_epoch


@pytest.mark.extended  # torch.compile on the CPU
def test_compiled_dropout_draws_the_masks_eager_draws_in_the_compile_check():
    """The compile check's two steps draw the same dropout masks (inductor told to use eager's
    random kernels while the first graph compiles), so a network with dropout passes it."""
    from foldwise.train import compiled
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=2, drop_rate=0.5)
    x = torch.from_numpy(toy_data(n=8)[0]).permute(0, 3, 1, 2).float() / 255
    gaps = compiled.first_step_gaps(net, torch.compile(net), x, amp=False)
    assert max(gaps.values()) < 1e-3, gaps


def test_batchnorm_statistics_left_behind_by_a_training_epoch_are_reported(caplog):
    """The check that stops compiling a fold whose compiled step did not update the network's
    own BatchNorm statistics (docs/gpu.md): every layer must have counted each of the epoch's
    batches (20 images in batches of 8: 2 full and one of 4)."""
    from foldwise.train.compiled import batchnorm_counts, statistics_moved
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=2).train()
    x, y = toy_data(n=20)
    expected = batches_of(len(x), CFG.batch_size)
    before = batchnorm_counts(net)
    assert len(before) > 10 and set(before.values()) == {0}
    for rows in (slice(0, 8), slice(8, 16), slice(16, 20)):
        net(torch.from_numpy(x[rows]).permute(0, 3, 1, 2).float())
    assert statistics_moved(net, before, expected)
    assert "BatchNorm" not in caplog.text
    with caplog.at_level("WARNING"):
        assert not statistics_moved(net, batchnorm_counts(net), expected)
    assert "left the BatchNorm statistics of" in caplog.text and "3 batches expected" in caplog.text


class Miscompiled(nn.Module):
    """Stands where torch.compile's module stands (`_orig_mod`), computing what the faulty
    compiled step on the second GPU run computed: the network's own forward, but on other
    numbers (here: the batch mirrored), so gradients and BatchNorm statistics come out wrong;
    or failing, as inductor's convolution backward did in float32 with channels_last."""

    def __init__(self, net, fail=False):
        super().__init__()
        self._orig_mod, self.fail = net, fail

    def forward(self, x):
        if self.fail:
            raise AssertionError("expected size 512==512, stride 9==1 at dim=1")
        return self._orig_mod(x.flip(-1))


@pytest.mark.parametrize("fail", [False, True], ids=["wrong", "failing"])
def test_a_compiled_step_that_trains_otherwise_than_eager_is_not_trusted(fail, caplog):
    """Before a fold trains compiled, one step of its first batch is taken compiled and eagerly:
    a compiled module whose gradients and BatchNorm statistics differ, or that fails, is
    replaced by the network itself with a warning, and the check leaves the network's weights,
    statistics and gradients as they were."""
    from foldwise.train import compiled
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=2)
    x = torch.from_numpy(toy_data(n=8)[0]).permute(0, 3, 1, 2).float() / 255
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level("WARNING"):
        assert compiled.checked(net, Miscompiled(net, fail), x, amp=False) is net
    assert ("failed on the first batch" if fail else "trains differently from eager") in caplog.text
    if not fail:
        gaps = compiled.first_step_gaps(net, Miscompiled(net), x, amp=False)
        assert min(gaps.values()) > compiled.TOLERANCE
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in net.parameters())


def test_an_uncompiled_copy_passes_the_compile_check_with_dropout_on():
    """The same check passes a module that computes what the network computes, also with
    dropout in the head (both steps draw the same masks): no false alarm."""
    from foldwise.train import compiled
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=2, drop_rate=0.5)

    class Same(nn.Module):
        def __init__(self, net):
            super().__init__()
            self._orig_mod = net

        def forward(self, x):
            return self._orig_mod(x)

    x = torch.from_numpy(toy_data(n=8)[0]).permute(0, 3, 1, 2).float() / 255
    gaps = compiled.first_step_gaps(net, Same(net), x, amp=False)
    assert max(gaps.values()) < 1e-5, gaps


def test_ema_is_validated_beside_the_weights_and_the_better_one_is_kept():
    """Every epoch validates the weights and timm's moving average of them; the kept epoch is
    the best figure of either, and the kept state is the one that scored it: loaded into the
    network, it predicts the kept validation predictions again."""
    from foldwise.metrics import multiclass_logloss
    from foldwise.train.loop import Inference, predict
    result = run(seed=2, ema={"decay": 0.8, "warmup": False}, epochs=5)
    h = result.history
    assert {"val_logloss", "ema_val_logloss", "val_is_ema"} <= set(h.columns)
    both = np.minimum(h["val_logloss"], h["ema_val_logloss"])
    np.testing.assert_allclose(h["val_metric"], both)
    assert result.best_epoch == int(both.idxmin())
    best = h.iloc[result.best_epoch]
    assert result.weights == ("ema" if best["ema_val_logloss"] < best["val_logloss"] else "raw")
    assert h["val_logloss"].ne(h["ema_val_logloss"]).all()  # two different sets of weights
    _, y = toy_data()
    assert multiclass_logloss(y[32:], result.val_preds) == pytest.approx(best["val_metric"], rel=1e-6)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    net.load_state_dict(result.state_dict)
    x, _ = toy_data()
    again = predict(net, x[32:], Classification(["a", "b"]), Inference(16, torch.device("cpu")))
    np.testing.assert_allclose(again, result.val_preds, atol=1e-6)


def test_the_recipe_off_changes_nothing():
    """Each addition at its 'off' value trains exactly as without it: same draws, same weights."""
    plain = run(seed=3, epochs=2)
    off = run(seed=3, epochs=2, clip_grad=0.0, ema={"decay": 0.0, "warmup": False},
              mixup={"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 0.0, "switch_prob": 0.5})
    np.testing.assert_array_equal(plain.val_preds, off.val_preds)
    assert list(plain.history.columns) == list(off.history.columns)


def test_mixup_trains_reproducibly_with_an_odd_batch_size():
    """timm's Mixup pairs a batch with its mirror (even sizes only): batches of 7 lose one image
    each, and the NumPy draws it makes are seeded from the fold's seed."""
    mixed = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}
    a, b = run(seed=4, epochs=2, batch_size=7, mixup=mixed), run(seed=4, epochs=2, batch_size=7, mixup=mixed)
    np.testing.assert_array_equal(a.val_preds, b.val_preds)
    plain = run(seed=4, epochs=2, batch_size=7)
    assert not np.array_equal(a.val_preds, plain.val_preds)


def test_the_learning_rate_moves_every_update_on_timms_cosine():
    """lr_per_step: after u of U = epochs x updates_per_epoch updates, the lr is the cosine
    curve at u / U, by hand: min + (lr - min) (1 + cos(pi u / U)) / 2."""
    import math
    from foldwise.train import recipe
    from foldwise.train.loop import create_scheduler
    net = torch.nn.Linear(2, 2)
    cfg = P.evolve(CFG, {"lr_per_step": True, "epochs": 3, "warmup_epochs": 0, "min_lr": 0.01})
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = create_scheduler(opt, cfg, 0.1, updates_per_epoch=5)
    rec = recipe.create(net, cfg, Classification(["a", "b"]), sched)
    assert rec.scheduler is sched
    for u in range(1, 15):
        rec.stepped(net)
        want = 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * u / 15)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9), u
    by_epoch = P.evolve(cfg, {"lr_per_step": False})
    per_epoch = recipe.create(net, by_epoch, Classification(["a", "b"]),
                              create_scheduler(opt, by_epoch, 0.1, 5))
    assert per_epoch.scheduler is None


def test_gradient_clipping_bounds_each_update():
    """clip_grad bounds the gradient's norm before the optimiser sees it: with plain SGD
    (no momentum) each update moves the weights by at most lr x clip_grad."""
    torch.manual_seed(0)
    net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
    before = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    x, y = toy_data()
    cfg = P.evolve(CFG, {"optimizer": "momentum", "momentum": 0.0, "epochs": 1, "clip_grad": 1e-3,
                         "augment": dataclasses.asdict(NO_AUGMENT)})
    fit(net, Classification(["a", "b"]), 0.1, cfg, 0, x, y)
    moved = torch.sqrt(sum(((net.state_dict()[k] - v) ** 2).sum() for k, v in before.items()
                           if "running" not in k and "num_batches" not in k))
    assert 0 < moved <= 4 * 0.1 * 1e-3 * (1 + 1e-4)  # 4 updates of 8 images


def test_the_loop_state_is_the_resume_files_format(tmp_path):
    """LoopState.to_file/from_file are the loop's part of the resume file: a state saved by
    save_resume comes back field for field (predictions as arrays), and a file written in
    another format is ignored with a warning, not half-loaded."""
    from foldwise.train import state as checkpoints
    from foldwise.train.state import LoopState
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    state = LoopState(best=0.5, best_epoch=2, best_state=net.state_dict(),
                      best_val=np.array([[0.2, 0.8]]), weights="ema", stale=1,
                      history=[{"epoch": 0, "val_metric": 0.7}], seen=64, train_time=1.5, step=8)
    parts = checkpoints.Trainable(net, opt, gen)
    checkpoints.save_resume(tmp_path / "r.pt", parts, state, checkpoints.rng_states())
    back, optimizer_state = checkpoints.load_resume(tmp_path / "r.pt", parts)
    assert back.best_epoch == 2 and back.weights == "ema" and back.history == state.history
    assert back.step == 8 and back.seen == 64 and "state" in optimizer_state
    np.testing.assert_array_equal(back.best_val, state.best_val)
    torch.save({"best": 0.1, "history": []}, tmp_path / "old.pt")  # an older, flat format
    assert checkpoints.load_resume(tmp_path / "old.pt", parts) is None


def test_sync_batchnorm_keeps_timms_activations():
    """`train.sync_bn` converts through timm: EfficientNet's BatchNormAct2d keeps its activation,
    so the converted network computes what the original does (torch's own conversion drops the
    activation: shown here, so this test can fail)."""
    import copy
    from foldwise.train import distributed
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_b0", num_classes=3).eval()
    x = torch.rand(2, 3, 64, 64)
    converted = distributed.sync_batchnorm(copy.deepcopy(net)).eval()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    torch.testing.assert_close(converted(x), net(x))
    plain = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net)).eval()
    assert (plain(x) - net(x)).abs().max() > 1.0
    assert set(converted.state_dict()) == set(net.state_dict())  # the checkpoint's names
