"""Service settings, read from environment variables once at start-up and validated there."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.engines import EngineKind
from core.preprocessing import DEFAULT_MAX_IMAGE_PIXELS
from service.workers import usable_cpus


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True, protected_namespaces=()
    )

    model_store: Path = Field(Path("models"), description="Root folder of the model store.")
    model_name: str = Field(
        "fashion-mnist", min_length=1, description="The model /predict and /evaluate serve; always served."
    )
    models: str = Field(
        "", description="Comma-separated names of the store's models to serve besides MODEL_NAME."
    )
    model_version: int | None = Field(
        None, ge=1, description="Pin MODEL_NAME to this version instead of following its promoted one."
    )
    max_loaded_versions: int = Field(
        3, ge=0, description="Versions asked for by number kept loaded besides the promoted ones (LRU)."
    )
    engine: EngineKind = Field("auto", description="auto: ONNX when the version has it.")
    workers: str = Field(
        "1",
        pattern=r"^(auto|[1-9][0-9]{0,3})$",
        description="Worker processes on one port (1-9999); auto: one per CPU this process may use.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(None, description="Unset: no authentication. Set: not empty.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    max_inflight_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Bodies held at once; past it, 503 before reading."
    )
    max_instances: int = Field(1024, ge=1, description="Images per JSON, image or form request.")
    max_bulk_instances: int = Field(
        16384, ge=1, description="Images per binary (octet-stream or .npy) request."
    )
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="Checked before decoding.")
    max_request_pixels: int = Field(
        50_000_000, ge=1, description="Pixels of all images in one request, checked before decoding."
    )
    decode_threads: int = Field(
        2, ge=1, le=64, description="Threads decoding large bodies and images off the event loop."
    )

    max_batch_images: int = Field(512, ge=1, description="Most images coalesced into one engine call.")
    max_queue_images: int = Field(32768, ge=1, description="Queued images beyond this get 503 at once.")
    request_timeout_s: float = Field(
        10.0, gt=0, description="From a complete body to the answer (decode, queue, inference); then 504."
    )
    inline_max_images: int = Field(
        64, ge=0, description="Engine calls this small run on the event loop; larger ones in a thread."
    )

    max_evaluations: int = Field(2, ge=1, description="/evaluate jobs at once; more get 503.")

    max_connections: int = Field(1024, ge=1, description="Open connections; requests on more get 503.")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Request line and headers; larger heads get 431."
    )
    max_headers: int = Field(100, ge=1, description="Header fields per request; more get 431.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="From connection (or first byte of a request) to the end of its headers."
    )
    keepalive_timeout_s: int = Field(5, ge=1, description="Idle keep-alive connections close after this.")
    max_pipelined_requests: int = Field(
        16, ge=1, description="Requests a connection may send ahead of its answers; the next gets 503."
    )
    write_timeout_s: float = Field(
        30.0, gt=0, description="Longest an answer waits for a client that does not read it; then closed."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the next piece of a request body; then 408."
    )
    min_body_rate: int = Field(
        16 * 1024, ge=0, description="Bytes/s a body must average once body_timeout_s has passed; else 408."
    )
    graceful_timeout_s: int = Field(
        8, ge=1, description="On SIGTERM, in-flight requests get this long (below Docker's 10 s)."
    )

    poll_interval_s: float = Field(2.0, gt=0, description="How often the store is checked for a new version.")
    store_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for a store read or a version load (hung file systems)."
    )
    fashion_mnist_dir: Path | None = Field(None, description="For /evaluate {'dataset': 'test'}.")

    @property
    def worker_count(self) -> int:
        return usable_cpus() if self.workers == "auto" else int(self.workers)

    @property
    def served_models(self) -> tuple[str, ...]:
        """MODEL_NAME first, then the others of MODELS, each once."""
        names = [self.model_name, *(name.strip() for name in self.models.split(",") if name.strip())]
        return tuple(dict.fromkeys(names))

    @field_validator("model_name", "models")
    @classmethod
    def _plain_names(cls, value: str) -> str:
        for name in value.split(","):
            name = name.strip()
            if name.startswith(".") or "/" in name or "\\" in name:
                raise ValueError(f"model names are plain folder names of the store, received {name!r}")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # API_KEY= (set but empty, e.g. an unset variable in a compose file) would accept an empty key.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty: unset API_KEY to run without authentication")
        return value


def load_settings() -> Settings:
    """Settings from the environment; raises SystemExit naming each bad variable and its value."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']).upper()}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SystemExit("invalid settings: " + "; ".join(problems)) from None
