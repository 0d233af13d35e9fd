"""Networks: any timm model by name, with the input normalisation inside the module.

Putting mean/std in the module makes the saved model take plain [0, 1] pixels, so training,
export and predict cannot disagree about preprocessing.
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from foldwise.errors import InputError

log = logging.getLogger(__name__)


class Normalised(nn.Module):
    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


def create_backbone(name: str, num_outputs: int, in_chans: int, pretrained: bool = False,
                    weights_file: str = "") -> tuple[nn.Module, str]:
    """A timm model; weights from `weights_file` if given, else the hub if `pretrained` and
    reachable, else random. Returns the model and where its weights came from."""
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise InputError(f"params.yaml: train.model={name!r} is not a timm model name")
    kwargs = dict(num_classes=num_outputs, in_chans=in_chans)
    if weights_file:
        if not Path(weights_file).is_file():
            raise InputError(f"params.yaml: train.weights_file={weights_file!r} does not exist")
        # timm loads the file through the model's own pretrained-weight filter, so a classifier
        # of another size is dropped and first-conv channels are adapted, as for hub weights
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights_file},
                                  **kwargs)
        return model, f"file:{weights_file}"
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **kwargs), "hub"
        except Exception as err:  # no network, or no weights published for this name
            log.warning("pretrained weights for %s unavailable (%s); training from random init",
                        name, err)
            return timm.create_model(name, pretrained=False, **kwargs), "random (hub unreachable)"
    return timm.create_model(name, pretrained=False, **kwargs), "random"


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a fold's network from its checkpoint (architecture spec + weights)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    spec = ckpt["spec"]
    backbone = timm.create_model(spec["model"], pretrained=False, num_classes=spec["num_outputs"],
                                 in_chans=spec["in_chans"])
    net = Normalised(backbone, spec["mean"], spec["std"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
