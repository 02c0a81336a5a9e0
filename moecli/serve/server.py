"""The HTTP server: FastAPI on uvicorn, llama-server's endpoints and conventions.

    POST /v1/chat/completions, /v1/completions   streaming (SSE) or not; usage and timings
    GET  /v1/models, /health                      the loaded model; 503 while it loads
    GET  /slots, /metrics                         each slot's state (--no-slots: 501), Prometheus
                                                  counters (with --metrics, else 501)

The model loads in a thread after the server listens (so /health answers 503 meanwhile). One
Scheduler owns llama.cpp; the handlers tokenize, queue a Job and turn its events into responses.
Ctrl-C / SIGTERM: the scheduler ends every job (streams finish), then uvicorn stops.

An RPC worker that stops answering loses the engine for good (llama.cpp cannot go on without it):
the requests in flight end with a 503 (a stream with an error event), as does every later one, and
/health answers 503 naming the worker, until the server is restarted; the server itself goes on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moecli.engine import Sampling
from moecli.engine.batch import prompt_tokens
from moecli.errors import BadInput, EngineLost, MoecliError
from moecli.serve import formats, monitor
from moecli.serve.api import ChatCompletionRequest, CompletionRequest
from moecli.serve.errors import LOADING, UNAUTHORIZED, ApiError, bad_request, not_supported, too_long
from moecli.serve.slots import Job, Scheduler, Stats


@dataclass
class ServerState:
    alias: str
    api_key: str | None = None
    max_body: int = 8 * 2**20
    endpoint_slots: bool = True  # llama-server's --slots / --no-slots
    endpoint_metrics: bool = False  # llama-server's --metrics
    rates: monitor.Rates = field(default_factory=monitor.Rates)
    engine: object | None = None
    scheduler: Scheduler | None = None
    load_error: BaseException | None = None
    lost: EngineLost | None = None  # the engine cannot go on (an RPC worker stopped answering)
    stopping: bool = False
    dispatcher: _Dispatcher | None = None
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    created: int = field(default_factory=lambda: int(time.time()))


class _Dispatcher:
    """Events from the worker thread to the event loop, with one wake-up of the loop for all that
    arrived meanwhile (one per decode step, not one per token per request): every wake-up costs
    the worker and llama.cpp's threads CPU time on a small machine."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def emitter(self, queue: asyncio.Queue) -> Callable[[str, object], None]:
        def emit(kind: str, value: object) -> None:
            with self._lock:
                self._pending.append((queue, (kind, value)))
                if self._scheduled:
                    return
                self._scheduled = True
            self.loop.call_soon_threadsafe(self._drain)
        return emit

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, collections.deque()
            self._scheduled = False
        for queue, event in items:
            queue.put_nowait(event)


# --- ASGI middleware: body size and API key -------------------------------------------------------
class _TooLarge(Exception):
    pass


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive, cap: int = 64 * 2**20) -> None:
    """Read (and drop) what the client still sends, up to `cap`, so that it reads the answer rather
    than a reset connection."""
    seen = 0
    while seen < cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _guard(app, state: ServerState):
    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if state.api_key and scope["path"] not in ("/health", "/v1/health"):  # llama-server's public ones
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), state.api_key.encode()):
                return await _send_error(send, UNAUTHORIZED)
        limit = state.max_body
        too_large = ApiError(413, f"the request body is larger than {limit} bytes", "invalid_request_error")
        try:
            if int(headers.get(b"content-length", b"0") or 0) > limit:
                await _drain(receive)
                return await _send_error(send, too_large)
        except ValueError:
            return await _send_error(send, bad_request("bad Content-Length"))
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _drain(receive)
                await _send_error(send, too_large)
    return guarded


# --- the app --------------------------------------------------------------------------------------
def create_app(state: ServerState):
    api = FastAPI(title="moecli", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                             for e in exc.errors())
        return JSONResponse(bad_request(problems or "invalid request").body(), status_code=400)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = "File Not Found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(ApiError(exc.status_code, message, kind).body(), status_code=exc.status_code)

    def ready() -> Scheduler:
        if state.lost is not None:
            raise _engine_error(state.lost)
        if state.scheduler is None or state.stopping:
            raise ApiError(503, "the server is stopping", "unavailable_error") if state.stopping else LOADING
        return state.scheduler

    @api.get("/health")
    @api.get("/v1/health")
    async def health():
        if state.lost is not None:
            return JSONResponse(_engine_error(state.lost).body(), status_code=503)
        if state.scheduler is None:
            return JSONResponse(LOADING.body(), status_code=503)
        return {"status": "ok"}

    @api.get("/v1/models")
    @api.get("/models")
    async def models():
        ready()
        engine = state.engine
        return {"object": "list", "data": [{
            "id": state.alias, "object": "model", "created": state.created, "owned_by": "moecli",
            "meta": {"n_ctx": engine.n_ctx, "n_ctx_slot": engine.n_ctx_seq, "slots": engine.n_seq_max,
                     "n_ctx_train": engine.n_ctx_train, "n_params": engine.model_n_params, "size": engine.model_size,
                     "n_vocab": engine.n_vocab, "architecture": engine.arch}}]}

    @api.get("/slots")
    async def slots(fail_on_no_slot: str = ""):
        scheduler = ready()
        if not state.endpoint_slots:
            raise not_supported("slots", "--slots")
        snapshot = scheduler.snapshot
        if fail_on_no_slot and all(s.processing for s in snapshot.slots):
            raise ApiError(503, "no slot available", "unavailable_error")
        return [monitor.slot_json(s) for s in snapshot.slots]

    @api.get("/metrics")
    async def metrics():
        scheduler = ready()
        if not state.endpoint_metrics:
            raise not_supported("metrics", "--metrics")
        snapshot = scheduler.snapshot
        return PlainTextResponse(monitor.prometheus(snapshot, state.rates), media_type="text/plain; version=0.0.4",
                                 headers={"Process-Start-Time-Unix": str(int(snapshot.t_start))})

    @api.post("/v1/chat/completions")
    @api.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        scheduler = ready()
        rendered = formats.render(state.engine, body)  # ApiError 400: the template, the schema, tool_choice
        parser = formats.ReplyParser(rendered)
        return await _complete(request, scheduler, body, rendered.prompt, parser, chat=True,
                               grammar=rendered.grammar, special=rendered.special)

    @api.post("/v1/completions")
    @api.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        scheduler = ready()
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise bad_request("only one prompt per request is supported")
            prompt = prompt[0]
        return await _complete(request, scheduler, body, prompt, None, chat=False)

    async def _complete(request: Request, scheduler: Scheduler, body, prompt, parser, *, chat: bool,
                        grammar: str | None = None, special: bool = False):
        if body.n != 1:
            raise bad_request(f"n = {body.n}: only one choice per request is supported (n = 1)")
        engine = state.engine
        if isinstance(prompt, list):
            if not all(isinstance(t, int) and 0 <= t < engine.n_vocab for t in prompt):
                raise bad_request("prompt tokens must be token ids of this model's vocabulary")
            tokens = list(prompt)
        else:
            tokens = prompt_tokens(engine, prompt)
        if not tokens:
            raise bad_request("the prompt is empty")
        if len(tokens) >= scheduler.n_ctx_slot:
            raise too_long(len(tokens), scheduler.n_ctx_slot)
        sampling, n_predict = _sampling(engine, body, chat)
        if grammar is not None:
            sampling = sampling.with_(grammar=grammar)
        if state.dispatcher is None:
            state.dispatcher = _Dispatcher(asyncio.get_running_loop())
        events: asyncio.Queue = asyncio.Queue()
        job = Job(tokens, sampling, state.dispatcher.emitter(events), stop=body.stops(), n_predict=n_predict,
                  special=special, stream=body.stream)
        scheduler.submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        path = request.url.path
        if body.stream:
            return StreamingResponse(_stream(job, events, body, parser, rid, chat, path),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _whole(request, job, events, body, parser, rid, chat, path)

    def _envelope(rid: str, chat: bool) -> dict:
        return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": state.alias, "system_fingerprint": "moecli"}

    def _usage(stats: Stats) -> dict:
        return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.predicted_n,
                "total_tokens": stats.prompt_tokens + stats.predicted_n,
                "prompt_tokens_details": {"cached_tokens": stats.cache_n}}

    def _log(path: str, status: int, stats: Stats | None, error: str | None = None) -> None:
        if stats is None:
            state.log(f"POST {path} {status} · {error}")
            return
        t = stats.timings()
        state.log(f"POST {path} {status} · prompt {stats.prompt_tokens} tok ({stats.cache_n} cached, {stats.prompt_n} new, "
                  f"{t['prompt_per_second']:.1f} tok/s) · generated {stats.predicted_n} tok, "
                  f"{t['predicted_per_second']:.1f} tok/s · {stats.finish_reason}")

    async def _stream(job: Job, events: asyncio.Queue, body, parser, rid: str, chat: bool, path: str):
        def sse(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def chunk(delta_or_text, finish=None, **extra):
            choice = ({"index": 0, "delta": delta_or_text, "logprobs": None, "finish_reason": finish} if chat
                      else {"index": 0, "text": delta_or_text, "logprobs": None, "finish_reason": finish})
            return sse({**_envelope(rid, chat), "choices": [choice], **extra})

        finished = False
        try:
            if chat:
                yield chunk({"role": "assistant", "content": None})
            while True:
                kind, value = await events.get()
                if kind == "text":
                    if chat:
                        for delta in parser.feed(value):
                            yield chunk(delta)
                    else:
                        yield chunk(value)
                elif kind == "done":
                    if chat:
                        for delta in parser.finish():
                            yield chunk(delta)
                    yield chunk({} if chat else "", _finish_reason(value, parser), timings=value.timings())
                    if body.include_usage():
                        yield sse({**_envelope(rid, chat), "choices": [], "usage": _usage(value)})
                    yield "data: [DONE]\n\n"
                    finished = True
                    _log(path, 200, value)
                    return
                else:
                    error = _engine_error(value)
                    yield sse(error.body())
                    finished = True
                    _log(path, error.status, None, str(value))
                    return
        finally:
            if not finished:
                job.cancel()
                _log(path, 499, None, "the client went away; its slot was freed")

    async def _whole(request: Request, job: Job, events: asyncio.Queue, body, parser, rid: str, chat: bool, path: str):
        watcher = asyncio.create_task(_until_disconnect(request, job, events))
        text: list[str] = []
        try:
            while True:
                kind, value = await events.get()
                if kind == "text":
                    text.append(value)
                elif kind == "gone":
                    _log(path, 499, None, "the client went away; its slot was freed")
                    return JSONResponse({}, status_code=499)
                elif kind == "error":
                    error = _engine_error(value)
                    _log(path, error.status, None, str(value))
                    return JSONResponse(error.body(), status_code=error.status)
                else:
                    break
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            watcher.cancel()
        stats: Stats = value
        if chat:
            for piece in text:
                parser.feed(piece)
            parser.finish()
            choice = {"index": 0, "message": parser.message(), "logprobs": None,
                      "finish_reason": _finish_reason(stats, parser)}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": stats.finish_reason}
            kind = "text_completion"
        _log(path, 200, stats)
        return {**_envelope(rid, chat), "object": kind, "choices": [choice], "usage": _usage(stats),
                "timings": stats.timings()}

    return _guard(api, state)


async def _until_disconnect(request: Request, job: Job, events: asyncio.Queue) -> None:
    """Wait for the client of a non-streaming reply to close its connection (the ASGI server's
    `http.disconnect`, which comes the moment it does): then the job is cancelled, so that its slot
    is free after the decode step under way, and the handler told ("gone")."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the body was read already: nothing else comes before the disconnect
    except Exception:  # noqa: BLE001 - the connection's state is unknown: the reply goes on
        return
    job.cancel()
    events.put_nowait(("gone", None))


def _finish_reason(stats: Stats, parser) -> str:
    """OpenAI's: "tool_calls" when the reply called tools, else "length" (max_tokens) or "stop"."""
    return "tool_calls" if parser is not None and parser.has_tool_calls else stats.finish_reason


def _engine_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EngineLost):  # the server is up but cannot serve: 503, as llama-server's while loading
        return ApiError(503, f"{exc.message}; {exc.hint}", "unavailable_error")
    message = exc.message if isinstance(exc, MoecliError) else str(exc)
    if isinstance(exc, BadInput):  # what the request asked that llama.cpp refused (a grammar)
        return bad_request(message)
    return ApiError(500, message or type(exc).__name__, "server_error")


def _sampling(engine, body, chat: bool) -> tuple[Sampling, int]:
    typed = {name: value for name, value in (
        ("temp", body.temperature), ("top_p", body.top_p), ("top_k", body.top_k), ("min_p", body.min_p),
        ("seed", body.seed), ("presence_penalty", body.presence_penalty),
        ("frequency_penalty", body.frequency_penalty), ("repeat_penalty", body.repeat_penalty),
        ("repeat_last_n", body.repeat_last_n)) if value is not None}
    if body.logit_bias:
        bias = []
        for key, value in body.logit_bias.items():
            try:
                token = int(key)
            except ValueError:
                raise bad_request(f"logit_bias key {key!r} is not a token id") from None
            if not 0 <= token < engine.n_vocab:
                raise bad_request(f"logit_bias token {token} is not in the vocabulary (0..{engine.n_vocab - 1})")
            bias.append((token, float(value)))
        typed["logit_bias"] = tuple(bias)
    if body.seed is not None:
        typed["seed"] = body.seed & 0xFFFFFFFF
    limits = [v for v in (getattr(body, "max_completion_tokens", None), body.max_tokens, body.n_predict) if v is not None]
    n_predict = limits[0] if limits else -1
    try:
        sampling = Sampling.from_model(engine.metadata, ignore_eos=body.ignore_eos, **typed)
    except MoecliError as exc:
        raise bad_request(exc.message) from None
    return sampling, n_predict


# --- running it -----------------------------------------------------------------------------------
def run(load: Callable[[], object], *, host: str, port: int, alias: str, api_key: str | None = None,
        endpoint_slots: bool = True, endpoint_metrics: bool = False, scheduler_options: dict | None = None,
        on_ready: Callable[[object], None] | None = None, log: Callable[[str], None] | None = None,
        chat_template: tuple[str | None, object | None] = (None, None)) -> None:
    """Listen on host:port at once, load the model in a thread (503 meanwhile), serve until
    Ctrl-C or SIGTERM. A failed load stops the server and is raised here."""
    import uvicorn

    from moecli.engine import faults

    state = ServerState(alias=alias, api_key=api_key, endpoint_slots=endpoint_slots, endpoint_metrics=endpoint_metrics)
    received: list[int] = []
    if log:
        state.log = log

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # Ctrl-C, SIGTERM: end the replies first, then uvicorn
            state.stopping = True
            if state.scheduler is not None:
                state.scheduler.stop(wait=False)
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # uvicorn would re-raise it after shutdown, before our cleanup
            received.append(sig)

    config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off")
    server = _Server(config)

    def engine_lost(exc: EngineLost) -> None:
        """From the thread that met the fault (ggml-rpc's, a compute thread, the RPC watchdog): every
        request ends (503) and /health says why."""
        state.lost = exc
        state.log(f"{exc.message}: every request is answered 503 now; {exc.hint}")
        if state.scheduler is not None:
            state.scheduler.lost(exc)
        else:  # while loading: a failed load
            state.load_error = exc
            server.should_exit = True

    faults.on_fault(engine_lost)

    def loader() -> None:
        try:
            engine = load()
            if state.stopping:
                engine.close()
                return
            if any(chat_template):  # --chat-template / --chat-template-file (checked before the load)
                engine.use_chat_template(*chat_template)
            with contextlib.suppress(MoecliError):  # none that fits: each chat request is a 400 saying so
                if engine.template.notice:
                    state.log(engine.template.notice)
                engine.render_chat([{"role": "user", "content": "hi"}])  # compiled here, not in a handler
            state.engine = engine
            state.scheduler = Scheduler(engine, **(scheduler_options or {}))
            if state.lost is not None:  # lost before the scheduler was there to be told
                state.scheduler.lost(state.lost)
            if on_ready:
                on_ready(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by run()
            state.load_error = exc
            server.should_exit = True

    thread = threading.Thread(target=loader, name="moecli-load", daemon=True)
    thread.start()
    try:
        server.run()
    finally:
        state.stopping = True
        if state.scheduler is not None:
            state.scheduler.stop()
        thread.join(timeout=1)
        faults.on_fault(None)
        if state.engine is not None:
            if state.lost is not None:  # the decoding thread is blocked inside llama.cpp for good:
                state.engine.abandon()  # no cleanup under it (it could hang or crash the exit)
            else:
                state.engine.close()
    if state.load_error is not None:
        raise state.load_error
    if signal.SIGINT in received:
        raise KeyboardInterrupt  # Ctrl-C: the CLI exits 130; SIGTERM: a clean exit 0
