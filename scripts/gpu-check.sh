#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install the gpu extra (tensorrt, pycuda), check that TensorRT
# sees the GPU, run the GPU tests (TensorRT parity, plan cache) and the engine benchmark.
# pycuda builds from source: the CUDA toolkit (nvcc, cuda.h) must be installed and on PATH.
# Usage: scripts/gpu-check.sh [MODEL]   (default MSD_musicnn); writes gpu-bench.md and .json.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-MSD_musicnn}"

if ! command -v nvidia-smi >/dev/null; then
  echo "gpu-check: nvidia-smi not found: this is not a GPU machine" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader

scripts/setup.sh dev,gpu
.venv/bin/python - <<'PY'
from streamclf.backends.tensorrt import probe_gpu

probe = probe_gpu()
print(f"tensorrt {probe.tensorrt_version}, GPU {probe.gpu_name}, compute capability {probe.compute_capability}")
raise SystemExit(0 if probe.usable else f"gpu-check: TensorRT cannot use the GPU: {probe.problem}")
PY

.venv/bin/python -m pytest -m gpu -v -rs tests/test_backends_tensorrt.py

.venv/bin/python - "$model" <<'PY'
import json
import sys

from streamclf.bench.engines import render_markdown, run_engine_bench

results = run_engine_bench(f"engines/{sys.argv[1]}.onnx")
with open("gpu-bench.json", "w") as f:
    json.dump(results, f, indent=2, default=str)
table = render_markdown(results)
with open("gpu-bench.md", "w") as f:
    f.write(table)
print(table)
PY
