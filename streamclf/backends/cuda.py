"""The GPU's primary CUDA context, made current around every CUDA call on whichever thread makes it.

CUDA keeps the current context per thread, and so does pycuda: a thread that has not pushed
one has none, and then pycuda fails (`cuMemAlloc failed: invalid device context`) or, when
freeing, skips the work with at most a warning (`… in out-of-thread context could not be
cleaned up`; nothing at all once the context is detached). The TensorRT engine is loaded on
the start-up thread and run on the engine worker, so every CUDA call it makes goes through
`CudaContext.current()`, and everything is given back through `CudaContext.release()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from streamclf.errors import EngineError


class CudaContext:
    """The retained primary context of one device (the one TensorRT's runtime API uses)."""

    def __init__(self, cuda, device: int) -> None:
        """`cuda` is the `pycuda.driver` module; its errors pass through to the caller."""
        self._context = cuda.Device(device).retain_primary_context()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The context is current on this thread inside the block, whatever the thread."""
        if self._context is None:
            msg = "the CUDA context was already released"
            raise EngineError(msg)
        self._context.push()
        try:
            yield
        finally:
            self._context.pop()

    def release(self, free: Callable[[], None]) -> None:
        """Run `free` with the context current, then give the context back; idempotent.

        The context is detached while it is still current: pycuda releases a context that is
        not current only on the thread that retained it, and on any other thread does
        nothing at all, so the primary context would stay retained for good.
        """
        if self._context is None:
            return
        context, self._context = self._context, None
        context.push()
        try:
            free()
        finally:
            context.detach()  # also takes it off this thread's pycuda stack: no pop after
