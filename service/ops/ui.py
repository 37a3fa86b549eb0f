"""The page for people at `/`: a few static files, shipped as package data and read once at import.

They are served from memory with an ETag, and the page with a Content-Security-Policy that lets it load
and call nothing but this server."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import NotFound, brief

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
}
POLICY = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated each time (304 by ETag): a new release shows at once
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(folder: Path = STATIC, names: tuple[str, ...] | None = None) -> dict[str, Asset]:
    """The folder's files of the known types (or only those named), with their ETags."""
    assets = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in MEDIA_TYPES and (names is None or path.name in names):
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            assets[path.name] = Asset(body, MEDIA_TYPES[path.suffix], etag)
    return assets


ASSETS = load_assets()
router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    return _serve(request, "index.html")


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no page file {brief(name)}")
    return _serve(request, name)


def _serve(request: Request, name: str) -> Response:
    return serve_asset(request, ASSETS[name])


def serve_asset(request: Request, found: Asset) -> Response:
    """A file from memory: 304 when the client has this version (If-None-Match), else the file."""
    headers = {**POLICY, "ETag": found.etag}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
