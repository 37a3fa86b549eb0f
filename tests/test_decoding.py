"""The request decoder and the decode pool as plain functions: what is decoded in place, what in the pool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

from bench.attacks import multipart
from service.http.bodies import decode_uploads
from service.http.offload import INLINE_ITEMS, DecodePool
from service.settings import Settings
from tests.helpers import image_bytes

T = TypeVar("T")
LIMITS = Settings()  # the decoding bounds are the settings' own fields, defaults here


class CountingPool(DecodePool):
    """The real pool, counting the work it was given."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.runs = 0

    async def run(self, work: Callable[[threading.Event], T], deadline: float) -> T:
        self.runs += 1
        return await super().run(work, deadline)


def decode_form(files: list[bytes]) -> tuple[np.ndarray, int]:
    content_type, body = multipart(files, "image/gif")
    pool = CountingPool()

    async def decode() -> np.ndarray:
        deadline = asyncio.get_running_loop().time() + 30
        images, _ = await decode_uploads(
            body, content_type, "multipart/form-data", LIMITS, "auto", pool, deadline
        )
        return images

    try:
        return asyncio.run(decode()), pool.runs
    finally:
        pool.shutdown()


def tiny_gif() -> bytes:
    return image_bytes(np.full((1, 1), 200, np.uint8), "GIF")


def test_a_few_small_images_are_decoded_in_place() -> None:
    images, pooled = decode_form([tiny_gif()] * INLINE_ITEMS)
    assert images.shape == (INLINE_ITEMS, 28, 28) and pooled == 0


@pytest.mark.parametrize("count", [INLINE_ITEMS + 1, 585])
def test_many_tiny_images_go_to_the_decode_pool_however_small(count: int) -> None:
    # 585 GIFs of one pixel fit in 64 KiB and cost the event loop 0.15 s when decoded in place.
    images, pooled = decode_form([tiny_gif()] * count)
    assert images.shape == (count, 28, 28)
    assert pooled == 2  # the form's parsing and the images' decoding


def test_the_pool_runs_the_work_in_its_own_thread() -> None:
    seen: list[str] = []
    pool = DecodePool(threads=1)

    async def run() -> None:
        deadline = asyncio.get_running_loop().time() + 5
        await pool.run(lambda _: seen.append(threading.current_thread().name), deadline)

    asyncio.run(run())
    pool.shutdown()
    assert seen and seen[0].startswith("decode")
