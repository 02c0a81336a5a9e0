"""A model and a context from a LlamaParams: the llama_model_params (tensor buffer overrides, load
mode, progress), the llama_context_params, and what a failed load means. Engine.load and dry_run
share it."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as _llama

from moecli.engine import faults
from moecli.engine.capi import _FLASH_ATTN, _GGML_TYPES, _LOAD_MODES, _buffer_type_table, _BuftOverride, _vp
from moecli.engine.logs import _LOG_ERROR, _PREFIX, _UNKNOWN_ARCH, _error_detail, _LogSink
from moecli.errors import BadInput, EngineError, ModelFileError
from moecli.params import LlamaParams


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
        self._devices = self._device_array(params)  # RPC workers are connected first: their devices get names
        if self._devices is not None:
            mp.devices = ctypes.cast(self._devices, _vp)
        self._split = None
        if params.tensor_split:
            self._split = (ctypes.c_float * max(_llama.llama_max_devices(), len(params.tensor_split)))(*params.tensor_split)
            mp.tensor_split = self._split
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
    def _device_array(params: LlamaParams):
        """-dev: a NULL-terminated array of ggml_backend_dev_t, in the order given (--rpc first)."""
        if params.rpc_servers:
            from moecli.engine import rpc

            rpc.connect(params.rpc_servers)
        if not params.devices:
            return None
        from moecli.engine.rpc import _dev_by_name, local_devices

        found = [_dev_by_name(name.encode()) for name in params.devices]
        missing = [n for n, d in zip(params.devices, found) if not d]
        if missing:
            raise EngineError(f"no device {', '.join(missing)} here (-dev)",
                              "devices here: " + ", ".join(local_devices()) + "; RPC devices need --rpc HOST:PORT")
        return (_vp * (len(found) + 1))(*found)

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
    faults.install()  # a GGML_ASSERT from here on is one line, not gdb's backtrace
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


def _context_params(params: LlamaParams, n_threads: int, n_threads_batch: int, n_seq_max: int = 1,
                    kv_unified: bool = False):
    """n_seq_max sequences (llama-server's slots); without kv_unified each gets n_ctx / n_seq_max."""
    cp = _llama.llama_context_default_params()
    cp.n_ctx = params.n_ctx
    cp.n_batch = params.n_batch
    cp.n_ubatch = params.n_ubatch
    cp.n_seq_max = n_seq_max
    cp.kv_unified = kv_unified
    cp.n_threads = n_threads
    cp.n_threads_batch = n_threads_batch
    cp.flash_attn_type = _FLASH_ATTN[params.flash_attn]  # llama.cpp's own default: auto (Llama() says off)
    cp.type_k = _GGML_TYPES[params.type_k]
    cp.type_v = _GGML_TYPES[params.type_v]
    cp.no_perf = False  # the default params switch llama.cpp's timing counters off
    cp.swa_full = False  # common/common.h and llama-bench: the default params say true
    return cp


def _new_context(model: int, params: LlamaParams, n_threads: int, n_threads_batch: int, sink: _LogSink,
                 n_seq_max: int = 1, kv_unified: bool = False) -> int:
    n_ctx_train = _llama.llama_model_n_ctx_train(model)
    if params.n_ctx > n_ctx_train > 0:
        raise EngineError(
            f"context {params.n_ctx} is larger than the model's training context {n_ctx_train}",
            f"use -c {n_ctx_train} or less",
        )
    ctx = _llama.llama_init_from_model(model, _context_params(params, n_threads, n_threads_batch, n_seq_max, kv_unified))
    if not ctx:
        raise EngineError(f"llama.cpp could not create a context: {_error_detail(sink)}",
                          "check -c, -b/-ub, -ctk/-ctv and -fa; --verbose shows llama.cpp's log")
    return ctx
