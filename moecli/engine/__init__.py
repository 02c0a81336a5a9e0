"""llama.cpp through its C API (llama-cpp-python's ctypes binding): see core.py."""

from moecli.engine.core import (
    BufferSizes,
    Engine,
    LoadReport,
    Sampling,
    Timings,
    Utf8Stream,
    available_buffer_types,
    dry_run,
    gpu_offload_supported,
)

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
