"""The decode pool: a few threads that decode large bodies and images, so the event loop never does.

Work sized by its caller (bytes, pixels, items: files of a form, images to encode) runs in place when
it is small enough, which costs less than a hop to a thread (about a millisecond at most), and in the
pool otherwise. The thresholds live here, once; callers say how large their work is, not where to run
it. Pooled work counts against the request's deadline: past it the client gets 504, and the work is
told to stop (`cancelled`) at its next image.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from core.preprocessing import PIXELS_PER_IMAGE
from service.errors import Timeout

T = TypeVar("T")
INLINE_BODY_BYTES = 64 * 1024
INLINE_IMAGE_PIXELS = 64 * PIXELS_PER_IMAGE
INLINE_ITEMS = 16  # each costs its own set-up: a form's part (~0.25 ms for a tiny GIF), a PNG to encode
DECODE_TIMEOUT = "decoding the request took longer than the request timeout"


def is_cheap(*, size_bytes: int = 0, pixels: int = 0, items: int = 0) -> bool:
    return size_bytes <= INLINE_BODY_BYTES and pixels <= INLINE_IMAGE_PIXELS and items <= INLINE_ITEMS


class DecodePool:
    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def run(self, work: Callable[[threading.Event], T], deadline: float) -> T:
        """work(cancelled) in a pool thread; 504 at the deadline, and `cancelled` tells work to stop."""
        cancelled = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self._executor, work, cancelled)
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            raise Timeout(DECODE_TIMEOUT) from None
        finally:
            cancelled.set()  # a no-op once work has finished; otherwise it stops at the next image

    async def offload(
        self,
        work: Callable[[threading.Event | None], T],
        deadline: float,
        *,
        size_bytes: int = 0,
        pixels: int = 0,
        items: int = 0,
    ) -> T:
        """work in place when its size says it is cheap (then `cancelled` is None), else in the pool."""
        if is_cheap(size_bytes=size_bytes, pixels=pixels, items=items):
            return work(None)
        return await self.run(work, deadline)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
