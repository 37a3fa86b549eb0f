"""The HTTP service: reads the model store and serves predictions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fashion-serving")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
