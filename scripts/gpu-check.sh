#!/usr/bin/env bash
# The GPU checks of docs/engines.md ("TensorRT"), in one run on a machine with an NVIDIA GPU.
#
# Assumes: an NVIDIA driver (nvidia-smi) and python3 >= 3.11. Two ways to get the rest:
#   online (default): scripts/setup.sh dev,gpu installs everything, TensorRT 10 included
#     (whose libraries pip fetches from NVIDIA's package index), and builds pycuda from
#     source, which needs the CUDA toolkit (nvcc, cuda.h).
#   --wheels DIR: offline, no apt, no network. A venv (.venv-gpu) made with
#     --system-site-packages from python3 reuses the machine's numpy, onnxruntime, onnx and
#     pytest; each package of a wheel in DIR that the machine lacks is installed from DIR
#     with pip --no-index (pycuda prebuilt for this Python, structlog, pytools, …). The
#     project runs from this checkout, not installed.
# Without TensorRT the TensorRT tests skip with the reason, and the checks that need only CUDA
# and pycuda still run for real (tests/test_backends_cuda.py: each also runs on the stand-in).
# Prints one markdown table of results and writes it to gpu-check.md (or --out FILE); with
# TensorRT, also runs the engine benchmark (gpu-bench.md). Exit status 1 if a check failed.
#
# Usage: scripts/gpu-check.sh [--wheels DIR] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="" out="gpu-check.md"
while (($#)); do
  case "$1" in
    --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
    --out) out="${2:?--out needs a file}"; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v nvidia-smi >/dev/null; then
  echo "gpu-check: nvidia-smi not found: this is not a GPU machine" >&2
  exit 1
fi
gpu="$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -n1)"
echo "gpu-check: GPU $gpu"

if [[ -n "$wheels" ]]; then
  [[ -d "$wheels" ]] || { echo "gpu-check: --wheels: no folder '$wheels'" >&2; exit 2; }
  base="${PYTHON:-python3}"
  [[ -x .venv-gpu/bin/python ]] || "$base" -m venv --system-site-packages .venv-gpu
  # python3 may itself live in a venv, whose packages are not the "system" ones: add them too.
  site_dir="$(.venv-gpu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$base" -c 'import site, sys; sys.prefix != sys.base_prefix and print(*site.getsitepackages(), sep="\n")' \
    > "$site_dir/gpu-check-base.pth"
  # by name, so that what the machine already has (numpy, say) is kept, not shadowed
  names=()
  for wheel in "$wheels"/*.whl; do names+=("$(basename "$wheel" | cut -d- -f1)"); done
  .venv-gpu/bin/python -m pip install -q --no-index --find-links "$wheels" "${names[@]}"
  python=.venv-gpu/bin/python
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  scripts/setup.sh dev,gpu
  python=.venv/bin/python
fi

probe="$("$python" - <<'PY'
from streamclf.backends.trt_probe import probe_gpu

probe = probe_gpu()
if probe.usable:
    print(f"TensorRT {probe.tensorrt_version} on {probe.gpu_name} (compute capability "
          f"{probe.compute_capability})")
else:
    print(f"TensorRT not usable: {probe.problem}; its tests skip, the CUDA tests run")
try:
    import pycuda

    print(f"pycuda {pycuda.VERSION_TEXT}")
except ImportError as exc:
    print(f"pycuda not importable ({exc}): the CUDA tests skip")
PY
)"
echo "$probe" | sed 's/^/gpu-check: /'

junit="$(mktemp --suffix=.xml)"
started=$SECONDS
set +e
"$python" -m pytest -m gpu -rs -p no:cacheprovider -o junit_family=xunit2 --junitxml="$junit" \
  tests/test_backends_cuda.py tests/test_backends_tensorrt.py
status=$?
set -e
"$python" - "$junit" "$out" "$gpu" "$probe" "$((SECONDS - started))" <<'PY'
import sys
import xml.etree.ElementTree as ET

junit, out, gpu, probe, took_s = sys.argv[1:]


def cell(text: str) -> str:
    first = " ".join(text.split("\n")[0].split())
    return (first[:157] + "…" if len(first) > 160 else first).replace("|", "\\|")


rows = []
for case in ET.parse(junit).iter("testcase"):
    module, *classes = case.get("classname", "").removeprefix("tests.").split(".")
    name = "::".join([module.removeprefix("test_backends_"), *classes, case.get("name")])
    outcome, detail = "passed", ""
    for kind in ("failure", "error", "skipped"):
        found = case.find(kind)
        if found is not None:
            outcome = {"failure": "FAILED", "error": "ERROR"}.get(kind, "skipped")
            detail = found.get("message") or (found.text or "")
    rows.append(f"| `{name}` | {'ran' if outcome != 'skipped' else 'not run'} | {outcome} "
                f"| {cell(detail)} |")
counts = {k: sum(f"| {k} |" in r for r in rows) for k in ("passed", "FAILED", "ERROR", "skipped")}
lines = [
    f"GPU: {gpu}. " + "; ".join(probe.splitlines()) + ".",
    f"Command: `scripts/gpu-check.sh`; pytest took {took_s} s: "
    + ", ".join(f"{n} {k.lower()}" for k, n in counts.items()) + ".",
    "",
    "| check | ran | result | detail (skip reason or failure) |",
    "| --- | --- | --- | --- |",
    *rows,
]
text = "\n".join(lines) + "\n"
with open(out, "w") as f:
    f.write(text)
print(text)
PY
echo "gpu-check: table written to $out"

if "$python" -c 'import sys; from streamclf.backends.trt_probe import probe_gpu; sys.exit(not probe_gpu().usable)'; then
  "$python" - <<'PY'
import json

from streamclf.bench.engines import render_markdown, run_engine_bench

results = run_engine_bench("engines/fused_musicnn.onnx")
with open("gpu-bench.json", "w") as f:
    json.dump(results, f, indent=2, default=str)
with open("gpu-bench.md", "w") as f:
    f.write(render_markdown(results))
print(render_markdown(results))
PY
else
  echo "gpu-check: no engine benchmark: TensorRT is not usable here"
fi
exit $((status == 0 || status == 5 ? 0 : 1))
