"""Which training switch makes a fold's kept weights disagree with its kept predictions.

  python3 benchmarks/gpu_compile_diagnosis.py      (repository root; VARIANTS=full,no_compile,...)

Each variant trains the toy fold of tests/test_gpu.py (3 epochs) with the full recipe (AMP,
channels_last, torch.compile, EMA, mixup) less one switch, then predicts the validation rows
with the kept state_dict loaded into a fresh network, eagerly, on the CPU and on the device.
Prints and appends to $OUT/diag.jsonl (or /tmp) one JSON row per variant: the largest
differences from the fold's own validation and test predictions, the kept weights (raw/EMA)
and the validation loss per epoch. Written for the first GPU run (docs/gpu.md, 2026-12-04).
"""
import json, os, sys, time
sys.path[:0] = ["src", "tests"]
import numpy as np, torch
from test_gpu import fit, net, TASK, DEVICE
from helpers import toy_data
from foldwise.train.loop import Inference, predict

FULL = {"amp": True, "channels_last": True, "compile": True, "epochs": 3,
        "ema": {"decay": 0.9, "warmup": True},
        "mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}}
OFF_EMA = {"ema": {"decay": 0.0, "warmup": True}}
OFF_MIX = {"mixup": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5}}
VARIANTS = {
    "full": {}, "no_compile": {"compile": False}, "no_ema": OFF_EMA,
    "compile_only": {"amp": False, "channels_last": False, **OFF_EMA, **OFF_MIX},
    "no_channels_last": {"channels_last": False}, "no_amp": {"amp": False},
    "no_mixup": OFF_MIX, "compile_amp_only": {"channels_last": False, **OFF_EMA, **OFF_MIX},
}
names = os.environ.get("VARIANTS", ",".join(VARIANTS)).split(",")
out = open(os.path.join(os.environ.get("OUT", "/tmp"), "diag.jsonl"), "a")
x, _ = toy_data(n=64)
cpu_dev = torch.device("cpu")
for name in names:
    t0 = time.time()
    changes = {**FULL, **VARIANTS[name]}
    r = fit(net(), changes)
    cpu = net(); cpu.load_state_dict(r.state_dict)
    cpu_val = predict(cpu, x[48:], TASK, Inference(16, cpu_dev))
    cpu_test = predict(cpu, x[:8], TASK, Inference(16, cpu_dev))
    g = net().to(DEVICE); g.load_state_dict(r.state_dict)
    g_val = predict(g, x[48:], TASK, Inference(16, DEVICE))
    h = r.history
    row = {"variant": name, "weights": r.weights, "best_epoch": int(r.best_epoch),
           "cpu_vs_val": float(np.abs(cpu_val - r.val_preds).max()),
           "gpu_eager_vs_val": float(np.abs(g_val - r.val_preds).max()),
           "cpu_vs_gpu_eager": float(np.abs(cpu_val - g_val).max()),
           "cpu_vs_test": float(np.abs(cpu_test - r.test_preds).max()),
           "val_loss": [round(float(v), 4) for v in h[f"val_{TASK.monitor}"]],
           "ema_val_loss": [round(float(v), 4) for v in h.get(f"ema_val_{TASK.monitor}", [])],
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(row), flush=True)
    out.write(json.dumps(row) + "\n"); out.flush()
