"""Run a GGUF through llama.cpp: load it with a `LlamaParams`, chat or complete with streamed text,
time it with llama.cpp's own counters, benchmark it the way llama-bench does, and ask llama.cpp
what a load would allocate without allocating it (`dry_run`).

capi        the C API beyond llama-cpp-python's prototypes: structs, enums, backend, buffer types
logs        llama.cpp's log: captured, quiet by default, the lines we read, errors explained
loading     model and context parameters, loading a model, making a context (Engine and dry_run)
memory      BufferSizes: llama.cpp's memory breakdown (or its log); dry_run
sampling    Sampling and its llama.cpp sampler chain
benchtests  llama-bench's test_prompt / test_gen on a context
threads     llama.cpp's default -t where the caller gives none
core        Engine: load, tokens, chat templates, streaming, timings, benchmarks

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
dry runs and benchmarks, and every llama.cpp call is visible here. Chat templates are rendered by
moecli.templates (jinja2's sandbox as transformers and llama-cpp-python run it, or llama.cpp's
built-in templates through llama_chat_apply_template).
"""

from moecli.engine.capi import available_buffer_types, gpu_offload_supported
from moecli.engine.core import Engine, LoadReport, Timings, Utf8Stream
from moecli.engine.memory import BufferSizes, dry_run
from moecli.engine.sampling import Sampling

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
