"""Inference engines: one interface (`Engine`), chosen once by `load_engine`.

Heavy runtimes are imported only by the engine that needs them: onnxruntime by `onnx`,
tensorrt and pycuda by `tensorrt`, torch by `torch`.
"""

from streamclf.backends.base import Engine, EngineInfo, new_batch_buffer, run_batched
from streamclf.backends.plans import default_plan_dir, list_plans
from streamclf.backends.runner import load_engine

__all__ = [
    "Engine",
    "EngineInfo",
    "default_plan_dir",
    "list_plans",
    "load_engine",
    "new_batch_buffer",
    "run_batched",
]
