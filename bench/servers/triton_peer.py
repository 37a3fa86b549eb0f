"""Triton Inference Server through PyTriton (Triton's C++ HTTP front end and dynamic batcher, the model
in a Python callable) serving the same ONNX artifact with the same ONNX Runtime options, over the Open
Inference Protocol. Runs in a venv of its own (the bench creates it: PyTriton needs NumPy < 2), so it
imports nothing from this project but bench/servers/peer_onnx.py."""

from __future__ import annotations

import os
import socket

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.servers.peer_onnx import session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    model = session(os.environ["ONNX_FILE"])
    input_name, output_name = model.get_inputs()[0].name, model.get_outputs()[0].name

    @batch
    def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
        images = pixels.astype(np.float32).reshape(-1, 28, 28)
        return {"probabilities": model.run([output_name], {input_name: images})[0]}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=int(os.environ["PORT"]),
        grpc_address="127.0.0.1",
        grpc_port=free_port(),
        metrics_port=free_port(),
        allow_gpu_metrics=False,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="fashion-mnist",
            infer_func=infer,
            inputs=[Tensor(name="pixels", dtype=np.uint8, shape=(784,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=256, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
        )
        triton.serve()


if __name__ == "__main__":
    main()
