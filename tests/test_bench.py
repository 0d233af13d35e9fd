"""`make bench` keeps working: a tiny run writes every figure, and its no-op `dvc repro` (timed
in the session's reference project) did nothing (the script raises otherwise). Speeds are the
script's to print, not a test's to time."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_at_a_tiny_scale_writes_every_figure(tmp_path, reference_project):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench.py"), "--scale", "0.002",
                          "--steps", "3", "--repeats", "1", "--out", str(out),
                          "--noop-project", str(reference_project)], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["train_images"] == 260 and r["test_images"] == 159
    ratios = {k: v for k, v in r.items() if k.endswith("_ratio")}
    assert {"preprocess_ratio", "train_ratio", "predict_ratio", "loader_to_model_ratio"} <= set(ratios)
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()), ratios
    for key in ("loader_images_per_s", "peak_rss_anon_mib_10pct", "peak_rss_anon_mib_100pct",
                "noop_repro_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert "train_ratio" in res.stdout and "written to" in res.stdout
