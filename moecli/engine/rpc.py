"""llama.cpp's RPC backend (ggml-rpc): serve this machine's devices to other machines
(`serve`, ggml_backend_rpc_start_server), and use other machines' devices here (`connect`,
ggml_backend_rpc_add_server + ggml_backend_register, as llama.cpp's --rpc does in common/arg.cpp).

llama-cpp-python builds ggml-rpc only with GGML_RPC on; `require` says, in one line, how to get a
build that has it. ggml-rpc has no authentication and no encryption (its README: never expose it
on an open network).

Faults: ggml-rpc aborts the process (GGML_ABORT) when it cannot connect or when a worker stops
answering mid-run ("Remote RPC server crashed or returned malformed response"). `connect` checks
each worker with a plain TCP connection first (a timeout, one line naming the one that does not
answer), and installs a ggml abort callback. A worker killed mid-run closes its sockets, so that
is immediate; a worker that hangs without closing is caught by `watch`: no step that talks to the
workers may take longer than MOECLI_RPC_TIMEOUT seconds (default 120). Those steps are llama_decode,
the sampling after it (llama_decode only starts the computation; reading the logits waits for it)
and state copies.

What a fault does then (one line and exit, or serve's hook) is engine.faults'; this module says
who is to blame: the workers that no longer answer.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from contextlib import contextmanager

from moecli.engine import faults
from moecli.engine.capi import _c, _dev_get, _init_backend, _libggml, _reg_proc_address, _sz, _vp
from moecli.errors import EngineError, EngineLost

FIX = 'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python==0.3.36'
CONNECT_TIMEOUT = 5.0  # seconds to open a TCP connection to a worker before calling it unreachable
DEFAULT_TIMEOUT = 120.0  # seconds one decode step may take with RPC workers (MOECLI_RPC_TIMEOUT)

_reg_by_name = _c(_libggml, "ggml_backend_reg_by_name", _vp, ctypes.c_char_p)
_register = _c(_libggml, "ggml_backend_register", None, _vp)
_reg_dev_count = _c(_libggml, "ggml_backend_reg_dev_count", _sz, _vp)
_reg_dev_get = _c(_libggml, "ggml_backend_reg_dev_get", _vp, _vp, _sz)
_dev_memory = _c(_libggml, "ggml_backend_dev_memory", None, _vp, ctypes.POINTER(_sz), ctypes.POINTER(_sz))
_dev_name = _c(_libggml, "ggml_backend_dev_name", ctypes.c_char_p, _vp)
_dev_by_name = _c(_libggml, "ggml_backend_dev_by_name", _vp, ctypes.c_char_p)
_dev_count = _c(_libggml, "ggml_backend_dev_count", _sz)
_dev_type = _c(_libggml, "ggml_backend_dev_type", ctypes.c_int, _vp)
_add_server_t = ctypes.CFUNCTYPE(_vp, ctypes.c_char_p)
_start_server_t = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, _sz, _sz, ctypes.POINTER(_vp))


_lock = threading.Lock()
_servers: dict[str, list[int]] = {}  # endpoint -> its devices, registered once per process


def supported() -> bool:
    """Whether this llama.cpp build has the RPC backend (llama_supports_rpc)."""
    _init_backend()
    return bool(_reg_by_name(b"RPC"))


def require() -> int:
    if not supported():
        raise EngineError("this llama-cpp-python was built without RPC (GGML_RPC off)", f"rebuild it: {FIX}")
    return _reg_by_name(b"RPC")


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when a TCP connection to the worker opens within `timeout`; else why not."""
    try:
        with socket.create_connection(_split(endpoint), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _check(endpoint: str) -> None:
    why = reachable(endpoint)
    if why is not None:
        raise EngineError(f"RPC worker {endpoint} is not reachable: {why}",
                          f"start it there: moecli rpc-server --host HOST --port {_split(endpoint)[1]} (or drop it from --rpc)")


def _silent(settle: float = 1.5) -> list[str]:
    """The workers that refuse a TCP connection (a dead process: its port is closed), asked again
    for up to `settle` seconds (a killed process may close the socket we read before the one it
    listens on); else those that did not take one in time (a machine gone); else all of them (a
    hung worker: its kernel still accepts). A live worker serves one client at a time with a
    listen backlog of 1, so while it serves us a probe may go unanswered: a timeout alone says little."""
    deadline = time.monotonic() + settle
    while True:
        why: dict[str, OSError | None] = {}
        for endpoint in list(_servers):
            try:
                with socket.create_connection(_split(endpoint), timeout=0.25):
                    why[endpoint] = None
            except OSError as exc:
                why[endpoint] = exc
        refused = [e for e, exc in why.items() if exc is not None and not isinstance(exc, TimeoutError)]
        if refused or time.monotonic() >= deadline:
            return refused or [e for e, exc in why.items() if exc is not None] or list(_servers)
        time.sleep(0.1)


def _who(workers: list[str]) -> str:
    return ("RPC worker " + ", ".join(workers)) if workers else "an RPC worker"


HINT = "restart the worker (moecli rpc-server), then this run or server: llama.cpp cannot go on without it"


def _blame(what: str) -> EngineLost | None:
    """faults.blame: an abort of ggml-rpc's (its messages name RPC) is the silent workers' doing."""
    if "RPC" not in what:
        return None
    workers = _silent()
    return EngineLost(f"{_who(workers)} stopped answering ({what})", HINT, tuple(workers))


def connect(endpoints: tuple[str, ...] | list[str]) -> list[str]:
    """Register the workers' devices with ggml (in this order: llama.cpp names them RPC0, RPC1, ...)
    and return their device names."""
    reg = require()
    names = []
    with _lock:
        for endpoint in endpoints:
            if endpoint not in _servers:
                _check(endpoint)
                faults.install()
                faults.blame = _blame
                _start_guard()
                add = _add_server_t(_reg_proc_address(reg, b"ggml_backend_rpc_add_server"))
                server = add(endpoint.encode())
                if not server:
                    raise EngineError(f"RPC worker {endpoint} answered but offers no device",
                                      "check that it is a llama.cpp RPC server of the same version (moecli rpc-server)")
                _register(server)
                _servers[endpoint] = [_reg_dev_get(server, i) for i in range(_reg_dev_count(server))]
            names += [_dev_name(d).decode() for d in _servers[endpoint]]
    return names


def device_memory(endpoint: str) -> tuple[int, int]:
    """(free, total) bytes of the worker's first device, as the worker reports them."""
    connect([endpoint])
    free, total = _sz(), _sz()
    _dev_memory(_servers[endpoint][0], ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def round_trip(endpoint: str, n: int = 16) -> float:
    """Seconds of one RPC round trip to the worker: the median of n GET_DEVICE_MEMORY calls
    (ggml_backend_rpc_get_device_memory asks the server each time)."""
    connect([endpoint])
    times = []
    for _ in range(n):
        start = time.perf_counter()
        device_memory(endpoint)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def connected() -> tuple[str, ...]:
    return tuple(_servers)


_busy_since: float | None = None  # when the step now talking to workers began (watch)
_guard: threading.Thread | None = None


@contextmanager
def watch():
    """Bound one step that talks to RPC workers (a decode): past MOECLI_RPC_TIMEOUT seconds, a
    fault as `faults.on_fault` says (one line and exit, or the hook); a worker that hangs without closing
    its socket would otherwise hang the run. In serve mode the step stays blocked in llama.cpp (its
    thread is lost with the engine). Costs two assignments where no worker is connected."""
    global _busy_since
    _busy_since = time.monotonic()
    try:
        yield
    finally:
        _busy_since = None


def _start_guard() -> None:
    global _guard
    if _guard is not None:
        return
    limit = float(os.environ.get("MOECLI_RPC_TIMEOUT") or DEFAULT_TIMEOUT)

    def guard() -> None:
        while faults.lost() is None:
            time.sleep(min(1.0, limit / 4))
            since = _busy_since
            if since is not None and time.monotonic() - since > limit:
                workers = _silent()
                faults.fail(EngineLost(f"{_who(workers)} did not answer within {limit:g} s (MOECLI_RPC_TIMEOUT "
                                       "sets the limit)", HINT, tuple(workers)))
                return

    _guard = threading.Thread(target=guard, daemon=True, name="moecli-rpc-guard")
    _guard.start()


# ---------------------------------------------------------------------------------------------
# serving


def local_devices() -> dict[str, int]:
    """This machine's devices by name (CPU, CUDA0, ...), RPC devices left out."""
    _init_backend()
    out = {}
    for i in range(_dev_count()):
        dev = _dev_get(i)
        name = _dev_name(dev).decode()
        if not name.startswith("RPC"):
            out[name] = dev
    return out


def serve(host: str, port: int, devices: tuple[str, ...] = (), cache_dir: str | None = None,
          threads: int | None = None, on_ready=None) -> None:
    """Serve this machine's devices (default: its GPUs, else the CPU, as ggml's rpc-server) until
    interrupted. Blocks; Ctrl-C or SIGTERM ends it."""
    reg = require()
    available = local_devices()
    if devices:
        unknown = [d for d in devices if d not in available]
        if unknown:
            raise EngineError(f"no device {', '.join(unknown)} here", "devices here: " + ", ".join(available))
        chosen = [available[d] for d in devices]
    else:
        chosen = [d for n, d in available.items() if _dev_type(d) != 0] or [d for n, d in available.items() if _dev_type(d) == 0]
    try:  # fail in one line before ggml does (it prints and returns)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise EngineError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "choose another --port or --host") from None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    start = _start_server_t(_reg_proc_address(reg, b"ggml_backend_rpc_start_server"))
    array = (_vp * len(chosen))(*chosen)
    endpoint = f"{host}:{port}".encode()
    n_threads = threads or (os.cpu_count() or 1)
    failed: list[str] = []

    def run() -> None:
        start(endpoint, cache_dir.encode() if cache_dir else None, n_threads, len(chosen), array)
        failed.append("the RPC server stopped")

    thread = threading.Thread(target=run, daemon=True, name="ggml-rpc-server")
    thread.start()
    if on_ready is not None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and thread.is_alive() and reachable(f"{host}:{port}", timeout=0.5) is not None:
            time.sleep(0.05)
        on_ready([_dev_name(d).decode() for d in chosen])
    while thread.is_alive():
        thread.join(0.5)
    if failed:
        raise EngineError(f"the RPC server on {host}:{port} stopped", "see its log above")
