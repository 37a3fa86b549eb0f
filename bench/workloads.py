"""Request bodies for the benchmark (real test images where the dataset is installed) and wrk scripts."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import phone_photo
from core.datasets import DatasetNotFound, load_fashion_mnist

# tritonclient's binary request for one UINT8 image, probabilities back as binary.
V2_BINARY_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "pixels",
                "shape": [1, 784],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": 784},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
).encode()


@dataclass(frozen=True)
class Workload:
    name: str
    images: int
    content_type: str  # "" sends none (as tritonclient's binary requests)
    path: str = "/predict"
    headers: tuple[tuple[str, str], ...] = ()


WORKLOADS = {
    w.name: w
    for w in (
        Workload("json1", 1, "application/json"),
        Workload("png1", 1, "multipart/form-data; boundary=benchboundary"),
        # A 600x800 JPEG product photo, as a phone uploads it.
        Workload("photo1", 1, "image/jpeg"),
        Workload("json256", 256, "application/json"),
        Workload("bin4096", 4096, "application/octet-stream"),
        # The standard protocols, one image per request, as their clients send it.
        Workload(
            "v2bin1",
            1,
            "",
            "/v2/models/fashion-mnist/infer",
            (("Inference-Header-Content-Length", str(len(V2_BINARY_HEADER))),),
        ),
        Workload("v2json1", 1, "application/json", "/v2/models/fashion-mnist/infer"),
        Workload("v1json1", 1, "application/json", "/v1/models/fashion-mnist:predict"),
    )
}

LUA = """
wrk.method = "POST"
wrk.path = "{path}"
{headers}
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
        "photo1": phone_photo(images[0]),
        "json256": json.dumps({"instances": images[:256].reshape(256, -1).tolist()}).encode(),
        "bin4096": images.tobytes(),
        "v2bin1": V2_BINARY_HEADER + images[0].tobytes(),
        "v2json1": json.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1, 784],
                        "datatype": "UINT8",
                        "data": images[0].ravel().tolist(),
                    }
                ]
            }
        ).encode(),
        "v1json1": json.dumps({"instances": [images[0].ravel().tolist()]}).encode(),
    }
    scripts = {}
    for name, body in bodies.items():
        body_path = folder / f"{name}.body"
        body_path.write_bytes(body)
        script = folder / f"{name}.lua"
        workload = WORKLOADS[name]
        headers = [("Content-Type", workload.content_type)] if workload.content_type else []
        lines = "\n".join(f'wrk.headers["{key}"] = "{value}"' for key, value in [*headers, *workload.headers])
        script.write_text(LUA.format(path=workload.path, headers=lines, body=body_path))
        scripts[name] = script
    return scripts
