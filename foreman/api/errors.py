"""Errors: JSON on every route, always, with a message a person can act on.

The Ollama endpoints (``/api/...`` and ``/``) answer errors as Ollama does,
``{"error": ...}`` (:mod:`foreman.ollama_protocol`); the OpenAI ones (``/v1/...``)
as OpenAI does, ``{"error": {"message", "type", "param", "code"}}``
(:mod:`foreman.openai_protocol`); everything else answers an
:class:`~foreman.api.schemas.ApiError`: ``{"error": ..., "detail": [...]}``.
Unknown paths and wrong methods too (404, 405), and every refusal of
:mod:`foreman.api.guard`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from foreman.api.schemas import ApiError, FieldProblem
from foreman.ollama_protocol import OllamaError, OllamaJSON, problem_message
from foreman.ollama_protocol import error_response as ollama_error_response
from foreman.openai_protocol import OpenAIError

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
FASTAPI_PARSE_FAILED = "There was an error parsing the body"
"""FastAPI's 400 for a body Python's JSON reader gives up on (not a syntax error)."""
UNPARSABLE = (
    "the request body is JSON Foreman cannot take: nested too deeply, or an integer of "
    "thousands of digits (integers fit in 64 bits)"
)


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


def _speaks_ollama(path: str) -> bool:
    """Whether ``path`` is one of Ollama's (or would be): its errors are Ollama's."""
    return path in ("/", "/api") or path.startswith("/api/")


def speaks_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def openai_error_response(error: OpenAIError, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=dict(headers or {}))


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """``{"error": message}`` in the dialect of the route at ``path``."""
    if speaks_openai(path):
        return openai_error_response(OpenAIError(status, message), headers)
    if _speaks_ollama(path):
        return OllamaJSON({"error": message}, status_code=status, headers=dict(headers or {}))
    return _answer(status, ApiError(error=message), headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route at this path takes (Starlette's ``Allow`` names only
    the first such route's)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def _field(location: tuple[Any, ...]) -> str:
    where, *path = location
    name = ".".join(str(part) for part in path)
    return name if where == "body" else f"{where} {name}".strip()


def install_error_handlers(app: FastAPI) -> None:
    async def ollama_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OllamaError)
        return ollama_error_response(error)

    async def problem(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiProblem)
        return _answer(error.status, ApiError(error=error.message), error.headers)

    async def openai_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OpenAIError)
        return openai_error_response(error)

    async def invalid(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = list(error.errors())
        if speaks_openai(request.url.path):  # OpenAI answers 400, naming the field
            first = problems[0]
            field = _field(tuple(first["loc"]))
            message = f"{field}: {problem_message(first)}" if field else problem_message(first)
            if first["type"] == "json_invalid":
                message = "the request body is not valid JSON"
            return openai_error_response(OpenAIError(400, message, param=field or None))
        if any(problem["type"] == "json_invalid" for problem in problems):
            return _answer(400, ApiError(error="the request body is not valid JSON"))
        detail = [
            FieldProblem(field=_field(tuple(p["loc"])), message=problem_message(p))
            for p in problems
        ]
        summary = "; ".join(f"{d.field}: {d.message}" if d.field else d.message for d in detail)
        return _answer(422, ApiError(error=f"invalid request: {summary}", detail=detail))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        method, path = request.method, request.url.path
        headers, message = dict(error.headers or {}), str(error.detail)
        if error.status_code == 404:
            message = f"no such endpoint: {method} {path}"
        elif error.status_code == 400 and message == FASTAPI_PARSE_FAILED:
            message = UNPARSABLE
        elif error.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
            message = f"{method} is not allowed on {path} (allowed: {headers['Allow']})"
        return error_response(path, error.status_code, message, headers)

    app.add_exception_handler(OllamaError, ollama_error)
    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(ApiProblem, problem)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
