"""`python benchmarks/gpu_table.py OUT`: gpu_check.sh's results as one JSON and one table.

Reads OUT/bench-cuda-MODEL.json (benchmarks/bench.py) and, where there is one,
OUT/timm-MODEL.json (timm's benchmark.py --bench train); writes OUT/bench-cuda.json with, per
model, foldwise's train and predict images/s, their ratios to the bare loop and to timm's own
benchmark, the loader's rate against the model's step rate, preprocess and peak GPU memory;
prints the table in Markdown (docs/benchmarks.md takes it as it is)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ANCHORS = ("NVIDIA: 2,470 images/s resnet50 AMP training on one A100 with DALI; "
           "FFCV: about 3,000 images/s per A100 at 160-192 px")


def row(bench: dict, timm: dict | None) -> dict:
    timm_rate = (timm or {}).get("train_samples_per_sec")
    return {
        "model": bench.get("model"), "size": bench.get("size"), "batch": bench.get("batch"),
        "device": bench.get("device"), "train_images": bench.get("train_images"),
        "train_images_per_s": bench.get("train_images_per_s"),
        "train_ratio": bench.get("train_ratio"),
        "timm_train_images_per_s": timm_rate,
        "timm_ratio": bench["train_images_per_s"] / timm_rate if timm_rate and "train_images_per_s" in bench else None,
        "predict_images_per_s": bench.get("predict_images_per_s"),
        "predict_ratio": bench.get("predict_ratio"),
        "loader_to_model_ratio": bench.get("loader_to_model_ratio"),
        "preprocess_images_per_s": bench.get("preprocess_images_per_s"),
        "preprocess_ratio": bench.get("preprocess_ratio"),
        "peak_gpu_mib": bench.get("peak_gpu_mib"),
    }


def fmt(value, digits=0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main(out: Path) -> None:
    rows = []
    for path in sorted(out.glob("bench-cuda-*.json")):
        model = path.stem[len("bench-cuda-"):]
        timm_file = out / f"timm-{model}.json"
        timm = json.loads(timm_file.read_text()) if timm_file.is_file() else None
        rows.append(row(json.loads(path.read_text()), timm))
    (out / "bench-cuda.json").write_text(json.dumps({"rows": rows, "anchors": ANCHORS}, indent=2) + "\n")
    print("| model | train img/s | vs bare loop | vs timm benchmark.py | predict img/s | vs bare |"
          " loader / step | preprocess img/s (vs bare decode) | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} {r['size'][0] if r['size'] else ''} b{r['batch']} "
              f"| {fmt(r['train_images_per_s'])} | {fmt(r['train_ratio'], 2)} "
              f"| {fmt(r['timm_ratio'], 2)} ({fmt(r['timm_train_images_per_s'])}) "
              f"| {fmt(r['predict_images_per_s'])} | {fmt(r['predict_ratio'], 2)} "
              f"| {fmt(r['loader_to_model_ratio'], 1)} "
              f"| {fmt(r['preprocess_images_per_s'])} ({fmt(r['preprocess_ratio'], 2)}) "
              f"| {fmt(r['peak_gpu_mib'])} |")
    print(f"\nAnchors: {ANCHORS}.")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check"))
