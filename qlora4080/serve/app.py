"""The HTTP side of `qlora4080 serve`: OpenAI's chat completions, models and a health check, on starlette.

Every error a client can cause comes back as OpenAI's error object with a 4xx
status; an error of ours is a 500 with the same shape and one line, never a
traceback (that goes to the server's log).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import QloraError
from ..infer import prompt_ids
from .chat_request import ApiError, ChatRequest, bad, parse_chat_request
from .engine import Engine, Finished, Job

if TYPE_CHECKING:
    from ..infer import ChatModel

log = logging.getLogger("qlora4080.serve")
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks that its client is still there


@dataclass(frozen=True)
class Served:
    """What the app serves: the loaded model, its engine, the name clients use for it, the key they need."""

    chat: ChatModel
    engine: Engine
    model_id: str
    api_key: str | None = None
    default_max_tokens: int = 512  # only for a model whose context length is unknown
    created: int = 0


def build_app(served: Served) -> Starlette:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": served.model_id, "decoding": served.engine.decoding,
                             "waiting": served.engine.waiting, "cancelled": served.engine.cancelled})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(served)]})

    async def model(request: Request) -> Response:
        if request.path_params["name"] != served.model_id:
            raise _unknown_model(request.path_params["name"], served.model_id, "model")
        return JSONResponse(_model_card(served))

    async def chat_completions(request: Request) -> Response:
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client left while sending: nobody to answer, nothing to log
            return Response(status_code=499)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:  # ValueError: bad JSON, or an int of 4300+ digits
            raise bad(f"the request body is not valid JSON: {error}", None, "invalid_json") from None
        except RecursionError:
            raise bad("the request body is not valid JSON: nested too deeply", None, "invalid_json") from None
        chat = parse_chat_request(body, served.default_max_tokens)
        if chat.model != served.model_id:
            raise _unknown_model(chat.model, served.model_id, "model")
        job = _job(served, chat)
        served.engine.submit(job)
        if chat.stream:
            return StreamingResponse(_stream(served, chat, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _complete(served, chat, job, request)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    middleware = [Middleware(RequireKey, api_key=served.api_key)] if served.api_key else []
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


def _job(served: Served, chat: ChatRequest) -> Job:
    """The request's prompt in the checkpoint's own template, checked against the context, ready to queue."""
    try:
        ids = prompt_ids(served.chat, chat.messages)
    except QloraError as error:  # the template refused the conversation (e.g. roles that do not alternate)
        raise bad(f"the model's chat template cannot render these messages: {error.message}", "messages") from None
    except Exception as error:  # a template's own raise_exception() surfaces as jinja2's TemplateError
        if type(error).__module__.startswith("jinja2"):
            raise bad(f"the model's chat template cannot render these messages: {error}", "messages") from None
        raise
    sampling = chat.sampling
    context = served.chat.context
    if context:
        wanted = len(ids) + (sampling.max_tokens if chat.max_tokens_given else 1)
        if wanted > context:
            asked = f"{len(ids)} in the messages, {sampling.max_tokens} in the completion" if chat.max_tokens_given \
                else f"{len(ids)} in the messages"
            raise bad(f"This model's maximum context length is {context} tokens. However, you requested {wanted} tokens "
                      f"({asked}). Please reduce the length of the messages or the completion.", "messages",
                      "context_length_exceeded")
        if not chat.max_tokens_given:
            from dataclasses import replace

            sampling = replace(sampling, max_tokens=context - len(ids))
    return Job(ids, sampling, asyncio.get_running_loop())


async def _complete(served: Served, chat: ChatRequest, job: Job, request: Request) -> Response:
    """Wait for the whole answer; a client that leaves meanwhile cancels it."""
    pieces: list[str] = []
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return Response(status_code=499)
                continue
            if isinstance(event, Finished):
                break
            pieces.append(event)
    finally:
        job.cancelled.set()  # no-op once finished; frees the row if this handler was cancelled
    if event.error:
        raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": served.model_id, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                     "finish_reason": event.reason, "logprobs": None}],
        "usage": _usage(job),
    })


async def _stream(served: Served, chat: ChatRequest, job: Job) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shape, ending with `data: [DONE]`.

    When the client goes away the response task is cancelled, this generator
    is closed, and `finally` cancels the job, which frees its row in the batch.
    """
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": served.model_id, "system_fingerprint": None}

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        return _event(body)

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if isinstance(event, Finished):
                break
            yield chunk({"content": event})
        if event.error:
            yield _event(ApiError(500, f"generation failed: {event.error}", kind="server_error").body())
            return
        yield chunk({}, event.reason)
        if chat.include_usage:
            yield _event({**head, "choices": [], "usage": _usage(job)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


def _event(body: dict[str, object]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _usage(job: Job) -> dict[str, int]:
    prompt, completion = len(job.prompt), job.decoding.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _model_card(served: Served) -> dict[str, object]:
    return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "qlora4080"}


def _unknown_model(name: str, served_id: str, param: str) -> ApiError:
    return ApiError(404, f"The model {name!r} does not exist on this server; it serves {served_id!r}",
                    param=param, code="model_not_found")


class RequireKey:
    """ASGI middleware: every /v1 route needs `Authorization: Bearer <key>`; /health stays open for load balancers.

    Plain ASGI rather than starlette's BaseHTTPMiddleware, which wraps streamed
    responses in a way that hides a client's disconnect from the stream.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = Headers(scope=scope).get("authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key):
                shown = "no API key was sent" if not header else "the API key is wrong"
                error = ApiError(401, f"Incorrect API key: {shown}. Send the server's --api-key as "
                                      "'Authorization: Bearer <key>'.", code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a wrong method) in OpenAI's shape."""
    assert isinstance(error, HTTPException)
    message = {404: f"no route {request.url.path}: this server has /v1/chat/completions, /v1/models and /health",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
    return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code)


async def _internal_error(request: Request, error: Exception) -> Response:
    log.exception("error while answering %s %s", request.method, request.url.path)
    body = ApiError(500, f"internal server error: {type(error).__name__}: {error}", kind="server_error").body()
    return JSONResponse(body, status_code=500)
