"""Does compiled training keep a network's own BatchNorm statistics as eager training does?

  python3 benchmarks/gpu_compile_bn.py      (repository root; OUT=DIR for compile-bn.jsonl)

Written for the second GPU run (docs/gpu.md): there `test_compiled_training_keeps_what_eager_
training_keeps` found a compiled fold's running variances 30-50% of their movement away from an
eager fold's, with every BatchNorm counter right. Rounding drift that AdamW amplifies, or a
fault? Two measurements, float32 throughout, one JSON row each:

- `step`: one network copied, the copy compiled; the same 3 batches through both in training
  mode with plain SGD, TF32 off. After each step: the largest difference in the outputs, the
  gradients and every BatchNorm layer's running statistics. A fault shows at step 1; rounding
  stays near 1e-6.
- `fold`: the toy fold of tests/test_gpu.py (2 epochs; AdamW in batches of 8 as the failed test
  had it, SGD in batches of 16 as the test has it since) trained eagerly and compiled, in both
  memory layouts, from the same start, with torch's defaults (cuDNN may pick non-deterministic
  kernels, TF32 convolutions) and deterministic (TF32 off). For each running statistic, how far
  apart two folds ended as a share of how far the eager fold moved it (largest and median over
  the layers), and the largest difference in their validation predictions. Eager against eager
  (the same layout again, and the other layout: other kernels, other rounding) is the noise
  floor the compiled fold is judged against. Its compiled folds go through foldwise's loop, so
  since `train/compiled.py` they train uncompiled wherever the `step` part shows a fault (the
  log says so); the rows of 2026-12-04 were measured before that check.
"""
import copy, dataclasses, json, os, sys, time
sys.path[:0] = ["src", "tests"]
import numpy as np, torch
from test_gpu import fit, net, DEVICE
from test_training import NO_AUGMENT

OUT = open(os.path.join(os.environ.get("OUT", "/tmp"), "compile-bn.jsonl"), "a")


def emit(row):
    print(json.dumps(row), flush=True)
    OUT.write(json.dumps(row) + "\n"); OUT.flush()


def deterministic(on):
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = on, False
    torch.backends.cudnn.allow_tf32 = not on
    torch.backends.cuda.matmul.allow_tf32 = False


def running(module):
    return {n: b.detach().clone() for n, b in module.named_buffers()
            if n.endswith(("running_mean", "running_var"))}


def largest(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def one_step_each(channels_last):
    deterministic(True)
    eager = net(3).to(DEVICE).train()
    twin = copy.deepcopy(eager)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    eager, twin = eager.to(memory_format=memory), twin.to(memory_format=memory)
    compiled = torch.compile(twin)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager, twin)]
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        x = torch.rand(8, 3, 16, 16, generator=gen).to(DEVICE).to(memory_format=memory)
        y = torch.randint(0, 2, (8,), generator=gen).to(DEVICE)
        outs = []
        for module, opt in zip((eager, compiled), opts):
            opt.zero_grad()
            out = module(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
            outs.append(out.detach())
        grads = max(float((p.grad - q.grad).abs().max())
                    for p, q in zip(eager.parameters(), twin.parameters()))
        emit({"part": "step", "channels_last": channels_last, "step": step,
              "outputs": float((outs[0] - outs[1]).abs().max()), "grads": grads,
              "running_stats": largest(running(eager), running(twin)),
              "counters_equal": all(int(a) == int(b) for (n, a), (_, b) in zip(
                  eager.named_buffers(), twin.named_buffers()) if n.endswith("tracked"))})


def apart(a, b, reference):
    shares = []
    for name, value in reference.state_dict.items():
        if name.endswith(("running_mean", "running_var")):
            start = 0.0 if name.endswith("mean") else 1.0
            moved = (value - start).abs().mean()
            shares.append(float((a.state_dict[name] - b.state_dict[name]).abs().mean() / moved))
    return {"largest_share": round(max(shares), 4), "median_share": round(float(np.median(shares)), 4),
            "val_preds": float(np.abs(a.val_preds - b.val_preds).max())}


RECIPES = {"adamw_batch8": {},  # the settings of the test that failed on the second GPU run
           "sgd_batch16": {"optimizer": "sgd", "batch_size": 16,
                           "augment": dataclasses.asdict(NO_AUGMENT)}}  # the test since


def folds(recipe, determinism):
    deterministic(determinism)
    t0 = time.time()
    base = {"amp": False, "epochs": 2, **RECIPES[recipe]}
    run = {(layout, comp): fit(net(3), {**base, "channels_last": layout, "compile": comp}, seed=3)
           for layout in (False, True) for comp in (False, True)}
    again = fit(net(3), {**base, "channels_last": False, "compile": False}, seed=3)
    eager = run[False, False]
    emit({"part": "fold", "recipe": recipe, "deterministic": determinism,
          "eager_vs_eager": apart(again, eager, eager),
          "eager_channels_last_vs_eager": apart(run[True, False], eager, eager),
          "compiled_vs_eager": apart(run[False, True], eager, eager),
          "compiled_vs_eager_channels_last": apart(run[True, True], run[True, False], eager),
          "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    emit({"torch": torch.__version__, "device": str(DEVICE),
          "name": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"})
    for layout in (False, True):
        one_step_each(layout)
    for recipe, determinism in (("adamw_batch8", False), ("sgd_batch16", True),
                                ("sgd_batch16", False), ("adamw_batch8", True)):
        folds(recipe, determinism)
