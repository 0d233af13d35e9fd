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
from foldwise.train.loader import predict_array
from foldwise.metrics import EPS

MODEL_FILE = "bagged.pt2"
META_FILE = "meta.json"


class Bagged(nn.Module):
    """`activation` is the task's: softmax for classes; for coordinates, `scale` and `offset`
    map the networks' [-1, 1] outputs to pixels. A `temperature` other than 1 tempers the
    bagged probabilities as `calibration.temper` does."""

    def __init__(self, nets, activation: str, mean: str, scale=None, offset=None,
                 temperature: float = 1.0):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.softmax = activation == "softmax"
        self.geometric = mean == "geometric"
        self.tempered = self.softmax and temperature != 1.0
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float64))
        n = len(scale) if scale is not None else 0
        self.register_buffer("scale", torch.tensor(scale if n else [1.0], dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(offset if n else [0.0], dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        outs = []
        for net in self.nets:
            y = net(x)
            outs.append(y.softmax(dim=1) if self.softmax else y * self.scale + self.offset)
        stack = torch.stack(outs)
        if self.geometric:
            p = stack.clamp_min(1e-15).log().mean(dim=0).exp()
            p = p / p.sum(dim=1, keepdim=True)
        else:
            p = stack.mean(dim=0)
        if self.tempered:  # in float64, as calibration.temper
            q = p.double().clamp(EPS, 1 - EPS)
            q = q / q.sum(dim=1, keepdim=True)
            p = (q.log() / self.temperature).softmax(dim=1).float()
        return p


def save(bagged: Bagged, example: torch.Tensor, meta: dict, out_dir: str | Path) -> None:
    """Export `bagged` (batch size dynamic) and write it with `meta` into `out_dir` (replaced whole)."""
    program = torch.export.export(bagged.eval(), (example,),
                                  dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    with atomic_dir(out_dir) as tmp:
        torch.export.save(program, str(tmp / MODEL_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(model_dir: str | Path, device: torch.device | None = None):
    """The exported bag as a callable module on `device` (the GPU when there is one)."""
    model_dir = Path(model_dir)
    program = torch.export.load(str(model_dir / MODEL_FILE))
    device = device or default_device()
    if device.type != "cpu":  # exported on the CPU; torch's own pass moves it
        program = move_to_device_pass(program, device)
    meta = json.loads((model_dir / META_FILE).read_text())
    return program.module(), meta


def run_model(model, images, batch_size: int = 64, device: torch.device | None = None,
              desc: str = "predict") -> np.ndarray:
    """Predictions as float64 numpy for a uint8 (N, H, W, C) array, through the one
    inference loop (batches gathered ahead, outputs read once)."""
    return predict_array(model, images, batch_size, device or default_device(), desc)
