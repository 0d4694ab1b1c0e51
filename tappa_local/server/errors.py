"""OpenAI-style 4xx errors for bad requests, checked before the model is touched.

llama-cpp-python's ``RouteErrorHandler`` turns every exception into JSON, but a body that is
not JSON or fails validation comes out as HTTP 500, an unknown model name silently gets the
default model, and a streaming request that is too long fails after the 200 response has
started. :class:`TappaRouteErrorHandler` (the route class of every API route here) first
checks the request:

* malformed JSON or a body that fails validation -> 400 ``invalid_request_error``
* a ``model`` this server does not serve -> 404 ``model_not_found``
* a prompt that does not fit in n_ctx -> 400 ``context_length_exceeded`` (upstream's message),
  for streaming requests too
* a chat template that rejects the messages (e.g. an unsupported role) -> 400

and then maps whatever the model raises with upstream's own formatters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from llama_cpp.server.errors import RouteErrorHandler
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest

from .model import TappaLlamaProxy, UnknownModelError


class RequestError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"message": message, "type": type_, "param": param, "code": code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.payload}, status_code=self.status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (f"{where}: {msg}{more}" if where else f"{msg}{more}"), where


async def preflight(request: Request) -> None:
    """Reject a bad request before it queues for the model (raises :class:`RequestError`)."""
    if request.method != "POST":
        return
    raw = await request.body()  # cached: the endpoint reads the same bytes
    try:
        body = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object")
    proxy: TappaLlamaProxy | None = getattr(request.app.state, "tappa_proxy", None)
    if proxy is None:
        return
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "model must be a string", param="model")
    try:
        proxy.check_model(model)
    except UnknownModelError as exc:
        raise RequestError(404, str(exc), param="model", code="model_not_found") from None
    path = request.url.path
    if path.endswith("/chat/completions") and isinstance(body.get("messages"), list):
        _check_chat_length(proxy, body)
    elif path.endswith("/completions") and isinstance(body.get("prompt"), str):
        _check_completion_length(proxy, body)


def _too_long(n_prompt: int, n_ctx: int, max_tokens: Any, chat: bool) -> RequestError:
    what = "messages" if chat else "prompt"
    mt = max_tokens if isinstance(max_tokens, int) else 0
    return RequestError(
        400,
        f"This model's maximum context length is {n_ctx} tokens. However, you requested {n_prompt + mt} tokens "
        f"({n_prompt} in the {what}, {mt} for the completion). Please reduce the length of the {what} or completion.",
        param=what,
        code="context_length_exceeded",
    )


def _check_chat_length(proxy: TappaLlamaProxy, body: dict[str, Any]) -> None:
    llm, handler = proxy.llm, proxy.handler
    if handler is None:
        return
    try:
        text = handler.template.render(body["messages"])
    except ValueError as exc:  # the template's raise_exception()
        raise RequestError(400, f"The chat template rejected the messages: {exc}", param="messages") from None
    except Exception:  # noqa: BLE001 - malformed messages: the endpoint's validation reports them
        return
    n = len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    if n >= int(llm.n_ctx()):
        raise _too_long(n, int(llm.n_ctx()), body.get("max_tokens"), chat=True)


def _check_completion_length(proxy: TappaLlamaProxy, body: dict[str, Any]) -> None:
    llm = proxy.llm
    n = len(llm.tokenize(str(body["prompt"]).encode("utf-8"), add_bos=True, special=True))
    if n >= int(llm.n_ctx()):
        raise _too_long(n, int(llm.n_ctx()), body.get("max_tokens"), chat=False)


class TappaRouteErrorHandler(RouteErrorHandler):
    """Upstream's error handling with the checks above in front (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = APIRoute.get_route_handler(self)  # FastAPI's own handler, not upstream's wrapper

        async def handler(request: Request) -> Response:
            start = time.perf_counter()
            try:
                await preflight(request)
                response = await inner(request)
            except RequestError as exc:
                return exc.response()
            except HTTPException:
                raise
            except RequestValidationError as exc:
                message, param = _validation_message(exc)
                return RequestError(400, message, param=param).response()
            except UnknownModelError as exc:
                return RequestError(404, str(exc), param="model", code="model_not_found").response()
            except Exception as exc:  # noqa: BLE001 - mapped like upstream does
                status, payload = self.error_message_wrapper(error=exc, body=_parse_body(await request.body()))
                return JSONResponse({"error": payload}, status_code=status)
            response.headers["openai-processing-ms"] = f"{int((time.perf_counter() - start) * 1000)}"
            return response

        return handler


def _parse_body(raw: bytes) -> Any:
    try:
        data = json.loads(raw)
        if "messages" in data:
            return CreateChatCompletionRequest(**data)
        if "prompt" in data:
            return CreateCompletionRequest(**data)
    except Exception:  # noqa: BLE001
        return None
    return None
