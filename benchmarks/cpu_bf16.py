"""Should a fold train in bfloat16 on this CPU? Speed and trust, side by side.

  python benchmarks/cpu_bf16.py [--repeats 12] [--out benchmarks/cpu-bf16.json]

`train.amp` (bfloat16 autocast) runs on CUDA only (`distributed.bf16_native`). CPUs with AMX
tiles or AVX-512 bf16 (`lscpu`: amx_bf16, avx512_bf16) have bfloat16 kernels too; this script
measures both sides of turning them on:

1. Speed: training steps of test_resnet at 56x56 (one channel, batch 64, AdamW, channels_last)
   and small_resnet20 at 28x28, float32 and bfloat16 in alternation; prints images/s and the
   ratio.
2. Trust: the suite's toy fold (resnet10t on 16x16 images, batches of 8, two epochs) trained
   `--repeats` times through foldwise's own loop with the same seed, in float32 and in
   bfloat16; counts the folds whose validation predictions differ from the first one's, and
   those stopped by a NaN loss. float32 gives the same predictions every time (the suite's
   resume and reproducibility tests rely on it); bfloat16 must too before it may train
   anyone's fold.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import timm  # noqa: E402

import foldwise.models  # noqa: E402,F401  (registers the small_resnet family with timm)
sys.path.insert(0, str(ROOT / "tests"))
from helpers import toy_data  # noqa: E402


def step_rate(name: str, size: int, amp: bool, steps: int = 15) -> float:
    """Training images/s of `steps` AdamW steps after three warm-up steps."""
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(64, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * 64 / (time.perf_counter() - start)


def speed() -> list[dict]:
    rows = []
    for name, size in (("test_resnet", 56), ("small_resnet20", 28)):
        rates = {False: [], True: []}
        for amp in (False, True, False, True):
            rates[amp].append(step_rate(name, size, amp))
        fp32, bf16 = max(rates[False]), max(rates[True])
        rows.append({"network": f"{name} {size}x{size}", "float32_images_per_s": round(fp32),
                     "bfloat16_images_per_s": round(bf16), "ratio": round(bf16 / fp32, 2)})
    return rows


def toy_fold(amp: bool):
    """One toy fold through foldwise's own loop (the suite's: resnet10t, 16x16 images, 32
    training rows in batches of 8, 2 epochs), in bfloat16 where `amp`: its validation
    predictions, or None where it stopped on a NaN loss."""
    from foldwise import params as P
    from foldwise.errors import InputError
    from foldwise.models import Normalised
    from foldwise.tasks import Classification
    from foldwise.train import distributed
    from foldwise.train.loop import Around, FitData, Settings, train_fold
    x, y = toy_data()  # the suite's toy images
    cfg = P.evolve(P.load(ROOT / "params.yaml").train,
                   {"epochs": 2, "batch_size": 8, "warmup_epochs": 0, "patience": 10,
                    "ema": {"decay": 0.0}, "augment": {"hflip": False, "rotate": 0}})
    native, distributed.bf16_native = distributed.bf16_native, lambda device: amp
    try:
        torch.manual_seed(3)
        net = Normalised(timm.create_model("resnet10t", num_classes=2), [0.5] * 3, [0.25] * 3)
        return train_fold(net, Classification(["a", "b"]), Settings(cfg, 3e-3, 3, torch.device("cpu")),
                          FitData(x[:32], y[:32], x[32:], y[32:], x[:5]), Around()).val_preds
    except InputError:  # "training diverged": every epoch's loss NaN
        return None
    finally:
        distributed.bf16_native = native


def trust(repeats: int) -> list[dict]:
    rows = []
    for amp in (False, True):
        preds = [toy_fold(amp) for _ in range(repeats)]
        first = next((p for p in preds if p is not None), None)
        rows.append({"precision": "bfloat16" if amp else "float32", "folds": repeats,
                     "differing": sum(p is None or first is None or not (p == first).all()
                                      for p in preds[1:]),
                     "diverged": sum(p is None for p in preds),
                     "largest_difference": max(float(abs(p - first).max()) for p in preds
                                               if p is not None and first is not None)})
    return rows


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/cpu-bf16.json"))
    args = ap.parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_bf16_flags": cpu_flags(),
              "threads": torch.get_num_threads(), "speed": speed(),
              "trust": trust(args.repeats)}
    for row in report["speed"]:
        print(f"{row['network']:>20}: float32 {row['float32_images_per_s']} images/s, "
              f"bfloat16 {row['bfloat16_images_per_s']} ({row['ratio']}x)")
    for row in report["trust"]:
        print(f"{row['precision']:>9}: {row['differing']} of {row['folds'] - 1} folds differ from the "
              f"first (by up to {row['largest_difference']:.3g}), {row['diverged']} stopped on a NaN loss")
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
