"""OpenAI-compatible HTTP server: `POST /v1/chat/completions` (+ SSE streaming), `GET /v1/models`, `GET /health`,
and the single-page web chat at `/`.

The server validates and converts requests, then calls a `ChatService` concurrently; dynamic batching happens
inside the service. It never touches tensors.

Request extensions beyond OpenAI's schema (all optional):
  enable_thinking / chat_template_kwargs.enable_thinking   thinking mode (reasoning returned as `reasoning_content`)
  top_k, min_p, repetition_penalty, min_tokens             sampling knobs (vLLM's names)
  max_slice_nums, use_image_id, fps, packing, max_groups   per-request image slicing and video sampling
Usage: `prompt_tokens` includes the visual positions (images and video groups), which are also reported as
`prompt_tokens_details.visual_tokens` (and as `image_tokens`, the name in OpenAI's schema, next to `text_tokens`).
Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with a 4xx status for bad input.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from minicpmv.errors import InputError
from minicpmv.inference.types import MediaOptions, SamplingParams, StreamEvent, Usage
from minicpmv.serve import ServerConfig
from minicpmv.serve.media import MediaFetcher

log = logging.getLogger("minicpmv.serve")
STATIC_DIR = Path(__file__).parent / "static"


class ApiError(Exception):
    """An error answered with OpenAI's error JSON."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# ---- request schema (strict: "1" is not a number, 1.0 is not an int) ----

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class MediaURL(_Strict):
    url: str
    detail: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: MediaURL


Part = TextPart | ImagePart | VideoPart


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    reasoning_content: str | None = None  # passed on; the chat template drops reasoning before the last query


class TemplateKwargs(_Strict):
    enable_thinking: bool | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    enable_thinking: bool | None = None
    chat_template_kwargs: TemplateKwargs | None = None
    max_slice_nums: int | None = Field(None, ge=1, le=36)
    use_image_id: bool | None = None
    fps: float | None = Field(None, gt=0.0, le=30.0)
    packing: int | None = Field(None, ge=1, le=6)
    max_groups: int | None = Field(None, ge=1, le=1024)
    tools: list[Any] | None = None  # refused when non-empty (no tool calling)
    logprobs: bool | None = None  # refused when true


def parse_request(body: bytes) -> ChatRequest:
    """Raw body -> validated request, or ApiError(400) naming the offending field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise ApiError(400, f"{param}: {err['msg']} (got {err.get('input')!r:.80})", param=param,
                       code="invalid_value") from e
    if req.tools:
        raise ApiError(400, "tool calling is not supported by this server; drop 'tools'", param="tools")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
    return req


def thinking_flag(req: ChatRequest) -> bool:
    """`chat_template_kwargs.enable_thinking` or top-level `enable_thinking` (they must agree); default off."""
    nested = req.chat_template_kwargs.enable_thinking if req.chat_template_kwargs else None
    if nested is not None and req.enable_thinking is not None and nested != req.enable_thinking:
        raise ApiError(400, "enable_thinking and chat_template_kwargs.enable_thinking disagree; set one",
                       param="enable_thinking")
    return bool(nested if nested is not None else req.enable_thinking)


def sampling_params(req: ChatRequest, config: ServerConfig, enable_thinking: bool) -> SamplingParams:
    """The official per-mode defaults (SamplingParams.for_mode), overridden by what the request sets."""
    if req.n > config.max_n:
        raise ApiError(400, f"n={req.n} exceeds this server's limit of {config.max_n}", param="n")
    max_new = req.max_completion_tokens or req.max_tokens or config.default_max_tokens
    if max_new > config.max_tokens_limit:
        raise ApiError(400, f"max_tokens={max_new} exceeds this server's limit of {config.max_tokens_limit}",
                       param="max_tokens")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > 16 or any(not s for s in stop):
        raise ApiError(400, f"stop: give at most 16 non-empty strings, got {len(stop)}", param="stop")
    overrides = {k: v for k, v in dict(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
        repetition_penalty=req.repetition_penalty, min_new_tokens=req.min_tokens, seed=req.seed,
    ).items() if v is not None}
    return SamplingParams.for_mode(enable_thinking, max_new_tokens=max_new, stop=stop, n=req.n, **overrides)


@dataclass
class ServiceCall:
    """Everything `ChatService.stream/complete` needs, plus the temporary files to delete afterwards."""

    messages: list[dict]
    params: SamplingParams
    enable_thinking: bool
    media: MediaOptions
    temp_files: list[Path] = field(default_factory=list)

    def cleanup(self) -> None:
        for path in self.temp_files:
            path.unlink(missing_ok=True)


def build_call(req: ChatRequest, config: ServerConfig, fetcher: MediaFetcher) -> ServiceCall:
    """Convert OpenAI messages to the service's forms, loading media (blocking: run in a worker thread)."""
    enable_thinking = thinking_flag(req)
    media = MediaOptions(max_slice_nums=req.max_slice_nums, use_image_id=req.use_image_id, fps=req.fps,
                         packing=req.packing, max_groups=req.max_groups)
    call = ServiceCall([], sampling_params(req, config, enable_thinking), enable_thinking, media)
    n_media = sum(1 for m in req.messages if isinstance(m.content, list)
                  for p in m.content if not isinstance(p, TextPart))
    if n_media > config.max_media_items:
        raise ApiError(400, f"{n_media} images/videos exceed this server's limit of {config.max_media_items}",
                       param="messages")
    try:
        for i, msg in enumerate(req.messages):
            call.messages.append(_convert_message(i, msg, fetcher, call.temp_files))
    except BaseException:
        call.cleanup()
        raise
    return call


def _convert_message(i: int, msg: Message, fetcher: MediaFetcher, temp_files: list[Path]) -> dict:
    """One OpenAI message -> the service's form. Video parts carry only their path: the service fills in the
    request's fps/packing/max_groups from MediaOptions."""
    out: dict[str, Any] = {"role": "system" if msg.role == "developer" else msg.role}
    if msg.reasoning_content is not None:
        out["reasoning_content"] = msg.reasoning_content
    if not isinstance(msg.content, list):
        return {**out, "content": msg.content or ""}
    parts: list[dict] = []
    for j, part in enumerate(msg.content):
        what = f"messages[{i}].content[{j}]"
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            parts.append({"type": "image", "image": fetcher.image(part.image_url.url, what)})
        else:
            path, temporary = fetcher.video(part.video_url.url, what)
            if temporary:
                temp_files.append(path)
            parts.append({"type": "video", "path": str(path)})
    return {**out, "content": parts}


# ---- responses ----

@dataclass
class Completion:
    """Identity of one response: shared by every chunk of a stream."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def envelope(self, obj: str, choices: list[dict], usage: Usage | None = None) -> dict:
        body: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                                "choices": choices}
        if usage is not None:
            body["usage"] = usage_json(usage)
        return body


def usage_json(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"visual_tokens": usage.visual_tokens, "image_tokens": usage.visual_tokens,
                                      "text_tokens": usage.prompt_tokens - usage.visual_tokens}}


def sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def stream_chunks(completion: Completion, first: StreamEvent, events: AsyncIterator[StreamEvent],
                        call: ServiceCall, prompt: Usage, include_usage: bool) -> AsyncIterator[bytes]:
    """SSE body: a role chunk per choice, one chunk per event (`content` or `reasoning_content`), a final chunk
    with `finish_reason` per choice, optionally a usage chunk, then `[DONE]`."""
    usage = Usage(prompt.prompt_tokens, prompt.visual_tokens)  # the finished events' counts replace these
    for i in range(call.params.n):
        yield sse(completion.envelope("chat.completion.chunk", [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
    event: StreamEvent | None = first
    try:
        while event is not None:
            if event.text:
                key = "reasoning_content" if event.kind == "reasoning" else "content"
                yield sse(completion.envelope("chat.completion.chunk", [
                    {"index": event.index, "delta": {key: event.text}, "finish_reason": None}]))
            if event.finished:
                if event.usage is not None:
                    usage = Usage(event.usage.prompt_tokens, event.usage.visual_tokens,
                                  usage.completion_tokens + event.usage.completion_tokens)
                yield sse(completion.envelope("chat.completion.chunk", [
                    {"index": event.index, "delta": {}, "finish_reason": event.finish_reason or "stop"}]))
            event = await anext(events, None)
    except Exception as e:  # the 200 header is already sent: report in-band, as OpenAI does
        if not isinstance(e, InputError):
            log.error("stream failed", exc_info=e)
        error = ApiError(400, str(e)) if isinstance(e, InputError) else ApiError(500, f"generation failed ({e})",
                                                                                type="server_error")
        yield sse({"error": {"message": error.message, "type": error.type, "param": None, "code": None}})
        return
    if include_usage:
        yield sse(completion.envelope("chat.completion.chunk", [], usage))
    yield sse("[DONE]")


def completion_json(completion: Completion, results: list) -> dict:
    choices = [{"index": i, "finish_reason": r.finish_reason,
                "message": {"role": "assistant", "content": r.answer, "reasoning_content": r.reasoning or None}}
               for i, r in enumerate(results)]
    first = results[0].usage  # prompt counts repeat per result
    usage = Usage(first.prompt_tokens, first.visual_tokens, sum(r.usage.completion_tokens for r in results))
    return completion.envelope("chat.completion", choices, usage)


class _ClosingStream(StreamingResponse):
    """A StreamingResponse that always runs `on_close` (shielded), even when the client disconnects before the
    body starts: this is what frees the request's slot in the service."""

    def __init__(self, content: AsyncIterator[bytes], on_close):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="body_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnected(request: Request, coro) -> Any:
    """Await `coro`, cancelling it if the client goes away (so a disconnected request frees its slot)."""
    task = asyncio.ensure_future(coro)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                raise ApiError(499, "client disconnected", code="client_closed_request")
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)


class OpenAIServer:
    """Request handling around one ChatService; `app` is the FastAPI application."""

    def __init__(self, service, config: ServerConfig, fetcher: MediaFetcher | None = None):
        self.service, self.config = service, config
        self.fetcher = fetcher or MediaFetcher(config.media)
        self.model_name = config.model_name or service.model_name
        self.started = int(time.time())
        self.in_flight = 0
        self.app = self._build_app()

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="minicpmv", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_exception_handler(ApiError, lambda _, e: e.response())
        app.add_exception_handler(InputError, lambda _, e: ApiError(400, str(e)).response())
        app.add_exception_handler(StarletteHTTPException, _http_error)
        app.add_exception_handler(Exception, _server_error)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_api_route("/", lambda: FileResponse(STATIC_DIR / "index.html"), methods=["GET"])
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
        return app

    def _check_key(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.config.api_key.encode()):
            raise ApiError(401, "missing or incorrect API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def health(self) -> dict:
        return {"status": "ok", "model": self.model_name, "in_flight": self.in_flight}

    async def models(self, request: Request) -> dict:
        self._check_key(request)
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.started,
                                             "owned_by": "minicpmv"}]}

    async def chat_completions(self, request: Request):
        self._check_key(request)
        req = parse_request(await read_body(request, self.config.max_body_bytes))
        if self.in_flight >= self.config.max_in_flight:
            raise ApiError(429, f"server busy: {self.in_flight} requests in flight (limit "
                                f"{self.config.max_in_flight}); retry later", type="rate_limit_exceeded")
        self.in_flight += 1
        call: ServiceCall | None = None
        owned = True  # until a streaming response takes over the call's cleanup
        try:
            call = await run_in_threadpool(build_call, req, self.config, self.fetcher)
            prompt = await run_in_threadpool(self.service.count_tokens, call.messages, call.media)
            if prompt.prompt_tokens > self.config.max_prompt_tokens:
                raise ApiError(400, f"the prompt is {prompt.prompt_tokens} tokens ({prompt.visual_tokens} visual), "
                                    f"over the limit of {self.config.max_prompt_tokens}; send fewer or smaller "
                                    "images, a shorter video (lower fps) or less text",
                               param="messages", code="context_length_exceeded")
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                response = await self._start_stream(call, prompt, include_usage)
                owned = False
                return response
            results = await until_disconnected(request, self.service.complete(
                call.messages, call.params, enable_thinking=call.enable_thinking, media=call.media))
            return JSONResponse(completion_json(Completion(self.model_name), results))
        finally:
            if owned:
                self.in_flight -= 1
                if call is not None:
                    call.cleanup()

    async def _start_stream(self, call: ServiceCall, prompt: Usage, include_usage: bool) -> StreamingResponse:
        """Start the service stream and wait for its first event, so input errors still become 4xx."""
        events = self.service.stream(call.messages, call.params, enable_thinking=call.enable_thinking,
                                     media=call.media)
        body: AsyncIterator[bytes] | None = None

        async def close() -> None:
            if body is not None:
                await body.aclose()
            await events.aclose()
            call.cleanup()
            self.in_flight -= 1

        try:
            first = await anext(events)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await events.aclose()
            raise
        body = stream_chunks(Completion(self.model_name), first, events, call, prompt, include_usage)
        return _ClosingStream(body, close)


async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return ApiError(e.status_code, str(e.detail), type="invalid_request_error" if e.status_code < 500
                    else "server_error").response()


async def _server_error(_: Request, e: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=e)
    return ApiError(500, f"internal server error ({type(e).__name__}); see the server log",
                    type="server_error").response()


def create_app(service, config: ServerConfig = ServerConfig(), *, fetcher: MediaFetcher | None = None) -> FastAPI:
    """The FastAPI app serving `service` (anything with ChatService's stream/complete/count_tokens/model_name)."""
    return OpenAIServer(service, config, fetcher).app


def run_server(service, config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get `shutdown_timeout_s` to finish, then are cancelled
    and the service's engine is stopped."""
    import uvicorn

    uv_config = uvicorn.Config(create_app(service, config), host=config.host, port=config.port,
                               timeout_graceful_shutdown=config.shutdown_timeout_s, log_level="info")
    try:
        uvicorn.Server(uv_config).run()
    finally:
        service.close(cancel_running=True, timeout=config.shutdown_timeout_s)
