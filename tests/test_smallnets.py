"""The networks for small images (`foldwise.smallnets`, registered in timm) and timm's random
erasing (`train.augment.erase`)."""
import json
import random

import numpy as np
import pytest
import timm
import torch

from foldwise import names, params as P
from foldwise.deploy import program
from foldwise.errors import InputError
from foldwise.models import create_backbone, load_checkpoint, Normalised
from foldwise.smallnets import SMALL
from foldwise.tasks import Classification, Keypoints, Softmax
from foldwise.train import augment, checkpoints, recipe
from helpers import CFG, NO_AUGMENT, ROOT


def trained_a_step(name, chans, classes, h, w):
    """The network by its timm name, as train.model gives it, after two steps of SGD on one
    batch: the second step's loss is lower."""
    backbone, weights = create_backbone(name, classes, chans)
    assert weights == "random" and backbone.pretrained_cfg["architecture"] == name
    net = Normalised(backbone, [0.5] * chans, [0.25] * chans)
    x, y = torch.rand(8, chans, h, w), torch.arange(8) % classes
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0], name
    return net.eval(), x


@pytest.mark.parametrize("name", SMALL)
def test_a_small_network_builds_for_any_channels_and_classes_and_trains(name):
    """One channel or three, 2 or 10 classes, square or not."""
    torch.manual_seed(0)
    for chans, classes, (h, w) in ((1, 10, (28, 28)), (3, 2, (20, 36))):
        net, x = trained_a_step(name, chans, classes, h, w)
        assert net(x).shape == (8, classes)


def test_a_small_network_exports_and_rebuilds_from_its_checkpoint(tmp_path):
    """The exported program and the checkpoint's rebuild predict what the network does (one
    of the family: they are one class, differing in blocks and width)."""
    name = "small_resnet20"
    torch.manual_seed(0)
    net, x = trained_a_step(name, 1, 10, 28, 28)
    images = (x[:3] * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        expected = net(images.permute(0, 3, 1, 2).float() / 255).softmax(1).numpy()
    program.save(program.Bagged([net], Softmax(), "arithmetic"), images[:2], {}, tmp_path / "e")
    loaded, _ = program.load(tmp_path / "e")
    np.testing.assert_allclose(program.run_model(loaded, images.numpy(), batch_size=2), expected,
                               atol=1e-5)
    spec = {"model": name, "mean": [0.5], "std": [0.25], "num_outputs": 10, "in_chans": 1,
            "model_kwargs": {}}
    checkpoints.save({"spec": spec, "state_dict": net.state_dict(), "fold": 0}, tmp_path / "m.pt")
    torch.testing.assert_close(load_checkpoint(tmp_path / "m.pt")(x), net(x))


def test_the_stem_keeps_a_small_image_whole_and_the_counts_are_the_papers():
    """The first stage works on the full 28x28 (timm's ResNets: 7x7 there; `stem_stride` 2:
    14x14, as test_resnet's on an image upscaled to 56x56); ResNet-20/32/56 have
    the weights He et al. list (0.27, 0.46 and 0.85 M; the 1x1 shortcuts add 0.01 M)."""
    net = timm.create_model("small_resnet20", num_classes=10, in_chans=1, features_only=True)
    assert [f.shape[-1] for f in net(torch.rand(1, 1, 28, 28))] == [28, 28, 14, 7]
    halved = timm.create_model("small_resnet20", in_chans=1, features_only=True, stem_stride=2)
    assert [f.shape[-1] for f in halved(torch.rand(1, 1, 28, 28))] == [14, 14, 7, 4]
    assert halved.feature_info.reduction() == [2, 2, 4, 8]
    counts = {name: sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters())
              for name in ("small_resnet20", "small_resnet32", "small_resnet56")}
    assert [round(c / 1e6, 2) for c in counts.values()] == [0.27, 0.47, 0.86]


def test_the_check_knows_them_even_from_a_cache_written_before_they_were_registered(tmp_path, monkeypatch):
    from importlib.metadata import version
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stale = tmp_path / "foldwise" / f"timm-{version('timm')}.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps({"model": ["resnet10t"], "optimizer": ["adamw", "sgd"]}))
    base = P.load(ROOT / "params.yaml")
    names.check_timm_names(P.evolve(base, {"train": {"model": "small_resnet32"},
                                       "distill": {"model": "small_resnet20"}}))
    with pytest.raises(InputError, match="small_resnet3"):
        names.check_timm_names(P.evolve(base, {"train": {"model": "small_resnet33"}}))


def erasing(probability, mode, mean=0.4, std=0.2, chans=3):
    cfg = P.evolve(CFG, {"augment": {"erase": probability, "erase_mode": mode}})
    net = Normalised(torch.nn.Identity(), [mean] * chans, [std] * chans)
    return recipe.erasing(net, cfg, Classification("ab"))


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
def test_random_erasing_changes_one_rectangle_an_image_and_no_other_pixel(mode):
    """timm's RandomErasing, in the normalised space it is made for: `const` fills with the
    data's mean (0 there), `rand` one colour a rectangle, `pixel` noise; every pixel outside the
    rectangle keeps its value bit for bit."""
    random.seed(0)
    torch.manual_seed(0)
    x = torch.rand(64, 3, 24, 32)
    out = erasing(1.0, mode)(x.clone())
    for before, after in zip(x, out):
        changed = (before != after).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero()[:, 0], changed.any(dim=0).nonzero()[:, 0]
        assert len(rows) and len(cols)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        assert changed[box].float().mean() > 0.99  # one filled rectangle
        outside = torch.ones_like(changed)
        outside[box] = False
        assert torch.equal(before[:, outside], after[:, outside])
        patch = after[:, box[0], box[1]]
        if mode == "const":
            torch.testing.assert_close(patch, torch.full_like(patch, 0.4))
        elif mode == "rand":  # one colour per channel
            assert torch.equal(patch, patch[:, :1, :1].expand_as(patch))
        else:
            assert patch.std() > 0.1  # N(0, 1) in normalised units: 0.2 in pixels
    assert 0.02 * 24 * 32 * 0.5 <= (x != out).any(dim=1).sum(dim=(1, 2)).float().mean() <= 24 * 32 / 3


def test_random_erasing_erases_its_share_of_images_the_same_for_a_seed_and_is_off_at_0():
    x = torch.rand(400, 1, 16, 16)
    rec = recipe.Recipe(erasing=erasing(0.25, "const", chans=1))
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        rec.start_epoch(torch.Generator().manual_seed(7))
        runs.append(rec.erase(x.clone()))
    assert torch.equal(runs[0], runs[1])
    share = (runs[0] != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.18 < share < 0.32
    assert erasing(0.0, "pixel") is None and recipe.Recipe().erase(x) is x


def test_random_erasing_is_refused_where_targets_are_places_in_the_image():
    cfg = P.evolve(NO_AUGMENT, {"erase": 0.25})
    augment.check(cfg, True, Classification("ab").erases)
    keypoints = Keypoints(["a_x", "a_y"], (9, 9))
    with pytest.raises(InputError, match="train.augment.erase is 0.25.*set it to 0"):
        augment.check(cfg, True, keypoints.erases)
    augment.check(NO_AUGMENT, True, keypoints.erases)
    with pytest.raises(InputError, match="erase_mode"):
        P.evolve(NO_AUGMENT, {"erase_mode": "noise"})


def test_a_fold_of_a_small_network_with_erasing_trains_the_same_for_a_seed_and_otherwise_without():
    """Through the folds' own loop: `train.model: small_resnet20` with `augment.erase` on trains
    to the same predictions for a seed (the rectangles drawn from the fold's generator), and
    erasing changes what it learns."""
    from foldwise.train.loop import FitData, Settings, train_fold
    from helpers import toy_data
    x, y = toy_data()

    def fit(erase):
        torch.manual_seed(0)
        net = Normalised(timm.create_model("small_resnet20", num_classes=2), [0.5] * 3, [0.25] * 3)
        cfg = P.evolve(CFG, {"epochs": 2, "augment": {"erase": erase}})
        return train_fold(net, Classification(["a", "b"]), Settings(cfg, 3e-3, 0, torch.device("cpu")),
                          FitData(x[:32], y[:32], x[32:], y[32:], x[:5])).val_preds
    erased = fit(0.5)
    np.testing.assert_array_equal(erased, fit(0.5))
    assert not np.array_equal(erased, fit(0.0))


def test_every_task_the_loop_trains_says_whether_random_erasing_suits_it():
    """The class tasks, pseudo-label rounds and the distilled student take erasing; keypoints
    refuse it (an erased point keeps its target)."""
    from foldwise.deploy.soft_targets import Distilled
    from foldwise.tasks import MultiLabel
    from foldwise.train.pseudo_labels import PseudoLabelled
    classes = Classification("ab")
    tasks = {classes: True, MultiLabel(["x", "y"]): True, PseudoLabelled(classes): True,
             Distilled(classes): True, Keypoints(["a_x", "a_y"], (9, 9)): False}
    for task, erases in tasks.items():
        assert task.erases is erases, type(task).__name__
        cfg = P.evolve(CFG, {"augment": {"erase": 0.5}})
        made = recipe.erasing(Normalised(torch.nn.Identity(), [0.5], [0.25]), cfg, task)
        assert (made is not None) is erases
