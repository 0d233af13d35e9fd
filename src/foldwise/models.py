"""Networks: any timm model by name, with the input normalisation inside the module.

Putting mean/std in the module makes the saved model take plain [0, 1] pixels, so training,
export and predict cannot disagree about preprocessing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from torch import nn

from foldwise import smallnets  # noqa: F401  (registers the networks for small images in timm)
from foldwise.errors import InputError
from foldwise.params import Train

log = logging.getLogger(__name__)


class Normalised(nn.Module):
    """`fp32_head`: under autocast, the classifier still runs in float32 (regression outputs
    such as keypoints: bfloat16's step near 1 is 2^-7, a third of a pixel at 96 px)."""

    def __init__(self, backbone: nn.Module, mean, std, fp32_head: bool = False):
        super().__init__()
        self.backbone, self.fp32_head = backbone, fp32_head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if not (self.fp32_head and torch.is_autocast_enabled(x.device.type)):
            return self.backbone(x)
        features = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        with torch.autocast(x.device.type, enabled=False):
            return self.backbone.get_classifier()(features.float())


RESERVED_KWARGS = ("num_classes", "in_chans", "pretrained", "pretrained_cfg", "checkpoint_path")


def timm_model(name: str, pretrained: bool, model_kwargs: dict | None = None, **kwargs) -> nn.Module:
    """timm.create_model with params.yaml's `train.model_kwargs` (drop_path_rate, drop_rate,
    ...); a keyword the architecture does not take is an error that names the key."""
    extra = dict(model_kwargs or {})
    clash = [k for k in extra if k in RESERVED_KWARGS]
    if clash:
        raise InputError(f"params.yaml: train.model_kwargs.{clash[0]} is set by foldwise itself "
                         "(from the task, the image mode and train.pretrained); remove it")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs, **extra)
    except TypeError as err:
        if not extra:
            raise
        raise InputError(f"params.yaml: train.model_kwargs {sorted(extra)} are not all keywords "
                         f"of timm's {name} ({err})") from None


@dataclass(frozen=True)
class Weights:
    """Where a network's first weights come from (params.yaml's `train.pretrained`,
    `weights_file`, `weights_match` and `pretrained_fallback`)."""
    pretrained: bool = False  # timm's hub
    file: str = ""  # a local file under weights/, before the hub
    match: str = "name"  # how the file's tensors pair with the model's: name | order
    fallback: bool = False  # hub weights that cannot be had: random init, with a warning

    @classmethod
    def of(cls, cfg: Train) -> Weights:
        return cls(cfg.pretrained, cfg.weights_file, cfg.weights_match, cfg.pretrained_fallback)


def create_backbone(name: str, num_outputs: int, in_chans: int, weights: Weights = Weights(),
                    model_kwargs: dict | None = None) -> tuple[nn.Module, str]:
    """A timm model; weights from `weights.file` if given, else the hub if `weights.pretrained`,
    else random. Returns the model and where its weights came from.

    Hub weights that cannot be had are an error unless `weights.fallback` allows training
    from random init (a silent fallback would cost a user a day of worse results)."""
    weights_file, pretrained_fallback = weights.file, weights.fallback
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise InputError(f"params.yaml: train.model={name!r} is not a timm model name")
    kwargs: dict = dict(num_classes=num_outputs, in_chans=in_chans, model_kwargs=model_kwargs)
    if weights_file:
        model = timm_model(name, False, **kwargs)
        load_weights_file(model, weights_file, weights.match)
        return model, f"file:{weights_file}"
    if weights.pretrained:
        try:
            return timm_model(name, True, **kwargs), "hub"
        except InputError:
            raise
        except Exception as err:  # no network, or no weights published for this name
            if not pretrained_fallback:
                raise InputError(f"params.yaml: train.pretrained is true, but the weights of {name} "
                                 f"cannot be had ({type(err).__name__}: {str(err)[:200]}); give "
                                 "train.weights_file, or set train.pretrained_fallback: true to "
                                 "train from random init") from None
            log.warning("pretrained weights for %s unavailable (%s); training from random init",
                        name, err)
            return timm_model(name, False, **kwargs), "random (hub unreachable)"
    return timm_model(name, False, **kwargs), "random"


BN_PARTS = ("weight", "bias", "running_mean", "running_var")


WEIGHTS_DIR = "weights"  # the train stage's DVC dependency (dvc.yaml)


def check_weights_location(weights_file: str) -> None:
    """`train.weights_file` must lie under `weights/`, which DVC tracks for the train stage:
    a file elsewhere could be replaced without DVC retraining the folds."""
    if not weights_file:
        return
    parts = Path(weights_file).parts
    if Path(weights_file).is_absolute() or len(parts) < 2 or parts[0] != WEIGHTS_DIR or ".." in parts:
        raise InputError(f"params.yaml: train.weights_file={weights_file!r} must be a file under "
                         f"{WEIGHTS_DIR}/ (e.g. {WEIGHTS_DIR}/{Path(weights_file).name}): DVC tracks "
                         "that folder for the train stage, so replacing the file retrains the folds")


def load_weights_file(model: nn.Module, path: str | Path, match: str = "name") -> None:
    """Load pretrained weights from a local file into every tensor but the classifier.

    `match: name` needs timm's tensor names. `match: order` (params.yaml
    `train.weights_match`, an explicit opt-in) pairs tensors one by one in order, for files
    saved by another implementation of the same network under other names; shapes must agree
    and so must the kind of each tensor where its name tells it (a BatchNorm's weight, bias,
    running mean and variance share one shape, so a reordered file would otherwise load
    silently into the wrong slots). A classifier of another size than the model's stays random.
    """
    if match not in ("name", "order"):
        raise InputError(f"params.yaml: train.weights_match={match!r} must be 'name' or 'order'")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"params.yaml: train.weights_file={str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        source = load_file(str(path))
    else:
        source = torch.load(path, map_location="cpu", weights_only=True)
        source = source.get("state_dict", source) if isinstance(source, dict) else source
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "classifier")
    body = [k for k in own if not k.startswith(head + ".") and not k.endswith("num_batches_tracked")]
    pairs = _pairs(path, body, source, match, type(model).__name__)
    loaded = {}
    for mine, theirs in pairs:
        if own[mine].shape != source[theirs].shape:
            raise InputError(f"{path}: tensor {theirs!r} has shape {tuple(source[theirs].shape)}, "
                             f"but the model's {mine!r} needs {tuple(own[mine].shape)}")
        kinds = [n.rsplit(".", 1)[-1] for n in (mine, theirs)]
        if kinds[0] in BN_PARTS and kinds[1] in BN_PARTS and kinds[0] != kinds[1]:
            raise InputError(f"{path}: tensor {theirs!r} would load into the model's {mine!r}: "
                             "the file's tensors are not in the model's order")
        loaded[mine] = source[theirs]
    # the file's classifier, when it fits (same number of outputs), follows the body tensors
    rest = [k for k in source if k not in {t for _, t in pairs} and not k.endswith("num_batches_tracked")]
    heads = [k for k in own if k.startswith(head + ".")]
    if len(rest) == len(heads) and all(own[m].shape == source[t].shape for m, t in zip(heads, rest)):
        loaded.update({m: source[t] for m, t in zip(heads, rest)})
    model.load_state_dict(loaded, strict=False)
    log.info("loaded %d tensors from %s", len(loaded), path)


def _pairs(path: Path, body: list[str], source: dict, match: str, name: str) -> list[tuple]:
    """(the model's tensor, the file's tensor) for every tensor but the classifier: by name,
    or with `match: order` one by one in the file's order."""
    if all(k in source for k in body):
        return [(k, k) for k in body]
    if match == "name":
        missing = [k for k in body if k not in source]
        raise InputError(f"{path}: {len(missing)} of the model's tensors are not in the file by "
                         f"name (e.g. {missing[0]!r}); if it is the same network saved under "
                         "other names, set train.weights_match: order")
    ordered = [k for k in source if not k.endswith("num_batches_tracked")]
    if len(ordered) < len(body):
        raise InputError(f"{path}: {len(ordered)} tensors, but {name} needs {len(body)} besides "
                         "its classifier")
    return list(zip(body, ordered))


def input_normalisation(model: nn.Module, weights: str, dataset_mean, dataset_std):
    """Pretrained weights expect the normalisation they were trained with; a random init
    gets the data set's own channel statistics."""
    if weights.startswith("random"):
        return list(dataset_mean), list(dataset_std)
    pretrained = model.pretrained_cfg  # timm's own dict
    channels = len(dataset_mean)
    mean, std = list(pretrained["mean"]), list(pretrained["std"])
    if len(mean) != channels:  # e.g. RGB statistics for a one-channel input
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    return mean, std


class Network(NamedTuple):
    net: nn.Module  # timm's model with its input normalisation inside (`Normalised`)
    weights: str  # where its first weights came from: "random", "hub", "file:<path>"
    spec: dict  # what the checkpoint stores and `load_checkpoint` rebuilds the network from


def create_network(cfg: Train, num_outputs: int, in_chans: int, data_mean, data_std,
                   fp32_head: bool = False) -> Network:
    """params.yaml's `train` network: timm's model with its input normalisation inside."""
    backbone, weights = create_backbone(cfg.model, num_outputs, in_chans, Weights.of(cfg),
                                        cfg.model_kwargs)
    mean, std = input_normalisation(backbone, weights, data_mean, data_std)
    spec = {"model": cfg.model, "mean": mean, "std": std, "num_outputs": num_outputs,
            "in_chans": in_chans, "model_kwargs": cfg.model_kwargs, "fp32_head": fp32_head}
    return Network(Normalised(backbone, mean, std, fp32_head), weights, spec)


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a fold's network from its checkpoint (the spec of `create_network` + weights)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    spec = ckpt["spec"]
    backbone = timm_model(spec["model"], False, spec.get("model_kwargs"),
                          num_classes=spec["num_outputs"], in_chans=spec["in_chans"])
    net = Normalised(backbone, spec["mean"], spec["std"], spec.get("fp32_head", False))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
