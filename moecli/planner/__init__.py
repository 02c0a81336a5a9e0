"""Where every tensor of a model lives on a machine, how much memory each device needs, how fast
decoding can be, and why: `plan` decides, `evaluate` accounts for flags a user typed.

Modules, one job each: `types` (what goes in and comes out), `model` (the model as the planner sees
it), `memory` (llama.cpp's memory rules), `placement` (which device each tensor is on, and the flags
that say so), `speed` (the decode estimate, and the speed model fitted to measurements), `search` (`plan` and `evaluate`).

Pure: facts in, a `Plan` out; no I/O, no clock, no randomness. Everything follows the llama.cpp that
llama-cpp-python 0.3.36 vendors; each rule names the place in its source it repeats:

- weights: `llama_model_base::load_tensors` (src/llama-model.cpp) gives the LAST n_gpu_layers - 1
  repeating layers and the output layer to the GPU (n_gpu_layers counts the output layer too:
  i_gpu_start = n_layer_all + 1 - n_gpu_layers); the token embedding is an input tensor and always
  stays on the CPU (`dev_input`: "very little benefit to offloading the input layer"). Tensor
  overrides are tried first, in order, `std::regex_search` on the name, the first match wins
  (`llama_model_loader::create_tensor`). MTP/NextN layers are not loaded unless asked (load_mtp).
- KV cache: n_ctx is padded to 256 cells (`llama_context`: GGML_PAD(n_ctx, 256)); each layer that
  keeps a cache holds K and V rows for every cell on its layer's device (offload_kqv); sliding-
  window layers hold GGML_PAD(min(n_ctx, n_swa + n_ubatch), 256) cells (src/llama-kv-cache-iswa.cpp).
- recurrent state: one f32 state per sequence per recurrent layer (src/llama-memory-recurrent.cpp:
  mem_size = max(1, n_seq_max), times 1 + n_rs_seq with n_rs_seq = 0 by default).
- compute buffers: see `memory._compute`; the CUDA runtime's own memory: `GpuFacts.runtime_overhead`.
- several sequences (n_seq_max, the server's -np slots; `Wishes.n_seq`, `slot_cost`): without a
  unified cache n_ctx is n_seq streams of n_ctx_seq = GGML_PAD(n_ctx / n_seq, 256) cells and each
  stream keeps its own sliding window (with one, the window is n_swa x n_seq_max); a recurrent
  state each; a row of logits each in the output buffer (llama_context::output_reserve(n_seq_max));
  the worst-case graph split into n_seq sequences, whose attention masks and KQ cover one stream
  and whose recurrent layers gather a state per sequence (`memory._activations`). Checked against
  llama.cpp's CPU dry runs for n_seq 1-8: tests/data/slot_buffers.json, written by
  scripts/measure_slot_buffers.py. With one sequence every figure is the single-sequence one.

Figures said to come from "the H100 runs" were measured in two sessions on an H100 80 GB machine
(16 cores) with llama-bench -p 512 -n 128 -r 3 on the synthetic Qwen3.6-35B-A3B Q4_K_M file that
`scripts/make_model.py` writes (19.7 GiB): peak GPU memory from nvidia-smi beside llama.cpp's own
estimate at ctx 4096, prompt and decode speed per placement, host->device copy bandwidth.
`scripts/gpu/compare.py` measures the same on a lent GPU. "CPU dry runs" are `moecli.engine.dry_run`
(llama.cpp's no_alloc load, as its --fit does) of such files; tests/test_archs.py repeats them.
"""
from moecli.planner.memory import (
    CUDA_ALIGNMENT,
    CUDA_COMPUTE_SLACK,
    DEFAULT_RUNTIME_OVERHEAD,
    MATRIX_ROW_PADDING,
    OFFLOAD_COPY_SLACK,
    OP_OFFLOAD_MIN_BATCH,
)
from moecli.planner.search import evaluate, plan, slot_cost
from moecli.planner.speed import EFFICIENCY, calibrated, config_key, fit, model_key, predict
from moecli.planner.types import (
    DEFAULT_BATCH,
    DEFAULT_CTX,
    DEFAULT_MARGIN,
    DEFAULT_UBATCH,
    GPU,
    KV_QUANT_LADDER,
    MIN_CTX,
    RAM_RESERVE,
    Alternative,
    Calibration,
    CpuOnly,
    CrossingsWeighed,
    CtxMaxFallsBack,
    DecodeEstimate,
    DenseModel,
    DeviceUnused,
    Finding,
    GaveUpCtx,
    GaveUpKvQuant,
    GaveUpLayers,
    GaveUpUbatch,
    GpuOverBudget,
    Kind,
    LoadIntoRam,
    MemoryBreakdown,
    MmapExpertsSlowPrompt,
    MmapRamShort,
    MtpNotLoaded,
    NoExpertsOnGpu,
    NonExpertsOnCpu,
    OneGpu,
    Placement,
    Plan,
    RamLoadFails,
    RamPages,
    RamWouldFit,
    RpcWouldFit,
    Speed,
    SpeedFigure,
    SpeedInputs,
    SpeedSample,
    TensorPlacement,
    ThreadsOverCores,
    UbatchBelowOffload,
    Wishes,
    parse_ctx,
)

__all__ = [
    "Alternative", "Calibration", "calibrated", "config_key", "fit", "model_key", "predict", "CUDA_ALIGNMENT", "CUDA_COMPUTE_SLACK", "CpuOnly", "CtxMaxFallsBack", "DEFAULT_BATCH",
    "DEFAULT_CTX", "DEFAULT_MARGIN", "DEFAULT_RUNTIME_OVERHEAD", "DEFAULT_UBATCH", "DecodeEstimate", "DenseModel",
    "EFFICIENCY", "Finding", "GPU", "GaveUpCtx", "GaveUpKvQuant", "GaveUpLayers", "GaveUpUbatch", "GpuOverBudget",
    "KV_QUANT_LADDER", "Kind", "LoadIntoRam", "CrossingsWeighed", "DeviceUnused", "MATRIX_ROW_PADDING", "MIN_CTX", "MemoryBreakdown",
    "MmapExpertsSlowPrompt", "MmapRamShort", "MtpNotLoaded", "NoExpertsOnGpu", "NonExpertsOnCpu",
    "OFFLOAD_COPY_SLACK", "OP_OFFLOAD_MIN_BATCH", "OneGpu", "Placement", "Plan", "RAM_RESERVE", "RamLoadFails",
    "RamPages", "RamWouldFit", "RpcWouldFit", "Speed", "SpeedFigure", "SpeedInputs", "SpeedSample", "TensorPlacement", "ThreadsOverCores", "UbatchBelowOffload", "Wishes", "evaluate", "parse_ctx", "plan", "slot_cost",
]
