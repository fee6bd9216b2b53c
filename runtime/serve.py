"""tilert-serve: an OpenAI-compatible HTTP server for one compiled model, batch 1.

    tilert-serve build/llama-3.2-1b --tokenizer meta-llama/Llama-3.2-1B-Instruct
    tilert-serve out/ --host 0.0.0.0 --port 8000 --model-name llama

Endpoints: GET /v1/models, POST /v1/completions and /v1/chat/completions, with
`stream: true` as server-sent events. A request's max_tokens, temperature, top_p, top_k,
stop and seed are honoured (what it leaves out comes from generation_config.json), and
the response reports usage. Requests run one at a time on one worker thread, in arrival
order: the decoder holds one sequence (the kernel is batch 1). A streamed token reaches the
client as soon as the kernel writes it to mapped host memory (docs/serving.md); a client
that disconnects stops the kernel at its next token. A bad request is an OpenAI-style
error object with a 4xx status, and the server keeps serving. Without a GPU (or with
--device cpu) the interpreter serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from tilert_compiler import __version__
from tilert_compiler.models.text import ConfigError
from tilert_compiler.runtime import log as logs
from tilert_compiler.runtime.artifact import ArtifactError
from tilert_compiler.runtime.cli import (
    EXIT_BAD_INPUT,
    UsageError,
    _Parser,
    add_model_args,
    fail,
    load_model,
    open_model,
)
from tilert_compiler.runtime.model import Cancelled, Completion, Model, stop_strings
from tilert_compiler.runtime.sampling import GenerationError
from tilert_compiler.runtime.tokenizer import TokenizerError

PROG = "tilert-serve"
COMPLETION_MAX_TOKENS = 16  # the OpenAI API's default for /v1/completions
MAX_STOPS = 16
log = logs.log


class ApiError(Exception):
    """A request the server refuses: an OpenAI error object with this status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code or None


def _error_body(status: int, message: str, param=None, code=None) -> dict:
    kind = {
        400: "invalid_request_error",
        404: "not_found_error",
        405: "invalid_request_error",
        500: "server_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, param=None, code=None) -> JSONResponse:
    return JSONResponse(_error_body(status, message, param, code), status_code=status)


# --------------------------------------------------------------------------- requests
# The fields OpenAI's clients send; extra ones are accepted and ignored (clients add their
# own), and the features batch-1 decoding does not offer are refused by name.


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = False  # vLLM's extension: run to max_tokens (benchmarks)


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None


class ChatRequest(_Request):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class Job:
    """A request checked and tokenized: what the worker runs."""

    kind: Literal["text_completion", "chat.completion"]
    prompt: list[int]
    max_tokens: int
    sampling: dict  # temperature, top_k, top_p, seed
    stop: list[str]
    stream: bool
    usage_in_stream: bool
    ignore_eos: bool = False


def _refuse_unsupported(req: _Request) -> None:
    def no(param: str, why: str) -> ApiError:
        return ApiError(400, f"{param}: {why}", param, "unsupported")

    if req.n not in (None, 1):
        raise no("n", f"one completion per request (batch 1); got {req.n}")
    if req.presence_penalty or req.frequency_penalty:
        which = "presence_penalty" if req.presence_penalty else "frequency_penalty"
        raise no(which, "penalties are not supported")
    if req.logit_bias:
        raise no("logit_bias", "not supported")
    if isinstance(req, CompletionRequest):
        if req.logprobs:
            raise no("logprobs", "not supported")
        if req.echo:
            raise no("echo", "not supported")
        if req.best_of not in (None, 1):
            raise no("best_of", "one completion per request (batch 1)")
        if req.suffix:
            raise no("suffix", "not supported")
    if isinstance(req, ChatRequest):
        if req.logprobs:
            raise no("logprobs", "not supported")
        if req.tools:
            raise no("tools", "tool calls are not supported")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise no("response_format", "only text responses")


def _chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the chat template takes them: content as one string."""
    if not messages:
        raise ApiError(400, "messages must hold at least one message", "messages")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            raise ApiError(400, f"messages[{i}].role must be a string", "messages")
        if isinstance(content, list):  # parts: text only
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text"):
                    raise ApiError(
                        400, f"messages[{i}].content: only text parts are supported", "messages"
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or parts", "messages")
        out.append({**m, "role": role, "content": content})
    return out


# --------------------------------------------------------------------------- the server


class Server:
    """One model, one worker thread: requests run one at a time, in arrival order."""

    def __init__(self, model: Model, name: str):
        self.model, self.name = model, name
        self.created = int(time.time())
        self.worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="decoder", initializer=self._bind_device
        )
        self.running: set[threading.Event] = set()  # the cancel flags of queued jobs

    def close(self) -> None:
        """Shutting down: every queued or running job stops at its next token."""
        for cancel in list(self.running):
            cancel.set()
        self.worker.shutdown(wait=False, cancel_futures=True)

    def _bind_device(self) -> None:
        if self.model.device.startswith("cuda"):  # the worker's CUDA device is the model's
            import torch

            torch.cuda.set_device(self.model.decoder.device)

    # ------------------------------------------------------------ checks
    def job(self, req: _Request) -> Job:
        if req.model != self.name:
            raise ApiError(
                404,
                f"The model '{req.model}' does not exist; this server serves '{self.name}'",
                "model",
                "model_not_found",
            )
        _refuse_unsupported(req)
        chat = isinstance(req, ChatRequest)
        kind: Literal["text_completion", "chat.completion"] = (
            "chat.completion" if chat else "text_completion"
        )
        try:
            if isinstance(req, ChatRequest):
                prompt = self.model.chat_ids(_chat_messages(req.messages))
                max_tokens = req.max_completion_tokens
                if max_tokens is None:
                    max_tokens = req.max_tokens
            else:
                prompt = self._prompt(req.prompt)  # type: ignore[attr-defined]
                max_tokens = req.max_tokens
        except TokenizerError as e:
            raise ApiError(400, str(e), "messages" if chat else "prompt") from None
        room = self.model.room(len(prompt))
        if max_tokens is None:
            max_tokens = min(room, COMPLETION_MAX_TOKENS) if kind == "text_completion" else room
        if max_tokens < 1 or max_tokens > room:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.model.max_seq_len} tokens; "
                f"the prompt holds {len(prompt)}, so max_tokens must be in 1..{max(room, 0)} "
                f"(got {max_tokens})",
                "max_tokens",
                "context_length_exceeded" if max_tokens > room else None,
            )
        seed = req.seed
        if seed is None:  # the API's default: a fresh draw per request
            seed = secrets.randbits(63)
        sampling = {
            "temperature": req.temperature,
            "top_k": req.top_k,
            "top_p": req.top_p,
            "seed": seed,
        }
        try:
            self.model.sampling(**sampling)
            stop = stop_strings(req.stop)
        except GenerationError as e:
            raise ApiError(400, str(e), _param_of(str(e))) from None
        if len(stop) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} strings (got {len(stop)})", "stop")
        usage = bool((req.stream_options or {}).get("include_usage"))
        return Job(
            kind, prompt, max_tokens, sampling, stop, bool(req.stream), usage, bool(req.ignore_eos)
        )

    def _prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            return self.model.encode(prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            try:
                return self.model.encode(prompt)
            except GenerationError as e:
                raise ApiError(400, str(e), "prompt") from None
        raise ApiError(400, "prompt: one prompt per request (batch 1)", "prompt", "unsupported")

    # ------------------------------------------------------------ running
    def _complete(
        self, job: Job, on_text: Callable[[str], None] | None, cancel: threading.Event
    ) -> Completion:
        """On the worker thread."""
        self.running.add(cancel)
        try:
            return self.model.complete(
                job.prompt,
                job.max_tokens,
                stop=job.stop,
                stop_ids=[] if job.ignore_eos else None,
                on_text=on_text,
                cancelled=cancel.is_set,
                **job.sampling,
            )
        except Cancelled as e:
            log.info(f"a client left: stopped after {e.tokens} of {job.max_tokens} tokens")
            raise
        finally:
            self.running.discard(cancel)

    async def answer(self, job: Job, request: Request) -> dict:
        """A whole response; a client that leaves first cancels the job."""
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.worker, self._complete, job, None, cancel)
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.25)
            if done:
                break
            if await request.is_disconnected():
                cancel.set()
        done_ = _result(fut.result)
        rid, created = _ids(job)
        if job.kind == "chat.completion":
            choice: dict = {
                "index": 0,
                "message": {"role": "assistant", "content": done_.text},
                "logprobs": None,
                "finish_reason": done_.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": done_.text,
                "logprobs": None,
                "finish_reason": done_.finish_reason,
            }
        return {
            "id": rid,
            "object": job.kind,
            "created": created,
            "model": self.name,
            "choices": [choice],
            "usage": _usage(done_),
        }

    async def events(self, job: Job) -> AsyncIterator[str]:
        """Server-sent events: a chunk per piece of text as the kernel draws it (pieces that
        queued up while the client was slow go out together), then the finish reason,
        usage if asked, and [DONE]. Closed early (the client left), it cancels the job."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        cancel = threading.Event()

        def on_text(text: str) -> None:  # on the worker thread
            loop.call_soon_threadsafe(queue.put_nowait, text)

        fut = loop.run_in_executor(self.worker, self._complete, job, on_text, cancel)
        fut.add_done_callback(lambda _: queue.put_nowait(None))
        rid, created = _ids(job)
        chat = job.kind == "chat.completion"
        head = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": self.name,
        }

        def chunk(text: str | None, finish: str | None = None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return _sse({**head, "choices": [choice]})

        try:
            if chat:
                delta = {"role": "assistant", "content": ""}
                first = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                yield _sse({**head, "choices": [first]})
            ended = False
            while not ended:
                pieces = [await queue.get()]
                while not queue.empty():
                    pieces.append(queue.get_nowait())
                if pieces[-1] is None:
                    ended = True
                    pieces.pop()
                if pieces:
                    yield chunk("".join(p for p in pieces if p is not None))
            try:
                done = _result(fut.result)
            except ApiError as e:
                yield _sse(_error_body(e.status, str(e), e.param, e.code))
                yield "data: [DONE]\n\n"
                return
            yield chunk(None, done.finish_reason)
            if job.usage_in_stream:
                yield _sse({**head, "choices": [], "usage": _usage(done)})
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # a no-op once the job is done; else the client left
            fut.add_done_callback(_quiet)


def _result(get: Callable[[], Completion]) -> Completion:
    """The worker's answer, its failures as ApiErrors."""
    try:
        return get()
    except GenerationError as e:  # what the checks before the run did not catch
        raise ApiError(400, str(e), _param_of(str(e))) from None
    except Cancelled:
        raise ApiError(499, "the client closed the request") from None
    except Exception as e:  # the kernel or the interpreter failed: the next request resets
        log.error(f"the request failed: {' '.join(str(e).split())}")
        raise ApiError(500, f"the model failed: {' '.join(str(e).split())}") from None


def _quiet(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a cancelled job's Cancelled is expected


def _param_of(message: str) -> str | None:
    head = message.split(" ", 1)[0].rstrip(":")
    return head if head in ("temperature", "top_p", "top_k", "seed", "stop") else None


def _ids(job: Job) -> tuple[str, int]:
    prefix = "chatcmpl" if job.kind == "chat.completion" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}", int(time.time())


def _usage(done: Completion) -> dict:
    n = len(done.ids)
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": done.prompt_tokens + n,
        # the prompt's first tokens whose cache rows the last request left (prefix reuse)
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


# --------------------------------------------------------------------------- the app


def create_app(model: Model, name: str) -> FastAPI:
    """The ASGI app serving `model` under `name`."""
    server = Server(model, name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.close()

    app = FastAPI(title=PROG, version=__version__, lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, str(e), e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        msg = first.get("msg", "invalid request")
        return _error(400, f"{where}: {msg}" if where else msg, loc[0] if loc else None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error: {type(e).__name__}")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> dict:
        if model_id != name:
            raise ApiError(
                404, f"The model '{model_id}' does not exist", "model", "model_not_found"
            )
        return _model_card(server)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await _respond(server, server.job(req), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        return await _respond(server, server.job(req), request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


def _model_card(server: Server) -> dict:
    return {"id": server.name, "object": "model", "created": server.created, "owned_by": "tilert"}


async def _respond(server: Server, job: Job, request: Request):
    if job.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            server.events(job), media_type="text/event-stream", headers=headers
        )
    try:
        return await server.answer(job, request)
    except ApiError as e:
        return _error(e.status, str(e), e.param, e.code)


# --------------------------------------------------------------------------- command


def _parser():
    p = _Parser(prog=PROG, description="Serve a tilert-compile artifact over the OpenAI API.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--model-name", help="the model's name in the API (default: the artifact folder's name)"
    )
    logs.add_flags(p)
    return p


def _check_address(host: str, port: int) -> None:
    """--host and --port name a free address on this machine, or one UsageError line."""
    if not 0 <= port < 65536:
        raise UsageError(f"--port must be in 0..65535 (got {port})")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind(addr)
    except OSError as e:
        why = getattr(e, "strerror", None) or str(e)
        raise UsageError(f"cannot listen on {host}:{port} ({why})") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logs.setup(PROG, args, loggers=("uvicorn",))
    try:
        _check_address(args.host, args.port)  # before the weights load (minutes at 8B)
        opened = open_model(args, text=PROG)
        model, where = load_model(opened)
    except (ArtifactError, ConfigError, UsageError, TokenizerError) as e:
        return fail(e, EXIT_BAD_INPUT)
    import uvicorn

    name = args.model_name or opened.path.resolve().name
    app = create_app(model, name)
    log.info(f"serving {name} ({where}) at http://{args.host}:{args.port}/v1")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        log_level=logging.getLevelName(level).lower(),
        access_log=args.verbose,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
