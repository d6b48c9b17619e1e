"""OpenAI-compatible HTTP API (FastAPI + uvicorn) over the continuous-batching engine.

Endpoints: /v1/completions, /v1/chat/completions (SSE streaming or not), /v1/models, /health.
Errors use OpenAI's body shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rodimus.serve.engine import Engine, QueueFull, RequestHandle
from rodimus.serve.sampling import MAX_STOP_STRINGS, SamplingParams


@dataclass
class ServerConfig:
    model_name: str  # the id /v1/models lists and requests must name
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    request_timeout: float = 600.0  # seconds a request may run (queue + generation) before it is dropped
    max_tokens_limit: int = 4096  # largest max_tokens accepted
    default_max_tokens: int = 256  # max_tokens when a request gives none


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ---- request schemas --------------------------------------------------------------------------------
class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension (as in vLLM): 0 = off
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)  # extension
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = Field(None)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request is supported
    ignore_eos: bool = False  # extension
    # Not supported: accepted only at their "off" values, so a request for them fails loudly (400).
    logprobs: Literal[False, 0] | None = None
    top_logprobs: Literal[0] | None = None
    echo: Literal[False] = False
    best_of: int | None = Field(None, ge=1, le=1)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] = Field(...)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def _validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    return APIError(
        400, f"{param or 'body'}: {err.get('msg', 'invalid value')}", param=param, code="invalid_value"
    )


# ---- app ----------------------------------------------------------------------------------------------
def create_app(engine: Engine, tokenizer, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="rodimus", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.config = engine, config

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(ValidationError)
    async def _invalid_body(request: Request, exc: ValidationError):
        return _validation_error(exc).response()

    async def authorize(request: Request) -> None:
        if config.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                raise APIError(401, "Incorrect or missing API key.", code="invalid_api_key")

    auth = [Depends(authorize)]

    @app.get("/health")
    async def health():
        s = engine.stats()
        return {"status": "ok", "active": s["active"], "waiting": s["waiting"]}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "rodimus"}],
        }

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):
        req = CompletionRequest.model_validate(await _json_body(request, config))
        _check_model(req.model, config)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if tokenizer is None:
                raise APIError(
                    400, "this server has no tokenizer: send prompt as a list of token ids", param="prompt"
                )
            ids = tokenizer(prompt).input_ids
        else:
            ids = list(prompt)
        return await _run(request, req, ids, chat=False)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(request: Request):
        req = ChatRequest.model_validate(await _json_body(request, config))
        _check_model(req.model, config)
        if tokenizer is None:
            raise APIError(400, "this server has no tokenizer, so chat is unavailable", param="messages")
        messages = [{"role": m.role, "content": _text(m.content)} for m in req.messages]
        ids = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False).input_ids
        return await _run(request, req, ids, chat=True)

    async def _run(request: Request, req: _Sampling, ids: list[int], chat: bool):
        params = _params(req, config)
        try:
            handle = engine.submit(ids, params, timeout=config.request_timeout)
        except QueueFull as exc:
            raise APIError(503, f"server busy: {exc}", "server_error", code="server_busy") from exc
        except ValueError as exc:
            raise APIError(400, str(exc), param="prompt") from exc
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _sse(handle, rid, created, config, chat, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        result = await _collect(handle, request)
        if result is None:  # the client went away; its slot is already freed
            return JSONResponse({}, status_code=499)
        text, last = result
        if last.finish_reason not in ("stop", "length"):
            raise _finish_error(last, config)
        usage = {
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens,
        }
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": last.finish_reason,
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": last.finish_reason, "logprobs": None}
            obj = "text_completion"
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": config.model_name,
            "choices": [choice],
            "usage": usage,
        }

    return app


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's chat template when it has one; else a plain 'role: content' transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for p in content:
        if p.get("type") != "text":
            raise APIError(400, f"unsupported content part type {p.get('type')!r}", param="messages")
        parts.append(str(p.get("text", "")))
    return "".join(parts)


async def _json_body(request: Request, config: ServerConfig) -> Any:
    limit = config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body exceeds {limit} bytes", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _check_model(name: str, config: ServerConfig) -> None:
    if name != config.model_name:
        raise APIError(
            404,
            f"The model '{name}' does not exist; this server serves '{config.model_name}'.",
            param="model",
            code="model_not_found",
        )


def _params(req: _Sampling, config: ServerConfig) -> SamplingParams:
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or config.default_max_tokens
    if max_tokens > config.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens must be <= {config.max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
            code="invalid_value",
        )
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
        raise APIError(400, f"stop must be at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
            stop=stop,
            ignore_eos=req.ignore_eos,
        )
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc


def _finish_error(last, config: ServerConfig) -> APIError:
    if last.finish_reason == "timeout":
        return APIError(
            504, f"request exceeded the {config.request_timeout:g} s timeout", "timeout", code="timeout"
        )
    if last.finish_reason == "cancelled":
        return APIError(503, last.error or "request cancelled", "server_error", code="cancelled")
    return APIError(500, last.error or "generation failed", "server_error", code="internal_error")


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(handle: RequestHandle, request: Request):
    """All of a request's output, or None if the client disconnects first (the request is cancelled)."""

    async def drain():
        parts, last = [], None
        async for out in handle:
            parts.append(out.text)
            last = out
        return "".join(parts), last

    work = asyncio.ensure_future(drain())
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            handle.cancel()
            work.cancel()
        gone.cancel()
    return work.result() if work.done() and not work.cancelled() else None


async def _sse(handle: RequestHandle, rid: str, created: int, config: ServerConfig, chat: bool, usage: bool):
    model = config.model_name
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        if chat:
            yield chunk(None, None, first=True)
        async for out in handle:
            if out.finished and out.finish_reason not in ("stop", "length"):
                err = _finish_error(out, config)
                if out.text:
                    yield chunk(out.text, None)
                yield f"data: {json.dumps(err.body())}\n\n"
                break
            if out.text or out.finished:
                yield chunk(out.text, out.finish_reason if out.finished else None)
            if out.finished and usage:
                u = {
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                    "total_tokens": out.prompt_tokens + out.completion_tokens,
                }
                tail = {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": u,
                }
                yield f"data: {json.dumps(tail)}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # normal end, or the client disconnected (the generator is closed/cancelled)
        handle.cancel()


# ---- running ------------------------------------------------------------------------------------------
class BackgroundServer:
    """uvicorn in a daemon thread on an OS-chosen port (tests, benchmarks, notebooks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", timeout_keep_alive=30, limit_concurrency=4096
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host
        self.port = port

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
