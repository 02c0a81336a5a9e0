"""What happens when llama.cpp stops on a fault it cannot come back from: GGML_ABORT and
GGML_ASSERT (an internal check), and ggml-rpc's "Remote RPC server crashed or returned malformed
response" (a worker gone mid-run).

ggml_abort (ggml/src/ggml.c) calls the process's abort callback and then abort(); without a
callback it first prints a backtrace, through gdb where gdb is installed: a screenful that says
nothing to a user. moecli installs one callback for the process (`install`, at the first load)
which writes one `error:` line and exits 1. For a lost RPC worker `on_fault` may choose otherwise:
- by default (`run`, `bench`): the line and exit 1;
- with a hook (`serve`): the hook gets an EngineLost and the process goes on. The thread that met
  the fault must never return (ggml would abort), so it is parked for good in
  threading.Event().wait(), which releases the GIL (a ctypes callback holds it while Python runs);
  the llama.cpp context is lost with it, and the server answers with the error until restarted.

Who is to blame comes from `blame`, which engine.rpc sets when it connects workers: the ones that
no longer answer. Without workers the fault is llama.cpp's own."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable

from moecli.engine.capi import _c, _libggml, _vp
from moecli.errors import EngineLost

_abort_callback_t = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

_install_lock = threading.Lock()
_callback = None  # the installed ctypes callback, kept alive for the process's lifetime
_hook: Callable[[EngineLost], None] | None = None  # on_fault: None = one line and exit
_lost: EngineLost | None = None  # the first fault met with a hook (later ones only park)
_lost_lock = threading.Lock()
blame: Callable[[str], EngineLost | None] | None = None  # engine.rpc: a ggml message -> the workers at fault

REPORT_HINT = "a llama.cpp internal check failed: report it to llama.cpp with the command that met it"


def _set_abort_callback():
    """ggml_set_abort_callback of the libggml-base that the backends use: looked up through
    libggml's handle (dlsym searches its dependencies), not by a path: the wheel ships
    libggml-base.so and libggml-base.so.0 as two copies, and loading one by path would map a
    second ggml."""
    return _c(_libggml, "ggml_set_abort_callback", _vp, _abort_callback_t)


def install() -> None:
    """The callback for the whole process (ggml's is global); once."""
    global _callback
    with _install_lock:
        if _callback is None:
            _callback = _abort_callback_t(_on_abort)
            _set_abort_callback()(_callback)


def on_fault(hook: Callable[[EngineLost], None] | None) -> None:
    """How a fault ends, for the whole process. None (the default): one `error:` line, exit 1. A
    hook: called once, from the thread that met the fault (ggml-rpc's own, a compute thread, or
    engine.rpc's watchdog), so it must be thread-safe and make no llama.cpp call."""
    global _hook
    _hook = hook


def lost() -> EngineLost | None:
    return _lost


def _exit(exc: EngineLost) -> None:
    sys.stderr.write(f"error: {exc.message}\n" + (f"  hint: {exc.hint}\n" if exc.hint else ""))
    sys.stderr.flush()
    os._exit(1)


def fail(exc: EngineLost) -> None:
    """A worker lost: exit with one line, or (with a hook) report it once and return."""
    global _lost
    if _hook is None:
        _exit(exc)
    with _lost_lock:
        if _lost is not None:
            return
        _lost = exc
    _hook(exc)


def _park() -> None:
    """Never return (ggml calls abort() when its callback returns); the GIL is released meanwhile."""
    threading.Event().wait()


def _on_abort(message: bytes | None) -> None:
    # "file.c:123: GGML_ASSERT(x) failed", or ggml-rpc's "file.cpp:456: Remote RPC server crashed ..."
    text = (message or b"").decode(errors="replace").strip()
    where, _, what = text.partition(": ")
    what = what or where
    try:
        exc = blame(what) if blame is not None else None
        if exc is None:  # llama.cpp's own check: its state is unknown, and a compute thread parked here
            # could leave the others spinning at a barrier for good, so even a server ends
            _exit(EngineLost(f"llama.cpp stopped: {what} ({os.path.basename(where)})", REPORT_HINT))
        fail(exc)
    finally:  # even if the hook failed: returning would abort the process
        _park()
