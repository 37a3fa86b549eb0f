"""`python -m service`: serve the store's current model with uvicorn, settings from the environment."""

import uvicorn

from service.app import create_app
from service.config import load_settings
from service.logs import configure_logging


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,  # the observability middleware writes the access log
        timeout_graceful_shutdown=30,  # on SIGTERM, in-flight requests get this long to finish
    )


if __name__ == "__main__":
    main()
