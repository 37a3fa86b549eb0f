"""TF Serving's REST API (/v1): the codec and its routes."""
