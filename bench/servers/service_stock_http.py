"""The service behind uvicorn's stock HTTP protocols, for the benchmark only.

`HTTP_IMPL=httptools`: the same parser without the guards of service/http/connection.py (what they cost);
`HTTP_IMPL=h11`: the pure-Python parser, whose incomplete-event limit is the other way to bound a
request head (what choosing it would cost). Settings as for `python -m service`.
"""

import os

import uvicorn

from service.app import create_app
from service.settings import load_settings


def main() -> None:
    settings = load_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=os.environ.get("HTTP_IMPL", "httptools"),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
