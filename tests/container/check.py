"""Requests against a running container: `predict` checks known test images; `version N` waits for N."""

from __future__ import annotations

import io
import sys
import time

import httpx
import numpy as np
from PIL import Image

from core.datasets import load_fashion_mnist


def check_predictions(url: str) -> None:
    test = load_fashion_mnist(allow_download=False).test
    assert test is not None
    image, label = test.images[0], int(test.labels[0])
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    by_file = httpx.post(f"{url}/predict", files={"file": ("0.png", png.getvalue(), "image/png")}).json()
    by_json = httpx.post(f"{url}/predict", json={"instances": [image.tolist()]}).json()
    classes = {by_file["predictions"][0]["class_id"], by_json["predictions"][0]["class_id"]}
    assert classes == {label}, f"expected class {label} for test image 0, got {classes}"
    bad = httpx.post(f"{url}/predict", json={"instances": [[300] * 784]})
    assert bad.status_code == 422, bad.text
    page = httpx.get(f"{url}/")  # the page's files are package data: present in a non-editable install
    assert page.status_code == 200 and "/ui/app.js" in page.text, page.text[:500]
    assert httpx.get(f"{url}/ui/app.js").status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'http_requests_total{method="POST",route="/predict",status="200"} 2.0' in metrics, metrics[:2000]
    print(
        f"[container-test] predict: PNG and JSON of test image 0 -> class {label}; "
        "422 on bad input; the page at /; metrics ok"
    )


def wait_for_version(url: str, version: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    served = None
    while time.monotonic() < deadline:
        served = httpx.get(f"{url}/health/ready").json().get("model", {}).get("version")
        if served == version:
            answer = httpx.post(f"{url}/predict", json={"instances": [np.zeros(784).tolist()]}).json()
            assert answer["model"]["version"] == version
            print(f"[container-test] the serving container now answers from version {version}")
            return
        time.sleep(0.25)
    raise SystemExit(f"[container-test] FAIL: still serving version {served}, expected {version}")


if __name__ == "__main__":
    base_url, command = sys.argv[1], sys.argv[2]
    if command == "predict":
        check_predictions(base_url)
    else:
        wait_for_version(base_url, int(sys.argv[3]))
