"""`train.compile`: compiled training is trusted only where it trains what eager training trains.

On an H200 with torch 2.11 (docs/gpu.md, second run) a compiled training step gave the same
outputs as the eager network and yet gradients up to 0.45 and BatchNorm running statistics up
to 1.9 away from eager's after one step, and in float32 with channels_last it stopped in
inductor's convolution backward. So before a fold trains compiled, one step on its first batch
is taken twice, compiled and by an eager copy, and compared; where they disagree, or the
compiled step fails, the fold trains uncompiled with a warning. After each compiled epoch,
every BatchNorm layer must also have counted the epoch's batches.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch._inductor.config
from torch import nn

log = logging.getLogger(__name__)

# relative gap allowed between the compiled and the eager step: bfloat16 rounding stays near
# 1e-2, float32 near 1e-6 (CPU) to 1e-4; the fault seen was larger than the values themselves
TOLERANCE = 0.1
STATS = ("running_mean", "running_var")


def checked(net: nn.Module, model: nn.Module, x: torch.Tensor, amp: bool) -> nn.Module:
    """`model` (compiling `net`) if one training step on the batch `x` moves gradients and
    BatchNorm statistics as an eager copy of `net` does, else the uncompiled module, with a
    warning. `net`'s weights, statistics and gradients are left as they were."""
    if not hasattr(model, "_orig_mod"):
        return model
    try:
        gaps = first_step_gaps(net, model, x, amp)
    except Exception as error:  # inductor's faults surface as many kinds of error
        log.warning("torch.compile (torch %s) failed on the first batch (%s: %s); the fold "
                    "trains uncompiled", torch.__version__, type(error).__name__, error)
        return model._orig_mod
    if max(gaps.values()) <= TOLERANCE:
        log.info("compiled step checked against eager: %s", gaps)
        return model
    log.warning("torch.compile (torch %s) trains differently from eager on the first batch "
                "(relative gaps %s, over %s); the fold trains uncompiled",
                torch.__version__, {k: round(v, 4) for k, v in gaps.items()}, TOLERANCE)
    return model._orig_mod


def first_step_gaps(net: nn.Module, model: nn.Module, x: torch.Tensor, amp: bool) -> dict:
    """One forward and backward of `model` and of an eager copy of `net` on `x`, random draws
    (dropout, drop-path) the same in both: the gap between their gradients (relative to the
    eager gradients) and between their BatchNorm running statistics (relative to how far the
    eager step moved them). Restores `net` afterwards."""
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    eager = copy.deepcopy(net)
    before = running(eager)
    try:
        with torch._inductor.config.patch(fallback_random=True):  # eager's random kernels
            grads = [step(module, x, amp) for module in (model, eager)]
        stats = [running(m) for m in (net, eager)]
    finally:
        net.load_state_dict(saved)
        net.zero_grad(set_to_none=True)
    moved = [e - b for e, b in zip(stats[1], before)]
    return {"gradients": relative([c - e for c, e in zip(*grads)], grads[1]),
            "statistics": relative([c - e for c, e in zip(*stats)], moved)}


def step(module: nn.Module, x: torch.Tensor, amp: bool) -> list[torch.Tensor]:
    """A training forward and backward from a fixed seed; the parameters' gradients."""
    module.train()
    module.zero_grad(set_to_none=True)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = module(x)
        out.float().square().mean().backward()
    params = module._orig_mod.parameters() if hasattr(module, "_orig_mod") else module.parameters()
    return [p.grad.detach().float().clone() if p.grad is not None else torch.zeros_like(p)
            for p in params]


def running(net: nn.Module) -> list[torch.Tensor]:
    return [b.detach().float().clone() for n, b in net.named_buffers() if n.endswith(STATS)]


def relative(gaps: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """|gaps| / |reference|, each over all its tensors together."""
    if not reference:
        return 0.0
    scale = torch.cat([r.flatten() for r in reference]).norm()
    return float(torch.cat([g.flatten() for g in gaps]).norm() / scale.clamp_min(1e-12))


def batchnorm_counts(net: nn.Module) -> dict[str, int]:
    """Each BatchNorm layer's count of the training batches it has normalised."""
    return {name: int(m.num_batches_tracked) for name, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None}


def statistics_moved(net: nn.Module, before: dict[str, int], expected: int) -> bool:
    """After an epoch of the compiled module: did every BatchNorm layer of the network itself
    count the epoch's `expected` batches? Its running statistics are what validation, the kept
    weights and the export use; a compiled step that left them behind is reported, and the
    fold goes on uncompiled (False)."""
    behind = [name for name, count in batchnorm_counts(net).items()
              if count - before.get(name, 0) != expected]
    if behind:
        log.warning("torch.compile (torch %s) left the BatchNorm statistics of %d layer(s) "
                    "behind (%s: %d batches expected); the fold continues uncompiled",
                    torch.__version__, len(behind), behind[0], expected)
    return not behind
