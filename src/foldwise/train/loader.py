"""Device batches from the uint8 cache, gathered ahead of the step that needs them.

A background thread gathers each batch's rows from the memory-mapped array (`np.take`, which
releases the GIL) and, on CUDA, into one of a ring of reusable pinned buffers whose copy to the
device is issued on a side stream, as timm's `PrefetchLoader` does. Batches travel as uint8 (a
quarter of float32's bytes) and are converted and normalised on the device (`to_float`). The
consumer never waits on the host unless the loader has fallen behind; on the CPU a batch is the
gathered array itself. The order of batches, and so every result, is the order of `batches`.

On a GPU an array that takes at most a tenth of its memory is first copied there whole, once,
and each batch is gathered on the device: the first GPU run (docs/gpu.md) found one host
thread gathering into pinned buffers only 1.2x ahead of efficientnet_b0's training step. One
such array at a time (the fold's training cache, whose rows validation also reads, then the
test cache), released when another is asked for or when the array itself goes.
"""
from __future__ import annotations

import queue
import threading
import weakref
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

_DONE = object()


def open_cache(path) -> np.ndarray:
    """Memory-map a cache array. Copy-on-write: torch may wrap it without warning that it is
    read-only, pages are still shared with every other reader, and nothing is ever written."""
    return np.load(path, mmap_mode="c")


def to_float(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1], on x's device."""
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def sequential(n: int, batch_size: int) -> list[np.ndarray]:
    """Index batches 0..n-1 in order (prediction)."""
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


class _Staging:
    """Where the loader thread gathers a batch: on the CPU, the gathered array itself; on CUDA,
    one of a ring of reusable pinned buffers, copied to the device on a side stream."""

    def __init__(self, array, batches, device: torch.device, slots: int):
        self.array, self.device, self.cuda = array, device, device.type == "cuda"
        if self.cuda:
            biggest = max(len(b) for b in batches)
            self.ring = [torch.empty((biggest, *array.shape[1:]), dtype=torch.uint8, pin_memory=True)
                         for _ in range(slots)]
            self.stream = torch.cuda.Stream(device)
            self.events: list = [None] * slots

    def gather(self, j: int, idx: np.ndarray):
        """Batch `j`'s rows: (array, None) on the CPU, (device tensor, its copy's event) on CUDA."""
        if not self.cuda:
            return take(self.array, idx), None
        slot = j % len(self.ring)
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # its previous copy to the device has finished
        host = self.ring[slot][:len(idx)]
        take(self.array, idx, out=host.numpy())
        with torch.cuda.stream(self.stream):
            dev = host.to(self.device, non_blocking=True)
            self.events[slot] = torch.cuda.Event()
            self.events[slot].record(self.stream)
        return dev, self.events[slot]

    def deliver(self, item, event) -> torch.Tensor:
        """The batch for the consumer's stream (which waits for the copy, not the host)."""
        if not self.cuda:
            return torch.from_numpy(item)
        torch.cuda.current_stream(self.device).wait_event(event)
        item.record_stream(torch.cuda.current_stream(self.device))
        return item


RESIDENT_SHARE = 0.1  # the largest array kept whole on a GPU, as a share of its memory


class _Resident:
    """The one array kept whole on a device (see the module's docstring)."""

    def __init__(self):
        self.ref, self.tensor, self.device = None, None, None

    def get(self, array: np.ndarray, device: torch.device, budget: int) -> torch.Tensor | None:
        """`array` on `device`, copied there the first time it is asked for; None when it takes
        more than `budget` bytes or half the device's free memory."""
        if self.ref is not None and self.ref() is array and self.device == device:
            return self.tensor  # (`device` as asked: torch.device("cuda") != the tensor's "cuda:0")
        self.release()
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else budget
        if array.nbytes > min(budget, free // 2):
            return None
        dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
        tensor = torch.empty(array.shape, dtype=dtype, device=device)
        step = max(1, (256 << 20) // max(1, array[:1].nbytes))  # 256 MB at a time from the map
        for i in range(0, len(array), step):
            tensor[i:i + step].copy_(torch.from_numpy(np.ascontiguousarray(array[i:i + step])))
        self.ref, self.tensor = weakref.ref(array, lambda _: self.release()), tensor
        self.device = device
        return tensor

    def release(self) -> None:
        self.ref, self.tensor, self.device = None, None, None


RESIDENT = _Resident()


def resident_budget(device: torch.device) -> int:
    """Bytes an array may take to be kept whole on `device`: a tenth of a GPU, none elsewhere."""
    if device.type != "cuda":
        return 0
    return int(RESIDENT_SHARE * torch.cuda.get_device_properties(device).total_memory)


def device_batches(array: np.ndarray, batches: Iterable[np.ndarray], device: torch.device,
                   prefetch: int = 3, resident: int | None = None) -> Iterator[torch.Tensor]:
    """Yield `array[idx]` for each index batch as a uint8 tensor on `device`, `prefetch` ahead
    (or gathered on the device from the array kept there whole: at most `resident` bytes,
    by default `resident_budget(device)`)."""
    batches = list(batches)
    if not batches:
        return
    if isinstance(array, Rows):  # gather straight from the underlying array
        batches = [array.index[b] for b in batches]
        array = array.array
    budget = resident_budget(device) if resident is None else resident
    whole = RESIDENT.get(array, device, budget) if budget and isinstance(array, np.ndarray) else None
    if whole is not None:
        for idx in batches:
            yield whole.index_select(0, torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(device))
        return
    staging = _Staging(array, batches, device, prefetch + 2)
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work():
        try:
            for j, idx in enumerate(batches):
                if stop.is_set():
                    return
                out.put(staging.gather(j, idx))
        except BaseException as err:  # handed to the consumer, raised there
            out.put((err, None))
        finally:
            out.put((_DONE, None))

    thread = threading.Thread(target=work, name="foldwise-loader", daemon=True)
    thread.start()
    try:
        while True:
            item, event = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield staging.deliver(item, event)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                out.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


class Rows:
    """Rows `index` of a (memory-mapped) array, indexable like an array of its own; the loader
    gathers from the underlying array directly."""

    def __init__(self, array, index):
        self.array, self.index = array, np.asarray(index)
        self.shape = (len(self.index), *array.shape[1:])

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.array[self.index[i]]


class Joined:
    """Several arrays (or `Rows`) one after another, indexable like one array: a fold's
    training images followed by the test images it trains on with pseudo-labels. The loader
    gathers each batch from the underlying arrays directly."""

    def __init__(self, *parts):
        self.parts = [p if isinstance(p, Rows) else Rows(p, np.arange(len(p))) for p in parts]
        if len({p.shape[1:] for p in self.parts}) > 1:
            raise ValueError(f"joined arrays differ in image shape: {[p.shape for p in self.parts]}")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), *self.parts[0].shape[1:])

    def __len__(self):
        return self.shape[0]

    def take(self, idx, out: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(idx)
        if out is None:
            out = np.empty((len(idx), *self.shape[1:]), dtype=self.parts[0].array.dtype)
        owner = np.searchsorted(self.starts, idx, side="right") - 1
        for j, part in enumerate(self.parts):
            mine = owner == j
            if mine.any():
                out[mine] = part.array[part.index[idx[mine] - self.starts[j]]]
        return out

    def __getitem__(self, i):
        rows = np.arange(len(self))[i]
        return self.take(rows) if rows.ndim else self.take(rows[None])[0]


def take(array, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`array[idx]` (into `out` when given) for an array or a `Joined`."""
    if isinstance(array, Joined):
        return array.take(idx, out)
    return np.take(array, idx, axis=0, out=out)


@torch.no_grad()
def predict_array(forward, images, batch_size: int, device: torch.device,
                  desc: str = "predict") -> np.ndarray:
    """The one inference loop (validation, test, export, foldwise-predict): `forward` maps a
    uint8 (n, H, W, C) device batch to outputs; they stay on the device until the end."""
    out, at = None, 0  # one tensor filled in place (small tensors kept per batch fragment the heap)
    with tqdm(total=len(images), desc=desc, unit="img", disable=None, leave=False) as bar:
        for x in device_batches(images, sequential(len(images), batch_size), device):
            y = forward(x)
            if out is None:
                out = torch.empty((len(images), *y.shape[1:]), dtype=torch.float64, device=y.device)
            out[at:at + len(y)] = y
            at += len(y)
            bar.update(len(x))
    return out.cpu().numpy() if out is not None else np.zeros((0, 0))
