"""What a network costs per image: training steps and predictions, side by side in one run.

  python benchmarks/smallnets_cost.py [--batch 64] [--seconds 8] [--threads 0]
                                      [--out benchmarks/smallnets-cost.json]

Times each network of `NETWORKS` at the image size it would be trained at on small grey images
(one channel): timm's test_resnet upscaled to 56x56 (the small-image recipe before
`foldwise.smallnets`), resnet10t at native 28x28, and the small-image family at native 28x28.
A training step is forward, cross-entropy, backward and AdamW's step on a random batch, in
channels_last; a prediction is a forward pass under `torch.inference_mode`. Each is measured
for `--seconds` after two warm-up steps, in alternation rounds so a machine that slows down
part-way slows every network alike; the ratios to test_resnet at 56x56 are the figures to
compare (absolute rates move by up to 3.5x between days on shared machines).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import foldwise.smallnets  # noqa: E402,F401  (registers the family in timm)

NETWORKS = [("test_resnet", 56, {}), ("resnet10t", 28, {}), ("small_resnet20", 28, {}),
            ("small_resnet32", 28, {}), ("small_resnet56", 28, {}), ("small_wrn16_4", 28, {}),
            # the stem halving the image (model_kwargs {stem_stride: 2}), wider where it pays
            ("small_resnet20", 28, {"stem_stride": 2}), ("small_resnet56", 28, {"stem_stride": 2}),
            ("small_resnet20", 28, {"stem_stride": 2, "width": 2}),
            ("small_wrn16_4", 28, {"stem_stride": 2})]
BASELINE = "test_resnet@56"


def steps(name: str, side: int, batch: int, kwargs: dict):
    """A training step and a prediction of `name` on one random batch, ready to time."""
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, in_chans=1, **kwargs).to(
        memory_format=torch.channels_last)
    x = torch.rand(batch, 1, side, side).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def train():
        net.train()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def predict():
        net.eval()
        with torch.inference_mode():
            net(x)
    return train, predict, sum(p.numel() for p in net.parameters())


def label(name: str, side: int, kwargs: dict) -> str:
    """test_resnet@56, small_resnet20@28 stem_stride=2 ..."""
    return " ".join([f"{name}@{side}", *(f"{k}={v}" for k, v in kwargs.items())])


def rate(step, batch: int, seconds: float) -> float:
    step(), step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - start)


def measure(batch: int, seconds: float, rounds: int = 2) -> list[dict]:
    nets = {label(n, s, kw): (steps(n, s, batch, kw), s) for n, s, kw in NETWORKS}
    totals = {key: {"train": 0.0, "predict": 0.0} for key in nets}
    for _ in range(rounds):  # alternate, so a drift in the machine's speed hits every network
        for key, ((train, predict, _), _) in nets.items():
            totals[key]["train"] += rate(train, batch, seconds / rounds) / rounds
            totals[key]["predict"] += rate(predict, batch, seconds / rounds) / rounds
    base = totals[BASELINE]
    return [{"network": key, "side": side, "weights_m": round(count / 1e6, 3),
             "train_images_per_s": round(totals[key]["train"], 1),
             "predict_images_per_s": round(totals[key]["predict"], 1),
             "train_cost_vs_test_resnet56": round(base["train"] / totals[key]["train"], 2),
             "predict_cost_vs_test_resnet56": round(base["predict"] / totals[key]["predict"], 2)}
            for key, ((_, _, count), side) in nets.items()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0, help="per network and kind of step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("smallnets-cost.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.batch, args.seconds)
    print(f"{'network':<44} {'weights':>8} {'train img/s':>12} {'cost':>6} {'predict img/s':>14} {'cost':>6}")
    for r in rows:
        print(f"{r['network']:<44} {r['weights_m']:>7.2f}M {r['train_images_per_s']:>12.0f} "
              f"{r['train_cost_vs_test_resnet56']:>5.2f}x {r['predict_images_per_s']:>14.0f} "
              f"{r['predict_cost_vs_test_resnet56']:>5.2f}x")
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} ({torch.get_num_threads()} torch threads)",
              "batch": args.batch, "torch": torch.__version__, "timm": timm.__version__, "rows": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
