"""Run a GGUF through llama.cpp: load it with a `LlamaParams`, chat or complete with streamed text,
time it with llama.cpp's own counters, benchmark it the way llama-bench does, and ask llama.cpp
what a load would allocate without allocating it (`dry_run`).

Why our own loading path instead of `llama_cpp.Llama`
-----------------------------------------------------
`Llama.__init__` builds its `llama_model_params` and loads the model in the same call, so the
tensor buffer overrides (a field llama-cpp-python 0.3.36 declares as `c_void_p` and never fills)
could only be injected by patching `llama_model_load_from_file` for the duration of that call.
`Llama` would also bring what we must avoid: flash attention off by default (llama.cpp's default is
`auto`), no `no_alloc` dry runs, redirection of the process's stdout/stderr through dup2 while it
loads, a numpy copy of the logits for every token, and no CPU threadpool (llama-bench attaches
one; without it ggml builds and frees a threadpool for every graph). The C API, reached through
llama-cpp-python's ctypes binding, is small enough to use directly: one load path serves loading,
dry runs and benchmarks, and every llama.cpp call is visible here. Only the chat template
rendering is borrowed from llama-cpp-python (`Jinja2ChatFormatter`), so prompts are the ones its
users get.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import os
import platform
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as _llama
from llama_cpp._ggml import libggml as _libggml

from moecli.errors import BadInput, EngineError, ModelFileError
from moecli.machine import physical_cores  # llama.cpp's default -t (cpu_get_num_math)
from moecli.params import LlamaParams

__all__ = [
    "BufferSizes",
    "Engine",
    "LoadReport",
    "Sampling",
    "Timings",
    "Utf8Stream",
    "available_buffer_types",
    "dry_run",
    "gpu_offload_supported",
]

MiB = 1024 * 1024
_lib = _llama._lib  # libllama, as llama-cpp-python loaded it

# ggml_log_level (ggml/include/ggml.h). llama-cpp-python's _logger.py still has the old numbering.
_LOG_DEBUG, _LOG_INFO, _LOG_WARN, _LOG_ERROR, _LOG_CONT = 1, 2, 3, 4, 5

# enum llama_load_mode (include/llama.h) by the names llama.cpp's -lm takes (llama_load_mode_from_str)
_LOAD_MODES = {"auto": -1, "none": 0, "mmap": 1, "mlock": 2, "mmap+mlock": 3, "dio": 4}
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
# enum ggml_type values of the KV cache types llama.cpp's -ctk/-ctv accept (ggml/include/ggml.h)
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed
# What llama.cpp falls back to when a GGUF has no tokenizer.chat_template (llama-chat.cpp: chatml).
_CHATML = (
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _c(lib: ctypes.CDLL, name: str, restype, *argtypes):
    """A private prototype of a C function (llama-cpp-python's own stay as they are)."""
    fn = lib[name]
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_vp, _sz = ctypes.c_void_p, ctypes.c_size_t
_log_callback_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_llama_log_set = _c(_lib, "llama_log_set", None, _vp, _vp)
_llama_log_get = _c(_lib, "llama_log_get", None, ctypes.POINTER(_vp), ctypes.POINTER(_vp))
_llama_attach_threadpool = _c(_lib, "llama_attach_threadpool", None, _vp, _vp, _vp)
_llama_detach_threadpool = _c(_lib, "llama_detach_threadpool", None, _vp)
_dev_count = _c(_libggml, "ggml_backend_dev_count", _sz)
_dev_get = _c(_libggml, "ggml_backend_dev_get", _vp, _sz)
_dev_by_type = _c(_libggml, "ggml_backend_dev_by_type", _vp, ctypes.c_int)
_dev_buffer_type = _c(_libggml, "ggml_backend_dev_buffer_type", _vp, _vp)
_dev_backend_reg = _c(_libggml, "ggml_backend_dev_backend_reg", _vp, _vp)
_reg_proc_address = _c(_libggml, "ggml_backend_reg_get_proc_address", _vp, _vp, ctypes.c_char_p)
_buft_name = _c(_libggml, "ggml_backend_buft_name", ctypes.c_char_p, _vp)
_buft_is_host = _c(_libggml, "ggml_backend_buft_is_host", ctypes.c_bool, _vp)
_buft_get_device = _c(_libggml, "ggml_backend_buft_get_device", _vp, _vp)
_dev_type = _c(_libggml, "ggml_backend_dev_type", ctypes.c_int, _vp)
_GGML_BACKEND_DEVICE_TYPE_CPU = 0


class _BuftOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override (include/llama.h)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", _vp)]


class _ThreadpoolParams(ctypes.Structure):
    """struct ggml_threadpool_params (ggml/include/ggml.h; GGML_MAX_N_THREADS = 512)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_threadpool_params_default = _c(_libggml, "ggml_threadpool_params_default", _ThreadpoolParams, ctypes.c_int)

_backend_ready = False
_backend_lock = threading.Lock()


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            _llama.llama_backend_init()
            _backend_ready = True


# ---------------------------------------------------------------------------------------------
# llama.cpp's log: captured, parsed, quiet by default
# ---------------------------------------------------------------------------------------------


class _LogSink:
    """The lines llama.cpp (and ggml) logged while this sink listened, with their levels."""

    def __init__(self, forward: Callable[[str], None] | None) -> None:
        self.forward = forward
        self.lines: collections.deque[tuple[int, str]] = collections.deque()
        self._partial: list[str] = []
        self._level = _LOG_INFO

    def add(self, level: int, text: str) -> None:
        if level != _LOG_CONT:  # CONT continues the previous message (the progress dots)
            self._level = level
        self._partial.append(text)
        if text.endswith("\n"):
            self.lines.append((self._level, "".join(self._partial).rstrip("\n")))
            self._partial.clear()
        if self.forward is not None:
            self.forward(text)

    def keep_last(self, n: int) -> None:
        """From now on remember only the last n lines (a long chat must not grow the log)."""
        self.lines = collections.deque(self.lines, maxlen=n)

    def text(self, min_level: int = _LOG_DEBUG) -> list[str]:
        return [line for level, line in self.lines if level >= min_level and level != _LOG_CONT]


class _LogRouter:
    """One llama_log_set callback for the process (llama.cpp's logging is global) that hands every
    line to the sinks listening; the callback that was there before comes back when the last one
    leaves. llama_log_set also sets ggml's log (src/llama-impl.cpp), so ggml's lines come too."""

    def __init__(self) -> None:
        self._sinks: list[_LogSink] = []
        self._saved: tuple[int | None, int | None] | None = None
        self._lock = threading.Lock()
        self._callback = _log_callback_t(self._on_log)  # kept alive as long as the router

    def _on_log(self, level: int, text: bytes | None, _user_data) -> None:
        try:
            line = text.decode("utf-8", "replace") if text else ""
            for sink in tuple(self._sinks):
                sink.add(level, line)
        except Exception:  # noqa: BLE001 - an exception must never cross back into C
            pass

    def open(self, forward: Callable[[str], None] | None = None) -> _LogSink:
        sink = _LogSink(forward)
        with self._lock:
            if not self._sinks:
                callback, user_data = _vp(), _vp()
                _llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
                self._saved = (callback.value, user_data.value)
                _llama_log_set(ctypes.cast(self._callback, _vp), None)
            self._sinks.append(sink)
        return sink

    def close(self, sink: _LogSink) -> None:
        with self._lock:
            if sink not in self._sinks:
                return
            self._sinks.remove(sink)
            if not self._sinks and self._saved is not None:
                _llama_log_set(*self._saved)
                self._saved = None


_LOG = _LogRouter()

# Format strings of the lines we read (llama.cpp of llama-cpp-python 0.3.36):
#   src/llama-model.cpp      "%s: %12s model buffer size = %8.2f MiB"
#   src/llama-kv-cache.cpp   "%s: %10s KV buffer size = %8.2f MiB"
#   src/llama-memory-recurrent.cpp "%s: %10s RS buffer size = %8.2f MiB"
#   src/llama-context.cpp    "%s: %10s compute buffer size = %8.2f MiB", "%s: %10s  output buffer size = %8.2f MiB"
_BUFFER_LINE = re.compile(r"^\w+: +(\S+) +(model|KV|RS|compute|output) buffer size = +([0-9.]+) MiB$")
_LOAD_MODE_LINE = re.compile(r"loading model tensors, this can take a while\.\.\. \(load_mode = (\S+)\)")
_KV_TYPES_LINE = re.compile(r"^llama_kv_cache: size = .* K \((\w+)\): .* V \((\w+)\):")
_OVERRIDE_LINE = re.compile(r"^tensor (\S+) \(\d+ MiB \w+\) buffer type overridden to (\S+)$")
_UNKNOWN_ARCH = re.compile(r"unknown model architecture: '([^']*)'")
_PREFIX = re.compile(r"^(?:\w+: )+")


def _buffer_lines(lines: Sequence[str]) -> dict[str, dict[str, int]]:
    """{"model": {"CPU_Mapped": bytes}, "KV": {...}, ...} from the load log (MiB with 2 decimals)."""
    out: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for line in lines:
        m = _BUFFER_LINE.match(line)
        if m:
            buft, kind, mib = m.groups()
            out[kind][buft] = out[kind].get(buft, 0) + round(float(mib) * MiB)
    return out


def _error_detail(sink: _LogSink) -> str:
    """llama.cpp's own explanation of a failure: its first error line, without function prefixes."""
    errors = sink.text(_LOG_ERROR)
    for line in errors:
        if "error loading model: " in line:
            return line.split("error loading model: ", 1)[1]
    if errors:
        return _PREFIX.sub("", errors[0])
    return "no reason given (run with --verbose to see llama.cpp's log)"


# ---------------------------------------------------------------------------------------------
# Buffer types (what -ot PATTERN=BUFT names) and llama.cpp's memory accounting
# ---------------------------------------------------------------------------------------------


def _buffer_type_table() -> dict[str, int]:
    """Buffer type name -> ggml_backend_buffer_type_t of every device, as llama.cpp's
    parse_tensor_buffer_overrides (common/arg.cpp) builds it: each device's default buffer type."""
    _init_backend()
    table: dict[str, int] = {}
    for i in range(_dev_count()):
        buft = _dev_buffer_type(_dev_get(i))
        if buft:
            table[_buft_name(buft).decode()] = buft
    return table


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (llama_supports_gpu_offload)."""
    _init_backend()
    return bool(_llama.llama_supports_gpu_offload())


def available_buffer_types() -> tuple[str, ...]:
    """The names `-ot PATTERN=BUFT` accepts here: "CPU", and "CUDA0", ... where llama.cpp has GPUs."""
    return tuple(sorted(_buffer_type_table()))


class _RbNode(ctypes.Structure):
    pass


_RbNode._fields_ = [
    ("color", ctypes.c_int),
    ("parent", ctypes.POINTER(_RbNode)),
    ("left", ctypes.POINTER(_RbNode)),
    ("right", ctypes.POINTER(_RbNode)),
]


class _BreakdownNode(ctypes.Structure):
    """A node of std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data> (libstdc++)."""

    _fields_ = [("base", _RbNode), ("buft", _vp), ("model", _sz), ("context", _sz), ("compute", _sz)]


class _StdMap(ctypes.Structure):
    """libstdc++'s std::map: the (empty) comparator padded to 8 bytes, the header node, the size."""

    _fields_ = [("key_compare", _sz), ("header", _RbNode), ("node_count", _sz)]


# The breakdown exists only as C++ (src/llama-ext.h: `llama_memory_breakdown
# llama_get_memory_breakdown(const llama_context *)`, the numbers llama.cpp's --fit plans with). On
# x86-64 Linux the Itanium ABI returns a std::map through a hidden first pointer argument, and
# libstdc++'s map layout is stable since GCC 5, so ctypes can call it and read the tree. On other
# platforms we read the load log instead (which a no_alloc dry run cannot give: it logs 0 MiB).
_BREAKDOWN_ABI = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")
if _BREAKDOWN_ABI:
    try:
        _get_memory_breakdown = _c(_lib, "_Z26llama_get_memory_breakdownPK13llama_context", _vp, _vp, _vp)
        _operator_delete = _c(_lib, "_ZdlPv", None, _vp)  # resolved in libstdc++, libllama's dependency
    except AttributeError:
        _BREAKDOWN_ABI = False


def _memory_breakdown(ctx: int) -> dict[int, tuple[int, int, int]] | None:
    """{buft: (model, context, compute) bytes} from llama.cpp, or None where it cannot be read."""
    if not _BREAKDOWN_ABI:
        return None
    result = _StdMap()
    returned = _get_memory_breakdown(ctypes.addressof(result), ctx)
    header_address = ctypes.addressof(result) + _StdMap.header.offset
    root = result.header.parent
    sane = returned == ctypes.addressof(result) and result.node_count < 4096
    sane = sane and (ctypes.cast(root.contents.parent, _vp).value == header_address if root else result.node_count == 0)
    nodes, stack = [], [root] if sane and root else []
    while stack and len(nodes) <= result.node_count:
        node = stack.pop()
        nodes.append(node)
        stack.extend(child for child in (node.contents.left, node.contents.right) if child)
    if not sane or len(nodes) != result.node_count:
        raise EngineError("cannot read llama.cpp's memory breakdown (unexpected C++ ABI)",
                          "report this with your platform and compiler")
    out: dict[int, tuple[int, int, int]] = {}
    for node in nodes:
        data = ctypes.cast(node, ctypes.POINTER(_BreakdownNode)).contents
        out[data.buft] = (data.model, data.context, data.compute)
    for node in nodes:  # the map's destructor, by hand: its nodes came from operator new
        _operator_delete(ctypes.cast(node, _vp))
    return out


@dataclass(frozen=True)
class BufferSizes:
    """Bytes llama.cpp holds (in a dry run: would hold) per buffer type: "CPU", "CPU_Mapped" (weights
    mapped from the file), "CPU_REPACK", "CUDA0", "CUDA_Host" (pinned RAM), ...

    `model`, `context` (KV cache + recurrent state) and `compute` are llama.cpp's memory breakdown
    (llama_get_memory_breakdown, what its --fit plans with): exact bytes. `recurrent` and `output`
    come from its load log, printed in MiB with two decimals (so within 5 KiB); `kv` is
    `context - recurrent`."""

    model: dict[str, int] = field(default_factory=dict)
    context: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    recurrent: dict[str, int] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)
    host: frozenset[str] = frozenset()  # the buffer types above that live in RAM (not a GPU's memory)

    @property
    def kv(self) -> dict[str, int]:
        return {b: max(0, n - self.recurrent.get(b, 0)) for b, n in self.context.items() if n}

    def total(self) -> dict[str, int]:
        """Everything per buffer type."""
        out: dict[str, int] = collections.Counter()
        for part in (self.model, self.context, self.compute, self.output):
            out.update(part)
        return {b: n for b, n in out.items() if n}

    def device_bytes(self) -> dict[str, int]:
        """Per buffer type that is NOT host RAM (the GPUs' memory): what a VRAM budget must hold."""
        return {b: n for b, n in self.total().items() if b not in self.host}

    @property
    def host_bytes(self) -> int:
        return sum(n for b, n in self.total().items() if b in self.host)


def _in_ram(buft: int) -> bool:
    """Host memory: host buffer types ("CPU", "CPU_Mapped", "CUDA_Host") and the CPU's extra ones
    ("CPU_REPACK", which ggml does not call host memory because its layout is not plain)."""
    if _buft_is_host(buft):
        return True
    device = _buft_get_device(buft)
    return not device or _dev_type(device) == _GGML_BACKEND_DEVICE_TYPE_CPU


def _buffer_sizes(ctx: int, log_lines: Sequence[str]) -> BufferSizes:
    logged = _buffer_lines(log_lines)
    breakdown = _memory_breakdown(ctx)
    if breakdown is None:  # no breakdown on this platform: llama.cpp's printed numbers
        context = collections.Counter(logged.get("KV", {}))
        context.update(logged.get("RS", {}))
        model, compute = dict(logged.get("model", {})), dict(logged.get("compute", {}))
        context = dict(context)
        names = set(model) | set(context) | set(compute) | set(logged.get("output", {}))
        table = _buffer_type_table()
        host = frozenset(n for n in names if n not in table or _in_ram(table[n]))
    else:
        model, context, compute, host_names = {}, {}, {}, set()
        for buft, (m, c, k) in breakdown.items():
            name = _buft_name(buft).decode()
            model[name], context[name], compute[name] = m, c, k
            if _in_ram(buft):
                host_names.add(name)
        host_names |= set(logged.get("output", {}))  # the output buffer is host memory
        host = frozenset(host_names)
    drop_zeros = lambda d: {k: v for k, v in d.items() if v}  # noqa: E731
    return BufferSizes(
        model=drop_zeros(model),
        context=drop_zeros(context),
        compute=drop_zeros(compute),
        recurrent=drop_zeros(logged.get("RS", {})),
        output=drop_zeros(logged.get("output", {})),
        host=host,
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _ModelParams:
    """A llama_model_params with everything its pointers point to, kept alive as long as the model."""

    def __init__(self, params: LlamaParams, *, no_alloc: bool = False,
                 on_progress: Callable[[float], None] | None = None) -> None:
        mp = _llama.llama_model_default_params()
        mp.n_gpu_layers = params.n_gpu_layers
        mp.main_gpu = params.main_gpu
        # a no_alloc pass must not map the file (llama-model.cpp asserts it); --fit does the same
        mp.load_mode = _LOAD_MODES["none" if no_alloc else params.load_mode]
        mp.no_alloc = no_alloc
        self.progress_error: BaseException | None = None
        self._overrides = self._override_array(params)
        if self._overrides is not None:
            mp.tensor_buft_overrides = ctypes.cast(self._overrides, _vp)
        self._progress = None
        if on_progress is not None:
            def progress(value: float, _user_data) -> bool:
                try:
                    on_progress(float(value))
                    return True
                except BaseException as exc:  # noqa: BLE001 - returning False makes llama.cpp stop loading
                    self.progress_error = exc
                    return False

            self._progress = _llama.llama_progress_callback(progress)
            mp.progress_callback = self._progress
        self.struct = mp

    @staticmethod
    def _override_array(params: LlamaParams):
        overrides = params.overrides()
        if not overrides:
            return None
        table = _buffer_type_table()
        limit = _llama.llama_max_tensor_buft_overrides()
        if len(overrides) >= limit:
            raise BadInput(f"{len(overrides)} tensor overrides are more than llama.cpp takes ({limit - 1})",
                           "merge patterns into fewer -ot regexes")
        array = (_BuftOverride * (len(overrides) + 1))()  # zero-filled: the last one is the NULL terminator
        for slot, override in zip(array, overrides):
            buft = table.get(override.buffer_type)
            if buft is None:
                raise EngineError(
                    f"unknown buffer type {override.buffer_type!r} in -ot {override}",
                    "available here: " + ", ".join(sorted(table)),
                )
            slot.pattern = override.pattern.encode()  # the array keeps the bytes alive (_objects)
            slot.buft = buft
        return array


def _load_model(path: Path, mparams: _ModelParams, sink: _LogSink) -> int:
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}", "check the path, or pull a model: moecli pull REPO[:QUANT]")
    model = _llama.llama_model_load_from_file(os.fsencode(path), mparams.struct)
    if model:
        return model
    if mparams.progress_error is not None:
        raise mparams.progress_error
    detail = _error_detail(sink)
    arch = _UNKNOWN_ARCH.search(detail)
    if arch:
        raise ModelFileError(
            f"llama.cpp does not know architecture '{arch.group(1)}' ({path.name})",
            f"this llama.cpp (llama-cpp-python {llama_cpp.__version__}) cannot run it",
        )
    if "file bounds" in detail or "corrupted" in detail:
        raise ModelFileError(f"{path.name} is truncated or corrupt: {detail}",
                             "re-download it: moecli pull verifies files")
    if "gguf_init_from_file" in " ".join(sink.text(_LOG_ERROR)) or "failed to load model from" in detail:
        gguf_errors = [line for line in sink.text(_LOG_ERROR) if "gguf" in line]
        reason = _PREFIX.sub("", gguf_errors[0]) if gguf_errors else detail
        raise ModelFileError(f"{path.name} is not a GGUF file llama.cpp can read: {reason}",
                             "re-download it: moecli pull verifies files")
    raise EngineError(f"llama.cpp could not load {path.name}: {detail}",
                      "see `moecli plan` for what fits; --verbose shows llama.cpp's log")


def _context_params(params: LlamaParams, n_threads: int, n_threads_batch: int):
    cp = _llama.llama_context_default_params()
    cp.n_ctx = params.n_ctx
    cp.n_batch = params.n_batch
    cp.n_ubatch = params.n_ubatch
    cp.n_seq_max = 1
    cp.n_threads = n_threads
    cp.n_threads_batch = n_threads_batch
    cp.flash_attn_type = _FLASH_ATTN[params.flash_attn]  # llama.cpp's own default: auto (Llama() says off)
    cp.type_k = _GGML_TYPES[params.type_k]
    cp.type_v = _GGML_TYPES[params.type_v]
    cp.no_perf = False  # the default params switch llama.cpp's timing counters off
    cp.swa_full = False  # common/common.h and llama-bench: the default params say true
    return cp


def _new_context(model: int, params: LlamaParams, n_threads: int, n_threads_batch: int, sink: _LogSink) -> int:
    n_ctx_train = _llama.llama_model_n_ctx_train(model)
    if params.n_ctx > n_ctx_train > 0:
        raise EngineError(
            f"context {params.n_ctx} is larger than the model's training context {n_ctx_train}",
            f"use -c {n_ctx_train} or less",
        )
    ctx = _llama.llama_init_from_model(model, _context_params(params, n_threads, n_threads_batch))
    if not ctx:
        raise EngineError(f"llama.cpp could not create a context: {_error_detail(sink)}",
                          "check -c, -b/-ub, -ctk/-ctv and -fa; --verbose shows llama.cpp's log")
    return ctx


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


# ---------------------------------------------------------------------------------------------
# Public data
# ---------------------------------------------------------------------------------------------


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


# general.sampling.* keys llama.cpp reads from a GGUF (common/common.cpp), and our field for each
_SAMPLING_KEYS = {
    "general.sampling.temp": ("temp", float),
    "general.sampling.top_k": ("top_k", int),
    "general.sampling.top_p": ("top_p", float),
    "general.sampling.min_p": ("min_p", float),
    "general.sampling.penalty_last_n": ("repeat_last_n", int),
    "general.sampling.penalty_repeat": ("repeat_penalty", float),
}


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn; names and defaults are llama.cpp's (common/common.h,
    common_params_sampling, and the -n/--temp/--top-k/... flags). The chain is llama.cpp's default
    order: penalties, top-k, top-p, min-p, temperature, then a draw (common/sampling.cpp); a
    temperature <= 0 always takes the most likely token."""

    temp: float = 0.8
    top_k: int = 40  # <= 0: the whole vocabulary
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # 0: off, -1: the whole context
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = _DEFAULT_SEED  # LLAMA_DEFAULT_SEED: a different draw each time
    n_predict: int = -1  # -1: until an end-of-generation token or a full context
    logit_bias: tuple[tuple[int, float], ...] = ()  # --logit-bias TOKEN_ID(+/-)BIAS; -inf bans a token
    ignore_eos: bool = False  # --ignore-eos: ban every end-of-generation token

    def __post_init__(self) -> None:
        if self.n_predict < -1:
            raise BadInput(f"-n {self.n_predict} is not a token count", "-1 means no limit")
        if self.repeat_last_n < -1:
            raise BadInput(f"--repeat-last-n {self.repeat_last_n} is not valid", "0 = off, -1 = whole context")
        if not 0.0 <= self.top_p <= 1.0 or not 0.0 <= self.min_p <= 1.0:
            raise BadInput("--top-p and --min-p are probabilities", "give values between 0 and 1")
        if self.repeat_penalty <= 0:
            raise BadInput(f"--repeat-penalty {self.repeat_penalty} must be positive", "1.0 turns it off")

    def with_(self, **changes) -> Sampling:
        return replace(self, **changes)

    @classmethod
    def from_model(cls, metadata: Mapping[str, object], **overrides) -> Sampling:
        """llama.cpp's defaults, replaced by the GGUF's `general.sampling.*` recommendations where it
        has them (as common_init_from_params does), then by `overrides` (what the user typed)."""
        values: dict[str, object] = {}
        for key, (name, kind) in _SAMPLING_KEYS.items():
            if key in metadata:
                try:
                    values[name] = kind(float(metadata[key])) if kind is int else kind(metadata[key])
                except (TypeError, ValueError):
                    pass  # a malformed recommendation is no reason to refuse the model
        values.update(overrides)
        return cls(**values)


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


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


class Engine:
    """A loaded model with one context (one sequence): chat, complete, bench. Not thread-safe.
    Use as a context manager or call close(); llama.cpp's log stays captured while it is open."""

    def __init__(self, *, path: Path, params: LlamaParams, model: int, ctx: int, mparams: _ModelParams,
                 sink: _LogSink, report: LoadReport, n_threads: int, n_threads_batch: int,
                 load_seconds: float) -> None:
        try:
            self._setup(path, params, model, ctx, mparams, sink, report, n_threads, n_threads_batch, load_seconds)
        except BaseException:
            self._ctx = self._model = self._sink = self._threadpools = None  # load() frees what it made
            raise

    def _setup(self, path, params, model, ctx, mparams, sink, report, n_threads, n_threads_batch,
               load_seconds) -> None:
        self._ctx = self._model = self._sink = self._threadpools = None
        self.path = path
        self.params = params
        self.report = report
        self.load_seconds = load_seconds
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self._model, self._ctx, self._mparams, self._sink = model, ctx, mparams, sink
        # llama-bench's model_type, model_size, model_n_params
        self.model_type = _meta_str(_llama.llama_model_desc, model) or ""
        self.model_size = _llama.llama_model_size(model)
        self.model_n_params = _llama.llama_model_n_params(model)
        self._vocab = _llama.llama_model_get_vocab(model)
        self._memory = _llama.llama_get_memory(ctx)
        self.n_ctx = _llama.llama_n_ctx(ctx)
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
        self._formatter = None
        self._eog: tuple[int, ...] | None = None
        self._one = (_llama.llama_token * 1)()  # reused by every single-token decode
        self._one_batch = _llama.llama_batch_get_one(self._one, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._threadpools = self._attach_threadpools()

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], params: LlamaParams | None = None, *,
             on_progress: Callable[[float], None] | None = None,
             on_log: Callable[[str], None] | None = None) -> Engine:
        """Load a GGUF (the first file of a split one) with llama.cpp and make a context.

        on_progress gets llama.cpp's load progress (0.0 .. 1.0); raising from it cancels the load.
        on_log gets llama.cpp's raw log text (the CLI's --verbose); otherwise llama.cpp is quiet."""
        params = params or LlamaParams()
        path = Path(path)
        _init_backend()
        sink = _LOG.open(on_log)
        model = ctx = None
        try:
            t0 = time.perf_counter()
            mparams = _ModelParams(params, on_progress=on_progress)
            model = _load_model(path, mparams, sink)
            n_threads = params.n_threads or physical_cores()
            n_threads_batch = params.n_threads_batch or n_threads
            ctx = _new_context(model, params, n_threads, n_threads_batch, sink)
            load_seconds = time.perf_counter() - t0
            lines = sink.text()
            report = _load_report(lines, sink.text(_LOG_WARN), _buffer_sizes(ctx, lines), _llama.llama_n_ctx(ctx))
            if report.flash_attn is None and params.flash_attn != "auto":  # logged only when resolved
                report = replace(report, flash_attn=params.flash_attn == "on")
            sink.keep_last(200)
            return cls(path=path, params=params, model=model, ctx=ctx, mparams=mparams, sink=sink, report=report,
                       n_threads=n_threads, n_threads_batch=n_threads_batch, load_seconds=load_seconds)
        except BaseException:
            if ctx:
                _llama.llama_free(ctx)
            if model:
                _llama.llama_model_free(model)
            _LOG.close(sink)
            raise

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
        data = text.encode("utf-8")
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

    def render_chat(self, messages: Sequence[Mapping[str, object]], **template_kwargs) -> str:
        """The prompt the GGUF's chat template makes of these messages (with the assistant's turn
        opened), rendered like llama-cpp-python's Jinja2ChatFormatter (ChatML if it has none)."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            bos, eos = _llama.llama_vocab_bos(self._vocab), _llama.llama_vocab_eos(self._vocab)
            self._formatter = Jinja2ChatFormatter(
                template=self.chat_template or _CHATML,
                eos_token=self.token_piece(eos, special=True).decode("utf-8", "replace") if eos >= 0 else "",
                bos_token=self.token_piece(bos, special=True).decode("utf-8", "replace") if bos >= 0 else "",
                add_generation_prompt=True,
            )
        try:
            return self._formatter(messages=list(messages), **template_kwargs).prompt
        except Exception as exc:  # noqa: BLE001 - jinja errors and the template's raise_exception
            raise EngineError(f"the model's chat template failed: {exc}",
                              "check the roles and order of the messages") from None

    def _prompt_tokens(self, text: str, parse_special: bool = True) -> list[int]:
        tokens = self.tokenize(text, add_special=True, parse_special=parse_special)
        bos = _llama.llama_vocab_bos(self._vocab)
        if len(tokens) >= 2 and tokens[0] == tokens[1] == bos:  # the template wrote a BOS of its own
            tokens = tokens[1:]
        return tokens

    # -- generation -----------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, object]], sampling: Sampling | None = None, *,
             should_stop: Callable[[], bool] | None = None,
             template_kwargs: Mapping[str, object] | None = None) -> Iterator[str]:
        """Stream the assistant's reply to a conversation, as text pieces that are always whole
        UTF-8 characters. The KV cache keeps what the previous call left; only the part of the new
        prompt after the common prefix is evaluated. Stops at an end-of-generation token, after
        sampling.n_predict tokens, at a full context, or when should_stop() turns true (checked
        before each token). Afterwards last_timings and last_stop_reason describe the reply."""
        t_start = time.perf_counter()
        prompt = self.render_chat(messages, **(template_kwargs or {}))
        return self._generate(self._prompt_tokens(prompt), sampling or Sampling(), should_stop, t_start)

    def complete(self, prompt: str, sampling: Sampling | None = None, *,
                 should_stop: Callable[[], bool] | None = None, parse_special: bool = True) -> Iterator[str]:
        """Stream a raw continuation of `prompt` (no chat template); otherwise like chat()."""
        t_start = time.perf_counter()
        return self._generate(self._prompt_tokens(prompt, parse_special), sampling or Sampling(), should_stop, t_start)

    def reset(self) -> None:
        """Forget the conversation held in the KV cache."""
        self._require_open()
        _llama.llama_memory_clear(self._memory, True)
        self._cached = []

    def _decode(self, tokens: Sequence[int], should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Evaluate tokens at the end of the cached sequence, n_batch at a time; False when
        should_stop() turned true between two batches (the cache then holds what was done)."""
        for start in range(0, len(tokens), self.n_batch):
            if start and should_stop():
                return False
            chunk = tokens[start:start + self.n_batch]
            array = (_llama.llama_token * len(chunk))(*chunk)
            self._check_decode(_llama.llama_decode(self._ctx, _llama.llama_batch_get_one(array, len(chunk))))
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
                _llama.llama_memory_clear(self._memory, True)
                n = 0
            del self._cached[n:]
        return n

    def _new_sampler(self, s: Sampling, prompt: Sequence[int]) -> int:
        chain = _llama.llama_sampler_chain_init(_llama.llama_sampler_chain_default_params())
        add = lambda smpl: _llama.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        bias = list(s.logit_bias)
        if s.ignore_eos:  # as common/common.cpp does for --ignore-eos
            bias += [(token, float("-inf")) for token in self.eog_tokens]
        if bias:
            array = (_llama.llama_logit_bias * len(bias))(*bias)  # llama.cpp copies it
            add(_llama.llama_sampler_init_logit_bias(self.n_vocab, len(bias), array))
        last_n = self.n_ctx if s.repeat_last_n == -1 else s.repeat_last_n
        penalties = last_n > 0 and (s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0)
        if penalties:
            add(_llama.llama_sampler_init_penalties(self.n_vocab, last_n, s.repeat_penalty,
                                                    s.frequency_penalty, s.presence_penalty))
        if s.temp > 0:
            add(_llama.llama_sampler_init_top_k(s.top_k))
            add(_llama.llama_sampler_init_top_p(s.top_p, 0))
            add(_llama.llama_sampler_init_min_p(s.min_p, 0))
            add(_llama.llama_sampler_init_temp_ext(s.temp, 0.0, 1.0))
            add(_llama.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
        else:
            add(_llama.llama_sampler_init_greedy())
        if penalties:  # llama-server accepts the prompt into the sampler, so the penalties see it
            for token in prompt[-last_n:]:
                _llama.llama_sampler_accept(chain, token)
        return chain

    def _generate(self, tokens: list[int], sampling: Sampling, should_stop: Callable[[], bool] | None,
                  t_start: float) -> Iterator[str]:
        self._require_open()
        if not tokens:
            raise BadInput("the prompt is empty", "give some text")
        if len(tokens) >= self.n_ctx:
            raise EngineError(f"the prompt ({len(tokens)} tokens) does not fit the context ({self.n_ctx})",
                              "start a new chat, or load with a larger -c")
        return self._stream(tokens, sampling, should_stop or (lambda: False), t_start)

    def _stream(self, tokens: list[int], sampling: Sampling, should_stop: Callable[[], bool],
                t_start: float) -> Iterator[str]:
        ctx, vocab = self._ctx, self._vocab
        self.last_timings = self.last_stop_reason = None
        # llama.cpp adds a decode to its counters at the next synchronize (llama_context::synchronize)
        _llama.llama_synchronize(ctx)
        _llama.llama_perf_context_reset(ctx)
        cache_n = self._reuse_prefix(tokens)
        prompt_n, prompt_ms, n_decoded, ttft_ms, chain = 0, 0.0, 0, 0.0, None
        try:
            completed = self._decode(tokens[cache_n:], should_stop)
            prompt_n = len(self._cached) - cache_n
            _llama.llama_synchronize(ctx)
            perf = _llama.llama_perf_context(ctx)
            prompt_ms = perf.t_p_eval_ms + perf.t_eval_ms
            if not completed:
                self.last_stop_reason = "should_stop"
                return
            chain = self._new_sampler(sampling, tokens)
            text_stream = Utf8Stream()
            one, one_batch = self._one, self._one_batch
            n_sampled = 0
            while sampling.n_predict < 0 or n_sampled < sampling.n_predict:
                if should_stop():
                    self.last_stop_reason = "should_stop"
                    break
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
                text = text_stream.push(self.token_piece(token))
                if text:
                    yield text
                # every token shown is evaluated, so the cache holds the whole reply for the next turn
                one[0] = token
                self._check_decode(_llama.llama_decode(ctx, one_batch))
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

    def _bench_begin(self, needed: int) -> None:
        self._require_open()
        if needed > self.n_ctx:
            raise BadInput(f"the benchmark needs {needed} tokens of context, the model was loaded with {self.n_ctx}",
                           f"load with -c {needed} or more")
        # llama-bench runs every test with -t threads for both single tokens and batches
        _llama.llama_set_n_threads(self._ctx, self.n_threads, self.n_threads)
        if self._threadpools:
            pool = self._threadpools[self.n_threads]
            _llama_attach_threadpool(self._ctx, pool, pool)
        # llama_memory_clear(mem, false) before every repetition, as llama-bench does
        _llama.llama_memory_clear(self._memory, False)
        self._cached = []

    def _bench_end(self) -> None:
        _llama.llama_set_n_threads(self._ctx, self.n_threads, self.n_threads_batch)
        if self._threadpools:
            _llama_attach_threadpool(self._ctx, self._threadpools[self.n_threads],
                                     self._threadpools[self.n_threads_batch])
        _llama.llama_memory_clear(self._memory, False)  # random tokens are no conversation
        self._cached = []

    def _test_prompt(self, n_prompt: int, rng: random.Random) -> None:
        """llama-bench's test_prompt: n_prompt random tokens (BOS first where the vocab adds one),
        n_batch per llama_decode, then llama_synchronize."""
        ctx, n_vocab, n_batch = self._ctx, self.n_vocab, self.n_batch
        add_bos = _llama.llama_vocab_get_add_bos(self._vocab)
        bos = _llama.llama_vocab_bos(self._vocab)
        array = (_llama.llama_token * n_batch)()
        n_processed = 0
        while n_processed < n_prompt:
            n_tokens = min(n_prompt - n_processed, n_batch)
            array[0] = bos if n_processed == 0 and add_bos else rng.randrange(n_vocab)
            for i in range(1, n_tokens):
                array[i] = rng.randrange(n_vocab)
            rc = _llama.llama_decode(ctx, _llama.llama_batch_get_one(array, n_tokens))
            if rc != 0:
                raise EngineError(f"llama.cpp failed to decode a prompt batch (returned {rc})", "try a smaller -b/-ub")
            n_processed += n_tokens
        _llama.llama_synchronize(ctx)

    def _test_gen(self, n_gen: int, rng: random.Random) -> None:
        """llama-bench's test_gen: n_gen single-token decodes, each followed by llama_synchronize,
        the next token drawn at random; no sampling, no logits read, no detokenization."""
        ctx, n_vocab = self._ctx, self.n_vocab
        decode, synchronize, randrange = _llama.llama_decode, _llama.llama_synchronize, rng.randrange
        one, batch = self._one, self._one_batch
        add_bos = _llama.llama_vocab_get_add_bos(self._vocab)
        token = _llama.llama_vocab_bos(self._vocab) if add_bos else randrange(n_vocab)
        for _ in range(n_gen):
            one[0] = token
            if decode(ctx, batch) != 0:
                raise EngineError("llama.cpp failed to decode a generation token", "load with a larger -c")
            synchronize(ctx)
            token = randrange(n_vocab)

    def bench_warmup(self, n_prompt: int, n_gen: int) -> None:
        """llama-bench's warm-up before a test: the whole prompt test once, then one generated token."""
        self._bench_begin(n_prompt + min(n_gen, 1))
        try:
            rng = random.Random(0)
            if n_prompt > 0:
                self._test_prompt(n_prompt, rng)
            if n_gen > 0:
                self._test_gen(1, rng)
        finally:
            self._bench_end()

    def bench_prompt(self, n_prompt: int, *, depth: int = 0, seed: int = 0) -> float:
        """Seconds for one repetition of llama-bench's pp test (`-p n_prompt [-d depth]`)."""
        return self._timed(self._test_prompt, n_prompt, depth, seed)

    def bench_gen(self, n_gen: int, *, depth: int = 0, seed: int = 0) -> float:
        """Seconds for one repetition of llama-bench's tg test (`-n n_gen [-d depth]`)."""
        return self._timed(self._test_gen, n_gen, depth, seed)

    def _timed(self, test: Callable[[int, random.Random], None], n: int, depth: int, seed: int) -> float:
        """One repetition as llama-bench runs it: clear the KV cache, evaluate `depth` random tokens
        untimed, then time the test."""
        self._bench_begin(depth + n)
        try:
            rng = random.Random(seed)
            if depth:
                self._test_prompt(depth, rng)
            t0 = time.perf_counter_ns()
            test(n, rng)
            return (time.perf_counter_ns() - t0) / 1e9
        finally:
            self._bench_end()


# ---------------------------------------------------------------------------------------------
# Dry runs
# ---------------------------------------------------------------------------------------------


def dry_run(path: str | os.PathLike[str], params: LlamaParams | None = None, *,
            on_log: Callable[[str], None] | None = None) -> BufferSizes:
    """What llama.cpp would allocate per buffer type for this model and these parameters, without
    allocating it: the model is loaded with `no_alloc = true` and a context is made, as llama.cpp's
    --fit measures (common/fit.cpp). Like --fit, the dry run never maps the file, so weights a
    real load with mmap puts in "CPU_Mapped" are counted under "CPU" (or "CUDA_Host") here; the
    recurrent state (a few MiB) is allocated for real, as llama.cpp does.

    Needs llama.cpp's memory breakdown, which moecli reads on x86-64 Linux."""
    if not _BREAKDOWN_ABI:
        raise EngineError("dry runs read llama.cpp's C++ memory breakdown, which moecli can do on x86-64 Linux only",
                          "load the model for real to see its buffer sizes")
    params = params or LlamaParams()
    path = Path(path)
    _init_backend()
    sink = _LOG.open(on_log)
    model = ctx = None
    try:
        mparams = _ModelParams(params, no_alloc=True)
        model = _load_model(path, mparams, sink)
        n_threads = params.n_threads or physical_cores()
        ctx = _new_context(model, params, n_threads, params.n_threads_batch or n_threads, sink)
        return _buffer_sizes(ctx, sink.text())
    finally:
        if ctx:
            _llama.llama_free(ctx)
        if model:
            _llama.llama_model_free(model)
        _LOG.close(sink)
