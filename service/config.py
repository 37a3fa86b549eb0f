"""Service settings, read from environment variables once at start-up and validated there."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.preprocessing import DEFAULT_MAX_IMAGE_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True, protected_namespaces=()
    )

    model_store: Path = Field(Path("models"), description="Root folder of the model store.")
    model_name: str = Field("fashion-mnist", min_length=1, description="Which model of the store to serve.")
    model_version: int | None = Field(
        None, ge=1, description="Pin this version instead of following current."
    )
    engine: Literal["auto", "onnx", "keras"] = Field(
        "auto", description="auto: ONNX when the version has it."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(None, description="Unset: no authentication.")
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

    max_batch_images: int = Field(512, ge=1, description="Most images coalesced into one engine call.")
    max_queue_images: int = Field(32768, ge=1, description="Queued images beyond this get 503 at once.")
    request_timeout_s: float = Field(10.0, gt=0, description="Longer waits for a result get 504.")
    inline_max_images: int = Field(
        64, ge=0, description="Engine calls this small run on the event loop; larger ones in a thread."
    )

    poll_interval_s: float = Field(2.0, gt=0, description="How often the store is checked for a new version.")
    fashion_mnist_dir: Path | None = Field(None, description="For /evaluate {'dataset': 'test'}.")


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
