"""The Engine: a model loaded with a LlamaParams and one context, streaming chat and completions
with llama.cpp's own timings, and llama-bench's tests on it; what the load reported (`LoadReport`)."""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import llama_cpp.llama_cpp as _llama

from moecli.engine.benchtests import _test_gen, _test_prompt, _timed, _warmup
from moecli.engine.capi import (
    _GGML_BACKEND_DEVICE_TYPE_CPU,
    _dev_backend_reg,
    _dev_by_type,
    _init_backend,
    _llama_attach_threadpool,
    _llama_detach_threadpool,
    _reg_proc_address,
    _threadpool_params_default,
    _ThreadpoolParams,
    _vp,
)
from moecli.engine.loading import _load_model, _ModelParams, _new_context
from moecli.engine.logs import _KV_TYPES_LINE, _LOAD_MODE_LINE, _LOG, _LOG_WARN, _OVERRIDE_LINE, _error_detail
from moecli.engine.memory import BufferSizes, _buffer_sizes
from moecli.engine.rpc import watch as _rpc_watch
from moecli.engine.sampling import Sampling, _sampler_chain
from moecli.engine.threads import _resolve_threads
from moecli.errors import BadInput, EngineError
from moecli.params import LlamaParams
from moecli.templates import ChatTemplate, OutputFormat, choose_template, detect_format


def _meta_str(fn, *args) -> str | None:
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = fn(*args, buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", "replace")
        size = n + 1


def _model_metadata(model: int) -> dict[str, str]:
    out = {}
    for i in range(_llama.llama_model_meta_count(model)):
        key = _meta_str(_llama.llama_model_meta_key_by_index, model, i)
        if key is not None:
            out[key] = _meta_str(_llama.llama_model_meta_val_str_by_index, model, i) or ""
    return out


def _load_report(lines: Sequence[str], warnings: Sequence[str], buffers: BufferSizes, n_ctx: int) -> LoadReport:
    load_mode = flash = type_k = type_v = None
    overridden = []
    for line in lines:
        if m := _LOAD_MODE_LINE.search(line):
            load_mode = m.group(1)
        elif m := _KV_TYPES_LINE.match(line):
            type_k, type_v = m.groups()
        elif m := _OVERRIDE_LINE.match(line):
            overridden.append((m.group(1), m.group(2)))
        elif line.endswith("Flash Attention enabled"):
            flash = True
        elif "Flash Attention not supported" in line:
            flash = False
    return LoadReport(
        buffers=buffers,
        load_mode=load_mode,
        flash_attn=flash,
        type_k=type_k,
        type_v=type_v,
        n_ctx=n_ctx,
        overridden=tuple(overridden),
        warnings=tuple(warnings),
        log=tuple(lines),
    )


@dataclass(frozen=True)
class Timings:
    """One reply's timings with llama-server's per-response field names. The milliseconds are
    llama.cpp's own counters (llama_perf_context): prompt_ms is the prompt's evaluation, predicted_ms
    the single-token decodes of the reply (predicted_n of them). cache_n prompt tokens were reused
    from the KV cache; ttft_ms is wall time from the request to the first sampled token."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    ttft_ms: float
    cache_n: int = 0

    @property
    def prompt_per_second(self) -> float:
        return self.prompt_n / self.prompt_ms * 1e3 if self.prompt_ms > 0 else 0.0

    @property
    def predicted_per_second(self) -> float:
        return self.predicted_n / self.predicted_ms * 1e3 if self.predicted_ms > 0 else 0.0


@dataclass(frozen=True)
class LoadReport:
    """What llama.cpp reported while loading: buffer sizes, the load mode it used, whether flash
    attention ended up on, the KV cache types, the tensors an override moved (its debug lines),
    and the log itself (every level)."""

    buffers: BufferSizes
    load_mode: str | None  # "mmap", "none", "mlock", ... (llama.cpp resolves "auto")
    flash_attn: bool | None  # None when llama.cpp did not say (e.g. no attention layers)
    type_k: str | None
    type_v: str | None
    n_ctx: int
    overridden: tuple[tuple[str, str], ...]  # (tensor name, buffer type) as llama.cpp logged them
    warnings: tuple[str, ...] = ()  # its warning and error lines
    log: tuple[str, ...] = field(repr=False, default=())


class Utf8Stream:
    """Token bytes in, whole characters out: a character whose bytes are split over tokens (common
    for CJK and emoji in byte-level BPE vocabularies) is held back until its last byte arrives;
    bytes that can never form UTF-8 become U+FFFD, so the text is always valid."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def valid_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD. A str from the command line or a terminal
    that was not valid UTF-8 carries each bad byte as one (Python's surrogateescape); llama.cpp
    needs valid UTF-8, so those bytes become what a UTF-8 decoder with replacement shows."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        escaped = text.encode("utf-8", "surrogateescape") if all(
            "\udc80" <= c <= "\udcff" for c in text if "\ud800" <= c <= "\udfff") else None
        if escaped is not None:
            return escaped.decode("utf-8", "replace")
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


class Engine:
    """A loaded model with one context (one sequence): chat, complete, bench. Not thread-safe.
    Use as a context manager or call close(); llama.cpp's log stays captured while it is open."""

    def __init__(self, path: str | os.PathLike[str], params: LlamaParams | None = None, *,
                 on_progress: Callable[[float], None] | None = None,
                 on_log: Callable[[str], None] | None = None, n_seq_max: int = 1, kv_unified: bool = False) -> None:
        """Load a GGUF (the first file of a split one) with llama.cpp and make a context.

        on_progress gets llama.cpp's load progress (0.0 .. 1.0); raising from it cancels the load.
        on_log gets llama.cpp's raw log text (the CLI's --verbose); otherwise llama.cpp is quiet.
        Threads: params.n_threads, else the physical cores (llama.cpp's -t); n_threads_batch, else -t.
        n_seq_max: sequences in the context (the server's slots, engine.batch); chat() uses sequence 0."""
        self.n_seq_max, self.kv_unified = max(1, n_seq_max), kv_unified
        self._ctx = self._model = self._mparams = self._sink = self._threadpools = None  # what close() frees
        try:
            self._load(Path(path), params or LlamaParams(), on_progress, on_log)
        except BaseException:
            self.close()  # what the load made so far
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], params: LlamaParams | None = None, *,
             on_progress: Callable[[float], None] | None = None,
             on_log: Callable[[str], None] | None = None, **context) -> Engine:
        """Engine(path, params, ...) by the name callers use."""
        return cls(path, params, on_progress=on_progress, on_log=on_log, **context)

    def _load(self, path: Path, params: LlamaParams, on_progress: Callable[[float], None] | None,
              on_log: Callable[[str], None] | None) -> None:
        self.path = path
        self.params = params
        _init_backend()
        self._sink = sink = _LOG.open(on_log)
        t0 = time.perf_counter()
        self._mparams = _ModelParams(params, on_progress=on_progress)
        self._model = model = _load_model(path, self._mparams, sink)
        self.n_threads, self.n_threads_batch = _resolve_threads(params)
        self._ctx = ctx = _new_context(model, params, self.n_threads, self.n_threads_batch, sink,
                                        self.n_seq_max, self.kv_unified)
        self.load_seconds = time.perf_counter() - t0
        lines = sink.text()
        report = _load_report(lines, sink.text(_LOG_WARN), _buffer_sizes(ctx, lines), _llama.llama_n_ctx(ctx))
        if report.flash_attn is None and params.flash_attn != "auto":  # logged only when resolved
            report = replace(report, flash_attn=params.flash_attn == "on")
        self.report = report
        sink.keep_last(200)
        # llama-bench's model_type, model_size, model_n_params
        self.model_type = _meta_str(_llama.llama_model_desc, model) or ""
        self.model_size = _llama.llama_model_size(model)
        self.model_n_params = _llama.llama_model_n_params(model)
        self._vocab = _llama.llama_model_get_vocab(model)
        self._memory = _llama.llama_get_memory(ctx)
        self.n_ctx = _llama.llama_n_ctx(ctx)
        self.n_ctx_seq = _llama.llama_n_ctx_seq(ctx)  # what one sequence may hold
        self.n_batch = _llama.llama_n_batch(ctx)
        self.n_ctx_train = _llama.llama_model_n_ctx_train(model)
        self.n_vocab = _llama.llama_vocab_n_tokens(self._vocab)
        self.metadata = _model_metadata(model)
        self.arch = self.metadata.get("general.architecture", "")
        self.is_recurrent = bool(_llama.llama_model_is_recurrent(model) or _llama.llama_model_is_hybrid(model))
        template = _llama.llama_model_chat_template(model, None)
        self.chat_template: str | None = template.decode("utf-8", "replace") if template else None
        self.last_timings: Timings | None = None
        self.last_stop_reason: str | None = None  # "eog", "n_predict", "should_stop", "context_full"
        self._cached: list[int] = []  # the tokens in the KV cache, positions 0..n-1
        self._checkpoints: list = []  # engine.state.Checkpoint of sequence 0 (recurrent models), ascending
        self._template: ChatTemplate | None = None
        self._eog: tuple[int, ...] | None = None
        self._one = (_llama.llama_token * 1)()  # reused by every single-token decode
        self._one_batch = _llama.llama_batch_get_one(self._one, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._threadpools = self._attach_threadpools()

    @property
    def buffers(self) -> BufferSizes:
        return self.report.buffers

    def _attach_threadpools(self):
        """A CPU threadpool for the context, as llama-bench attaches one (ggml_threadpool_params
        defaults: poll 50, normal priority, no CPU mask); without one ggml makes and frees a
        threadpool for every graph it computes (ggml-cpu.c, ggml_graph_compute)."""
        cpu = _dev_by_type(_GGML_BACKEND_DEVICE_TYPE_CPU)
        reg = _dev_backend_reg(cpu) if cpu else None
        new = _reg_proc_address(reg, b"ggml_threadpool_new") if reg else None
        free = _reg_proc_address(reg, b"ggml_threadpool_free") if reg else None
        if not new or not free:
            return None
        new_fn = ctypes.CFUNCTYPE(_vp, ctypes.POINTER(_ThreadpoolParams))(new)
        self._threadpool_free = ctypes.CFUNCTYPE(None, _vp)(free)
        pools = {}
        for n in {self.n_threads, self.n_threads_batch}:
            tpp = _threadpool_params_default(n)
            pool = new_fn(ctypes.byref(tpp))
            if not pool:
                for p in pools.values():
                    self._threadpool_free(p)
                return None
            pools[n] = pool
        _llama_attach_threadpool(self._ctx, pools[self.n_threads], pools[self.n_threads_batch])
        return pools

    def close(self) -> None:
        if self._ctx:
            if self._threadpools:
                _llama_detach_threadpool(self._ctx)
            _llama.llama_free(self._ctx)
            self._ctx = None
            for pool in (self._threadpools or {}).values():
                self._threadpool_free(pool)
            self._threadpools = None
        if self._model:
            _llama.llama_model_free(self._model)
            self._model = None
            self._mparams = None  # the override strings may go now
        if self._sink is not None:
            _LOG.close(self._sink)
            self._sink = None

    def abandon(self) -> None:
        """Forget llama.cpp's objects without freeing them (close() and __del__ then do nothing):
        for an engine lost with an RPC worker, whose decoding thread stays blocked inside llama.cpp
        for good; freeing the context under it could hang or crash the exit. The exit takes the
        memory back."""
        self._ctx = self._model = self._mparams = self._sink = self._threadpools = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _require_open(self) -> None:
        if not self._ctx:
            raise EngineError("the model was closed", "load it again")

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        self._require_open()
        data = valid_text(text).encode("utf-8")
        size = len(data) + 8
        while True:
            out = (_llama.llama_token * size)()
            n = _llama.llama_tokenize(self._vocab, data, len(data), out, size, add_special, parse_special)
            if n >= 0:
                return out[:n]
            size = -n

    def token_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (a piece of a multi-byte character is possible)."""
        buf = self._piece_buf
        n = _llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = _llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    @property
    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token of the vocabulary (llama_vocab_is_eog)."""
        if self._eog is None:
            is_eog, vocab = _llama.llama_vocab_is_eog, self._vocab
            self._eog = tuple(t for t in range(self.n_vocab) if is_eog(vocab, t))
        return self._eog

    @property
    def template(self) -> ChatTemplate:
        """The chat template: the GGUF's, else llama.cpp's built-in for its architecture (its
        `notice` says so), unless use_chat_template() chose another. A TemplateError when none fits."""
        if self._template is None:
            self.use_chat_template()
        return self._template

    def use_chat_template(self, name: str | None = None, path: str | os.PathLike[str] | None = None) -> ChatTemplate:
        """Chat with llama.cpp's built-in template `name` (--chat-template) or the Jinja file at
        `path` (--chat-template-file) instead of the GGUF's; neither: the GGUF's own."""
        self._require_open()
        bos, eos = _llama.llama_vocab_bos(self._vocab), _llama.llama_vocab_eos(self._vocab)
        piece = lambda t: self.token_piece(t, special=True).decode("utf-8", "replace") if t >= 0 else ""  # noqa: E731
        self._template = choose_template(self.chat_template, self.metadata, bos_token=piece(bos), eos_token=piece(eos),
                                         name=name, path=path, knows_token=lambda text: len(self.tokenize(text)) == 1)
        return self._template

    @property
    def output_format(self) -> OutputFormat:
        """How this template's model writes tool calls and reasoning (moecli.templates.toolcalls)."""
        return detect_format(self.template.text)

    def render_chat(self, messages: Sequence[Mapping[str, object]], *, tools: Sequence[Mapping[str, object]] | None = None,
                    **template_kwargs) -> str:
        """The prompt the chat template makes of these messages and tools (OpenAI's shapes), with
        the assistant's turn opened (moecli.templates: jinja2's sandbox, or llama.cpp's built-in)."""
        return self.template.render(messages, tools=tools, **template_kwargs)

    def _prompt_tokens(self, text: str, parse_special: bool = True) -> list[int]:
        tokens = self.tokenize(text, add_special=True, parse_special=parse_special)
        bos = _llama.llama_vocab_bos(self._vocab)
        if len(tokens) >= 2 and tokens[0] == tokens[1] == bos:  # the template wrote a BOS of its own
            tokens = tokens[1:]
        return tokens

    # -- generation -----------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, object]], sampling: Sampling | None = None, *,
             should_stop: Callable[[], bool] | None = None,
             template_kwargs: Mapping[str, object] | None = None, tools: Sequence[Mapping[str, object]] | None = None,
             special: bool = False) -> Iterator[str]:
        """Stream the assistant's reply to a conversation, as text pieces that are always whole
        UTF-8 characters. The KV cache keeps what the previous call left; only the part of the new
        prompt after the common prefix is evaluated. Stops at an end-of-generation token, after
        sampling.n_predict tokens, at a full context, or when should_stop() turns true (checked
        before each token). Afterwards last_timings and last_stop_reason describe the reply. `special`:
        control tokens are written out (the markers of harmony, Mistral, DeepSeek tool calls:
        output_format.needs_special_tokens)."""
        t_start = time.perf_counter()
        prompt = self.render_chat(messages, tools=tools, **(template_kwargs or {}))
        return self._generate(self._prompt_tokens(prompt), sampling or Sampling(), should_stop, t_start, special)

    def complete(self, prompt: str, sampling: Sampling | None = None, *,
                 should_stop: Callable[[], bool] | None = None, parse_special: bool = True,
                 special: bool = False) -> Iterator[str]:
        """Stream a raw continuation of `prompt` (no chat template, or one rendered by the caller
        with render_chat); otherwise like chat()."""
        t_start = time.perf_counter()
        return self._generate(self._prompt_tokens(prompt, parse_special), sampling or Sampling(), should_stop, t_start,
                              special)

    def reset(self) -> None:
        """Forget the conversation held in the KV cache."""
        self._require_open()
        _llama.llama_memory_clear(self._memory, True)
        self._cached = []
        self._checkpoints = []

    def _decode(self, tokens: Sequence[int], should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Evaluate tokens at the end of the cached sequence, n_batch at a time; False when
        should_stop() turned true between two batches (the cache then holds what was done)."""
        for start in range(0, len(tokens), self.n_batch):
            if start and should_stop():
                return False
            chunk = tokens[start:start + self.n_batch]
            array = (_llama.llama_token * len(chunk))(*chunk)
            with _rpc_watch():
                rc = _llama.llama_decode(self._ctx, _llama.llama_batch_get_one(array, len(chunk)))
            self._check_decode(rc)
            self._cached.extend(chunk)
        return True

    def _check_decode(self, rc: int) -> None:
        if rc != 0:
            self.reset()  # the cache may hold part of a batch now
            detail = _error_detail(self._sink) if self._sink else ""
            raise EngineError(f"llama.cpp failed to evaluate tokens (llama_decode returned {rc}): {detail}",
                              "start a new chat; if it repeats, load with a smaller -c or -b")

    def _reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the longest cached prefix of `tokens` (at least one token must be evaluated, to
        have logits). A recurrent state cannot be cut in the middle (llama_memory_seq_rm refuses):
        then the cache starts over."""
        n = 0
        limit = min(len(self._cached), len(tokens) - 1)
        while n < limit and self._cached[n] == tokens[n]:
            n += 1
        if n < len(self._cached):
            if not _llama.llama_memory_seq_rm(self._memory, 0, n, -1):
                n = self._restore_checkpoint(n)
            del self._cached[n:]
        self._checkpoints = [c for c in self._checkpoints if c.n_tokens <= n]
        return n

    def _restore_checkpoint(self, n: int) -> int:
        """The latest state checkpoint at or before n put back (the KV cut there); 0 and an empty
        cache when there is none (the server's prompt cache does the same per slot: serve/cache.py)."""
        from moecli.engine import state

        for checkpoint in reversed(self._checkpoints):
            if 0 < checkpoint.n_tokens <= n:
                if state.restore(self._ctx, 0, checkpoint) and _llama.llama_memory_seq_rm(
                        self._memory, 0, checkpoint.n_tokens, -1):
                    return checkpoint.n_tokens
                break
        _llama.llama_memory_clear(self._memory, True)
        self._checkpoints = []
        return 0

    def _checkpoint(self, keep: int = 8) -> None:
        """A state checkpoint of what the cache holds now (recurrent and hybrid models only)."""
        if self.is_recurrent and self._cached:
            from moecli.engine import state

            self._checkpoints = [c for c in self._checkpoints if c.n_tokens < len(self._cached)][-(keep - 1):]
            self._checkpoints.append(state.save(self._ctx, 0, len(self._cached)))

    def _generate(self, tokens: list[int], sampling: Sampling, should_stop: Callable[[], bool] | None,
                  t_start: float, special: bool = False) -> Iterator[str]:
        self._require_open()
        if not tokens:
            raise BadInput("the prompt is empty", "give some text")
        if len(tokens) >= self.n_ctx:
            raise EngineError(f"the prompt ({len(tokens)} tokens) does not fit the context ({self.n_ctx})",
                              "start a new chat, or load with a larger -c")
        return self._stream(tokens, sampling, should_stop or (lambda: False), t_start, special)

    def _stream(self, tokens: list[int], sampling: Sampling, should_stop: Callable[[], bool],
                t_start: float, special: bool = False) -> Iterator[str]:
        ctx, vocab = self._ctx, self._vocab
        self.last_timings = self.last_stop_reason = None
        # llama.cpp adds a decode to its counters at the next synchronize (llama_context::synchronize)
        _llama.llama_synchronize(ctx)
        _llama.llama_perf_context_reset(ctx)
        cache_n = self._reuse_prefix(tokens)
        prompt_n, prompt_ms, n_decoded, ttft_ms, chain = 0, 0.0, 0, 0.0, None
        try:
            # the last 4 prompt tokens apart, as llama-server does, for a checkpoint before them: the
            # next turn's prompt differs from this one inside the generation prompt (Qwen3 templates)
            tail = 4 if self.is_recurrent and len(tokens) - cache_n > 4 else 0
            completed = self._decode(tokens[cache_n:len(tokens) - tail], should_stop)
            if completed and tail:
                self._checkpoint()
                completed = self._decode(tokens[len(tokens) - tail:], should_stop)
            prompt_n = len(self._cached) - cache_n
            _llama.llama_synchronize(ctx)
            perf = _llama.llama_perf_context(ctx)
            prompt_ms = perf.t_p_eval_ms + perf.t_eval_ms
            if not completed:
                self.last_stop_reason = "should_stop"
                return
            chain = _sampler_chain(sampling, tokens, n_vocab=self.n_vocab, n_ctx=self.n_ctx,
                                   eog_tokens=lambda: self.eog_tokens, vocab=vocab)
            text_stream = Utf8Stream()
            one, one_batch = self._one, self._one_batch
            n_sampled = 0
            while sampling.n_predict < 0 or n_sampled < sampling.n_predict:
                if should_stop():
                    self.last_stop_reason = "should_stop"
                    break
                with _rpc_watch():  # the logits wait for the decode, which llama_decode only started
                    token = _llama.llama_sampler_sample(chain, ctx, -1)
                if n_sampled == 0:
                    ttft_ms = (time.perf_counter() - t_start) * 1e3
                n_sampled += 1
                if _llama.llama_vocab_is_eog(vocab, token):
                    self.last_stop_reason = "eog"
                    break
                if len(self._cached) >= self.n_ctx:
                    self.last_stop_reason = "context_full"
                    break
                text = text_stream.push(self.token_piece(token, special=special))
                if text:
                    yield text
                # every token shown is evaluated, so the cache holds the whole reply for the next turn
                one[0] = token
                with _rpc_watch():
                    rc = _llama.llama_decode(ctx, one_batch)
                self._check_decode(rc)
                self._cached.append(token)
                n_decoded += 1
            else:
                self.last_stop_reason = "n_predict"
            tail = text_stream.flush()
            if tail:
                yield tail
        finally:
            if chain is not None:
                _llama.llama_sampler_free(chain)
            if self._ctx and n_decoded:
                with contextlib.suppress(EngineError):
                    self._checkpoint()  # the reply's end: where the next turn may start
            if self._ctx:
                _llama.llama_synchronize(ctx)
                perf = _llama.llama_perf_context(ctx)
                self.last_timings = Timings(
                    prompt_n=prompt_n,
                    prompt_ms=prompt_ms,
                    predicted_n=n_decoded,
                    predicted_ms=max(0.0, perf.t_p_eval_ms + perf.t_eval_ms - prompt_ms) if n_decoded else 0.0,
                    ttft_ms=ttft_ms,
                    cache_n=cache_n,
                )

    def detokenize_stream(self, tokens: Iterable[int]) -> Iterator[str]:
        """The text pieces chat() would stream for these tokens (whole characters only)."""
        text_stream = Utf8Stream()
        for token in tokens:
            text = text_stream.push(self.token_piece(token))
            if text:
                yield text
        tail = text_stream.flush()
        if tail:
            yield tail

    # -- benchmarks (tools/llama-bench/llama-bench.cpp) ----------------------------------------

    @contextlib.contextmanager
    def _benchmarking(self, needed: int) -> Iterator[int]:
        """The context as llama-bench runs a test in it: -t threads for single tokens and batches,
        the memory cleared (llama_memory_clear(mem, false), before every repetition); afterwards
        the chat's threads again and an empty cache (random tokens are no conversation)."""
        self._require_open()
        if needed > self.n_ctx:
            raise BadInput(f"the benchmark needs {needed} tokens of context, the model was loaded with {self.n_ctx}",
                           f"load with -c {needed} or more")
        _llama.llama_set_n_threads(self._ctx, self.n_threads, self.n_threads)
        if self._threadpools:
            pool = self._threadpools[self.n_threads]
            _llama_attach_threadpool(self._ctx, pool, pool)
        _llama.llama_memory_clear(self._memory, False)
        self._cached = []
        self._checkpoints = []
        try:
            yield self._ctx
        finally:
            _llama.llama_set_n_threads(self._ctx, self.n_threads, self.n_threads_batch)
            if self._threadpools:
                _llama_attach_threadpool(self._ctx, self._threadpools[self.n_threads],
                                         self._threadpools[self.n_threads_batch])
            _llama.llama_memory_clear(self._memory, False)
            self._cached = []
            self._checkpoints = []

    def bench_warmup(self, n_prompt: int, n_gen: int) -> None:
        """llama-bench's warm-up before a test: the whole prompt test once, then one generated token."""
        with self._benchmarking(n_prompt + min(n_gen, 1)) as ctx:
            _warmup(ctx, n_prompt, n_gen)

    def bench_prompt(self, n_prompt: int, *, depth: int = 0, seed: int = 0) -> float:
        """Seconds for one repetition of llama-bench's pp test (`-p n_prompt [-d depth]`)."""
        with self._benchmarking(depth + n_prompt) as ctx:
            return _timed(_test_prompt, ctx, n_prompt, depth, seed)

    def bench_gen(self, n_gen: int, *, depth: int = 0, seed: int = 0) -> float:
        """Seconds for one repetition of llama-bench's tg test (`-n n_gen [-d depth]`)."""
        with self._benchmarking(depth + n_gen) as ctx:
            return _timed(_test_gen, ctx, n_gen, depth, seed)
