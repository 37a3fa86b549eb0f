"""`python -m service`: serve the store's current model with uvicorn, settings from the environment.

With WORKERS > 1 this process supervises that many workers (service/workers.py), each of them this
same command with its listening socket handed down."""

from __future__ import annotations

import os

# One BLAS thread per process, set before NumPy loads OpenBLAS (unless set explicitly). The OOD
# detector's matrix products would otherwise start a spinning thread per core, which the event loop
# (and any other worker) must share: with WORKERS=2 on two cores that halved the rate at 64 connections
# (1,270 against 3,270 req/s), and one worker lost 5-25 %. The price: 4,096-image requests, 17 % slower.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from typing import TYPE_CHECKING  # noqa: E402

from service.logs import configure_logging  # noqa: E402
from service.settings import Settings, load_settings  # noqa: E402
from service.workers import supervise, worker_socket  # noqa: E402

if TYPE_CHECKING:
    import socket

    from service.http.connection import ConnectionLimits
    from service.metrics import Metrics


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    listener = worker_socket()
    if listener is None and settings.worker_count > 1:
        return supervise(settings.host, settings.port, settings.worker_count, settings.graceful_timeout_s)
    return serve(settings, listener)


def serve(settings: Settings, listener: socket.socket | None) -> int:
    """One server process: alone (WORKERS=1), or a worker on the supervisor's socket. The app and uvicorn
    are imported here, not by the supervisor: its workers start a second sooner without them."""
    import uvicorn

    from service.app import create_app
    from service.http.connection import guarded_protocol
    from service.services import services_of

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(connection_limits(settings, services_of(app).metrics)),
        ws="none",
        log_config=None,  # keep the JSON logging configured above
        access_log=False,  # the observability middleware writes the access log
        timeout_keep_alive=settings.keepalive_timeout_s,
        # On SIGTERM, in-flight requests get this long to finish; the rest are answered 503 (JSON).
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[listener] if listener else None)
    return 0 if server.started else 3  # 3: did not start (port taken...), as uvicorn.run reports it


def connection_limits(settings: Settings, metrics: Metrics) -> ConnectionLimits:
    from service.http.connection import ConnectionLimits

    return ConnectionLimits(
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        max_pipelined=settings.max_pipelined_requests,
        write_timeout_s=settings.write_timeout_s,
        on_refused=lambda reason: metrics.http_rejected.labels(reason).inc(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
