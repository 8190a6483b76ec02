#!/bin/bash
# The GPU check, in one call of the device tool (torch+CUDA and CuPy there, no registry):
#   bash ../shared/gpu/prepare.sh            # here: puts array-api-compat/-strict wheels in .whl/
#   device run, carry [".whl"]: bash benchmarks/gpu_check.sh
# Runs the cupy and torch-cuda test selection, then the GPU benchmarks; output under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
ENCANALYZE_BACKENDS=cupy,torch-cuda timeout 420 python3 -m pytest -q -p no:cacheprovider \
    -k "cupy or cuda" tests 2>&1 | tail -25 | tee "$OUT/tests.txt"
for b in bench_minmax bench_histogram bench_sqnr; do
    timeout 240 python3 "benchmarks/$b.py" --device cuda 2>&1 | tee "$OUT/$b.txt"
done
