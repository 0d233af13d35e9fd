"""This machine's speed today, as the suite's times are read against it: a bare timm loop
(resnet10t, 1x28x28 images, batch 128, AdamW), in training images per second. A normal day
for the 2-core machine is about 1,000 images/s; a suite time divided by (1000 / this figure)
is its normal-day equivalent.

usage: python benchmarks/machine_speed.py [--seconds 20] [--json OUT]"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import timm
import torch


def images_per_second(seconds: float, batch: int = 128) -> float:
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    seen, start = 0, None
    for step in range(10_000):
        if step == 3:  # after the warm-up steps
            start, seen = time.perf_counter(), 0
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += batch
        if start is not None and time.perf_counter() - start > seconds:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", help="append the reading to this JSON list")
    args = ap.parse_args()
    rate = images_per_second(args.seconds)
    reading = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{platform.node()} ({torch.get_num_threads()} threads)",
               "images_per_s": round(rate, 1), "normal_day_factor": round(1000.0 / rate, 2)}
    print(json.dumps(reading))
    if args.json:
        try:
            with open(args.json) as f:
                readings = json.load(f)
        except FileNotFoundError:
            readings = []
        with open(args.json, "w") as f:
            json.dump(readings + [reading], f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
