"""An airbench-style network and recipe on one fold of Fashion-MNIST, outside the pipeline.

  python benchmarks/airbench_fold.py DATA PROJECT [--fold 0] [--runs 32,128,128@10 ...]
                                     [--out benchmarks/fashion-mnist-airbench-fold0.json]

Issue 35 asked whether a network that learns more per image than test_resnet (at its cost)
would lift one fold past 0.945 on 2 CPU cores. The fast-training recipe of airbench (Keller
Jordan, 2024: 94% on CIFAR-10 in about 10 epochs) is the strongest published answer, so this
script measures it on the same fold, images and test labels as `fashion_mnist.py run --fold`:
a 2x2 first convolution whitened from the training patches and frozen (its bias trained for
3 epochs), three groups of convolution - max-pool - BatchNorm (bias only) - GELU -
convolution - BatchNorm - GELU, a max-pool head scaled by 1/9; SGD with Nesterov momentum
0.85, airbench94's learning rate and weight decay (BatchNorm biases at 64x the rate), label
smoothing 0.2, a warm-up then a linear decay, batch 1024, the mirror on alternate epochs and
2-pixel reflected translations; scored with and without test-time views (mirror, then also
1-pixel shifts). A run is `WIDTHS@EPOCHS`.

DATA is `fashion_mnist.py write`'s folders; PROJECT is a `fashion_mnist.py run` project, whose
`data/folds.csv` gives the fold (the same split as the pipeline's figures). Beside the runs,
test_resnet at 56x56 (the smallimages recipe's network, batch 64, AdamW) is timed on random
batches, so each run's time is also given in that network's epochs (`test_resnet56_epochs`):
the pipeline's fold-0 figure at 8 epochs is the one to compare at equal time.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import log_loss
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smallnets_cost import rate, steps  # noqa: E402  (the cost benchmark's timing)

HYP = dict(lr=11.5, momentum=0.85, weight_decay=0.0153, bias_scaler=64.0, label_smoothing=0.2,
           batch=1024, translate=2, whiten_bias_epochs=3, warmup=0.23, final_lr=0.07)


class Norm(nn.BatchNorm2d):
    """BatchNorm with its scale fixed at one (airbench: only the bias learns)."""

    def __init__(self, channels: int):
        super().__init__(channels, momentum=0.4, eps=1e-12)
        self.weight.requires_grad = False


class Group(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), Norm(cout),
                         nn.GELU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False), Norm(cout), nn.GELU())


class AirNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        self.whiten = nn.Conv2d(in_chans, 2 * in_chans * 4, 2, bias=True)
        groups, cin = [], self.whiten.out_channels
        for w in widths:
            groups.append(Group(cin, w))
            cin = w
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(cin, num_classes, bias=False)

    def whiten_from(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """The first layer's filters: the eigenvectors of the 2x2 patches' covariance, scaled
        to unit variance, and their negatives; frozen."""
        patches = F.unfold(images, 2).transpose(1, 2).reshape(-1, images.shape[1] * 4)
        patches = patches - patches.mean(0)
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors / torch.sqrt(values + eps)).T.reshape(-1, images.shape[1], 2, 2)
        self.whiten.weight.data = torch.cat([filters, -filters])
        self.whiten.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return self.head(torch.amax(x, dim=(2, 3))) / 9


def load(data: Path, project: Path, fold: int) -> dict:
    """The fold's training and validation images (normalised by the training ones) and the test set."""
    folds = pd.read_csv(project / "data" / "folds.csv")
    classes = sorted({i.split("/")[0] for i in folds["id"]})
    read = lambda paths: torch.tensor(np.stack([np.array(Image.open(p).convert("L")) for p in paths]))
    images = read(data / "train" / i for i in folds["id"]).float().div(255).unsqueeze(1)
    test = pd.read_csv(data / "test_labels.csv")
    test_images = read(data / "test" / i for i in test["image"]).float().div(255).unsqueeze(1)
    train = torch.tensor((folds["fold"] != fold).to_numpy())
    mean, std = images[train].mean(), images[train].std()
    labels = torch.tensor(folds["label"].to_numpy())
    return {"train": ((images[train] - mean) / std, labels[train]),
            "valid": ((images[~train] - mean) / std, labels[~train]),
            "test": ((test_images - mean) / std, torch.tensor([classes.index(c) for c in test["label"]]))}


def optimizer(net: AirNet) -> torch.optim.SGD:
    """airbench94's SGD: the rate per summed loss over a kilostep's scale, decay as a fraction
    per step, BatchNorm and the whitening biases at `bias_scaler` times the rate."""
    scale = HYP["batch"] * (1 + 1 / (1 - HYP["momentum"]))
    lr, decay = HYP["lr"] / scale, HYP["weight_decay"] * HYP["batch"] / scale
    trained = [p for p in net.parameters() if p.requires_grad]
    biases, others = [p for p in trained if p.ndim == 1], [p for p in trained if p.ndim > 1]
    fast = lr * HYP["bias_scaler"]
    groups = [dict(params=biases, lr=fast, weight_decay=decay / fast),
              dict(params=others, lr=lr, weight_decay=decay / lr)]
    opt = torch.optim.SGD(groups, momentum=HYP["momentum"], nesterov=True)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def factor(step: int, total: int) -> float:
    """A linear warm-up from 0.2 to 1 over the first 23%, then a linear decay to 0.07."""
    f, w = step / total, HYP["warmup"]
    return 0.2 + 0.8 * f / w if f < w else 1 - (1 - HYP["final_lr"]) * (f - w) / (1 - w)


def augment(batch: torch.Tensor, epoch: int, generator: torch.Generator) -> torch.Tensor:
    """The mirror on odd epochs (on every other image in the first), then a translation of up
    to `translate` pixels each way per image, the border reflected."""
    if epoch % 2:
        batch = batch.flip(3)
    elif epoch == 0:
        mirror = torch.rand(len(batch), generator=generator) < 0.5
        batch = torch.where(mirror[:, None, None, None], batch.flip(3), batch)
    t, side = HYP["translate"], batch.shape[-1]
    padded = F.pad(batch, (t, t, t, t), mode="reflect")
    shifts = torch.randint(0, 2 * t + 1, (2, len(batch)), generator=generator)
    out = torch.empty_like(batch)
    for dx in range(2 * t + 1):
        for dy in range(2 * t + 1):
            chosen = (shifts[0] == dx) & (shifts[1] == dy)
            out[chosen] = padded[chosen, :, dy:dy + side, dx:dx + side]
    return out


def train(net: AirNet, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> float:
    """Trains in place; returns the seconds taken."""
    opt, generator = optimizer(net), torch.Generator().manual_seed(1)
    per_epoch = math.ceil(len(images) / HYP["batch"])
    total, step, start = epochs * per_epoch, 0, time.perf_counter()
    for epoch in range(epochs):
        net.train()
        net.whiten.bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        order = torch.randperm(len(images), generator=generator)
        for b in range(per_epoch):
            idx = order[b * HYP["batch"]:(b + 1) * HYP["batch"]]
            x = augment(images[idx], epoch, generator).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * factor(step, total)
            loss = F.cross_entropy(net(x), labels[idx], label_smoothing=HYP["label_smoothing"],
                                   reduction="none").sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        print(f"  epoch {epoch + 1}: {time.perf_counter() - start:.0f} s, loss {loss.item() / len(idx):.3f}",
              flush=True)
    return time.perf_counter() - start


def predict(net: AirNet, images: torch.Tensor) -> list[torch.Tensor]:
    """Probabilities for the three levels of views, each network pass made once: 0 none, 1 the
    mirror, 2 also shifts of one pixel (down-right and up-left, each mirrored, at half weight:
    airbench's level 2)."""
    net.eval()
    levels = [[], [], []]
    with torch.inference_mode():
        for b in range(0, len(images), 1000):
            x = images[b:b + 1000].contiguous(memory_format=torch.channels_last)
            plain = F.softmax(net(x), 1)
            mirrored = (plain + F.softmax(net(x.flip(3)), 1)) / 2
            padded, side = F.pad(x, (1, 1, 1, 1), mode="reflect"), x.shape[-1]
            shifted = [padded[:, :, d:d + side, d:d + side] for d in (0, 2)]
            shifted = [(F.softmax(net(v), 1) + F.softmax(net(v.flip(3)), 1)) / 2 for v in shifted]
            for level, probs in zip(levels, (plain, mirrored,
                                             (mirrored + 0.5 * (shifted[0] + shifted[1]) / 2) / 1.5)):
                level.append(probs)
    return [torch.cat(level) for level in levels]


def scores(net: AirNet, split: tuple, prefix: str) -> dict:
    images, labels = split
    row = {}
    for views, probs in enumerate(predict(net, images)):
        probs = probs.numpy()
        row[f"{prefix}_accuracy_views{views}"] = float((probs.argmax(1) == labels.numpy()).mean())
        row[f"{prefix}_logloss_views{views}"] = float(log_loss(labels.numpy(), probs, labels=range(10)))
    return row


def baseline_rate(seconds: float = 20.0) -> float:
    """test_resnet at 56x56's training images/s (batch 64, AdamW), on random batches."""
    step, _, _ = steps("test_resnet", 56, 64, {})
    return rate(step, 64, seconds)


def one_run(data: dict, spec: str, reference: float) -> dict:
    widths, epochs = spec.split("@")
    torch.manual_seed(0)
    net = AirNet(tuple(int(w) for w in widths.split(",")))
    net.whiten_from(data["train"][0][:5000])
    net = net.to(memory_format=torch.channels_last)
    seconds = train(net, *data["train"], int(epochs))
    images_per_s = len(data["train"][0]) * int(epochs) / seconds
    row = {"run": spec, "widths": widths, "epochs": int(epochs),
           "weights_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
           "train_minutes": round(seconds / 60, 2), "train_images_per_s": round(images_per_s, 1),
           "test_resnet56_images_per_s": round(reference, 1),
           "test_resnet56_epochs": round(seconds * reference / len(data["train"][0]), 2)}
    row.update(scores(net, data["valid"], "valid"))
    row.update(scores(net, data["test"], "test"))
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("project", type=Path)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--runs", nargs="+", default=["32,128,128@10"], help="WIDTHS@EPOCHS each")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("fashion-mnist-airbench-fold0.json"))
    args = ap.parse_args(argv)
    data = load(args.data_dir, args.project, args.fold)
    rows = []
    for spec in args.runs:
        reference = baseline_rate()  # beside each run, as the machine's speed drifts
        rows.append(one_run(data, spec, reference))
        print(json.dumps(rows[-1]), flush=True)
        record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.node()} ({torch.get_num_threads()} torch threads)",
                  "fold": args.fold, "torch": torch.__version__, "recipe": HYP, "rows": rows}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(pd.DataFrame(rows)[["run", "train_minutes", "test_resnet56_epochs", "valid_accuracy_views2",
                              "test_accuracy_views2", "test_logloss_views2"]].to_string(index=False))


if __name__ == "__main__":
    main()
