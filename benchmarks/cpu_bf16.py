"""Should a fold train in bfloat16 on this CPU? Speed and trust, side by side.

  python benchmarks/cpu_bf16.py [--repeats 30] [--rounds 3] [--out benchmarks/cpu-bf16.json]

`train.amp` (bfloat16 autocast) runs on CUDA only (`distributed.bf16_native`). CPUs with AMX
tiles or AVX-512 bf16 (`lscpu`: amx_bf16, avx512_bf16) have bfloat16 kernels too; this script
measures both sides of turning them on:

1. Speed: training steps of test_resnet at 56x56 (one channel, batch 64, AdamW, channels_last)
   and small_resnet20 at 28x28, float32 and bfloat16 in alternation; prints images/s and the
   ratio.
2. Trust: the same forward and backward pass, from the same weights on the same batch,
   `--repeats` times, while two busy processes compete for the cores (as the loader thread,
   DVC or an MLflow server do in a real run), in `--rounds` rounds; counts the passes whose
   gradients differ from the first pass's and those with a NaN. resnet10t on 16x16 images,
   batch 8 (the suite's toy fold: its later stages work on 1x1 maps). float32 must give the
   same gradients every time; so must bfloat16 before it may train anyone's fold.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import timm  # noqa: E402

import foldwise.models  # noqa: E402,F401  (registers the small_resnet family with timm)


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


def gradients(net0, x, y, amp: bool) -> torch.Tensor:
    net = copy.deepcopy(net0)
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(x)
    torch.nn.functional.cross_entropy(out.float(), y).backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def trust(repeats: int, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    net0 = timm.create_model("resnet10t", num_classes=2).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (8,))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    rows = []
    try:
        for amp in (False, True):
            for r in range(rounds):
                grads = [gradients(net0, x, y, amp) for _ in range(repeats)]
                rows.append({"precision": "bfloat16" if amp else "float32", "round": r,
                             "passes": repeats,
                             "differing": sum(not torch.equal(g, grads[0]) for g in grads),
                             "with_nan": sum(bool(g.isnan().any()) for g in grads)})
    finally:
        for p in busy:
            p.kill()
    return rows


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/cpu-bf16.json"))
    args = ap.parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_bf16_flags": cpu_flags(),
              "threads": torch.get_num_threads(), "speed": speed(),
              "trust": trust(args.repeats, args.rounds)}
    for row in report["speed"]:
        print(f"{row['network']:>20}: float32 {row['float32_images_per_s']} images/s, "
              f"bfloat16 {row['bfloat16_images_per_s']} ({row['ratio']}x)")
    for row in report["trust"]:
        print(f"{row['precision']:>9} round {row['round']}: {row['differing']} of {row['passes']} "
              f"passes differ from the first, {row['with_nan']} with a NaN")
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
