"""The native API: /predict and /evaluate, with their schemas."""
