"""llama.cpp's memory rules: for a model, a setup (context, KV types, batches) and a placement, what
each device holds: weights, KV cache, recurrent state, compute buffers, and the CUDA runtime's own
memory with buffer padding."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from moecli.facts import KV_CELL_PAD, GpuFacts, KvLayer, TensorInfo
from moecli.ggml import bits_per_weight, row_bytes
from moecli.params import CPU
from moecli.planner.types import DEFAULT_UBATCH, GPU, MemoryBreakdown
from moecli.units import MiB

if TYPE_CHECKING:
    from moecli.planner.model import _Model
    from moecli.planner.placement import _Where

# The CUDA runtime's own memory when nothing better is known: in the H100 runs (see moecli.planner)
# the peak was 690-730 MiB above llama.cpp's estimate; consumer cards use less (machine.py profiles).
DEFAULT_RUNTIME_OVERHEAD = 768 * MiB
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda: GGML_OP_OFFLOAD_MIN_BATCH default; smaller batches stay on the CPU
CUDA_ALIGNMENT = 128  # ggml_backend_cuda_buffer_type_get_alignment
MATRIX_ROW_PADDING = 512  # ggml-cuda common.cuh: quantized tensors get a padded last row
# Calibration of the GPU compute buffer against llama.cpp's estimates in the H100 runs (see
# `_compute`): CUDA's buffer came out ~10 MiB above the CPU dry run of the same graph, and
# configurations that copy CPU-resident weights to the GPU another 0-32 MiB above that.
CUDA_COMPUTE_SLACK = 16 * MiB
OFFLOAD_COPY_SLACK = 32 * MiB


@dataclass(frozen=True)
class _Setup:
    """Everything but the placement that decides memory."""

    n_ctx: int  # requested tokens
    type_k: str
    type_v: str
    n_ubatch: int
    n_batch: int
    flash_attn: str  # "auto" | "on" | "off"
    n_seq: int = 1  # n_seq_max: sequences (server slots)
    kv_unified: bool = False

    @property
    def cells(self) -> int:
        """llama_context: n_ctx padded to 256; without a unified KV cache each of the n_seq streams
        gets n_ctx / n_seq padded to 256 again, and n_ctx becomes that times n_seq."""
        padded = -(-self.n_ctx // KV_CELL_PAD) * KV_CELL_PAD
        if self.n_seq <= 1 or self.kv_unified:
            return padded
        per_seq = -(-(padded // self.n_seq) // KV_CELL_PAD) * KV_CELL_PAD
        return per_seq * self.n_seq

    @property
    def n_stream(self) -> int:
        """KV streams: one per sequence without a unified cache (llama_kv_cache: n_stream =
        unified ? 1 : n_seq_max), else one."""
        return 1 if self.kv_unified else max(1, self.n_seq)

    @property
    def cells_per_seq(self) -> int:
        """llama_context's n_ctx_seq: the cells of one stream (all of them with a unified cache)."""
        return self.cells // self.n_stream

    def layer_cells(self, window: int | None) -> int:
        """The cells a layer keeps: all of them, or for a sliding-window layer its window per stream."""
        return KvLayer(0, 0, 0, window).cells(self.cells, self.ubatch, self.n_seq, self.kv_unified)

    @property
    def batch(self) -> int:  # llama_context: with causal attention n_batch <= n_ctx
        return min(self.n_ctx, self.n_batch)

    @property
    def ubatch(self) -> int:
        return min(self.batch, self.n_ubatch)

    @property
    def reserve_tokens(self) -> int:  # sched_reserve: n_tokens = min(n_ctx, n_ubatch)
        return min(self.cells, self.ubatch)

    @property
    def graph_tokens(self) -> int:
        """The tokens of the worst-case graph: llama_context::graph_reserve splits them into
        n_seq_max sequences of equal length, rounding n_tokens up to a multiple of n_seq_max."""
        n_seq = max(1, self.n_seq)
        return -(-self.reserve_tokens // n_seq) * n_seq

    @property
    def fa_on(self) -> bool:  # "auto" resolves to on where the device supports it (CUDA, CPU)
        return self.flash_attn != "off"


@dataclass(frozen=True)
class _Account:
    gpu: MemoryBreakdown | None
    cpu: MemoryBreakdown
    copied: int

    @property
    def fits_gpu(self) -> bool:
        return self.gpu is None or self.gpu.fits


def _kv_bytes(type_name: str, n_embd: int, cells: int) -> int:
    return row_bytes(type_name, n_embd) * cells if n_embd else 0


def _account(m: _Model, setup: _Setup, where: _Where, gpu: GpuFacts | None, gpu_budget: int | None,
             ram_budget: int | None) -> _Account:
    has_gpu = gpu is not None
    weights = {GPU: 0, CPU: 0}
    gpu_padding = 0
    largest_cpu = 0  # the biggest CPU-resident weight the GPU copies for a prompt batch ("op offload")
    for t, device in zip(m.tensors, where.devices):
        if device is None:
            continue
        weights[device] += t.info.n_bytes
        if device == GPU:
            gpu_padding += t.cuda_bytes
        elif not t.is_input:
            largest_cpu = max(largest_cpu, t.info.n_bytes)
    copied = 0
    if m.tied_output is not None and has_gpu and where.output_on_gpu():
        copied = m.tied_output.n_bytes  # TENSOR_DUPLICATED: the output head is a second copy on the GPU
        weights[GPU] += copied
        gpu_padding += CUDA_ALIGNMENT

    kv = {GPU: 0, CPU: 0}
    largest_cpu_kv = 0
    fa_f16_scratch = 0
    for layer, n_k, n_v, window in m.kv_layers:
        layer_cells = setup.layer_cells(window)
        size = _kv_bytes(setup.type_k, n_k, layer_cells) + _kv_bytes(setup.type_v, n_v, layer_cells)
        on_gpu = has_gpu and where.layer_on_gpu(m, layer)
        kv[GPU if on_gpu else CPU] += size
        if not on_gpu:
            largest_cpu_kv = max(largest_cpu_kv, size)
        if setup.type_k != "f16" or setup.type_v != "f16":
            # ggml-cuda FA (tile/mma kernels for prompt batches) converts a quantized K/V to f16 in
            # the compute buffer: ggml_cuda_flash_attn_ext_get_alloc_size, one layer at a time.
            fa_f16_scratch = max(fa_f16_scratch, layer_cells * 2 * (n_k * (setup.type_k != "f16")
                                                                     + n_v * (setup.type_v != "f16")))
    recurrent = {GPU: 0, CPU: 0}
    for layer, size in m.recurrent_per_layer:  # one state per sequence (mem_size = max(1, n_seq_max))
        recurrent[GPU if has_gpu and where.layer_on_gpu(m, layer) else CPU] += size * max(1, setup.n_seq)

    gpu_compute, cpu_compute = _compute(m, setup, where, has_gpu, largest_cpu, largest_cpu_kv, fa_f16_scratch)

    cpu = MemoryBreakdown(CPU, weights[CPU], kv[CPU], recurrent[CPU], cpu_compute, 0, ram_budget)
    if not has_gpu:
        return _Account(None, cpu, copied)
    overhead = _runtime_overhead(gpu) + gpu_padding + _pool_growth(m, setup)
    card = MemoryBreakdown(f"CUDA{gpu.index}", weights[GPU], kv[GPU], recurrent[GPU], gpu_compute, overhead, gpu_budget)
    return _Account(card, cpu, copied)


def _cuda_padding(t: TensorInfo) -> int:
    """ggml_backend_cuda_buffer_type_get_alloc_size: a quantized tensor whose rows are not a
    multiple of 512 gets room for a padded last row."""
    ne0 = t.shape[0] if t.shape else 0
    if not ne0 or ne0 % MATRIX_ROW_PADDING == 0 or t.ggml_type.upper() in ("F32", "F16", "BF16", "I32", "I16", "I8"):
        return 0
    return int(-(-(MATRIX_ROW_PADDING - ne0 % MATRIX_ROW_PADDING) * bits_per_weight(t.ggml_type) // 8))


def _runtime_overhead(gpu: GpuFacts) -> int:
    return gpu.runtime_overhead if gpu.runtime_overhead is not None else DEFAULT_RUNTIME_OVERHEAD


def _pool_growth(m: _Model, setup: _Setup) -> int:
    """The runtime overhead was measured at n_ubatch 512. llama.cpp's CUDA pool holds per-batch
    temporaries (MUL_MAT_ID gathers the batch's rows per expert: n_tokens x top-k x n_embd floats,
    in and out), which grow with the micro-batch."""
    extra_tokens = max(0, setup.reserve_tokens - DEFAULT_UBATCH)
    return extra_tokens * max(1, m.facts.n_expert_used) * m.facts.n_embd * 4 * 2


def _compute(m: _Model, setup: _Setup, where: _Where, has_gpu: bool, largest_cpu: int,
             largest_cpu_kv: int, fa_f16_scratch: int) -> tuple[int, int]:
    """Compute buffers (GPU, CPU) in bytes, the CPU's with the host output buffer.

    llama.cpp sizes them by reserving the worst-case graph (llama_context::sched_reserve: a prompt
    micro-batch of n_tokens = min(n_ctx, n_ubatch), one output per token up to n_outputs_max =
    n_batch, the full KV cache) and letting ggml-alloc reuse memory as tensors die. Two peaks
    (`_activations`):
    - the tail: the logits, n_outputs x n_vocab f32 (485 MiB for Qwen3.6 at n_ubatch 512), plus a
      few rows of n_embd per token (measured: 16 MiB at 512 tokens for n_embd 2048);
    - inside a layer: its activations (`_floats_per_token`), the attention scratch (without
      flash attention the KQ matrix and mask, n_kv x n_tokens x (n_head + 1) f32: measured exactly
      on the CPU;
      with it and a quantized cache, the f16 copy of one layer's K/V that ggml-cuda makes), and,
      for batches >= 32 tokens, the copy of the CPU-resident weight the GPU multiplies with
      ("op offload"; the scheduler starts a new split for each such weight, so one at a time).
    Calibration (CPU dry run of the Qwen3.6 shapes: 501.0 MiB; llama.cpp's estimates in the H100
    runs at ctx 4096 / ub 512 imply 511 MiB all on GPU and 511-543 MiB with experts on the CPU):
    GPU = max(tail, layer) + CUDA_COMPUTE_SLACK (+ OFFLOAD_COPY_SLACK when weights are copied).
    What several sequences (server slots) change is in `_activations` and `_output_buffer`.
    """
    n_tokens = setup.graph_tokens
    f = m.facts
    tail, layer = _activations(m, setup)
    out_one, out_more = _output_buffer(m, setup)
    if not has_gpu:
        return 0, max(tail, layer) + out_one + out_more

    offload = n_tokens >= OP_OFFLOAD_MIN_BATCH
    output_copy = 0
    output_device_gpu = where.output_on_gpu()
    if not output_device_gpu and offload:
        output_copy = _output_bytes(m)  # the LM head runs on the GPU from a copy
        output_device_gpu = True
    copies = largest_cpu + largest_cpu_kv if offload else 0
    gpu_work = where.n_gpu_layers > 0 or offload
    if not gpu_work:
        gpu = 0
    else:
        gpu_tail = tail + output_copy if output_device_gpu else 0
        gpu = max(gpu_tail, layer + fa_f16_scratch + copies) + CUDA_COMPUTE_SLACK
        if copies or output_copy:
            gpu += OFFLOAD_COPY_SLACK
    # The CPU's compute buffer (pinned host memory next to a GPU) holds what stays on the CPU:
    # the embedding lookup, and whole layers when batches are too small to offload; beside it the
    # output buffer (CUDA_Host), one row of logits per sequence.
    cpu = n_tokens * f.n_embd * 4 * 4 + out_one
    if not offload and largest_cpu:
        cpu = max(cpu, layer)
    if not output_device_gpu:
        cpu = max(cpu, tail)
    return gpu, cpu + out_more


def _activations(m: _Model, setup: _Setup) -> tuple[int, int]:
    """The worst-case graph's two peaks (see `_compute`), (tail, layer) in bytes, for n_seq_max
    sequences. llama_context::graph_reserve builds the prompt graph as n_seq_max sequences of
    n_tokens / n_seq_max tokens each (n_tokens rounded up to a multiple of n_seq_max); the logits
    stay n_outputs = min(n_tokens, n_outputs_max) rows. What the sequences change, from
    src/llama-graph.cpp:
    - without a unified KV cache the attention runs per stream (build_attn_mha views q, k, v as
      n_stream streams): the KQ mask (build_attn_inp_kq_mask) is [n_kv, n_tokens / n_stream, 1,
      n_stream] with n_kv = n_ctx_seq, so mask and KQ cover n_ctx_seq = n_ctx / n_seq_max cells,
      not n_ctx; one mask per kind of layer (full, sliding window), f16 with flash attention and
      f32 without. In the CPU dry runs (tests/data/slot_buffers.json) llama.cpp's peak with
      n_stream > 1 is the tail plus those masks for Qwen3.6 (to 0.1 MiB) and the demo model,
      so the tail counts them then; plain-attention MoE models (Qwen3-30B-A3B) keep them inside
      a layer's peak, where counting them is on the safe side (32 MiB at -c 16384 -ub 2048 -np 2).
      At n_stream = 1 the calibrated tail above already holds the mask (Qwen3.6: 501.0 MiB
      measured and predicted), and a unified cache adds only what a sliding-window mask grows by;
    - a recurrent layer gathers n_seq states (build_rs: ggml_get_rows of [state_size, n_seqs])
      and writes n_seq new ones (the delta-net / ssm-scan output holds them): two states per
      sequence live in the layer, the first sequence's being in the single-sequence bound.
    With one sequence both are the single-sequence terms exactly."""
    n_tokens = setup.graph_tokens
    n_outputs = min(setup.reserve_tokens, setup.batch)
    f = m.facts
    tail = n_outputs * f.n_vocab * 4 + n_tokens * f.n_embd * 4 * 4
    layer = n_tokens * m.floats_per_token * 4
    if not setup.fa_on and m.kv_layers:
        # KQ (soft_max in place) and the f32 mask, per stream
        layer += setup.cells_per_seq * n_tokens * (m.n_head + 1) * 4
    tail += _slot_masks(m, setup)
    if setup.n_seq > 1 and m.recurrent_per_layer:
        layer += 2 * (setup.n_seq - 1) * max(size for _, size in m.recurrent_per_layer)
    return tail, layer


def _slot_masks(m: _Model, setup: _Setup) -> int:
    """What the KQ masks add to the tail with several sequences (see `_activations`): without a
    unified cache the masks of the n_stream streams, n_ctx_seq (or the window's cells) x n_tokens
    each; with one it is the single-sequence mask, except that a sliding-window mask covers
    n_swa x n_seq_max + n_ubatch cells, and what it grows by counts."""
    if setup.n_seq <= 1 or not m.kv_layers:
        return 0
    windows = {window for _, _, _, window in m.kv_layers}
    element = 2 if setup.fa_on else 4  # f16 with flash attention, else f32
    if setup.n_stream > 1:
        cells = sum(setup.layer_cells(window) // setup.n_stream for window in windows)
    else:
        one = replace(setup, n_seq=1)
        cells = sum(setup.layer_cells(window) - one.layer_cells(window) for window in windows)
    return cells * setup.graph_tokens * element


def _output_buffer(m: _Model, setup: _Setup) -> tuple[int, int]:
    """The host output buffer (llama_context::output_reserve(n_seq_max) at context creation): logits
    for max(n_outputs, n_seq_max) rows of n_vocab f32, in RAM (CUDA_Host next to a GPU). Returned
    as (the first row, the rows of the other sequences): the single-sequence accounting counts the
    first one as it always has (inside a max), each further sequence adds its row outside it."""
    row = m.facts.n_vocab * 4
    return row, row * (max(1, setup.n_seq) - 1)


def _output_bytes(m: _Model) -> int:
    if m.tied_output is not None:
        return m.tied_output.n_bytes
    return sum(t.info.n_bytes for t in m.tensors if t.layer is None and not t.is_input and t.loaded)
