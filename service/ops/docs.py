"""The API documentation at /docs: Swagger UI 5 from the fastapi-offline package, not from a CDN.

The service often runs where there is no internet, and a page that loads its script from elsewhere is
blank there. Its files are read on first use (off the event loop) and served from memory with an
ETag; the page has a Content-Security-Policy that lets it load and call nothing but this server, with
its one inline script allowed by hash.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import Response

from service.errors import NotFound, brief
from service.ops.ui import Asset, load_assets, serve_asset

ASSETS_PATH = "/docs/assets"
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
router = APIRouter(include_in_schema=False)


def docs_page(title: str, openapi_url: str) -> tuple[bytes, dict[str, str]]:
    """The page and its headers; the policy allows exactly the inline script the page carries."""
    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
    )
    page = bytes(html.body)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in re.findall(rb"<script>(.*?)</script>", page, flags=re.DOTALL)
    )
    policy = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"}


@cache
def _assets() -> dict[str, Asset]:
    # Only the package's files are used (its FastAPI subclass is not): Swagger UI 5, which reads
    # OpenAPI 3.1, with no further dependency.
    return load_assets(Path(str(resources.files("fastapi_offline") / "static")), FILES)


@router.get("/docs")
async def docs(request: Request) -> Response:
    page, headers = docs_page(request.app.title, request.app.openapi_url or "/openapi.json")
    return Response(page, media_type="text/html; charset=utf-8", headers=headers)


@router.get(ASSETS_PATH + "/{name}")
async def asset(name: str, request: Request) -> Response:
    if name not in FILES:
        raise NotFound(f"no documentation file {brief(name)}")
    assets = await asyncio.to_thread(_assets)  # about 1.7 MB, read once
    return serve_asset(request, assets[name])
