"""The C API we call beyond llama-cpp-python's own prototypes: private ctypes prototypes, the
structs they take, the enums our parameters map to, backend initialisation, and the buffer types
(what `-ot PATTERN=BUFT` names)."""

from __future__ import annotations

import ctypes
import threading

import llama_cpp.llama_cpp as _llama
from llama_cpp._ggml import libggml as _libggml

_lib = _llama._lib  # libllama, as llama-cpp-python loaded it

# enum llama_load_mode (include/llama.h) by the names llama.cpp's -lm takes (llama_load_mode_from_str)
_LOAD_MODES = {"auto": -1, "none": 0, "mmap": 1, "mlock": 2, "mmap+mlock": 3, "dio": 4}
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
# enum ggml_type values of the KV cache types llama.cpp's -ctk/-ctv accept (ggml/include/ggml.h)
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}


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
