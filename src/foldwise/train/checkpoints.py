"""Files that hold tensors: a fold's model checkpoint and its resume state.

Both hold tensors and plain data only and are read with `torch.load(weights_only=True)`, so a
file received from someone else cannot run code. Both are written atomically and fsynced: a
power loss leaves the previous file or the new one, never a truncated one; a resume file that
cannot be read anyway (an older format, a damaged disk) is reported and ignored, since it only
saves time.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from foldwise.files import atomic_path
from foldwise.train.state import LoopState

log = logging.getLogger(__name__)


def save(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def load(path: str | Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def save_resume(path, net, optimizer, gen: torch.Generator, state: LoopState, ema=None) -> None:
    """Everything a killed fold needs to continue as if it never stopped (with `ema`, timm's
    moving average of the weights, too): the loop's state in its own format, the rest beside."""
    save({"loop": state.to_file(), "net": net.state_dict(), "optimizer": optimizer.state_dict(),
          "ema": None if ema is None else ema.module.state_dict(),
          "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
          "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, path)


def load_resume(path, net, optimizer, gen: torch.Generator, ema=None):
    """Restore the network, generator and RNG states saved by `save_resume`; return the loop's
    state and the optimizer's (the caller loads that once its scheduler has replayed the
    finished epochs). None when there is nothing (usable) to resume from."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = load(path)  # on the CPU: RNG states must be CPU tensors, the rest follows net
        state = LoopState.from_file(saved["loop"])
        net.load_state_dict(saved["net"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"])
    except Exception as err:  # noqa: BLE001 - any unreadable resume file means: start over
        log.warning("ignoring resume file %s (%s: %s); training this fold from the start",
                    path, type(err).__name__, err)
        return None
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    cuda_rng = saved["cuda_rng"]
    if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)
    log.info("resumed from %s after epoch %d", path, len(state.history) - 1)
    return state, saved["optimizer"]
