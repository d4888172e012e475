"""Errors of the job API: JSON, always, with a message a person can act on.

The Ollama endpoints answer errors as Ollama does (:mod:`foreman.wire`);
everything under ``/jobs``, and any body over the size limit, answers an
:class:`~foreman.api.schemas.ApiError`: ``{"error": ..., "detail": [...]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from foreman.api.schemas import ApiError, FieldProblem
from foreman.wire import answer_errors_as_ollama, routing_error_response

JOBS_PREFIX = "/jobs"


TOO_LARGE = "request body is over the {limit} limit (FOREMAN_MAX_BODY)"


class ApiProblem(Exception):
    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _answer(status: int, error: ApiError, headers: Mapping[str, str] | None = None) -> Response:
    body = error.model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _field(location: tuple[Any, ...]) -> str:
    where, *path = location
    name = ".".join(str(part) for part in path)
    return name if where == "body" else f"{where} {name}".strip()


def install_error_handlers(app: FastAPI) -> None:
    answer_errors_as_ollama(app)

    async def problem(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiProblem)
        return _answer(error.status, ApiError(error=error.message), error.headers)

    async def invalid(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = list(error.errors())
        if any(problem["type"] == "json_invalid" for problem in problems):
            return _answer(400, ApiError(error="the request body is not valid JSON"))
        detail = [
            FieldProblem(
                field=_field(tuple(p["loc"])), message=str(p["msg"]).removeprefix("Value error, ")
            )
            for p in problems
        ]
        summary = "; ".join(f"{d.field}: {d.message}" if d.field else d.message for d in detail)
        return _answer(422, ApiError(error=f"invalid request: {summary}", detail=detail))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 413:
            return _answer(413, ApiError(error=TOO_LARGE.format(limit="size")))
        if request.url.path.startswith(JOBS_PREFIX):
            return _answer(error.status_code, ApiError(error=str(error.detail)), error.headers)
        return routing_error_response(error)

    app.add_exception_handler(ApiProblem, problem)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


class DeclaredBodyLimit:
    """Refuse a body whose ``Content-Length`` is over the limit with a JSON 413,
    before the app reads it. (A body without one is counted as it comes by the
    route's ``max_body_size``, whose 413 the handler above answers.)"""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body:
                error = ApiError(error=TOO_LARGE.format(limit=f"{self.max_body}-byte"))
                response = _answer(413, error, {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
