#!/bin/bash
# The GPU check, in one call of the device tool (torch+CUDA and CuPy there, no registry):
#   bash ../shared/gpu/prepare.sh            # here: puts array-api-compat/-strict wheels in .whl/
#   device run, carry [".whl"]: bash benchmarks/gpu_check.sh
# Runs the sync check of update_stats, the cupy and torch-cuda test selection, then the GPU
# benchmarks; each step's output also goes to a file under $OUT. bench_formats compares with
# torchao on the device: give prepare.sh "torchao" too (its wheel in .whl/), or its row fails.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)" \
    | tee -a "$OUT/gpu.txt"
timeout 60 python3 benchmarks/sync_check.py 2>&1 | tee "$OUT/sync.txt"
ENCANALYZE_BACKENDS=cupy,torch-cuda timeout 240 python3 -m pytest -q -p no:cacheprovider \
    -rf --tb=short --durations=10 -k "cupy or cuda" tests 2>&1 | tee "$OUT/tests.txt" | tail -60
for b in bench_minmax:45 bench_histogram:60 bench_sqnr:90 bench_formats:90; do
    timeout "${b#*:}" python3 "benchmarks/${b%:*}.py" --device cuda 2>&1 | tee "$OUT/${b%:*}.txt"
done
