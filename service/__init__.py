"""The HTTP service: reads the model store and serves predictions."""
