"""KServe's Python model server serving the same ONNX artifact with the same ONNX Runtime options, over
its V1 (`instances`) and V2 (Open Inference Protocol) REST protocols. Runs in a venv of its own (the bench
creates it: kserve pins its own FastAPI and NumPy), so it imports nothing from this project
but bench/servers/peer_onnx.py."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.servers.peer_onnx import session


class FashionModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.session = session(self.path)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.ready = True
        return True

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        if isinstance(payload, InferRequest):
            pixels = payload.inputs[0].as_numpy()
            probabilities = self._run(pixels)
            output = InferOutput("probabilities", list(probabilities.shape), "FP32", data=probabilities)
            return InferResponse(payload.id or "", self.name, infer_outputs=[output])
        return {"predictions": self._run(np.asarray(payload["instances"])).tolist()}

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        batch = np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28)
        return np.asarray(self.session.run([self.output], {self.input: batch})[0])


if __name__ == "__main__":
    model = FashionModel("fashion-mnist", os.environ["ONNX_FILE"])
    ModelServer(
        http_port=int(os.environ["PORT"]), enable_grpc=False, enable_latency_logging=False, workers=1
    ).start([model])
