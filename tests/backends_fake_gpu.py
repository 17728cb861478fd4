"""Stand-ins for the `tensorrt` and `pycuda.driver` modules, for machines without a GPU.

No GPU and no TensorRT exist here, so without these the TensorRT engine's plumbing (plan
cache use, rejected plans, buffers, batch slicing, close) would never execute before it
reaches a GPU machine. They implement only the calls streamclf makes, as the TensorRT 10 and
pycuda documentation describe them; "device memory" is host memory and execution is ONNX
Runtime. The real thing is tested by tests/test_backends_tensorrt.py on a GPU.
"""

from __future__ import annotations

import itertools
import json
import types

import numpy as np
import onnxruntime as ort

PLAN_MAGIC = b"FAKEPLAN"
_memory: dict[int, np.ndarray] = {}
_addresses = itertools.count(0x1000, 0x1000)


def make_tensorrt(*, builds: list[dict]) -> types.ModuleType:
    """A `tensorrt` module; every plan built is appended to `builds`."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Network:
        onnx_path = ""

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            try:
                ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001
                self.errors.append(str(exc).splitlines()[0])
                return False
            self.network.onnx_path = path
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
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            assert flags == 0, "TensorRT 10 networks are explicit-batch; flags must be 0"
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> memoryview:
            build = {
                "onnx": network.onnx_path,
                "flags": sorted(config.flags),
                "profiles": config.profiles,
                "pools": config.pools,
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

        def _entry(self, name: str) -> tuple:
            return next(entry for entry in self.io if entry[0] == name)

        def get_tensor_mode(self, name: str) -> str:
            return self._entry(name)[1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) else -1 for d in self._entry(name)[2])

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
            assert 1 <= shape[0] <= self.engine.max_batch, "shape outside the optimisation profile"
            self.input_shape = tuple(shape)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert _CONTEXT_STACK, "no CUDA context current"
            (name, _, _), n = self.engine.io[0], self.input_shape[0]
            x = _memory[self.addresses[name]].view(np.float32)[: int(np.prod(self.input_shape))]
            outputs = self.engine.session.run(None, {name: x.reshape(self.input_shape)})
            for (out_name, _, _), value in zip(self.engine.io[1:], outputs, strict=True):
                flat = value.astype(np.float32).ravel()
                _memory[self.addresses[out_name]].view(np.float32)[: flat.size] = flat
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
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: np.float32
    return trt


_CONTEXT_STACK: list[object] = []


def make_pycuda_driver(
    *, gpu_name: str = "Fake GPU", compute_capability: tuple[int, int] = (8, 9)
) -> types.ModuleType:
    """A `pycuda.driver` module with one device; device memory lives in `_memory`."""
    cuda = types.ModuleType("pycuda.driver")

    class Context:
        detached = False

        def push(self) -> None:
            _CONTEXT_STACK.append(self)

        def pop(self) -> None:
            assert _CONTEXT_STACK.pop() is self

        def detach(self) -> None:
            self.detached = True

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, ordinal: int) -> None:
            assert ordinal == 0

        def name(self) -> str:
            return gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return compute_capability

        def retain_primary_context(self) -> Context:
            context = Context()
            cuda.contexts.append(context)
            return context

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            assert _CONTEXT_STACK, "mem_alloc without a current context"
            self.address = next(_addresses)
            _memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            assert _CONTEXT_STACK, "free without a current context"
            cuda.freed.append(_memory.pop(self.address).nbytes)

    class Stream:
        handle = 7

        def __init__(self) -> None:
            assert _CONTEXT_STACK, "Stream without a current context"

        def synchronize(self) -> None:
            pass

    def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        _memory[dest.address][: raw.size] = raw

    def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
        raw = dest.view(np.uint8).reshape(-1)
        raw[:] = _memory[src.address][: raw.size]

    cuda.init = lambda: None
    cuda.Device, cuda.Stream, cuda.mem_alloc = Device, Stream, DeviceAllocation
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    cuda.contexts, cuda.freed = [], []
    return cuda
