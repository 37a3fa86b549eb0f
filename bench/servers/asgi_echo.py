"""Ceiling without a framework: a plain ASGI app on uvicorn with the service's JSON parsing and checks
(orjson to NumPy, as fast_echo) and a constant answer. The distance from the service to this is the
distance to what Python can do on this machine with uvicorn, with no routing, middleware or
request objects at all."""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from bench.servers.fast_echo import ANSWER
from service.errors import ApiError
from service.http.bodies import decode_json

MAX_BODY_BYTES = 16 * 1024 * 1024
JSON = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "GET" and scope["path"] == "/health/ready":
        await _answer(send, 200, b'{"status":"ready"}')
        return
    if scope["method"] != "POST" or scope["path"] != "/predict":
        await _answer(send, 404, b'{"error":"not found"}')
        return
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            await _answer(send, 413, b'{"error":"body too large"}')
            return
        if not message.get("more_body"):
            break
    try:
        decode_json(bytes(body), 1024)
    except ApiError:
        await _answer(send, 422, b'{"error":"invalid body"}')
        return
    await _answer(send, 200, ANSWER)


async def _answer(send: Any, status: int, content: bytes) -> None:
    headers = [*JSON, (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
