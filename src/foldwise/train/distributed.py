"""One fold on several devices: PyTorch DDP, launched by torchrun.

With `train.devices: N` (N > 1) the train stage starts itself again under
`python -m torch.distributed.run --standalone --nproc_per_node N` (torchrun) with the same
arguments; DVC sees one command, so the stage's run-cache signature does not change. Each of
the N processes (ranks) drives one device: `cuda:LOCAL_RANK` with NCCL, or the CPU with gloo (the
cores shared out among the ranks). What each rank does:

- `train.batch_size` stays the batch of one optimiser update: each batch is cut into N
  contiguous parts, one per rank, and DDP averages the gradients, which is the update one
  process makes on the whole batch. lr and schedule mean what they mean on one device.
  BatchNorm: on CUDA with `train.sync_bn` its batch statistics are the whole batch's
  (SyncBatchNorm); on the CPU (gloo has no SyncBatchNorm) each rank normalises its own part,
  which with small parts trains measurably differently (tests/test_distributed.py).
- Every rank draws the random numbers of the whole batch (order, augmentation) from the same
  generator and keeps its part's: each image is augmented as one process would augment it.
- Validation and test rows are cut into N contiguous shards; each rank predicts one and the
  predictions are gathered in input order, so every image is predicted exactly once.
- BatchNorm's running statistics are rank 0's, broadcast before each prediction: every
  prediction is made by the weights that are saved.
- Rank 0 alone logs to MLflow and writes the fold's outputs and its resume file.

With one device every function here is the identity and nothing is initialised.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

from foldwise.errors import InputError


def launched() -> bool:
    """This process is one rank of a torchrun launch."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(devices: int) -> int | None:
    """With `devices` > 1 and not yet under torchrun: run this very command as `devices` ranks
    under torchrun and return its exit status; otherwise None (go on in this process)."""
    if devices < 1:
        raise InputError(f"params.yaml: train.devices={devices} must be at least 1")
    if devices == 1 or launched():
        return None
    env = dict(os.environ)
    if torch.cuda.is_available():
        if devices > torch.cuda.device_count():
            raise InputError(f"params.yaml: train.devices={devices}, but {torch.cuda.device_count()} "
                             "GPU(s) are visible (CUDA_VISIBLE_DEVICES)")
    # the ranks share the cores instead of each taking all of them (torchrun's own default: 1)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={devices}", *sys.argv]
    return subprocess.run(cmd, env=env).returncode


def setup() -> torch.device:
    """The device of this process (one rank's GPU under torchrun), the process group joined."""
    cuda = torch.cuda.is_available()
    if not launched():
        return torch.device("cuda" if cuda else "cpu")
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_lead() -> bool:
    return rank() == 0


def rank_seed(seed: int) -> int:
    """The seed of this rank's own random numbers (dropout and drop-path masks): rank 0 keeps
    the fold's seed, the others differ, so their parts of a batch get masks of their own. The
    shared draws (order, augmentation) come from the fold's generator, the same on every rank."""
    return seed + 7919 * rank()


def bf16_native(device: torch.device) -> bool:
    """bfloat16 autocast pays on this device: CUDA from Ampere (compute capability 8.0) on.
    Older GPUs (T4, V100) pass torch's is_bf16_supported through emulation, and run slower
    than float32: there a fold trains in float32, and says so once. A CPU always trains in
    float32: with AMX, bfloat16 trained 1.5x faster but the same seeded fold came out
    differently on each run (benchmarks/cpu_bf16.py, docs/benchmarks.md)."""
    if device.type != "cuda":
        return False
    if _capability(device.index) >= (8, 0):
        return True
    _warn_once(f"train.amp: {torch.cuda.get_device_name(device)} has no native bfloat16 "
               "(compute capability below 8.0); training in float32")
    return False


def _capability(index) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        import logging
        logging.getLogger(__name__).warning(message)


def part(n: int) -> slice:
    """This rank's contiguous share of n rows (np.array_split's: sizes differ by one at most)."""
    size, extra = divmod(n, world())
    start = rank() * size + min(rank(), extra)
    return slice(start, start + size + (rank() < extra))


def shard(images):
    """This rank's share of `images` (an array or `loader.Rows`), as `loader.Rows`."""
    if world() == 1:
        return images
    from foldwise.train.loader import Rows
    rows = np.arange(len(images))[part(len(images))]
    return Rows(images.array, images.index[rows]) if isinstance(images, Rows) else Rows(images, rows)


def gather_objects(obj) -> list:
    """`obj` of every rank, in rank order (one element with one process)."""
    if world() == 1:
        return [obj]
    parts = [None] * world()
    dist.all_gather_object(parts, obj)
    return parts


def gather(array: np.ndarray) -> np.ndarray:
    """Every rank's `shard` of an output, concatenated in rank order (= input order)."""
    if world() == 1:
        return array
    parts: list = [None] * world()
    dist.all_gather_object(parts, array)
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else array


def epoch_totals(loss_sum: torch.Tensor, n: int, *rows: torch.Tensor):
    """The epoch's summed loss and image count over all ranks, and each of `rows` (targets,
    outputs) of every rank concatenated, on this rank's device."""
    if world() == 1:
        return (loss_sum, n, *rows)
    parts: list = [None] * world()
    dist.all_gather_object(parts, (float(loss_sum), n, [r.cpu() for r in rows]))
    device = loss_sum.device
    return (torch.tensor(sum(p[0] for p in parts), dtype=torch.float64, device=device),
            sum(p[1] for p in parts),
            *(torch.cat([p[2][i] for p in parts]).to(device) for i in range(len(rows))))


def sync_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm over the whole batch, every rank's part of it (SyncBatchNorm), through timm's
    conversion: timm's BatchNormAct2d becomes SyncBatchNormAct, which keeps the activation and
    drop-out that follow the normalisation; torch's own conversion makes it a plain
    SyncBatchNorm whose forward skips them, so EfficientNet, MobileNet, RegNet and CSP models
    would train without their post-BN activations (and be rebuilt with them from the
    checkpoint)."""
    from timm.layers import convert_sync_batchnorm
    return convert_sync_batchnorm(net)


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP over `net` when there are several ranks.
    Buffers are not broadcast at every forward (the prediction loops of the ranks run unequal
    batch counts); `sync_buffers` makes them rank 0's before each prediction."""
    if world() == 1:
        return net
    return torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def sync_buffers(*modules) -> None:
    """Rank 0's buffers (BatchNorm running statistics) in every rank's copy of `modules`."""
    if world() == 1:
        return
    for module in modules:
        if module is not None:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)
