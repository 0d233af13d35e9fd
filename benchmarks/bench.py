"""`make bench`: is foldwise's input pipeline fast enough to keep the device busy?

  python benchmarks/bench.py [--scale 0.02] [--model resnet10t] [--height 96] [--width 128]
                             [--batch 16] [--out benchmarks/bench-cpu.json] [--no-dvc | --noop-project DIR]

On a State-Farm-shaped synthetic set (scale 1.0 = 22,424 train + 79,726 test 640x480 JPEGs,
made by copying a few hundred rendered frames), one run measures, on the same cores and
threads, each of foldwise's paths against a bare loop doing the same work:

  preprocess   build_cache (decode, crop, resize, write the memory map, statistics) vs a bare
               full-size decode-and-resize loop on the same number of processes
  loader       images/s that device_batches delivers in a second pass over the cache (gather
               from the map, to the device, to float; on a GPU from the cache kept there
               whole) with no model, vs the model's own training step rate (>= 3x); the first
               pass, which on a GPU copies the cache there, too
  train        train_epoch (foldwise's loop: loader, device-side augmentation off, loss and
               outputs kept on the device) vs a bare timm loop on tensors already in memory,
               same model, size, batch, optimiser, AMP and channels_last (>= 0.95 CPU, 0.9 GPU)
  predict      foldwise's predict vs a bare inference loop on an in-memory tensor (>= 0.95)
  peak RSS     of one training epoch over 10% and 100% of the cache (the map is shared file
               pages; the process's own, anonymous, memory must stay flat)
  no-op repro  `dvc repro` on a reproduced tiny copy of the project, which must do nothing

Timings on shared machines vary by 20-30% between runs: the ratios, measured side by side,
are what to compare. Prints a table and writes every figure to --out as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import timm.optim
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from foldwise.data.cache import Decode, build_cache  # noqa: E402
from foldwise.train.loader import Rows, device_batches, open_cache, to_float  # noqa: E402
from foldwise.train.recipe import Recipe  # noqa: E402
from foldwise.data.sources import statefarm  # noqa: E402
from foldwise.tasks import Classification  # noqa: E402
from foldwise import params as P  # noqa: E402
from foldwise.train.loop import Inference, Parts, Settings, predict, train_epoch  # noqa: E402

import project  # noqa: E402  (benchmarks/project.py)

FULL = (22_424, 79_726)
NO_AUGMENT = {"hflip": False, "shift": 0, "scale": 0, "rotate": 0, "brightness": 0, "contrast": 0,
              "saturation": 0, "crop_area": 1.0}


def make_set(root: Path, scale: float, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """The State Farm layout at `scale`: 26 drivers, 10 classes; each file a copy of one of 270
    rendered frames (decoding costs the same as for distinct frames)."""
    n_train, n_test = max(260, round(FULL[0] * scale)), max(10, round(FULL[1] * scale))
    unique = root / "unique"
    statefarm.write_sample(unique, drivers=26, per_class=1, test_drivers=1, test_per_class=1,
                           seed=seed)
    table = pd.read_csv(unique / "driver_imgs_list.csv")
    frames = [unique / "imgs" / "train" / c / i for c, i in zip(table["classname"], table["img"])]
    labels = np.array([int(c[1:]) for c in table["classname"]])
    train, test, y = [], [], []
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for k in range(n_train):
        j = k % len(frames)
        dst = root / "train" / f"img_{k}.jpg"
        shutil.copyfile(frames[j], dst)
        train.append(str(dst))
        y.append(labels[j])
    for k in range(n_test):
        dst = root / "test" / f"img_{k}.jpg"
        shutil.copyfile(frames[k % len(frames)], dst)
        test.append(str(dst))
    return train, test, np.array(y)


def _bare_decode(args):
    path, height, width = args
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR))


def bench_preprocess(train, test, cache_dir: Path, height, width, workers) -> dict:
    t0 = time.perf_counter()
    build_cache(train, cache_dir / "train.npy", Decode(height, width, workers=workers))
    build_cache(test, cache_dir / "test.npy", Decode(height, width, workers=workers), stats=False)
    ours = (len(train) + len(test)) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        for _ in pool.imap(_bare_decode, [(p, height, width) for p in train + test], chunksize=32):
            pass
    bare = (len(train) + len(test)) / (time.perf_counter() - t0)
    return {"preprocess_images_per_s": ours, "bare_decode_images_per_s": bare,
            "preprocess_ratio": ours / bare}


def model_and_optimizer(name, channels_last, device, seed=0):
    torch.manual_seed(seed)
    net = timm.create_model(name, num_classes=10).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, timm.optim.create_optimizer_v2(net, opt="adamw", lr=1e-3, weight_decay=0.05)


def bare_train(name, x, y, batch, steps, channels_last, amp, device) -> float:
    """timm's model and optimiser on tensors already on the device: the ceiling."""
    net, opt = model_and_optimizer(name, channels_last, device)
    net.train()
    x = x.to(device).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    y = y.to(device)
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            t0 = time.perf_counter()
        xb, yb = x[(i * batch) % len(x):][:batch], y[(i * batch) % len(y):][:batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(xb)
        loss = torch.nn.functional.cross_entropy(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def settings(batch: int, aug: dict, channels_last: bool, amp: bool, device) -> Settings:
    """The project's train settings with this measurement's batch, augmentation and precision."""
    cfg = P.evolve(P.load(ROOT / "params.yaml").train,
                   {"batch_size": batch, "augment": aug, "channels_last": channels_last, "amp": amp})
    return Settings(cfg, 1e-3, 0, device)


def parts(net, opt, seed: int) -> Parts:
    """The loop's parts for a bare epoch: the network as its own module, no scheduler, a plain
    recipe."""
    return Parts(net, net, opt, None, Recipe(), torch.Generator().manual_seed(seed))


def ours_train(name, images, labels, batch, steps, channels_last, amp, device, aug) -> float:
    """foldwise's own epoch over the memory-mapped cache, cut to `steps` batches."""
    net, opt = model_and_optimizer(name, channels_last, device)
    task = Classification([f"c{i}" for i in range(10)])
    run = settings(batch, aug, channels_last, amp, device)
    # one warm-up epoch of 2 batches, then the timed one, both over the memory map
    warm, timed = Rows(images, np.arange(2 * batch)), Rows(images, np.arange(steps * batch) % len(images))
    train_epoch(parts(net, opt, 0), task, run, warm, task.targets(labels[warm.index]), "warm-up")
    _sync(device)
    t0 = time.perf_counter()
    n = train_epoch(parts(net, opt, 1), task, run, timed, task.targets(labels[timed.index]),
                    "bench").images
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_loader(images, batch, device, channels_last) -> tuple[float, float]:
    """Images/s of two passes over the cache in a random order, as two epochs see it: the
    first (on a GPU it includes copying the cache there whole, where it fits) and the next."""
    order = np.random.default_rng(0).permutation(len(images))
    batches = [np.sort(order[i:i + batch]) for i in range(0, len(order), batch)]
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        n = 0
        for x in device_batches(images, batches, device):
            to_float(x, channels_last)
            n += len(x)
        _sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def bench_predict(name, images, batch, channels_last, amp, device, limit, repeats) -> tuple[float, float]:
    """foldwise's predict over the memory map vs a bare loop over an in-memory tensor, each
    the best of `repeats` interleaved runs."""
    net, _ = model_and_optimizer(name, channels_last, device)
    net.eval()
    task = Classification([f"c{i}" for i in range(10)])
    sub = images[:limit]
    how = Inference(batch, device, channels_last, amp)
    predict(net, sub[:batch], task, how)  # warm-up
    x = to_float(torch.from_numpy(np.ascontiguousarray(sub)).to(device), channels_last)
    ours, bare = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(net, sub, task, how)
        ours.append(len(sub) / (time.perf_counter() - t0))
        with torch.no_grad():
            _sync(device)
            t0 = time.perf_counter()
            outs = []
            for i in range(0, len(x), batch):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    outs.append(net(x[i:i + batch]).float().softmax(1))
            torch.cat(outs).cpu()
            bare.append(len(sub) / (time.perf_counter() - t0))
    return max(ours), max(bare)


RSS_CHILD = """
import sys, threading, time, numpy as np, torch
sys.path.insert(0, {src!r}); sys.path.insert(0, {bench!r})
from bench import model_and_optimizer, parts, settings, NO_AUGMENT
from foldwise.train.loader import Rows, open_cache
from foldwise.tasks import Classification
from foldwise.train.loop import train_epoch
peak = [0, 0]
def anon():
    fields = dict(l.split(':', 1) for l in open('/proc/self/status'))
    return int(fields['RssAnon'].split()[0]), int(fields['VmHWM'].split()[0])
def watch():
    while True:
        a, h = anon(); peak[0] = max(peak[0], a); peak[1] = max(peak[1], h); time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
images = open_cache({cache!r})
rows = Rows(images, np.arange(int(len(images) * {fraction})))
labels = np.arange(len(rows)) % 10
net, opt = model_and_optimizer({model!r}, True, torch.device('cpu'))
task = Classification([f"c{{i}}" for i in range(10)])
train_epoch(parts(net, opt, 0), task, settings({batch}, NO_AUGMENT, True, False, torch.device('cpu')),
            rows, task.targets(labels), 'rss')
time.sleep(0.1)
print(peak[0], peak[1])
"""


def bench_rss(cache: Path, model, batch, fraction) -> tuple[float, float]:
    """Peak anonymous RSS and peak total RSS (MiB) of one training epoch over `fraction` of
    the cache, in a fresh process."""
    code = RSS_CHILD.format(src=str(ROOT / "src"), bench=str(Path(__file__).parent), cache=str(cache),
                            fraction=fraction, model=model, batch=batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    anon, hwm = (int(v) / 1024 for v in out.stdout.split()[-2:])
    return anon, hwm


def tiny_reproduced_copy(workdir: Path) -> Path:
    """A tiny copy of this project in `workdir`, after one `dvc repro`."""
    def tiny(params):
        params["folds"] = [0, 1]
        params["sample"]["statefarm"].update(drivers=4, per_class=1, test_drivers=1, test_per_class=1)
        params["preprocess"].update(height=32, width=48)
        params["train"].update(epochs=1, batch_size=8)

    project.run("dvc repro", project.copy(workdir, tiny))
    return workdir


def bench_noop_repro(workdir: Path) -> float:
    """Seconds of `dvc repro` that finds nothing to do, in the reproduced project `workdir`."""
    t0 = time.perf_counter()
    out = project.run("dvc repro", workdir).stdout
    seconds = time.perf_counter() - t0
    if "Running stage" in out:
        raise RuntimeError(f"the second dvc repro was not a no-op:\n{out}")
    return seconds


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    head, _, rest = __doc__.strip().partition("\n\n")
    ap = argparse.ArgumentParser(description=head, epilog=rest,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.02, help="1.0 = State Farm's 102,150 images")
    ap.add_argument("--model", default="resnet10t", help="the timm model trained and timed")
    ap.add_argument("--height", type=int, default=96, help="image height in the cache")
    ap.add_argument("--width", type=int, default=128, help="image width in the cache")
    ap.add_argument("--batch", type=int, default=16, help="training batch size")
    ap.add_argument("--steps", type=int, default=24, help="timed training steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best counts)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="decoding processes (default: every core)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="bfloat16 autocast (CUDA only)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last memory format for the network's inputs")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/bench-DEVICE.json)")
    ap.add_argument("--no-dvc", action="store_true", help="skip the no-op dvc repro timing")
    ap.add_argument("--noop-project", default=None, metavar="DIR",
                    help="time the no-op dvc repro in this reproduced project (default: a tiny "
                         "copy of this one, reproduced first)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = args.amp and device.type == "cuda"
    cl = args.channels_last
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "scale": args.scale,
           "model": args.model, "size": [args.height, args.width], "batch": args.batch,
           "amp": amp, "channels_last": cl}
    out = Path(args.out or ROOT / "benchmarks" / f"bench-{device.type}.json")
    try:
        measure(args, res, device, amp, cl)
    finally:  # what was measured is kept, also when a later phase fails
        out.write_text(json.dumps(res, indent=2) + "\n")
    print_table(res)
    print(f"written to {out}")
    return res


def measure(args, res: dict, device, amp: bool, cl: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="foldwise-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        train, test, labels = make_set(tmp / "set", args.scale)
        res.update(train_images=len(train), test_images=len(test),
                   make_set_s=time.perf_counter() - t0)
        res.update(bench_preprocess(train, test, tmp, args.height, args.width, args.workers))
        images = open_cache(tmp / "train.npy")
        test_images = open_cache(tmp / "test.npy")

        res["loader_first_pass_images_per_s"], res["loader_images_per_s"] = bench_loader(
            images, args.batch, device, cl)
        n = min(len(images), 8 * args.batch)
        x = torch.from_numpy(np.ascontiguousarray(images[:n])).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(labels[:n]).long()
        augmented = {**NO_AUGMENT, "shift": 0.06, "scale": 0.08, "rotate": 5, "brightness": 0.15,
                     "contrast": 0.15}
        rates = {"bare": [], "ours": [], "aug": []}
        for _ in range(args.repeats):  # interleaved, best of each: machine noise is +-20%
            rates["bare"].append(bare_train(args.model, x, y, args.batch, args.steps, cl, amp, device))
            rates["ours"].append(ours_train(args.model, images, labels, args.batch, args.steps, cl,
                                            amp, device, NO_AUGMENT))
            rates["aug"].append(ours_train(args.model, images, labels, args.batch, args.steps, cl,
                                           amp, device, augmented))
        bare, ours, aug = (max(rates[k]) for k in ("bare", "ours", "aug"))
        if device.type == "cuda":
            res["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        res.update(bare_train_images_per_s=bare, train_images_per_s=ours, train_ratio=ours / bare,
                   train_augmented_images_per_s=aug, augment_cost_ratio=aug / ours,
                   loader_to_model_ratio=res["loader_images_per_s"] / bare)
        p_ours, p_bare = bench_predict(args.model, test_images, args.batch * 2, cl, amp, device,
                                       limit=min(len(test_images), 1000), repeats=args.repeats)
        res.update(predict_images_per_s=p_ours, bare_predict_images_per_s=p_bare,
                   predict_ratio=p_ours / p_bare)
        for frac, label in ((0.1, "10pct"), (1.0, "100pct")):
            anon, total = bench_rss(tmp / "train.npy", args.model, args.batch, frac)
            res[f"peak_rss_anon_mib_{label}"] = anon
            res[f"peak_rss_total_mib_{label}"] = total
        res["cache_mib"] = (tmp / "train.npy").stat().st_size / 2**20
        if args.noop_project or not args.no_dvc:
            work = Path(args.noop_project) if args.noop_project else tiny_reproduced_copy(tmp / "project")
            res["noop_repro_s"] = bench_noop_repro(work)


def print_table(r: dict) -> None:
    rows = [
        ("preprocess", f"{r['preprocess_images_per_s']:.0f}", f"bare decode {r['bare_decode_images_per_s']:.0f}",
         f"preprocess_ratio {r['preprocess_ratio']:.2f}"),
        ("loader", f"{r['loader_images_per_s']:.0f}", f"model step {r['bare_train_images_per_s']:.0f}",
         f"loader_to_model_ratio {r['loader_to_model_ratio']:.1f} (>= 3)"),
        ("train", f"{r['train_images_per_s']:.0f}", f"bare timm {r['bare_train_images_per_s']:.0f}",
         f"train_ratio {r['train_ratio']:.2f} (>= 0.95 CPU, 0.9 GPU)"),
        ("train + augment", f"{r['train_augmented_images_per_s']:.0f}", f"no augment {r['train_images_per_s']:.0f}",
         f"augment_cost_ratio {r['augment_cost_ratio']:.2f}"),
        ("predict", f"{r['predict_images_per_s']:.0f}", f"bare {r['bare_predict_images_per_s']:.0f}",
         f"predict_ratio {r['predict_ratio']:.2f} (>= 0.95)"),
        ("peak RSS 10%", f"{r['peak_rss_anon_mib_10pct']:.0f} MiB anon",
         f"{r['peak_rss_total_mib_10pct']:.0f} MiB total", ""),
        ("peak RSS 100%", f"{r['peak_rss_anon_mib_100pct']:.0f} MiB anon",
         f"{r['peak_rss_total_mib_100pct']:.0f} MiB total", f"cache {r['cache_mib']:.0f} MiB"),
    ]
    if "noop_repro_s" in r:
        rows.append(("no-op dvc repro", f"{r['noop_repro_s']:.1f} s", "", ""))
    print(f"{r['device']}, {r['torch_threads']} threads; {r['model']} {r['size'][0]}x{r['size'][1]} "
          f"batch {r['batch']}, amp {r['amp']}, channels_last {r['channels_last']}; "
          f"{r['train_images']} train + {r['test_images']} test images (scale {r['scale']:g})")
    print(f"{'path':<16} {'images/s':>14}  {'baseline':<22} ratio")
    for name, a, b, c in rows:
        print(f"{name:<16} {a:>14}  {b:<22} {c}")


if __name__ == "__main__":
    main()
