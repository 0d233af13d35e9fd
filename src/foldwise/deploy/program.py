"""The deployable bag: every fold's network in one exported program, plus what predict needs.

The program takes the preprocess cache's format, uint8 (N, H, W, C) with any N, and returns the
bagged, activated predictions, so a user needs only `load_image` (same decode, crop and resize
as training) and this file. It is saved with `torch.export` (a `.pt2` ExportedProgram), the
successor of TorchScript, whose `torch.jit` API is deprecated in the torch we pin; `.pt2` loads
with `torch.export.load` and compiles ahead of time with AOTInductor.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export.passes import move_to_device_pass

from foldwise.files import atomic_dir
from foldwise.metrics import EPS
from foldwise.train.loader import predict_array

MODEL_FILE = "bagged.pt2"
META_FILE = "meta.json"
TASK_KEYS = ("source", "task", "classes", "target_names", "image_size", "flip_pairs")  # meta.json's


class LinearStack(nn.Module):
    """The second-level model as a layer (`stack.linear_form`): softmax(log p @ W + b) of the
    bag's probabilities, clipped and renormalised as its features are, in float64."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float64))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float64))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        q = p.double().clamp(EPS, 1 - EPS)
        q = q / q.sum(dim=1, keepdim=True)
        return (q.log() @ self.weight + self.bias).softmax(dim=1).float()


class Bagged(nn.Module):
    """Every fold's network, each followed by the task's `head` (softmax for classes, pixels
    for coordinates), averaged (`mean`: arithmetic, or geometric for probabilities), then the
    task's `tempering` (a temperature fit out-of-fold) where there is one, then the
    second-level model where it is a layer (`LinearStack`)."""

    def __init__(self, nets, head: nn.Module, mean: str, tempering: nn.Module | None = None,
                 stack: nn.Module | None = None):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.head = head
        self.geometric = mean == "geometric"
        self.tempering = tempering if tempering is not None else nn.Identity()
        self.stack = stack if stack is not None else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        each = torch.stack([self.head(net(x)) for net in self.nets])
        if self.geometric:
            p = each.clamp_min(1e-15).log().mean(dim=0).exp()
            p = p / p.sum(dim=1, keepdim=True)
        else:
            p = each.mean(dim=0)
        return self.stack(self.tempering(p))


def save(bagged: Bagged, example: torch.Tensor, meta: dict, out_dir: str | Path,
         beside=None) -> None:
    """Export `bagged` (batch size dynamic) and write it with `meta` into `out_dir` (replaced
    whole); `beside(folder)` writes what the submission's set-level steps need beside them."""
    program = exported(bagged, example)
    with atomic_dir(out_dir) as tmp:
        torch.export.save(program, str(tmp / MODEL_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if beside is not None:
            beside(tmp)


def exported(module: nn.Module, example: torch.Tensor):
    """`module` (taking uint8 images) as an ExportedProgram whose batch size stays dynamic."""
    return torch.export.export(module.eval(), (example,),
                               dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})


def program_on(path: str | Path, device: torch.device):
    """A saved `.pt2` as a callable module on `device` (exported on the CPU; torch's own pass
    moves it)."""
    program = torch.export.load(str(path))
    if device.type != "cpu":
        program = move_to_device_pass(program, device)
    return program.module()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_level(meta: dict) -> list[str]:
    """The params whose steps the submission applies over the whole test set, or outside the
    program: test-neighbour averaging, and a second-level model that is not a layer of the
    program. A served model, which predicts each request on its own, would differ from the
    submission (`foldwise-predict` reproduces those `unreproducible` does not name). Empty
    where the program alone reproduces the submission."""
    stack = meta.get("stack") or {}
    if stack.get("model"):  # the stack's output is the submission (neighbours only as its features)
        if stack.get("in_program"):
            return []
        return [f"stack.model={stack['model']}"
                + (f" with stack.neighbours={stack['neighbours']}" if stack.get("neighbours") else "")
                + " (not a layer of the program)"]
    if meta.get("neighbours", 0):
        return [f"neighbours.k={meta['neighbours']} (averaging over the whole test set)"]
    return []


def unreproducible(meta: dict) -> list[str]:
    """The params whose steps the export's files cannot reproduce, so that foldwise-predict
    would differ from the submission: a second-level model that is neither a layer of the
    program nor a logistic regression shipped as weights (`setlevel`). Empty otherwise."""
    stack = meta.get("stack") or {}
    if stack.get("model") and not stack.get("in_program") and not stack.get("weights"):
        return set_level(meta)
    return []


def load(model_dir: str | Path, device: torch.device | None = None):
    """The exported bag as a callable module on `device` (the GPU when there is one)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    return program_on(model_dir / MODEL_FILE, device or default_device()), meta


def run_model(model, images, batch_size: int = 64, device: torch.device | None = None,
              desc: str = "predict") -> np.ndarray:
    """Predictions as float64 numpy for a uint8 (N, H, W, C) array, through the one
    inference loop (batches gathered ahead, outputs read once)."""
    return predict_array(model, images, batch_size, device or default_device(), desc)
