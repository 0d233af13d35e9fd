#!/usr/bin/env bash
# `make gpu-check OUT=DIR`: the first minutes on a lent GPU machine, in one command.
#
# That machine has its own Python (torch, torchvision, timm, numpy, pandas, scikit-learn,
# pytest) but no DVC, no MLflow and no registry, so this runs the library from src/ on that
# Python as it is. In order, each step time-boxed (typically 6 minutes in all, at most 10.5):
#   1. the `gpu` tests (tests/test_gpu.py)                         -> OUT/gpu-tests.txt, .xml
#   2. the bench on CUDA: resnet50 and efficientnet_b0 at 224 on 5% of the State Farm shape
#      (1,121 + 3,986 images, preprocessed on the host's cores; 25% did not finish in 3.5
#      minutes on 2026-12-04); batch 128, bf16, channels_last
#                                                                   -> OUT/bench-cuda-MODEL.json
#   3. timm's own benchmark.py --bench train on the same models, when `make peers` has put a
#      copy in .peers/timm/ (carried to the machine; never committed) -> OUT/timm-MODEL.json
#   4. the table: train and predict images/s, ratios to the bare loop and to timm, the loader
#      against the step rate, preprocess, peak GPU memory    -> OUT/bench-cuda.json, OUT/table.md
# MODELS, SIZE, BATCH, SCALE override the workload (a dry run on a CPU: see docs/gpu.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
size=${SIZE:-224}
batch=${BATCH:-128}
read -r -a models <<< "${MODELS:-resnet50 efficientnet_b0}"
read -r -a scales <<< "${SCALE:-0.05 0.05}"
log() { echo "gpu-check $(date +%T): $*" | tee -a "$out/log.txt"; }

log "python $($py -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__, "cuda", torch.cuda.is_available())')"
log "1/4 gpu tests"
timeout 200 $py -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
    --junitxml="$out/gpu-tests.xml" > "$out/gpu-tests.txt" 2>&1
log "gpu tests: exit $? ($(tail -n 1 "$out/gpu-tests.txt"))"
for i in "${!models[@]}"; do
    model=${models[$i]}
    scale=${scales[$i]:-${scales[-1]}}
    log "2/4 bench $model at $size, batch $batch, scale $scale"
    timeout 150 $py benchmarks/bench.py --model "$model" --height "$size" --width "$size" \
        --batch "$batch" --scale "$scale" --repeats 2 --no-dvc \
        --out "$out/bench-cuda-$model.json" > "$out/bench-$model.txt" 2>&1
    log "bench $model: exit $?"
    if [ -f .peers/timm/benchmark.py ]; then
        log "3/4 timm benchmark.py $model"
        timeout 60 $py .peers/timm/benchmark.py --bench train --model "$model" --img-size "$size" \
            -b "$batch" --amp --amp-dtype bfloat16 --channels-last --num-bench-iter 30 \
            --results-file "$out/timm-$model.json" --results-format json > "$out/timm-$model.txt" 2>&1
        log "timm $model: exit $?"
    else
        log "3/4 skipped: no .peers/timm/benchmark.py (make peers, then carry .peers)"
    fi
done
log "4/4 table"
$py benchmarks/gpu_table.py "$out" | tee "$out/table.md"
