"""What llama.cpp allocates per buffer type (`BufferSizes`): its C++ memory breakdown read through
ctypes (a libstdc++ std::map walked by hand), or its load log where that cannot be read; and
`dry_run`, the same numbers for a load that allocates nothing."""

from __future__ import annotations

import collections
import ctypes
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp.llama_cpp as _llama

from moecli.engine.capi import (
    _GGML_BACKEND_DEVICE_TYPE_CPU,
    _buffer_type_table,
    _buft_get_device,
    _buft_is_host,
    _buft_name,
    _c,
    _dev_type,
    _init_backend,
    _lib,
    _sz,
    _vp,
)
from moecli.engine.loading import _load_model, _ModelParams, _new_context
from moecli.engine.logs import _LOG, _buffer_lines
from moecli.engine.threads import _resolve_threads
from moecli.errors import EngineError
from moecli.params import LlamaParams


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


def dry_run(path: str | os.PathLike[str], params: LlamaParams | None = None, *,
            on_log: Callable[[str], None] | None = None, n_seq_max: int = 1, kv_unified: bool = False) -> BufferSizes:
    """What llama.cpp would allocate per buffer type for this model and these parameters, without
    allocating it: the model is loaded with `no_alloc = true` and a context is made, as llama.cpp's
    --fit measures (common/fit.cpp). Like --fit, the dry run never maps the file, so weights a
    real load with mmap puts in "CPU_Mapped" are counted under "CPU" (or "CUDA_Host") here; the
    recurrent state (a few MiB) is allocated for real, as llama.cpp does. `n_seq_max` and
    `kv_unified` are the context's sequences (the server's slots), as `Engine` takes them.

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
        ctx = _new_context(model, params, *_resolve_threads(params), sink, n_seq_max, kv_unified)
        return _buffer_sizes(ctx, sink.text())
    finally:
        if ctx:
            _llama.llama_free(ctx)
        if model:
            _llama.llama_model_free(model)
        _LOG.close(sink)
