"""Request bodies for the benchmark (real test images where the dataset is installed) and wrk scripts."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.datasets import DatasetNotFound, load_fashion_mnist


@dataclass(frozen=True)
class Workload:
    name: str
    images: int
    content_type: str


WORKLOADS = {
    w.name: w
    for w in (
        Workload("json1", 1, "application/json"),
        Workload("png1", 1, "multipart/form-data; boundary=benchboundary"),
        Workload("json256", 256, "application/json"),
        Workload("bin4096", 4096, "application/octet-stream"),
    )
}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local file = io.open("{body}", "rb")
wrk.body = file:read("*all")
file:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def sample_images(count: int) -> np.ndarray:
    try:
        test = load_fashion_mnist(allow_download=False).test
        assert test is not None
        return np.resize(test.images, (count, 28, 28)).astype(np.uint8)
    except DatasetNotFound:
        return np.random.default_rng(0).integers(0, 256, (count, 28, 28)).astype(np.uint8)


def build_bodies(folder: Path) -> dict[str, Path]:
    """One body file and one wrk Lua script per workload; returns the scripts."""
    images = sample_images(4096)
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    bodies = {
        "json1": json.dumps({"instances": [images[0].ravel().tolist()]}).encode(),
        "png1": b"".join(
            [
                b"--benchboundary\r\n",
                b'Content-Disposition: form-data; name="file"; filename="0.png"\r\n',
                b"Content-Type: image/png\r\n\r\n",
                png.getvalue(),
                b"\r\n--benchboundary--\r\n",
            ]
        ),
        "json256": json.dumps({"instances": images[:256].reshape(256, -1).tolist()}).encode(),
        "bin4096": images.tobytes(),
    }
    scripts = {}
    for name, body in bodies.items():
        body_path = folder / f"{name}.body"
        body_path.write_bytes(body)
        script = folder / f"{name}.lua"
        script.write_text(LUA.format(content_type=WORKLOADS[name].content_type, body=body_path))
        scripts[name] = script
    return scripts
