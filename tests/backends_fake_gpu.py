"""Stand-ins for the `tensorrt` and `pycuda.driver` modules, strict where CUDA is strict.

No GPU and no TensorRT exist here, so without these the TensorRT engine's plumbing (plan
cache use, rejected plans, buffers, batch slicing, release) would never execute before it
reaches a GPU machine. They implement only the calls streamclf makes, as the TensorRT 10 API
and pycuda's source (src/cpp/cuda.hpp) define them; "device memory" is host memory and
execution is ONNX Runtime.

The CUDA side fails the way pycuda does, per thread: each thread has its own context stack;
allocating, copying or creating a stream with no current context raises LogicError ("invalid
device context"); freeing works when the owning context is current or on the thread that
retained it, warns and skips on any other thread, and skips silently once the context is
detached; `detach()` releases the primary context when it is current or on its own thread, and
on any other thread does nothing. What was skipped is recorded in `cuda.leaked`.
tests/test_backends_cuda.py runs the same checks against real pycuda on a GPU, so each of these
points is also proven against the real thing where one is lent.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import types
import warnings

import numpy as np
import onnx
import onnxruntime as ort

PLAN_MAGIC = b"FAKEPLAN"
_ONNX_DTYPES = {1: "FLOAT", 10: "HALF", 6: "INT32", 7: "INT64", 9: "BOOL"}
_HEAVY_OPS = {"Conv": "CONVOLUTION", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY"}


def make_pycuda_driver(
    *,
    gpu_name: str = "Fake GPU",
    compute_capability: tuple[int, int] = (8, 9),
    total_bytes: int = 8 << 30,
) -> types.ModuleType:
    """A `pycuda.driver` module with one device; its memory lives in `cuda.memory`.

    Knobs: `cuda.fail_allocation` (the n-th `mem_alloc` from now, 1-based, raises
    MemoryError as an exhausted GPU does). Records: `primary_retains`, `freed` (device bytes),
    `host_freed`, `leaked` ((kind, bytes) pycuda skipped), `streams_destroyed`,
    `freed_while_running` (device buffers freed while a fake kernel used them).
    """
    cuda = types.ModuleType("pycuda.driver")
    local = threading.local()
    addresses = itertools.count(0x1000, 0x1000)

    class Error(Exception):
        """pycuda._driver.Error"""

    class LogicError(Error):
        """pycuda._driver.LogicError: CUDA_ERROR_INVALID_CONTEXT and most other codes."""

    class MemoryError(Error):
        """pycuda._driver.MemoryError: CUDA_ERROR_OUT_OF_MEMORY."""

    def stack() -> list:
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    def current():
        contexts = stack()
        while contexts and not contexts[-1].valid:  # pycuda drops dead contexts from the top
            contexts.pop()
        return contexts[-1] if contexts else None

    def require_context(call: str):
        context = current()
        if context is None:
            raise LogicError(f"{call} failed: invalid device context")
        return context

    def may_clean_up(context, kind: str) -> bool:
        """pycuda's scoped_context_activation inside CUDAPP_CATCH_CLEANUP_ON_DEAD_CONTEXT."""
        if not context.valid:
            return False  # "in dead context": skipped without a word
        if current() is context or context.thread == threading.get_ident():
            return True
        warnings.warn(f"{kind} in out-of-thread context could not be cleaned up", UserWarning,
                      stacklevel=3)
        return False

    class Context:
        def __init__(self) -> None:
            self.valid, self.thread = True, threading.get_ident()

        def push(self) -> None:
            stack().append(self)

        @staticmethod
        def pop() -> None:
            if current() is None:
                raise LogicError("context::pop failed: invalid device context - "
                                 "cannot pop non-current context")
            stack().pop()

        @staticmethod
        def get_current():
            return current()

        def detach(self) -> None:
            if not self.valid:
                raise LogicError("context::detach failed: invalid device context - "
                                 "cannot detach from invalid context")
            if current() is self:
                cuda.primary_retains -= 1
                stack().pop()
            elif self.thread == threading.get_ident():
                cuda.primary_retains -= 1
            self.valid = False  # on any other thread pycuda releases nothing

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, ordinal: int) -> None:
            if ordinal != 0:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")

        def name(self) -> str:
            return gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return compute_capability

        def retain_primary_context(self) -> Context:
            cuda.primary_retains += 1
            return Context()

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.context = require_context("cuMemAlloc")
            if cuda.fail_allocation is not None:
                cuda.fail_allocation -= 1
                if cuda.fail_allocation == 0:
                    cuda.fail_allocation = None
                    raise MemoryError("cuMemAlloc failed: out of memory")
            self.address, self.nbytes, self.valid = next(addresses), nbytes, True
            cuda.memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            if not self.valid:
                raise LogicError("device_allocation::free failed: invalid resource handle")
            self.valid = False
            if self.address in cuda.running:
                cuda.freed_while_running.append(self.address)
            if may_clean_up(self.context, "device_allocation"):
                cuda.freed.append(cuda.memory.pop(self.address).nbytes)
            else:
                cuda.leaked.append(("device_allocation", self.nbytes))

        def __del__(self) -> None:
            if getattr(self, "valid", False):
                self.free()

    class HostAllocation:
        """pycuda.driver.HostAllocation: the `.base` of a page-locked array."""

        def __init__(self, shape, dtype) -> None:
            self.context = require_context("cuMemHostAlloc")
            self._data = np.zeros(shape, dtype)
            self.__array_interface__ = self._data.__array_interface__
            self.valid = True

        def free(self) -> None:
            if not self.valid:
                raise LogicError("pagelocked_host_allocation::free failed: invalid resource handle")
            self.valid = False
            if may_clean_up(self.context, "pagelocked_host_allocation"):
                cuda.host_freed.append(self._data.nbytes)
            else:
                cuda.leaked.append(("pagelocked_host_allocation", self._data.nbytes))

        def __del__(self) -> None:
            if getattr(self, "valid", False):
                self.free()

    class Stream:
        def __init__(self) -> None:
            self.context = require_context("cuStreamCreate")
            self.handle = next(addresses)

        def synchronize(self) -> None:
            pass

        def __del__(self) -> None:
            if not hasattr(self, "context"):
                return
            if may_clean_up(self.context, "stream"):
                cuda.streams_destroyed += 1
            else:
                cuda.leaked.append(("stream", 0))

    def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream=None) -> None:
        require_context("cuMemcpyHtoDAsync")
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        cuda.memory[int(dest)][: raw.size] = raw

    def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream=None) -> None:
        require_context("cuMemcpyDtoHAsync")
        raw = dest.view(np.uint8).reshape(-1)
        raw[:] = cuda.memory[int(src)][: raw.size]

    def mem_get_info() -> tuple[int, int]:
        require_context("cuMemGetInfo")
        return total_bytes - sum(m.nbytes for m in cuda.memory.values()), total_bytes

    cuda.Error, cuda.LogicError, cuda.MemoryError = Error, LogicError, MemoryError
    cuda.init = lambda: None
    cuda.Context, cuda.Device, cuda.Stream = Context, Device, Stream
    cuda.mem_alloc = DeviceAllocation
    cuda.pagelocked_empty = lambda shape, dtype: np.asarray(HostAllocation(shape, dtype))
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    cuda.mem_get_info = mem_get_info
    cuda.memory, cuda.running, cuda.fail_allocation = {}, set(), None
    cuda.primary_retains, cuda.streams_destroyed = 0, 0
    cuda.freed, cuda.host_freed, cuda.leaked, cuda.freed_while_running = [], [], [], []
    return cuda


def onnx_layers(path: str) -> list[dict]:
    """The ONNX graph as TensorRT-like layers: type, inputs, outputs (name, dtype)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    dtypes = {v.name: v.type.tensor_type.elem_type
              for v in (*graph.value_info, *graph.output, *graph.input)}
    dtypes.update({t.name: t.data_type for t in graph.initializer})
    return [
        {
            "name": node.name,
            "type": _HEAVY_OPS.get(node.op_type, node.op_type.upper()),
            "op": node.op_type,
            "inputs": [n for n in node.input if n],
            "outputs": [(n, _ONNX_DTYPES.get(dtypes.get(n, 1), "FLOAT")) for n in node.output],
        }
        for node in graph.node
    ]


def make_tensorrt(
    *,
    builds: list[dict],
    cuda: types.ModuleType,
    version: str = "10.99.0-fake",
    fp16_flag: bool = True,
    dynamic_output_dims: bool = False,
    refuse_profile: bool = False,
    refuse_batch_above: int | None = None,
    build_s: float = 0.0,
    execute_s: float = 0.0,
    nan_tags: bool = False,
) -> types.ModuleType:
    """A `tensorrt` module; every plan built is appended to `builds`.

    `fp16_flag=False` with a version 11 is TensorRT 11 (no BuilderFlag.FP16);
    `dynamic_output_dims` reports -1 for every output dimension until the context's input
    shape is set; `refuse_profile` makes add_optimization_profile return -1;
    `refuse_batch_above` makes set_input_shape refuse larger batches; `build_s` and
    `trt.execute_s` make a build or an execution that slow (`cuda.running` holds the buffers
    a running execution uses); `nan_tags` makes every execution write NaN tags.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.execute_s = version, execute_s  # execute_s may be changed later
    trt.float32, trt.float16 = "DataType.FLOAT", "DataType.HALF"

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Tensor:
        def __init__(self, name: str, dtype: str) -> None:
            self.name, self.dtype = name, f"DataType.{dtype}"

    class Layer:
        def __init__(self, spec: dict, tensors: dict[str, Tensor]) -> None:
            self.name, self.type = spec["name"], f"LayerType.{spec['type']}"
            self._inputs = [tensors.get(n) for n in spec["inputs"]]
            self._outputs = [tensors[n] for n, _ in spec["outputs"]]
            self.num_inputs, self.num_outputs = len(self._inputs), len(self._outputs)
            self.precision, self.output_types = None, {}

        def get_input(self, i: int) -> Tensor | None:
            return self._inputs[i]  # None for initializers, as for TensorRT's weights

        def get_output(self, i: int) -> Tensor:
            return self._outputs[i]

        def set_output_type(self, i: int, dtype: str) -> None:
            self.output_types[i] = dtype

    class Network:
        def __init__(self) -> None:
            self.onnx_path, self.layers = "", []

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            try:
                ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                specs = onnx_layers(path)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(str(exc).splitlines()[0])
                return False
            tensors = {n: Tensor(n, t) for spec in specs for n, t in spec["outputs"]}
            self.network.onnx_path = path
            self.network.layers = [Layer(spec, tensors) for spec in specs]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        def set_shape(self, name: str, min, opt, max) -> None:
            self.shapes = {"name": name, "min": list(min), "opt": list(opt), "max": list(max)}

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.pools = set(), [], {}

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            if refuse_profile:
                return -1
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            if flags != 0:
                raise ValueError("TensorRT 10 networks are explicit-batch; flags must be 0")
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> memoryview:
            time.sleep(build_s)
            fp32 = [
                layer.name for layer in network.layers
                if layer.precision == trt.float32
                and all(layer.output_types.get(i) == trt.float32 for i in range(layer.num_outputs))
            ]
            build = {
                "onnx": network.onnx_path,
                "flags": sorted(config.flags),
                "profiles": config.profiles,
                "pools": config.pools,
                "fp32_layers": fp32,
            }
            builds.append(build)
            return memoryview(PLAN_MAGIC + json.dumps(build).encode())

    class Engine:
        def __init__(self, build: dict) -> None:
            self.session = ort.InferenceSession(build["onnx"], providers=["CPUExecutionProvider"])
            self.max_batch = build["profiles"][0]["max"][0]
            self.io = [(i.name, "INPUT", i.shape) for i in self.session.get_inputs()]
            self.io += [(o.name, "OUTPUT", o.shape) for o in self.session.get_outputs()]

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def entry(self, name: str) -> tuple:
            return next(entry for entry in self.io if entry[0] == name)

        def get_tensor_mode(self, name: str) -> str:
            return self.entry(name)[1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            _, mode, shape = self.entry(name)
            fixed = mode == "INPUT" or not dynamic_output_dims
            return tuple(d if isinstance(d, int) and fixed else -1 for d in shape)

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.addresses, self.input_shape = engine, {}, None

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if not 1 <= shape[0] <= self.engine.max_batch:
                return False  # outside the optimisation profile
            if refuse_batch_above is not None and shape[0] > refuse_batch_above:
                return False
            self.input_shape = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            _, mode, shape = self.engine.entry(name)
            if self.input_shape is None:
                return self.engine.get_tensor_shape(name)
            if mode == "INPUT":
                return self.input_shape
            return (self.input_shape[0], *shape[1:])

        def execute_async_v3(self, stream_handle: int) -> bool:
            (name, _, _), n = self.engine.io[0], self.input_shape[0]
            cuda.running.update(self.addresses.values())
            try:
                time.sleep(trt.execute_s)
                size = int(np.prod(self.input_shape))
                x = cuda.memory[self.addresses[name]].view(np.float32)[:size]
                outputs = self.engine.session.run(None, {name: x.reshape(self.input_shape)})
                for (out_name, _, _), value in zip(self.engine.io[1:], outputs, strict=True):
                    flat = value.astype(np.float32).ravel()
                    if nan_tags and out_name == "tags":
                        flat[:] = np.nan
                    cuda.memory[self.addresses[out_name]].view(np.float32)[: flat.size] = flat
            finally:
                cuda.running.clear()
            return n > 0

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            data = bytes(plan)
            if not data.startswith(PLAN_MAGIC):
                return None
            try:
                return Engine(json.loads(data[len(PLAN_MAGIC) :]))
            except ValueError:
                return None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    flags = {"OBEY_PRECISION_CONSTRAINTS": "OBEY_PRECISION_CONSTRAINTS"}
    if fp16_flag:
        flags["FP16"] = "FP16"
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: np.float32
    return trt
