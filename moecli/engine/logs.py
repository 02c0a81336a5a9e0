"""llama.cpp's log: one process-wide callback that hands the lines to whoever listens (quiet by
default), the patterns of the lines we read, and llama.cpp's own explanation of a failure."""

from __future__ import annotations

import collections
import ctypes
import re
import threading
from collections.abc import Callable, Sequence

from moecli.engine.capi import _llama_log_get, _llama_log_set, _log_callback_t, _vp

MiB = 1024 * 1024

# ggml_log_level (ggml/include/ggml.h). llama-cpp-python's _logger.py still has the old numbering.
_LOG_DEBUG, _LOG_INFO, _LOG_WARN, _LOG_ERROR, _LOG_CONT = 1, 2, 3, 4, 5


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
