"""Whether TensorRT can run here, on which GPU, and at which precision by default.

Only TensorRT 10 is accepted: TensorRT 11 removed the FP16 builder flag (its networks are
strongly typed), so a plan would need an FP16 copy of the model instead. The probe never
raises: whatever is missing or broken is its `problem`, and `auto` falls back to ONNX Runtime.
"""

from __future__ import annotations

from streamclf.backends.base import GpuProbe

TENSORRT_MAJOR = 10  # the API the TensorRT modules are written against; the gpu extra pins it


def probe_gpu(device: int = 0) -> GpuProbe:
    """Whether TensorRT can run here, and on what; never raises."""
    try:
        import tensorrt as trt
    except ImportError:
        return GpuProbe(problem="tensorrt is not installed (pip install 'streamclf[gpu]')")
    except Exception as exc:  # noqa: BLE001
        # a broken install raises OSError (libnvinfer) and others
        return GpuProbe(problem=f"tensorrt cannot be imported: {exc}")
    version = str(getattr(trt, "__version__", "unknown"))
    if version.split(".")[0] != str(TENSORRT_MAJOR):
        return GpuProbe(tensorrt_version=version, problem=(
            f"TensorRT {version} is not supported (streamclf needs TensorRT {TENSORRT_MAJOR}: "
            f"pip install 'tensorrt>={TENSORRT_MAJOR},<{TENSORRT_MAJOR + 1}')"))
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() <= device:
            return GpuProbe(tensorrt_version=version, problem="no CUDA device")
        gpu = cuda.Device(device)
        major, minor = gpu.compute_capability()
        name = gpu.name()
    except ImportError:
        return GpuProbe(tensorrt_version=version, problem="pycuda is not installed")
    except Exception as exc:  # noqa: BLE001
        # pycuda raises cuda.Error kinds, OSError without a driver
        return GpuProbe(tensorrt_version=version, problem=f"CUDA unavailable: {exc}")
    return GpuProbe(
        tensorrt_version=version, gpu_name=name, compute_capability=f"{major}.{minor}"
    )


def default_precision(compute_capability: str) -> str:
    """fp16 on GPUs with tensor cores (compute capability >= 7.0), else fp32.

    TensorRT 10.5 deprecated `platform_has_fast_fp16` in favour of asking CUDA, which is this.
    """
    major, minor = (int(part) for part in compute_capability.split("."))
    return "fp16" if (major, minor) >= (7, 0) else "fp32"
