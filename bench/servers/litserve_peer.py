"""LitServe serving the same model (the same ONNX artifact) with its dynamic batching on."""

from __future__ import annotations

import os
from pathlib import Path

import litserve as ls
import numpy as np

from core.datasets import FASHION_MNIST_CLASSES as CLASSES
from core.engines import OnnxEngine


class FashionAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.engine = OnnxEngine(Path(os.environ["ONNX_FILE"]))

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["instances"], np.float32).reshape(28, 28)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.predict(batch).probabilities

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, object]:
        class_id = int(output.argmax())
        return {"class_id": class_id, "class_name": CLASSES[class_id], "probabilities": output.tolist()}


if __name__ == "__main__":
    api = FashionAPI(max_batch_size=64, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", healthcheck_path="/health/ready")
    server.run(
        host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", generate_client_file=False
    )
