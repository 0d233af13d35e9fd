"""Speed of the two hot paths, as ratios against a baseline measured in the same run.

  python benchmarks/speed.py [DATA_ROOT]      (default: the sample in params.yaml)

1. preprocess: images/s of foldwise's reduced-size decode vs full-size decode then resize.
2. training: images/s of one training step of params' model with channels_last vs without.
Timings on shared machines vary by 20-30% between runs; the ratios are what to compare.
"""
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from foldwise import params as P  # noqa: E402
from foldwise.data.cache import load_image  # noqa: E402
from foldwise.data.sources import get_source  # noqa: E402


def full_decode(path, height, width):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR))


def rate(fn, items, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def train_rate(model_name, h, w, batch, channels_last, steps=6):
    torch.manual_seed(0)
    net = timm.create_model(model_name, num_classes=10)
    x = torch.rand(batch, 3, h, w)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main():
    params = P.load()
    root = sys.argv[1] if len(sys.argv) > 1 else params.data.root
    data = get_source(params.data.source).read(root)
    h, w = params.preprocess.height, params.preprocess.width
    paths = list(data.train["path"][:200])
    base = rate(lambda p: full_decode(p, h, w), paths)
    ours = rate(lambda p: load_image(p, h, w), paths)
    print(f"decode+resize to {h}x{w}, 1 process: full decode {base:.0f} images/s, "
          f"reduced-size decode {ours:.0f} images/s, ratio {ours / base:.2f}")
    model, batch = params.train.model, params.train.batch_size
    torch.set_num_threads(torch.get_num_threads())
    plain = train_rate(model, h, w, batch, channels_last=False)
    cl = train_rate(model, h, w, batch, channels_last=True)
    print(f"train step {model} {h}x{w} batch {batch}, {torch.get_num_threads()} threads: "
          f"contiguous {plain:.0f} images/s, channels_last {cl:.0f} images/s, ratio {cl / plain:.2f}")


if __name__ == "__main__":
    main()
