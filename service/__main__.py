"""`python -m service`: serve the store's current model with uvicorn, settings from the environment."""

import uvicorn

from service.app import create_app
from service.config import Settings, load_settings
from service.logs import configure_logging
from service.metrics import Metrics
from service.protocol import ConnectionLimits, guarded_protocol


def connection_limits(settings: Settings, metrics: Metrics) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        on_refused=lambda reason: metrics.http_rejected.labels(reason).inc(),
    )


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(connection_limits(settings, app.state.metrics)),
        ws="none",
        log_config=None,  # keep the JSON logging configured above
        access_log=False,  # the observability middleware writes the access log
        timeout_keep_alive=settings.keepalive_timeout_s,
        # On SIGTERM, in-flight requests get this long to finish; the rest are answered 503 (JSON).
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )


if __name__ == "__main__":
    main()
