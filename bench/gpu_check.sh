#!/usr/bin/env sh
# The GPU check of issue 16 in one run on a device machine (Python 3.12 with CUDA torch; no package index):
#   here:   make gpu-wheels                    (downloads the wheels below into .wheels/, about 23 MB)
#   there:  sh bench/gpu_check.sh              (run with .wheels carried; results under $OUT, else out/gpu)
# It installs the carried wheels, runs the `gpu` tests (the Ray one only where Ray is installed) and
# `bench/gpu.py --quick`, whose JSON is the last line of gpu-bench.json.
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --find-links .wheels .wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/supernet/test_gpu.py tests/workers/test_gpu_ray.py \
  > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?" >> "$OUT/gpu-tests.txt"
tail -n 15 "$OUT/gpu-tests.txt"
timeout 400 python3 bench/gpu.py --quick > "$OUT/gpu-bench.json" 2> "$OUT/gpu-bench.err"
echo "bench/gpu.py: exit $?"
tail -n 1 "$OUT/gpu-bench.json"
