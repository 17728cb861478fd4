"""pycuda's per-thread context rules, and `CudaContext` built on them, on the stand-in and on a GPU.

Every test runs twice: against the stand-in driver of tests/backends_fake_gpu.py, and against
the real `pycuda.driver` where pycuda and a GPU are present (marked `gpu`; skipped with the
reason elsewhere). The assertions are the same, so where a GPU is lent this shows that the
stand-in the TensorRT plumbing tests rely on fails where CUDA fails: no context on a thread
that did not push one, a free on the wrong thread skipped with a warning, a free after the
detach skipped silently, a detach on another thread releasing nothing.
"""

from __future__ import annotations

import importlib
import threading
import types
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from backends_fake_gpu import make_pycuda_driver

from streamclf.backends.cuda import CudaContext
from streamclf.errors import EngineError


def _real_driver() -> tuple[types.ModuleType | None, str]:
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() < 1:
            return None, "no CUDA device"
    except ImportError:
        return None, "pycuda is not installed"
    except Exception as exc:  # noqa: BLE001 - no driver: OSError, pycuda's own errors
        return None, f"CUDA unavailable: {exc}"
    return cuda, ""


REAL, REAL_PROBLEM = _real_driver()


@pytest.fixture(params=["stand-in", pytest.param("pycuda", marks=pytest.mark.gpu)])
def cuda(request: pytest.FixtureRequest) -> types.ModuleType:
    if request.param == "stand-in":
        return make_pycuda_driver()
    if REAL is None:
        pytest.skip(f"real pycuda on a GPU: {REAL_PROBLEM}")
    return REAL


def sizes(cuda: types.ModuleType) -> tuple[int, int]:
    """(block, slack) bytes: a block mem_get_info shows plainly on any GPU, and what else may
    move the free memory meanwhile (the driver's own use); the stand-in counts exactly."""
    return (256 << 20, 32 << 20) if cuda is REAL else (1 << 20, 0)


def primary_active(cuda: types.ModuleType) -> bool:
    """Whether device 0's primary context is retained by anyone (CUDA's driver API says)."""
    if cuda is not REAL:
        return cuda.primary_retains > 0
    driver = _cuda_bindings()
    _, device = driver.cuDeviceGet(0)
    _, _, active = driver.cuDevicePrimaryCtxGetState(device)
    return bool(active)


def _cuda_bindings() -> types.ModuleType:
    try:
        return importlib.import_module("cuda.bindings.driver")
    except ImportError:
        pytest.skip("cuda-python (cuda.bindings) is needed to read the primary context's state")


def on_thread(work: Callable[[], object]) -> object:
    """Run `work` on a new thread (one that has never touched CUDA); re-raise what it raised."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def outcome(call: Callable[[], object]) -> str:
    """What `call` raised on a new thread, as 'Type: message', or 'no error'."""
    try:
        on_thread(call)
    except Exception as exc:  # noqa: BLE001 - the outcome is the result
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def free_bytes(context: CudaContext, cuda: types.ModuleType) -> int:
    with context.current():
        return cuda.mem_get_info()[0]


class TestPerThreadContexts:
    """A context is current only on the thread that pushed it."""

    def test_a_new_thread_has_no_context(self, cuda: types.ModuleType) -> None:
        owner = CudaContext(cuda, 0)
        with owner.current():
            device = cuda.mem_alloc(1024)
        calls = {
            "mem_alloc": lambda: cuda.mem_alloc(1024),
            "Stream": cuda.Stream,
            "pagelocked_empty": lambda: cuda.pagelocked_empty((4,), np.float32),
            "memcpy_htod_async": lambda: cuda.memcpy_htod_async(device, np.zeros(4, np.float32)),
        }
        outcomes = {name: outcome(call) for name, call in calls.items()}
        assert all(o.startswith("LogicError") and "invalid device context" in o
                   for o in outcomes.values()), outcomes
        owner.release(device.free)
        assert not primary_active(cuda)

    def test_pop_with_nothing_pushed_fails(self, cuda: types.ModuleType) -> None:
        with pytest.raises(cuda.LogicError):
            on_thread(cuda.Context.pop)

    def test_pushed_on_another_thread_everything_works(self, cuda: types.ModuleType) -> None:
        owner = CudaContext(cuda, 0)
        data = np.arange(1024, dtype=np.float32)

        def round_trip() -> np.ndarray:
            with owner.current():
                stream = cuda.Stream()
                host = cuda.pagelocked_empty(data.shape, data.dtype)
                device = cuda.mem_alloc(data.nbytes)
                cuda.memcpy_htod_async(device, data, stream)
                cuda.memcpy_dtoh_async(host, device, stream)
                stream.synchronize()
                result = host.copy()
                device.free()
                host.base.free()
                del stream
            assert cuda.Context.get_current() is None
            return result

        np.testing.assert_array_equal(on_thread(round_trip), data)
        owner.release(lambda: None)
        assert not primary_active(cuda)


class TestWhatPycudaSkips:
    """The failures that are silent or only a warning: memory stays allocated."""

    def test_free_on_another_thread_without_push_warns_and_leaks(
        self, cuda: types.ModuleType
    ) -> None:
        owner, (block_bytes, slack) = CudaContext(cuda, 0), sizes(cuda)
        before = free_bytes(owner, cuda)
        with owner.current():
            block = cuda.mem_alloc(block_bytes)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            on_thread(block.free)
        messages = [str(w.message) for w in caught]
        assert any("out-of-thread context could not be cleaned up" in m for m in messages)
        assert free_bytes(owner, cuda) <= before - block_bytes + slack  # still allocated
        owner.release(lambda: None)  # the context's reset takes the memory with it
        assert not primary_active(cuda)

    def test_free_after_detach_is_skipped_silently(self, cuda: types.ModuleType) -> None:
        """As when the engine detached first: TensorRT's runtime keeps the primary context
        alive (here `keeper`), so the skipped memory stays allocated."""
        keeper, owner = CudaContext(cuda, 0), CudaContext(cuda, 0)
        block_bytes, slack = sizes(cuda)
        before = free_bytes(keeper, cuda)
        with owner.current():
            block = cuda.mem_alloc(block_bytes)
        owner.release(lambda: None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            block.free()
        assert free_bytes(keeper, cuda) <= before - block_bytes + slack
        keeper.release(lambda: None)
        assert not primary_active(cuda)

    def test_detach_on_another_thread_releases_nothing(self, cuda: types.ModuleType) -> None:
        """What CudaContext.release avoids by detaching while the context is current."""
        context = cuda.Device(0).retain_primary_context()
        on_thread(context.detach)
        try:
            assert primary_active(cuda)  # still retained, and no handle left to release it
        finally:
            if cuda is REAL:
                driver = _cuda_bindings()
                driver.cuDevicePrimaryCtxRelease(driver.cuDeviceGet(0)[1])
            else:
                cuda.primary_retains -= 1
        assert not primary_active(cuda)


class TestCudaContext:
    """The helper the TensorRT engine goes through: any thread, everything given back."""

    def test_allocate_run_release_on_three_threads(self, cuda: types.ModuleType) -> None:
        keeper = CudaContext(cuda, 0)  # stands for TensorRT's runtime: no reset hides a leak
        before, (block_bytes, slack) = free_bytes(keeper, cuda), sizes(cuda)
        data = np.arange(block_bytes // 4, dtype=np.float32)
        held: dict = {}

        def allocate() -> CudaContext:
            gpu = CudaContext(cuda, 0)
            with gpu.current():
                held.update(stream=cuda.Stream(), device=cuda.mem_alloc(data.nbytes),
                            host=cuda.pagelocked_empty(data.shape, data.dtype))
            return gpu

        def run(gpu: CudaContext) -> np.ndarray:
            with gpu.current():
                cuda.memcpy_htod_async(held["device"], data, held["stream"])
                cuda.memcpy_dtoh_async(held["host"], held["device"], held["stream"])
                held["stream"].synchronize()
            return held["host"][-4:].copy()

        def free() -> None:
            held["stream"].synchronize()
            held.pop("device").free()
            held.pop("host").base.free()
            held.pop("stream")

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gpu = on_thread(allocate)
            assert free_bytes(keeper, cuda) <= before - block_bytes + slack
            np.testing.assert_array_equal(on_thread(lambda: run(gpu)), data[-4:])
            on_thread(lambda: gpu.release(free))
            assert cuda.Context.get_current() is None
        assert free_bytes(keeper, cuda) >= before - slack  # freed, not left to a reset
        keeper.release(lambda: None)
        assert not primary_active(cuda)

    def test_release_is_idempotent_and_final(self, cuda: types.ModuleType) -> None:
        gpu = CudaContext(cuda, 0)
        freed: list[bool] = []
        gpu.release(lambda: freed.append(cuda.Context.get_current() is not None))
        gpu.release(lambda: freed.append(False))
        assert freed == [True] and not primary_active(cuda)
        with pytest.raises(EngineError, match="already released"), gpu.current():
            pass


@pytest.mark.gpu
class TestDriverBelowPycuda:
    """The CUDA driver facts the stand-in's errors come from, read with cuda-python, so they are
    checked on a GPU even where pycuda is not installed."""

    @pytest.fixture
    def driver(self) -> tuple[types.ModuleType, object]:
        try:
            driver = importlib.import_module("cuda.bindings.driver")
        except ImportError:
            pytest.skip("cuda-python (cuda.bindings) is not installed")
        if driver.cuInit(0)[0] != driver.CUresult.CUDA_SUCCESS:
            pytest.skip(f"no CUDA driver or device: {driver.cuInit(0)[0].name}")
        return driver, driver.cuDeviceGet(0)[1]

    def test_a_new_thread_has_no_context(self, driver: tuple) -> None:
        """pycuda raises these as LogicError('… failed: invalid device context')."""
        cu, _ = driver
        calls = {
            "cuMemAlloc": lambda: cu.cuMemAlloc(1024),
            "cuStreamCreate": lambda: cu.cuStreamCreate(0),
            "cuMemHostAlloc": lambda: cu.cuMemHostAlloc(1024, 0),
            "cuMemGetInfo": cu.cuMemGetInfo,
        }
        codes = {name: on_thread(call)[0] for name, call in calls.items()}
        assert set(codes.values()) == {cu.CUresult.CUDA_ERROR_INVALID_CONTEXT}, codes
        text = cu.cuGetErrorString(cu.CUresult.CUDA_ERROR_INVALID_CONTEXT)[1]
        assert text == b"invalid device context"

    def test_the_last_release_resets_the_primary_context(self, driver: tuple) -> None:
        """Released while current, as CudaContext.release does: inactive from then on (its
        memory with it), until the next retain brings back the same context."""
        cu, device = driver
        _, context = cu.cuDevicePrimaryCtxRetain(device)
        cu.cuCtxPushCurrent(context)
        assert cu.cuMemAlloc(1 << 20)[0] == cu.CUresult.CUDA_SUCCESS
        cu.cuDevicePrimaryCtxRelease(device)
        assert cu.cuDevicePrimaryCtxGetState(device)[2] == 0
        cu.cuCtxPopCurrent()  # the release does not pop it
        _, again = cu.cuDevicePrimaryCtxRetain(device)
        assert int(again) == int(context) and cu.cuDevicePrimaryCtxGetState(device)[2] == 1
        cu.cuDevicePrimaryCtxRelease(device)
