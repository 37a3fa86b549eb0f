"""The ONNX Runtime session the KServe and Triton peers serve with: the service's OnnxEngine options (one
thread, no spinning). It imports only onnxruntime, so the peers' own venvs can use it."""

from __future__ import annotations

import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
