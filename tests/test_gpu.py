"""The CUDA paths, run on a GPU: marked `gpu`, skipped where there is none (the reason says
so). `make gpu-check` runs them on a lent GPU machine, whose Python has torch, timm, numpy,
pandas and pytest but neither DVC nor MLflow: nothing here imports either.

`FOLDWISE_GPU_TESTS_ON_CPU=1 pytest -m gpu tests/test_gpu.py` runs the same tests on the CPU
(a dry run of their logic; bfloat16 autocast is then off)."""
import dataclasses
import logging
import os

import numpy as np
import pytest
import timm
import torch

from foldwise import params as P
from foldwise.deploy import program
from foldwise.deploy.verify import check_export
from foldwise.models import Normalised
from foldwise.tasks import Classification
from foldwise.train.loop import Around, FitData, Inference, Settings, predict, train_fold
from helpers import CFG, NO_AUGMENT, toy_data

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TASK = Classification(["a", "b"])


def net(seed=0):
    torch.manual_seed(seed)
    return Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)


def fit(model, changes, seed=0, **kwargs):
    x, y = toy_data(n=64)
    cfg = P.evolve(CFG, changes)
    return train_fold(model, TASK, Settings(cfg, 3e-3, seed, DEVICE),
                      FitData(x[:48], y[:48], x[48:], y[48:], x[:8]), Around(**kwargs))


def test_a_fold_trains_with_amp_channels_last_compile_ema_and_mixup():
    """The whole recipe at once on the device; the kept weights, loaded into a network on the
    CPU in float32, predict what the fold kept (within bfloat16's rounding)."""
    result = fit(net(), {"amp": True, "channels_last": True, "compile": True, "epochs": 3,
                         "ema": {"decay": 0.9, "warmup": True},
                         "mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 1.0,
                                   "switch_prob": 0.5}})
    assert np.isfinite(result.history["train_loss"]).all()
    np.testing.assert_allclose(result.val_preds.sum(axis=1), 1.0, atol=1e-5)
    cpu = net()
    cpu.load_state_dict(result.state_dict)
    x, _ = toy_data(n=64)
    again = predict(cpu, x[48:], TASK, Inference(16, torch.device("cpu")))
    assert np.abs(again - result.val_preds).max() < 0.05


@pytest.fixture
def deterministic():
    """cuDNN's deterministic kernels and no TF32, for comparisons to the rounding; restored."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32) = saved


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_a_compiled_fold_keeps_what_an_eager_fold_keeps(channels_last, deterministic, caplog):
    """With torch 2.11 on an H200 (docs/gpu.md, second run) a compiled step gave eager's
    outputs but gradients and BatchNorm statistics far from eager's, and failed in float32
    with channels_last. Whatever the torch, `train.compile` must keep the network an eager
    fold keeps: either the first compiled step matched eager's and training stayed compiled,
    or the fold said so and trained uncompiled. Compared in float32 with plain SGD, batches
    of 16 and no augmentation, where two eager folds agree to the rounding (AdamW in batches
    of 8 turns rounding into whole steps: benchmarks/gpu-check-2026-12-04b/compile-bn.jsonl).
    The log says which way it went (`pytest -rA` shows it)."""
    changes = {"amp": False, "channels_last": channels_last, "epochs": 2, "optimizer": "sgd",
               "batch_size": 16, "augment": dataclasses.asdict(NO_AUGMENT)}
    eager = fit(net(3), {**changes, "compile": False}, seed=3)
    with caplog.at_level(logging.INFO, logger="foldwise.train.compiled"):
        compiled = fit(net(3), {**changes, "compile": True}, seed=3)
    print(caplog.text)
    assert "checked against eager" in caplog.text or "trains uncompiled" in caplog.text
    for name, value in eager.state_dict.items():
        if name.endswith("num_batches_tracked"):
            assert int(compiled.state_dict[name]) == int(value) > 0, name
        elif name.endswith(("running_mean", "running_var")):
            assert (compiled.state_dict[name] - value).abs().max() < 1e-3, name
    assert np.abs(compiled.val_preds - eager.val_preds).max() < 1e-3


def test_a_fold_killed_on_the_device_resumes_to_the_same_result(tmp_path):
    """Killed after epoch 1 and resumed: the same kept epoch and predictions as an
    uninterrupted fold (cuDNN made deterministic for the comparison)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    changes = {"amp": True, "epochs": 4, "ema": {"decay": 0.8, "warmup": True}}
    whole = fit(net(5), changes, seed=5)

    def crash(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(net(5), changes, seed=5, on_epoch=crash, resume=tmp_path / "r.pt")
    resumed = fit(net(5), changes, seed=5, resume=tmp_path / "r.pt")
    assert resumed.best_epoch == whole.best_epoch
    np.testing.assert_allclose(resumed.val_preds, whole.val_preds, atol=1e-4)


@pytest.mark.parametrize("amp", [True, False], ids=["amp", "fp32"])
def test_the_exported_bag_on_the_device_matches_eager_and_foldwise_predict(tmp_path, amp):
    """Two folds trained with and without bfloat16, exported as the export stage exports them,
    loaded onto the device: like for like with the eager bag (1e-4), and `foldwise-predict`
    over the same images as PNG files writes the same probabilities."""
    from PIL import Image
    from foldwise.deploy.predict import Reading, predict_folder
    folds = [fit(net(k), {"amp": amp, "epochs": 1}, seed=k) for k in range(2)]
    nets = []
    for k, result in enumerate(folds):
        model = net(k)
        model.load_state_dict(result.state_dict)
        nets.append(model.eval())
    bag = program.Bagged(nets, TASK.head(), "arithmetic", TASK.tempering(1.0))
    x, _ = toy_data(n=64)
    meta = {"source": "folders", "task": "classification", "classes": ["a", "b"],
            "decision": {"clip": 0.0},
            "preprocess": {"height": 16, "width": 16, "crop": [0, 0, 1, 1], "mode": "RGB"}}
    program.save(bag, torch.from_numpy(x[:2]), meta, tmp_path / "model")
    model, _ = program.load(tmp_path / "model", DEVICE)
    got = program.run_model(model, x, device=DEVICE)
    eager = program.run_model(bag.to(DEVICE), x, device=DEVICE)
    bagged = np.mean([f.test_preds for f in folds], axis=0)
    check = check_export(got[:8], eager[:8], bagged, [{"precision": "bfloat16" if amp else "float32",
                                                        "device": DEVICE.type}])
    assert check.worst <= 1e-4
    images = tmp_path / "images"
    images.mkdir()
    for i, pixels in enumerate(x):
        Image.fromarray(pixels).save(images / f"{i:03d}.png")
    preds = predict_folder(tmp_path / "model", images, tmp_path / "sub.csv", Reading(workers=1))
    np.testing.assert_allclose(preds, got, atol=1e-4)


def test_the_cache_kept_whole_on_the_gpu_gives_what_the_pinned_loader_gives(tmp_path):
    """On a GPU a cache under a tenth of its memory is copied there once and batches are
    gathered on the device: the same rows, in the same order, as the host thread and its
    pinned buffers deliver."""
    from foldwise.train import loader
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.integers(0, 256, size=(300, 32, 24, 3), dtype=np.uint8))
    x = loader.open_cache(tmp_path / "c.npy")
    order = rng.permutation(len(x))
    batches = [np.sort(order[i:i + 64]) for i in range(0, len(order), 64)]
    host = [b.cpu() for b in loader.device_batches(x, batches, DEVICE, resident=0)]
    kept = [b.cpu() for b in loader.device_batches(x, batches, DEVICE)]
    if DEVICE.type == "cuda":
        first = loader.RESIDENT.tensor
        assert first is not None and first.is_cuda
        again = [b.cpu() for b in loader.device_batches(x, batches[:2], DEVICE)]
        assert loader.RESIDENT.tensor is first  # the next epoch gathers from the same copy
        assert all(torch.equal(a, b) for a, b in zip(again, kept))
    for a, b, idx in zip(host, kept, batches):
        assert torch.equal(a, b) and torch.equal(b, torch.from_numpy(x[idx]))
    loader.RESIDENT.release()


def test_sync_batchnorm_trains_like_timms_batchnorm_on_one_device():
    """timm's SyncBatchNormAct on the device, in training mode (one process: no peers to sync
    with), gives the outputs and gradients of the BatchNormAct it replaced."""
    import copy
    from foldwise.train import distributed
    torch.manual_seed(0)
    original = timm.create_model("efficientnet_b0", num_classes=3).to(DEVICE).train()
    converted = distributed.sync_batchnorm(copy.deepcopy(original)).train()
    x = torch.rand(4, 3, 64, 64, device=DEVICE)
    a, b = original(x), converted(x)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    a.sum().backward()
    b.sum().backward()
    ga = dict(original.named_parameters())["conv_stem.weight"].grad
    gb = dict(converted.named_parameters())["conv_stem.weight"].grad
    torch.testing.assert_close(ga, gb, atol=1e-3, rtol=1e-3)


def test_the_run_is_on_the_gpu_when_there_is_one():
    """On the lent machine these tests must not pass by running on its CPU."""
    if os.environ.get("FOLDWISE_GPU_TESTS_ON_CPU"):
        pytest.skip("dry run on the CPU")
    assert DEVICE.type == "cuda" and torch.cuda.get_device_capability()[0] >= 8
