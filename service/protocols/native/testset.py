"""The Fashion-MNIST test split for `/evaluate {"dataset": "test"}`: read once, on first use, and shared."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.datasets import Split, load_fashion_mnist_test


class TestSet:
    """The Fashion-MNIST test split, read on first use by one request while the others wait for it."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self._split: Split | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Split:
        async with self._lock:
            if self._split is None:
                self._split = await asyncio.to_thread(load_fashion_mnist_test, self.data_dir)
            return self._split
