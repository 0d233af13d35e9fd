"""Networks for small images (under about 64 px), registered in timm's own registry.

timm's ResNets open with a stride-2 convolution and a max-pool: a 28x28 image is 7x7 by the
first stage, so small images have to be upscaled (4x the pixels) to keep any detail. These are
the CIFAR ResNets of He et al. (2016, section 4.2) built from timm's own blocks: one 3x3
stride-1 convolution as the stem, three stages of basic blocks at 16, 32 and 64 channels
(times `width`) with strides 1, 2 and 2, global pooling and a linear head; depth 6n + 2 for n
blocks a stage. A stage's first block projects its shortcut with a 1x1 convolution where the
shape changes (timm's downsample), not the paper's zero padding.

Importing this module registers them (`foldwise.models` does), so `train.model:
small_resnet20` works as any timm name does: in training, `distill.model`, the check stage,
`load_checkpoint`; the exported program and the MLflow model carry the network itself.
`docs/tasks.md` says when to choose them; `docs/benchmarks.md` what they cost.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath, create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock
from torch import nn


def stage(inplanes: int, planes: int, blocks: int, stride: int, drop_path: list[float]) -> nn.Sequential:
    """`blocks` of timm's BasicBlock; the first one strides and projects its shortcut."""
    layers = []
    for i in range(blocks):
        s = stride if i == 0 else 1
        down = None
        if s != 1 or inplanes != planes:
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=s, bias=False),
                                 nn.BatchNorm2d(planes))
        rate = drop_path[i]
        layers.append(BasicBlock(inplanes, planes, stride=s, downsample=down,
                                 drop_path=DropPath(rate) if rate else None))
        inplanes = planes
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet with timm's model interface (forward_features, forward_head with
    pre_logits, reset_classifier, feature_info, drop_rate, drop_path_rate). `stem_stride` 2
    halves the image in the stem (`train.model_kwargs: {stem_stride: 2}`): every stage then
    costs a quarter, for images that keep their detail at half the side."""

    def __init__(self, blocks: int = 3, width: int = 1, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 stem_stride: int = 1):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        channels = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        rates = torch.linspace(0, drop_path_rate, 3 * blocks).tolist()
        self.feature_info = [dict(num_chs=16, reduction=stem_stride, module="stem.2")]
        stages, inplanes = [], 16
        for i, planes in enumerate(channels):
            stages.append(stage(inplanes, planes, blocks, 1 if i == 0 else 2,
                                rates[i * blocks:(i + 1) * blocks]))
            self.feature_info.append(dict(num_chs=planes, reduction=stem_stride * 2 ** i,
                                          module=f"stages.{i}"))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = inplanes
        self.global_pool, self.fc = create_classifier(inplanes, num_classes, pool_type=global_pool)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ResNet init: He normal convolutions, unit BatchNorm, each block's last
        BatchNorm zeroed (a block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                m.zero_init_last()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes,
                                                      pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg() -> dict:
    """No published weights (the hub is not reached; `pretrained: true` is an error)."""
    return dict(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                first_conv="stem.0", classifier="fc")


SMALL = ("small_resnet20", "small_resnet32", "small_resnet56", "small_wrn16_4")
default_cfgs = generate_default_cfgs({name: _cfg() for name in SMALL})


def _create(variant: str, pretrained: bool, **kwargs) -> SmallResNet:
    return build_model_with_cfg(SmallResNet, variant, pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
                                **kwargs)


@register_model
def small_resnet20(pretrained: bool = False, **kwargs) -> SmallResNet:
    """ResNet-20 for small images: 3 blocks a stage, 0.27 M weights."""
    return _create("small_resnet20", pretrained, **dict(dict(blocks=3), **kwargs))


@register_model
def small_resnet32(pretrained: bool = False, **kwargs) -> SmallResNet:
    """ResNet-32 for small images: 5 blocks a stage, 0.46 M weights."""
    return _create("small_resnet32", pretrained, **dict(dict(blocks=5), **kwargs))


@register_model
def small_resnet56(pretrained: bool = False, **kwargs) -> SmallResNet:
    """ResNet-56 for small images: 9 blocks a stage, 0.85 M weights."""
    return _create("small_resnet56", pretrained, **dict(dict(blocks=9), **kwargs))


@register_model
def small_wrn16_4(pretrained: bool = False, **kwargs) -> SmallResNet:
    """A wide ResNet for small images (WRN-16-4's shape: 2 blocks a stage, 4x the channels)."""
    return _create("small_wrn16_4", pretrained, **dict(dict(blocks=2, width=4), **kwargs))

