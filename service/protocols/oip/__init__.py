"""The Open Inference Protocol v2 (KServe, Triton) over HTTP: the codec and its routes."""
