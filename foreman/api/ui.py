"""``GET /ui``: the dashboard's page and its assets, shipped in the package (no CDN).

They hold no data, so they are served without a key (:data:`UI_PATHS`); the page asks
for one when the data routes answer 401 and sends it on each request. A strict
Content-Security-Policy lets the page run its own script and style, nothing inline,
and talk to Foreman only.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from foreman.api.errors import ApiProblem

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
UI_PATHS = frozenset({"/ui", *(f"/ui/{name}" for name in ASSETS)})
"""The page and its assets: open to requests without a key."""
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes:
    return files("foreman.api").joinpath("static", name).read_bytes()


def ui_routes() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    page = _asset("index.html")

    @router.get("/ui")
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    @router.get("/ui/{name}")
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ApiProblem(404, f"no dashboard asset named {name!r}")
        return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)

    return router
