"""How many threads llama.cpp computes with when a LlamaParams leaves -t/-tb unset."""

from __future__ import annotations

from moecli.cpu import physical_cores
from moecli.params import LlamaParams


def _resolve_threads(params: LlamaParams) -> tuple[int, int]:
    """(n_threads, n_threads_batch) as llama.cpp's tools resolve them: -t, else the physical cores;
    -tb, else -t (common/arg.cpp: postprocess_cpu_params(params.cpuparams_batch, &params.cpuparams))."""
    n_threads = params.n_threads or physical_cores()
    return n_threads, params.n_threads_batch or n_threads
