"""How many threads llama.cpp computes with when a LlamaParams leaves -t/-tb unset."""

from __future__ import annotations

from moecli.params import LlamaParams


def _physical_cores() -> int:
    """llama.cpp's default -t: the physical cores (cpu_get_num_math, common/common.cpp). A copy of
    machine.physical_cores: the engine must not import moecli.machine, and callers need not pass -t."""
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _resolve_threads(params: LlamaParams) -> tuple[int, int]:
    """(n_threads, n_threads_batch) as llama.cpp's tools resolve them: -t, else the physical cores;
    -tb, else -t (common/arg.cpp: postprocess_cpu_params(params.cpuparams_batch, &params.cpuparams))."""
    n_threads = params.n_threads or _physical_cores()
    return n_threads, params.n_threads_batch or n_threads
