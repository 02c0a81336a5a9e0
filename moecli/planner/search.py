"""Where every tensor of a model lives on a machine, how much memory each device needs, how fast
decoding can be, and why: `plan` decides, `evaluate` accounts for flags a user typed, `neighbours`
lists the configurations `moecli bench --sweep` compares.

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
- compute buffers: see `_compute`; the CUDA runtime's own memory: `GpuFacts.runtime_overhead`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace

from moecli.errors import BadInput, DoesNotFit, NotMoE
from moecli.facts import KV_CELL_PAD, GpuFacts, KvLayer, MachineFacts, ModelFacts, Role, TensorInfo
from moecli.ggml import bits_per_weight, row_bytes
from moecli.params import (
    ALL_LAYERS,
    CPU,
    EXPS_REGEX,
    KV_TYPES,
    LlamaParams,
    TensorOverride,
    layer_tensor_pattern,
)
from moecli.units import GiB, MiB, fmt_bytes

# ---------------------------------------------------------------------------------------------
# constants (each with where it comes from)

DEFAULT_CTX = 4096  # moecli's default context: llama.cpp's own fitter also keeps at least 4096 (--fit-ctx)
DEFAULT_UBATCH = 512  # llama.cpp's default -ub
DEFAULT_BATCH = 2048  # llama.cpp's default -b
MIN_CTX = 512  # the smallest context the planner gives up to
# Kept free on the GPU for what the plan cannot see: other programs, a desktop, estimate error.
# llama.cpp's fitter keeps 1024 MiB (--fit-target); our terms are known well enough to keep less.
DEFAULT_MARGIN = 256 * MiB
# The CUDA runtime's own memory when nothing better is known: the team's H100 peaked 690-730 MiB
# above llama.cpp's estimate (facts/gpu-build.md); consumer cards use less (machine.py profiles).
DEFAULT_RUNTIME_OVERHEAD = 768 * MiB
RAM_RESERVE = 1 * GiB  # RAM left to the OS beyond what psutil reports as available
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda: GGML_OP_OFFLOAD_MIN_BATCH default; smaller batches stay on the CPU
CUDA_ALIGNMENT = 128  # ggml_backend_cuda_buffer_type_get_alignment
MATRIX_ROW_PADDING = 512  # ggml-cuda common.cuh: quantized tensors get a padded last row
# Calibration of the GPU compute buffer against the team's H100 figures (facts/gpu-build.md, see
# `_compute`): CUDA's buffer came out ~10 MiB above the CPU dry run of the same graph, and
# configurations that copy CPU-resident weights to the GPU another 0-32 MiB above that.
CUDA_COMPUTE_SLACK = 16 * MiB
OFFLOAD_COPY_SLACK = 32 * MiB
# Decoding reaches 25-60 % of the memory-bandwidth bound on real systems
# (facts/qwen36-35b-a3b.md); the team's H100 reached ~17 % (all on GPU) and ~25 % (hybrid)
# because per-token overheads, not bytes, dominate on a card that fast (facts/gpu-build.md).
EFFICIENCY = (0.25, 0.60)
KV_QUANT_LADDER = ("q8_0", "q4_0")  # what automatic KV quantization tries, in order

GPU = "GPU"  # internal device tag; reports name the card "CUDA<index>" as llama.cpp does

_INPUT_TENSORS = ("token_embd", "pos_embd", "token_types", "per_layer_token_embd")  # LLM_TENSOR_LAYER_INPUT
_LAYER0_GLOBALS = ("rope_freqs", "rope_factors_long", "rope_factors_short", "token_embd_norm")  # REPEATING, no blk.N
_EXPERT_KIND = re.compile(EXPS_REGEX)


# ---------------------------------------------------------------------------------------------
# public data types


def parse_ctx(text: str) -> int | str:
    """`--ctx` as users type it: a number of tokens (`8192`, `32k` = 32768), or `max`."""
    value = text.strip().lower()
    if value == "max":
        return "max"
    match = re.fullmatch(r"(\d+)(k?)", value)
    if not match or int(match.group(1)) < 1:
        raise BadInput(f"--ctx {text!r} is not a number of tokens or 'max'", "e.g. --ctx 8192, --ctx 32k or --ctx max")
    return int(match.group(1)) * (1024 if match.group(2) else 1)


@dataclass(frozen=True)
class Wishes:
    """What the user asked for; None means "choose for me"."""

    n_ctx: int | str | None = None  # tokens, "max" (largest that fits, up to the training context), None = 4096
    vram_budget: int | None = None  # at most this much of the GPU, the runtime's overhead included
    margin: int | None = None  # kept free below the budget; None = DEFAULT_MARGIN
    type_k: str | None = None  # KV cache types; None = f16 unless quantizing is needed for the context
    type_v: str | None = None
    allow_kv_quant: bool = True
    n_ubatch: int | None = None  # None = 512, smaller only when needed to fit
    n_batch: int | None = None
    threads: int | None = None  # None = physical cores
    load_mode: str | None = None  # "mmap" | "none" | ... ; None = choose
    flash_attn: str | None = None  # None = "auto" ("on" where a quantized V cache needs it)
    gpu: int = 0  # which GPU to plan for

    def __post_init__(self) -> None:
        if isinstance(self.n_ctx, str) and self.n_ctx != "max":
            raise BadInput(f"context {self.n_ctx!r} is not a number of tokens or 'max'", "e.g. --ctx 8192 or --ctx max")
        if isinstance(self.n_ctx, int) and (isinstance(self.n_ctx, bool) or self.n_ctx < 1):
            raise BadInput(f"context {self.n_ctx} must be at least 1 token", "e.g. --ctx 4096")
        for flag, value in (("-ctk", self.type_k), ("-ctv", self.type_v)):
            if value is not None and value not in KV_TYPES:
                raise BadInput(f"{flag} {value!r} is not one of llama.cpp's KV cache types", "use one of: " + ", ".join(KV_TYPES))
        for flag, value in (("--vram budget", self.vram_budget), ("margin", self.margin)):
            if value is not None and value < 0:
                raise BadInput(f"{flag} must not be negative", "give a size such as 256MiB")
        if self.n_ubatch is not None and self.n_ubatch < 1 or self.n_batch is not None and self.n_batch < 1:
            raise BadInput("batch sizes must be positive", "e.g. -ub 512 -b 2048")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"-t {self.threads} must be at least 1", "e.g. -t 4")
        if self.load_mode is not None:
            LlamaParams(load_mode=self.load_mode)  # validates with llama.cpp's names
        if self.flash_attn is not None:
            LlamaParams(flash_attn=self.flash_attn)


@dataclass(frozen=True)
class MemoryBreakdown:
    """What one device holds, in bytes. `budget` is what the plan may use there (GPU: free memory or
    --vram, minus the margin; CPU: available RAM minus RAM_RESERVE)."""

    device: str  # "CUDA0", "CPU"
    weights: int
    kv: int
    recurrent: int
    compute: int
    overhead: int  # GPU: the CUDA runtime (context, workspaces, pool) and buffer alignment; CPU: 0
    budget: int | None

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.recurrent + self.compute + self.overhead

    @property
    def free(self) -> int | None:
        return None if self.budget is None else self.budget - self.total

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "free": self.free, "fits": self.fits}


@dataclass(frozen=True)
class TensorPlacement:
    name: str
    layer: int | None
    role: str
    ggml_type: str
    n_bytes: int
    device: str | None  # "CUDA0", "CPU", or None when llama.cpp does not load it (MTP layers)
    copy: bool = False  # a duplicate llama.cpp makes (a tied output head on the GPU)


@dataclass(frozen=True)
class Placement:
    """The compact picture: which layers are where."""

    n_layer: int  # repeating layers llama.cpp counts for -ngl (MTP/NextN included)
    gpu_layers: tuple[int, ...]  # layers whose non-expert weights are on the GPU
    output_on_gpu: bool
    expert_layers: tuple[int, ...]  # layers that hold routed experts (loaded ones)
    expert_layers_gpu: tuple[int, ...]  # every expert tensor on the GPU
    expert_layers_cpu: tuple[int, ...]  # every expert tensor on the CPU
    partial_layer: int | None  # one layer split by tensor
    partial_gpu: tuple[str, ...]  # its expert tensors on the GPU
    partial_cpu: tuple[str, ...]  # and on the CPU
    other_cpu: tuple[str, ...]  # non-expert tensors on the CPU besides the inputs (when layers are given up)

    def lines(self) -> list[str]:
        """A few lines for people."""
        out = ["input: token embedding on CPU (llama.cpp never offloads it)"]
        out.append(f"layers on GPU: {_ranges(self.gpu_layers) or 'none'} of 0-{self.n_layer - 1}; "
                   f"output head on {'GPU' if self.output_on_gpu else 'CPU'}")
        if self.expert_layers:
            out.append(f"experts on GPU: layers {_ranges(self.expert_layers_gpu) or 'none'}")
            out.append(f"experts on CPU: layers {_ranges(self.expert_layers_cpu) or 'none'}")
            if self.partial_layer is not None:
                out.append(f"layer {self.partial_layer} split: {', '.join(_kind(n) for n in self.partial_gpu)} on GPU, "
                           f"{', '.join(_kind(n) for n in self.partial_cpu)} on CPU")
        return out


@dataclass(frozen=True)
class DecodeEstimate:
    """Tokens per second while generating, from the bytes each token reads on each device over that
    device's bandwidth. An upper bound, with the range real systems reach."""

    bound: float | None  # tok/s if every byte moved at the device's peak bandwidth
    low: float | None  # bound x EFFICIENCY[0]
    high: float | None  # bound x EFFICIENCY[1]
    bytes_per_token: tuple[tuple[str, int], ...]  # per device
    bandwidths: tuple[tuple[str, float | None], ...]  # bytes/s per device
    basis: str


@dataclass(frozen=True)
class Alternative:
    """A configuration the planner considered and did not choose, and why."""

    label: str
    params: LlamaParams
    gpu_total: int | None
    decode_bound: float | None
    reason: str


@dataclass(frozen=True)
class Plan:
    model: str
    arch: str
    machine: str
    is_moe: bool
    params: LlamaParams
    devices: tuple[MemoryBreakdown, ...]  # GPU first (when there is one), then CPU
    placement: Placement
    tensors: tuple[TensorPlacement, ...]  # every tensor's device
    n_ctx: int  # the cells llama.cpp allocates (params.n_ctx padded to 256)
    decode: DecodeEstimate
    fits: bool
    warnings: tuple[str, ...] = ()
    gave_up: tuple[str, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    notes: tuple[str, ...] = ()
    file_bytes: int = 0  # the tensor bytes in the file(s)
    copied_bytes: int = 0  # bytes llama.cpp holds twice (a tied output head on the GPU)
    not_loaded_bytes: int = 0  # bytes llama.cpp does not load (MTP layers)

    @property
    def gpu(self) -> MemoryBreakdown | None:
        return next((d for d in self.devices if d.device != CPU), None)

    @property
    def cpu(self) -> MemoryBreakdown:
        return next(d for d in self.devices if d.device == CPU)

    def weights_add_up(self) -> bool:
        """The per-device weights are exactly the file's tensor bytes (plus copies, minus what is
        not loaded)."""
        return sum(d.weights for d in self.devices) == self.file_bytes + self.copied_bytes - self.not_loaded_bytes

    def to_dict(self) -> dict:
        return {
            "model": self.model, "arch": self.arch, "machine": self.machine, "is_moe": self.is_moe,
            "fits": self.fits, "n_ctx": self.n_ctx,
            "params": {**asdict(self.params), "tensor_overrides": [str(o) for o in self.params.tensor_overrides],
                       "llama_args": self.params.to_llama_args()},
            "devices": [d.to_dict() for d in self.devices],
            "placement": asdict(self.placement),
            "decode": asdict(self.decode),
            "warnings": list(self.warnings), "gave_up": list(self.gave_up), "notes": list(self.notes),
            "alternatives": [{**asdict(a), "params": a.params.to_llama_args()} for a in self.alternatives],
            "file_bytes": self.file_bytes, "copied_bytes": self.copied_bytes, "not_loaded_bytes": self.not_loaded_bytes,
            "tensors": [asdict(t) for t in self.tensors],
        }


# ---------------------------------------------------------------------------------------------
# the model as the planner sees it


@dataclass(frozen=True)
class _Tensor:
    info: TensorInfo
    layer: int | None  # the layer whose device it follows; None for input / output tensors
    is_input: bool
    kind: str | None  # expert tensors: "up", "down", "gate", "gate_up"
    loaded: bool
    cuda_bytes: int  # what a CUDA buffer adds to its bytes: alignment and a padded last row


@dataclass(frozen=True)
class _Model:
    facts: ModelFacts
    tensors: tuple[_Tensor, ...]
    n_layer_all: int
    expert_layers: tuple[int, ...]
    kv_layers: tuple[tuple[int, int, int, int | None], ...]  # (layer, n_embd_k, n_embd_v, window)
    recurrent_per_layer: tuple[tuple[int, int], ...]  # (layer, bytes per sequence)
    floats_per_token: int  # widest layer's activations per token (see _compute)
    n_head: int
    tied_output: TensorInfo | None  # token_embd, duplicated as the output head by llama.cpp

    @property
    def is_moe(self) -> bool:
        return self.facts.is_moe and bool(self.expert_layers)


def _prepare(model: ModelFacts) -> _Model:
    blocks = max([model.n_layer, _meta_int(model, "block_count") or 0]
                 + [t.layer + 1 for t in model.tensors if t.layer is not None])
    tensors = []
    for t in model.tensors:
        base = t.name.rsplit(".", 1)[0] if t.name.endswith((".weight", ".bias")) else t.name
        is_input = t.layer is None and base in _INPUT_TENSORS
        layer = t.layer if t.layer is not None else (0 if base in _LAYER0_GLOBALS else None)
        kind = None
        if t.role is Role.EXPERT:
            match = _EXPERT_KIND.search(t.name)
            kind = match.group(1) if match else None
        # MTP/NextN blocks (blk.N, N >= n_layer): TENSOR_SKIP unless llama_model_params.load_mtp
        loaded = (t.layer is None or t.layer < model.n_layer) and t.role.value != "mtp"
        tensors.append(_Tensor(t, layer, is_input, kind, loaded, _cuda_padding(t) + CUDA_ALIGNMENT))
    expert_layers = tuple(sorted({t.layer for t in tensors if t.kind and t.loaded and t.layer is not None}))

    kv = tuple((k.layer, k.n_embd_k, k.n_embd_v, k.window) for k in model.kv_layers if k.layer < model.n_layer)
    recurrent_layers = sorted({t.layer for t in tensors if t.info.role is Role.RECURRENT and t.loaded
                               and t.layer is not None} - {k[0] for k in kv})
    if model.recurrent_state_bytes and not recurrent_layers:
        recurrent_layers = [i for i in range(model.n_layer) if i not in {k[0] for k in kv}] or [0]
    per = model.recurrent_state_bytes // len(recurrent_layers) if recurrent_layers else 0
    recurrent = [(layer, per) for layer in recurrent_layers]
    if recurrent:
        recurrent[-1] = (recurrent[-1][0], per + model.recurrent_state_bytes - per * len(recurrent_layers))

    tied = None
    names = {t.name for t in model.tensors}
    if "output.weight" not in names and "token_embd.weight" in names:
        tied = next(t for t in model.tensors if t.name == "token_embd.weight")

    n_head = _meta_int(model, "attention.head_count") or max(1, model.n_embd // 128)
    return _Model(model, tuple(tensors), blocks, expert_layers, kv, tuple(recurrent),
                  _floats_per_token(model, tensors), n_head, tied)


def _meta_int(model: ModelFacts, key: str) -> int | None:
    value = model.metadata.get(f"{model.arch}.{key}")
    if isinstance(value, (list, tuple)):
        value = max((v for v in value if isinstance(v, int)), default=None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _floats_per_token(model: ModelFacts, tensors: list[_Tensor]) -> int:
    """A bound on one layer's live activations per token, in floats: three rows of the residual
    stream, the output of every matrix of the layer (experts: top-k of them), once more the width
    of each up projection for the gated product silu(gate) * up, and 1024 floats for the graph's
    inputs (positions, masks, ids), which matter in small models.

    Against llama.cpp's no_alloc dry runs on the CPU (n_outputs_max = 1, so that the logits do not
    hide the layers; ub 512 and 2048, flash attention): Qwen3.6-35B-A3B peaks at 38,900 floats per
    token (this bound: 62,300), a dense qwen3 with n_embd 1024 / n_ff 4096 at 17,700 (18,900), the
    tiny qwen35moe demo at 6,200 (8,500), a tiny dense qwen3 at 4,100 (4,400)."""
    per_layer: dict[int, int] = {}
    used = model.n_expert_used or 1
    for t in tensors:
        if t.layer is None or not t.loaded or len(t.info.shape) < 2:
            continue
        width = t.info.shape[1] * (used if t.kind else 1)
        if "ffn_up" in t.info.name:
            width *= 2
        elif t.kind == "gate_up":
            width += width // 2
        per_layer[t.layer] = per_layer.get(t.layer, 0) + width
    return 1024 + 3 * model.n_embd + max(per_layer.values(), default=model.n_embd)


# ---------------------------------------------------------------------------------------------
# the accounting: one configuration -> memory per device


@dataclass(frozen=True)
class _Setup:
    """Everything but the placement that decides memory."""

    n_ctx: int  # requested tokens
    type_k: str
    type_v: str
    n_ubatch: int
    n_batch: int
    flash_attn: str  # "auto" | "on" | "off"

    @property
    def cells(self) -> int:
        return -(-self.n_ctx // KV_CELL_PAD) * KV_CELL_PAD

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
    def fa_on(self) -> bool:  # "auto" resolves to on where the device supports it (CUDA, CPU)
        return self.flash_attn != "off"


@dataclass(frozen=True)
class _Where:
    """A placement: the device of every tensor (None = not loaded) and of every layer."""

    devices: tuple[str | None, ...]  # per _Model.tensors
    n_gpu_layers: int  # effective, 0 .. n_layer_all + 1

    def layer_on_gpu(self, m: _Model, layer: int) -> bool:
        return layer >= m.n_layer_all + 1 - self.n_gpu_layers

    def output_on_gpu(self) -> bool:
        return self.n_gpu_layers >= 1


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

    cells = setup.cells
    kv = {GPU: 0, CPU: 0}
    largest_cpu_kv = 0
    fa_f16_scratch = 0
    for layer, n_k, n_v, window in m.kv_layers:
        layer_cells = KvLayer(layer, n_k, n_v, window).cells(cells, setup.ubatch)
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
    for layer, size in m.recurrent_per_layer:
        recurrent[GPU if has_gpu and where.layer_on_gpu(m, layer) else CPU] += size

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
    """Compute buffers (GPU, CPU) in bytes.

    llama.cpp sizes them by reserving the worst-case graph (llama_context::sched_reserve: a prompt
    micro-batch of n_tokens = min(n_ctx, n_ubatch), one output per token up to n_outputs_max =
    n_batch, the full KV cache) and letting ggml-alloc reuse memory as tensors die. Two peaks:
    - the tail: the logits, n_outputs x n_vocab f32 (485 MiB for Qwen3.6 at n_ubatch 512), plus a
      few rows of n_embd per token (measured: 16 MiB at 512 tokens for n_embd 2048);
    - inside a layer: its activations (`_floats_per_token`), the attention scratch (without
      flash attention the KQ matrix and mask, n_kv x n_tokens x (n_head + 1) f32: measured exactly
      on the CPU;
      with it and a quantized cache, the f16 copy of one layer's K/V that ggml-cuda makes), and,
      for batches >= 32 tokens, the copy of the CPU-resident weight the GPU multiplies with
      ("op offload"; the scheduler starts a new split for each such weight, so one at a time).
    Calibration (CPU dry run of the Qwen3.6 shapes: 501.0 MiB; the team's H100 estimates at ctx
    4096 / ub 512 imply 511 MiB all on GPU and 511-543 MiB with experts on the CPU):
    GPU = max(tail, layer) + CUDA_COMPUTE_SLACK (+ OFFLOAD_COPY_SLACK when weights are copied).
    """
    n_tokens = setup.reserve_tokens
    n_outputs = min(n_tokens, setup.batch)
    f = m.facts
    logits = n_outputs * f.n_vocab * 4
    tail = logits + n_tokens * f.n_embd * 4 * 4
    layer = n_tokens * m.floats_per_token * 4
    if not setup.fa_on and m.kv_layers:
        layer += setup.cells * n_tokens * (m.n_head + 1) * 4  # KQ (soft_max in place) and the f32 mask
    if not has_gpu:
        return 0, max(tail, layer) + f.n_vocab * 4  # + the host output buffer (one output)

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
    # the embedding lookup, and whole layers when batches are too small to offload.
    cpu = n_tokens * f.n_embd * 4 * 4 + f.n_vocab * 4
    if not offload and largest_cpu:
        cpu = max(cpu, layer)
    if not output_device_gpu:
        cpu = max(cpu, tail)
    return gpu, cpu


def _output_bytes(m: _Model) -> int:
    if m.tied_output is not None:
        return m.tied_output.n_bytes
    return sum(t.info.n_bytes for t in m.tensors if t.layer is None and not t.is_input and t.loaded)


# ---------------------------------------------------------------------------------------------
# placements


def _where(m: _Model, n_gpu_layers: int, cpu_expert_layers: Iterable[int] = (), cpu_expert_tensors: Iterable[str] = (),
           has_gpu: bool = True) -> _Where:
    """The devices llama.cpp gives each tensor for -ngl n_gpu_layers and expert overrides (the fast
    path the search uses; `_where_from_params` is the exact one, and the plan checks they agree)."""
    ngl = min(max(n_gpu_layers, 0), m.n_layer_all + 1) if has_gpu else 0
    start = m.n_layer_all + 1 - ngl
    cpu_layers = frozenset(cpu_expert_layers)
    cpu_tensors = frozenset(cpu_expert_tensors)
    devices: list[str | None] = []
    for t in m.tensors:
        if not t.loaded:
            devices.append(None)
        elif t.is_input:
            devices.append(CPU)
        elif t.kind and (t.layer in cpu_layers or t.info.name in cpu_tensors):
            devices.append(CPU)
        else:
            layer = m.n_layer_all if t.layer is None else t.layer
            devices.append(GPU if layer >= start else CPU)
    return _Where(tuple(devices), ngl)


def _where_from_params(m: _Model, params: LlamaParams, gpu: GpuFacts | None) -> _Where:
    """llama.cpp's own rules, from the flags: overrides by regex (first match wins), then the
    layer's device from -ngl."""
    has_gpu = gpu is not None
    ngl = m.n_layer_all + 1 if params.n_gpu_layers < 0 else params.n_gpu_layers
    base = _where(m, ngl, has_gpu=has_gpu)
    overrides = [(re.compile(o.pattern), _buffer_device(o.buffer_type, gpu)) for o in params.overrides()]
    if not overrides:
        return base
    devices = list(base.devices)
    for i, t in enumerate(m.tensors):
        if devices[i] is None:
            continue
        for pattern, device in overrides:
            if pattern.search(t.info.name):
                devices[i] = device
                break
    return _Where(tuple(devices), base.n_gpu_layers)


def _buffer_device(buffer_type: str, gpu: GpuFacts | None) -> str:
    name = buffer_type.strip().upper()
    if name.startswith("CPU") or name == "CUDA_HOST":
        return CPU
    match = re.fullmatch(r"CUDA(\d+)", name)
    if not match:
        raise BadInput(f"buffer type {buffer_type!r} is not one llama.cpp knows here", "use CPU or CUDA0")
    if gpu is None:
        raise BadInput(f"-ot ...={buffer_type} names a GPU, but the machine has none", "use =CPU, or drop --cpu-only")
    if int(match.group(1)) != gpu.index:
        raise BadInput(f"-ot ...={buffer_type} names another GPU than CUDA{gpu.index}, the one planned for",
                       f"use =CUDA{gpu.index} or =CPU")
    return GPU


def _params_for(m: _Model, setup: _Setup, n_gpu_layers: int, gpu_expert_layers: tuple[int, ...],
                partial: tuple[int, tuple[str, ...]] | None, load_mode: str, threads: int) -> LlamaParams:
    """llama.cpp flags for: the first layers' experts on the CPU (--n-cpu-moe keeps llama.cpp's
    meaning: experts of layers 0..N-1), one partial layer as -ot overrides of its CPU tensors."""
    overrides: tuple[TensorOverride, ...] = ()
    cpu_moe = False
    n_cpu_moe = 0
    if m.is_moe:
        if not gpu_expert_layers and partial is None:
            cpu_moe = True
        else:
            first_gpu = gpu_expert_layers[0] if gpu_expert_layers else None
            if partial is not None:
                layer, on_gpu = partial
                n_cpu_moe = layer
                cpu_kinds = dict.fromkeys(t.kind for t in m.tensors
                                          if t.kind and t.layer == layer and t.info.name not in on_gpu)
                overrides = tuple(TensorOverride(layer_tensor_pattern(layer, kind)) for kind in cpu_kinds)
            elif set(gpu_expert_layers) != set(m.expert_layers):
                n_cpu_moe = first_gpu or 0
    ngl = ALL_LAYERS if n_gpu_layers >= m.n_layer_all + 1 else n_gpu_layers
    return LlamaParams(
        n_gpu_layers=ngl, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe, tensor_overrides=overrides,
        n_ctx=setup.n_ctx, n_batch=setup.n_batch, n_ubatch=setup.n_ubatch, type_k=setup.type_k,
        type_v=setup.type_v, flash_attn=setup.flash_attn, load_mode=load_mode, n_threads=threads,
    )


# ---------------------------------------------------------------------------------------------
# decode estimate


def _decode(m: _Model, where: _Where, machine: MachineFacts, gpu: GpuFacts | None, copied: int) -> DecodeEstimate:
    f = m.facts
    per_device = {GPU: 0, CPU: 0}
    share = f.n_expert_used / f.n_expert if f.n_expert else 1.0
    for t, device in zip(m.tensors, where.devices):
        if device is None:
            continue
        if t.kind:
            per_device[device] += int(t.info.n_bytes * share)
        elif t.is_input:
            per_device[device] += t.info.n_bytes // max(1, t.info.shape[-1])  # one row per token
        else:
            per_device[device] += t.info.n_bytes
    if copied:  # the GPU reads its copy of a tied head, not the CPU's embedding table
        per_device[GPU] += copied
    for layer, size in m.recurrent_per_layer:  # each token reads and rewrites the state
        per_device[GPU if gpu is not None and where.layer_on_gpu(m, layer) else CPU] += 2 * size

    gpu_name = f"CUDA{gpu.index}" if gpu is not None else GPU
    bandwidth = {GPU: gpu.bandwidth if gpu is not None else None, CPU: machine.ram_bandwidth}
    used = [d for d in (GPU, CPU) if per_device[d]]
    names = {GPU: gpu_name, CPU: CPU}
    bytes_out = tuple((names[d], per_device[d]) for d in used)
    bw_out = tuple((names[d], bandwidth[d]) for d in used)
    missing = [names[d] for d in used if not bandwidth[d]]
    if missing:
        return DecodeEstimate(None, None, None, bytes_out, bw_out,
                              f"no estimate: the memory bandwidth of {', '.join(missing)} is unknown "
                              "(give a machine profile, or let moecli probe this machine)")
    seconds = sum(per_device[d] / bandwidth[d] for d in used)
    bound = 1.0 / seconds if seconds > 0 else None
    parts = ", ".join(f"{fmt_bytes(per_device[d])} from {names[d]} at {bandwidth[d] / 1e9:.0f} GB/s" for d in used)
    # the efficiency range: facts/qwen36-35b-a3b.md; the H100's 17-25 %: facts/gpu-build.md
    basis = (f"estimate: each token reads {parts} (routed experts: {f.n_expert_used} of {f.n_expert}; "
             "recurrent state read and written; KV reads of a short context ignored); "
             f"bound {bound:.0f} tok/s; real systems reach {EFFICIENCY[0]:.0%}-{EFFICIENCY[1]:.0%} of such a bound "
             "(community reports; on a card as fast as an H100 per-token overheads dominate and llama.cpp "
             "reached 17-25 %)"
             if bound else "estimate: nothing to read")
    return DecodeEstimate(bound, bound * EFFICIENCY[0] if bound else None, bound * EFFICIENCY[1] if bound else None,
                          bytes_out, bw_out, basis)


# ---------------------------------------------------------------------------------------------
# helpers shared by plan and evaluate


def _pick_gpu(machine: MachineFacts, wishes: Wishes) -> GpuFacts | None:
    if not machine.gpus:
        return None
    for g in machine.gpus:
        if g.index == wishes.gpu:
            return g
    raise BadInput(f"there is no GPU {wishes.gpu} on this machine",
                   "GPUs: " + ", ".join(f"{g.index} ({g.name})" for g in machine.gpus))


def _gpu_budget(gpu: GpuFacts, wishes: Wishes) -> int:
    """Free memory (or --vram, or the wished budget) minus the margin; the runtime's overhead must
    fit inside it."""
    available = gpu.free_bytes if wishes.vram_budget is None else min(gpu.free_bytes, wishes.vram_budget)
    margin = DEFAULT_MARGIN if wishes.margin is None else wishes.margin
    budget = available - margin
    overhead = _runtime_overhead(gpu)
    if budget <= overhead:
        raise BadInput(f"a GPU budget of {fmt_bytes(available)} (minus a {fmt_bytes(margin)} margin) does not even hold "
                       f"the CUDA runtime's own {fmt_bytes(overhead)}",
                       "give more VRAM (--vram), a smaller margin, or plan with --cpu-only")
    return budget


def _ram_budget(machine: MachineFacts) -> int:
    return max(0, machine.ram_available - RAM_RESERVE)


def _check_ctx(model: ModelFacts, n_ctx: int) -> None:
    if model.n_ctx_train and n_ctx > model.n_ctx_train:
        raise BadInput(f"context {n_ctx} is above {model.name}'s training context {model.n_ctx_train}",
                       f"use --ctx {model.n_ctx_train} or less (or --ctx max)")


def _check_types(m: _Model, type_k: str, type_v: str, flash_attn: str) -> None:
    for flag, type_name, index in (("-ctk", type_k, 1), ("-ctv", type_v, 2)):
        for layer in m.kv_layers:
            n = layer[index]
            try:
                _kv_bytes(type_name, n, 1)
            except ValueError:
                raise BadInput(f"{flag} {type_name}: rows of {n} values are not whole {type_name} blocks",
                               f"use {flag} f16 for this model") from None
    if type_v not in ("f16", "f32", "bf16") and flash_attn == "off":
        raise BadInput(f"a quantized V cache (-ctv {type_v}) needs flash attention", "use -fa on (or auto)")


def _threads(machine: MachineFacts, wishes: Wishes) -> int:
    return wishes.threads or machine.physical_cores  # llama.cpp's default is the physical cores too


def _ram_warnings(acc: _Account, load_mode: str) -> list[str]:
    cpu = acc.cpu
    if cpu.budget is None or cpu.fits:
        return []
    if load_mode == "none":
        return [f"RAM is short: the CPU side needs {fmt_bytes(cpu.total)} but about {fmt_bytes(cpu.budget)} is "
                "available: loading into RAM (-lm none) may fail or swap; use -lm mmap or more RAM"]
    return [f"RAM is short: the weights kept on the CPU and their buffers need {fmt_bytes(cpu.total)} but about "
            f"{fmt_bytes(cpu.budget)} is available: the OS will page weights from disk for every token and "
            "speed will collapse"]


def _describe(m: _Model, where: _Where, gpu: GpuFacts | None) -> tuple[Placement, tuple[TensorPlacement, ...]]:
    gpu_name = f"CUDA{gpu.index}" if gpu is not None else None
    rows = []
    layers_gpu = tuple(layer for layer in range(m.n_layer_all) if gpu is not None and where.layer_on_gpu(m, layer))
    by_layer_gpu: dict[int, list[str]] = {}
    by_layer_cpu: dict[int, list[str]] = {}
    other_cpu = []
    for t, device in zip(m.tensors, where.devices):
        name = None if device is None else (gpu_name if device == GPU else CPU)
        rows.append(TensorPlacement(t.info.name, t.info.layer, t.info.role.value, t.info.ggml_type, t.info.n_bytes, name))
        if t.kind and t.layer is not None and device is not None:
            (by_layer_gpu if device == GPU else by_layer_cpu).setdefault(t.layer, []).append(t.info.name)
        elif device == CPU and not t.is_input and gpu is not None:
            other_cpu.append(t.info.name)
    if m.tied_output is not None and gpu is not None and where.output_on_gpu():
        t = m.tied_output
        rows.append(TensorPlacement(t.name, None, Role.OUTPUT.value, t.ggml_type, t.n_bytes, gpu_name, copy=True))
    gpu_exp = tuple(sorted(layer for layer in by_layer_gpu if layer not in by_layer_cpu))
    cpu_exp = tuple(sorted(layer for layer in by_layer_cpu if layer not in by_layer_gpu))
    split = sorted(set(by_layer_gpu) & set(by_layer_cpu))
    partial = split[0] if split else None
    placement = Placement(
        n_layer=m.n_layer_all, gpu_layers=layers_gpu, output_on_gpu=gpu is not None and where.output_on_gpu(),
        expert_layers=m.expert_layers, expert_layers_gpu=gpu_exp, expert_layers_cpu=cpu_exp, partial_layer=partial,
        partial_gpu=tuple(by_layer_gpu.get(partial, ())) if partial is not None else (),
        partial_cpu=tuple(by_layer_cpu.get(partial, ())) if partial is not None else (),
        other_cpu=tuple(other_cpu),
    )
    return placement, tuple(rows)


def _finish(m: _Model, machine: MachineFacts, gpu: GpuFacts | None, params: LlamaParams, setup: _Setup,
            where: _Where, acc: _Account, *, warnings: Sequence[str], gave_up: Sequence[str] = (),
            alternatives: Sequence[Alternative] = (), notes: Sequence[str] = ()) -> Plan:
    placement, rows = _describe(m, where, gpu)
    devices = (acc.gpu, acc.cpu) if acc.gpu is not None else (acc.cpu,)
    fits = acc.fits_gpu
    f = m.facts
    all_notes = list(notes)
    if not m.is_moe:
        all_notes.append("dense model: expert placement (--cpu-moe, --n-cpu-moe, expert -ot) does not apply; "
                         "layers are split with -ngl")
    if len(machine.gpus) > 1 and gpu is not None:
        all_notes.append(f"planned for CUDA{gpu.index} alone: load with split mode none and main GPU {gpu.index} "
                         "(llama.cpp otherwise spreads layers over every GPU)")
    not_loaded = sum(t.info.n_bytes for t in m.tensors if not t.loaded)
    if not_loaded:
        all_notes.append(f"{fmt_bytes(not_loaded)} of MTP/NextN layers are in the file but llama.cpp does not load them")
    return Plan(
        model=f.name, arch=f.arch, machine=machine.source, is_moe=m.is_moe, params=params, devices=devices,
        placement=placement, tensors=rows, n_ctx=setup.cells, decode=_decode(m, where, machine, gpu, acc.copied),
        fits=fits, warnings=tuple(warnings), gave_up=tuple(gave_up), alternatives=tuple(alternatives),
        notes=tuple(all_notes), file_bytes=f.n_bytes, copied_bytes=acc.copied, not_loaded_bytes=not_loaded,
    )


# ---------------------------------------------------------------------------------------------
# evaluate: the same accounting for flags the user typed


def evaluate(model: ModelFacts, machine: MachineFacts, params: LlamaParams, wishes: Wishes = Wishes()) -> Plan:
    """Account for a configuration as given (`-ngl`, `--cpu-moe`, `--n-cpu-moe`, `-ot`, `-c`,
    `-ctk/-ctv`, `-ub`, `-lm`): memory per device, decode estimate, and warnings where it does not
    fit. Nothing is changed."""
    m = _prepare(model)
    n_ctx = params.n_ctx or model.n_ctx_train or DEFAULT_CTX  # llama.cpp: 0 = the training context
    _check_ctx(model, n_ctx)
    _check_types(m, params.type_k, params.type_v, params.flash_attn)
    gpu = _pick_gpu(machine, replace(wishes, gpu=params.main_gpu) if machine.gpus else wishes)
    budget = _gpu_budget(gpu, wishes) if gpu is not None else None
    setup = _Setup(n_ctx, params.type_k, params.type_v, params.n_ubatch, params.n_batch, params.flash_attn)
    where = _where_from_params(m, params, gpu)
    acc = _account(m, setup, where, gpu, budget, _ram_budget(machine))
    warnings = []
    if acc.gpu is not None and not acc.gpu.fits:
        warnings.append(f"does not fit: {acc.gpu.device} needs {fmt_bytes(acc.gpu.total)} but the budget is "
                        f"{fmt_bytes(acc.gpu.budget)} (short by {fmt_bytes(-acc.gpu.free)}): llama.cpp will fail to "
                        "allocate, or run out of memory at the first prompt")
    load_mode = params.load_mode if params.load_mode != "auto" else "mmap"
    warnings += _ram_warnings(acc, load_mode)
    # facts/gpu-build.md: host->device 55 GB/s from pinned memory, 8 GB/s from pageable; pp512 with
    # all experts on the CPU 1131 t/s with -lm none, 220 t/s with mmap
    if gpu is not None and params.use_mmap and any(d == CPU and t.kind for t, d in zip(m.tensors, where.devices)):
        warnings.append("expert weights on the CPU with mmap: prompt processing is ~5x slower than with -lm none "
                        "(pageable memory is copied to the GPU at ~8 instead of ~55 GB/s)")
    if params.n_ubatch < OP_OFFLOAD_MIN_BATCH and gpu is not None:
        warnings.append(f"-ub {params.n_ubatch} is below {OP_OFFLOAD_MIN_BATCH}: CPU-resident weights are not copied to "
                        "the GPU for prompts, which then run on the CPU")
    if m.is_moe and gpu is not None and any(d == GPU for t, d in zip(m.tensors, where.devices) if t.kind) \
            and any(d == CPU for t, d in zip(m.tensors, where.devices) if not t.kind and not t.is_input and d):
        warnings.append("some non-expert weights are on the CPU while experts are on the GPU: the GPU's memory "
                        "does more for speed holding the non-expert weights, which every token reads")
    return _finish(m, machine, gpu, params, setup, where, acc, warnings=warnings)


# ---------------------------------------------------------------------------------------------
# plan: choose


def plan(model: ModelFacts, machine: MachineFacts, wishes: Wishes = Wishes()) -> Plan:
    """Decide the placement, context, KV types, batch sizes, load mode and threads for `model` on
    `machine`: everything that is not an expert on the GPU first, the remaining budget filled with
    whole layers' experts from the last layer down (llama.cpp's --n-cpu-moe keeps the FIRST N
    layers' experts on the CPU), then one layer split by tensor where that wins the last bytes."""
    m = _prepare(model)
    if isinstance(wishes.n_ctx, int):
        _check_ctx(model, wishes.n_ctx)
    gpu = _pick_gpu(machine, wishes)
    threads = _threads(machine, wishes)
    if gpu is None:
        return _plan_cpu(m, machine, wishes, threads)
    budget = _gpu_budget(gpu, wishes)
    ram = _ram_budget(machine)
    search = _Search(m, machine, gpu, budget, ram, wishes)
    return search.run(threads)


def _base_setup(m: _Model, wishes: Wishes, n_ctx: int) -> _Setup:
    type_k = wishes.type_k or "f16"
    type_v = wishes.type_v or "f16"
    n_ubatch = wishes.n_ubatch or DEFAULT_UBATCH
    n_batch = max(wishes.n_batch or DEFAULT_BATCH, n_ubatch)
    return _Setup(n_ctx, type_k, type_v, n_ubatch, n_batch, _flash_attn(wishes, type_v))


def _flash_attn(wishes: Wishes, type_v: str) -> str:
    if wishes.flash_attn:
        return wishes.flash_attn
    return "on" if type_v not in ("f16", "f32", "bf16") else "auto"


def _default_ctx(m: _Model) -> int:
    return min(DEFAULT_CTX, m.facts.n_ctx_train) if m.facts.n_ctx_train else DEFAULT_CTX


def _plan_cpu(m: _Model, machine: MachineFacts, wishes: Wishes, threads: int) -> Plan:
    """No GPU: everything on the CPU; what matters is RAM."""
    n_ctx = wishes.n_ctx if isinstance(wishes.n_ctx, int) else _default_ctx(m)
    setup = _base_setup(m, wishes, n_ctx)
    ram = _ram_budget(machine)
    where = _where(m, 0, has_gpu=False)
    notes = ["no GPU: every tensor on the CPU"]
    if wishes.n_ctx == "max":
        limit = m.facts.n_ctx_train or DEFAULT_CTX
        best = _largest(lambda c: _account(m, replace(setup, n_ctx=c), where, None, None, ram).cpu.fits, MIN_CTX, limit)
        setup = replace(setup, n_ctx=best or _default_ctx(m))
    _check_types(m, setup.type_k, setup.type_v, setup.flash_attn)
    acc = _account(m, setup, where, None, None, ram)
    load_mode = wishes.load_mode or "mmap"  # no GPU copies to speed up; mmap shares the page cache
    params = _params_for(m, setup, 0, (), None, load_mode, threads)
    params = params.with_(cpu_moe=False, n_cpu_moe=0, tensor_overrides=())
    warnings = _ram_warnings(acc, load_mode)
    return _finish(m, machine, None, params, setup, where, acc, warnings=warnings, notes=notes)


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest context in [low, high] (multiples of KV_CELL_PAD, and high itself) that fits."""
    if fits(high):
        return high
    low = min(low, high)
    lo, hi = low // KV_CELL_PAD, high // KV_CELL_PAD
    if lo < 1 or not fits(lo * KV_CELL_PAD):
        return None
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if fits(mid * KV_CELL_PAD):
            lo = mid
        else:
            hi = mid
    return lo * KV_CELL_PAD


class _Search:
    """The choices of `plan` for a machine with a GPU, step by step:

    1. the wished setup (context, f16 KV, -ub 512) with every non-expert weight on the GPU;
    2. if that does not fit, give up, in order, what `ladder` lists (KV precision, micro-batch),
       then layers (-ngl), then what `rescue` lists (context, more KV precision, micro-batch),
       and raise DoesNotFit when not even -ngl 0 fits;
    3. otherwise fill the rest of the budget with experts (`fill_experts`).
    Memory freed by giving something up is not handed to experts: it went to what had not fitted.
    Were it otherwise, a little more VRAM could restore f16 KV at the price of an expert layer, and
    more VRAM would decode slower. (--ctx max is the exception: there the context comes first, then
    the experts, and a larger budget can trade a quantized cache back for f16.)
    """

    def __init__(self, m: _Model, machine: MachineFacts, gpu: GpuFacts, budget: int, ram: int, wishes: Wishes):
        self.m, self.machine, self.gpu, self.budget, self.ram, self.wishes = m, machine, gpu, budget, ram, wishes
        self.all_layers = m.n_layer_all + 1

    # -- accounting shortcuts
    def gpu_account(self, setup: _Setup, where: _Where) -> _Account:
        return _account(self.m, setup, where, self.gpu, self.budget, self.ram)

    def base_where(self, ngl: int) -> _Where:
        """Non-expert weights of the last ngl-1 layers and the output on the GPU, experts on the CPU."""
        return _where(self.m, ngl, cpu_expert_layers=self.m.expert_layers)

    def fits(self, setup: _Setup, ngl: int) -> bool:
        return self.gpu_account(setup, self.base_where(ngl)).fits_gpu

    # -- steps
    def ladder(self, setup: _Setup) -> list[tuple[_Setup, str]]:
        """What is given up before layers, cheapest first: KV precision (q8_0 is close to lossless),
        then the prompt micro-batch (its logits dominate the compute buffer)."""
        w, steps, s = self.wishes, [], setup
        if w.type_k is None and w.type_v is None and w.allow_kv_quant and self.kv_ok(KV_QUANT_LADDER[0]):
            s = replace(s, type_k=KV_QUANT_LADDER[0], type_v=KV_QUANT_LADDER[0], flash_attn=_flash_attn(w, KV_QUANT_LADDER[0]))
            steps.append((s, f"KV cache precision: f16 -> {KV_QUANT_LADDER[0]}"))
        if w.n_ubatch is None and s.n_ubatch > 256:
            s = replace(s, n_ubatch=256)
            steps.append((s, "prompt micro-batch: -ub 256 (a smaller compute buffer, slower prompts)"))
        return steps

    def rescue(self, setup: _Setup) -> list[tuple[_Setup, str]]:
        """What is given up when not even -ngl 0 fits: context, then KV precision again, then the
        micro-batch down to the smallest the GPU still takes prompt work for."""
        w, steps, s = self.wishes, [], setup
        if not isinstance(w.n_ctx, int):
            while s.n_ctx // 2 >= MIN_CTX:
                s = replace(s, n_ctx=s.n_ctx // 2)
                steps.append((s, f"context: {setup.n_ctx} -> {s.n_ctx} tokens"))
        if w.type_k is None and w.type_v is None and w.allow_kv_quant and self.kv_ok(KV_QUANT_LADDER[1]):
            s = replace(s, type_k=KV_QUANT_LADDER[1], type_v=KV_QUANT_LADDER[1], flash_attn=_flash_attn(w, KV_QUANT_LADDER[1]))
            steps.append((s, f"KV cache precision: -> {KV_QUANT_LADDER[1]}"))
        if w.n_ubatch is None:
            for n in (128, 64, OP_OFFLOAD_MIN_BATCH):
                if s.n_ubatch > n:
                    s = replace(s, n_ubatch=n)
                    steps.append((s, f"prompt micro-batch: -ub {n}"))
        return steps

    def kv_ok(self, type_name: str) -> bool:
        try:
            _check_types(self.m, type_name, type_name, _flash_attn(self.wishes, type_name))
            return True
        except BadInput:
            return False

    def max_ctx(self, setup: _Setup, ngl: int) -> int | None:
        limit = self.m.facts.n_ctx_train or DEFAULT_CTX
        return _largest(lambda c: self.fits(replace(setup, n_ctx=c), ngl), MIN_CTX, limit)

    def run(self, threads: int) -> Plan:
        m, w = self.m, self.wishes
        gave_up: list[str] = []
        notes: list[str] = []
        start = _default_ctx(m) if w.n_ctx in (None, "max") else w.n_ctx
        setup = _base_setup(m, w, start)
        _check_types(m, setup.type_k, setup.type_v, setup.flash_attn)

        ngl = self.all_layers
        fill = True
        if w.n_ctx == "max":
            setup, ctx_note = self.choose_max_ctx(setup)
            gave_up += ctx_note
            if not self.fits(setup, ngl) and not m.is_moe:
                setup = replace(setup, n_ctx=_default_ctx(m))
                notes.append(f"the model does not fit the GPU whole: --ctx max falls back to {setup.n_ctx} tokens "
                             "with a layer split")
        if not self.fits(setup, ngl):
            fill = False
            chosen = None
            ladder = self.ladder(setup) if m.is_moe else []  # a dense model's CPU layers keep their KV in RAM
            for candidate, line in ladder:
                gave_up.append(line)
                if w.n_ctx == "max":
                    candidate = replace(candidate, n_ctx=self.max_ctx(candidate, ngl) or MIN_CTX)
                if self.fits(candidate, ngl):
                    chosen = candidate
                    break
            if chosen is not None:
                setup = chosen
            else:
                if ladder:
                    setup = ladder[-1][0]
                if w.n_ctx == "max" and m.is_moe:
                    setup = replace(setup, n_ctx=_default_ctx(m))
                    notes.append(f"the non-expert weights do not fit the GPU: --ctx max falls back to {setup.n_ctx} "
                                 "tokens with a layer split")
                ngl = next((n for n in range(self.all_layers - 1, -1, -1) if self.fits(setup, n)), None)
                if ngl is None:
                    rescue = self.ladder(setup) if not m.is_moe else []
                    rescue += self.rescue(rescue[-1][0] if rescue else setup)
                    for candidate, line in rescue:
                        gave_up.append(line)
                        if self.fits(candidate, 0):
                            ngl = 0
                        setup = candidate
                        if ngl is not None:
                            break
                if ngl is None:
                    self.does_not_fit(setup)
                gave_up.append(f"layers: {max(0, ngl - 1)} of {m.n_layer_all} layers on the GPU"
                               f"{', with the output head' if ngl else ''} (-ngl {ngl}); the rest run on the CPU")

        gpu_layers: tuple[int, ...] = ()
        partial = None
        if m.is_moe and ngl == self.all_layers and fill:
            gpu_layers, partial = self.fill_experts(setup)
        elif m.is_moe and ngl == self.all_layers:
            notes.append("no expert layers on the GPU: the memory freed by what was given up holds the non-expert "
                         "weights, not experts")
        where = self.placed(ngl, gpu_layers, partial)
        acc = self.gpu_account(setup, where)
        assert acc.fits_gpu, "the search keeps to the budget"

        load_mode, load_notes = self.load_mode(setup, where)
        notes += load_notes
        params = _params_for(m, setup, ngl, gpu_layers, partial, load_mode, threads)
        exact = _where_from_params(m, params, self.gpu)
        assert exact.devices == where.devices, "the flags express exactly the placement planned"
        acc = self.gpu_account(setup, exact)
        warnings = _ram_warnings(acc, load_mode)
        if load_mode == "mmap" and any(d == CPU and t.kind for t, d in zip(m.tensors, where.devices)):
            warnings.append("expert weights on the CPU with mmap: prompt processing is ~5x slower than with -lm none "
                            "(pageable memory is copied to the GPU more slowly); more free RAM would allow -lm none")
        alternatives = self.alternatives(setup, ngl, gpu_layers, partial, params, acc, threads)
        return _finish(m, self.machine, self.gpu, params, setup, exact, acc, warnings=warnings, gave_up=gave_up,
                       alternatives=alternatives, notes=notes)

    def choose_max_ctx(self, setup: _Setup) -> tuple[_Setup, list[str]]:
        """--ctx max: the largest context up to the training context with the non-expert weights on
        the GPU; f16 KV unless only a quantized cache reaches further."""
        m, w = self.m, self.wishes
        limit = m.facts.n_ctx_train or DEFAULT_CTX
        best = self.max_ctx(setup, self.all_layers)
        auto_kv = w.type_k is None and w.type_v is None and w.allow_kv_quant
        if m.is_moe and auto_kv and (best or 0) < limit and self.kv_ok(KV_QUANT_LADDER[0]):
            quant = replace(setup, type_k=KV_QUANT_LADDER[0], type_v=KV_QUANT_LADDER[0],
                            flash_attn=_flash_attn(w, KV_QUANT_LADDER[0]))
            best_q = self.max_ctx(quant, self.all_layers)
            if best_q and best_q > (best or 0):
                return (replace(quant, n_ctx=best_q),
                        [f"KV cache precision: f16 -> {KV_QUANT_LADDER[0]} to reach a {best_q}-token context "
                         f"(f16: {best or 0})"])
        return replace(setup, n_ctx=best or MIN_CTX), []

    def placed(self, ngl: int, gpu_layers: tuple[int, ...], partial: tuple[int, tuple[str, ...]] | None) -> _Where:
        m = self.m
        cpu_layers = [layer for layer in m.expert_layers if layer not in gpu_layers]
        if ngl < self.all_layers:
            cpu_layers = list(m.expert_layers)
        cpu_tensors: list[str] = []
        if partial is not None:
            layer, on_gpu = partial
            cpu_layers.remove(layer)
            cpu_tensors = [t.info.name for t in m.tensors if t.kind and t.layer == layer and t.info.name not in on_gpu]
        return _where(m, ngl, cpu_expert_layers=cpu_layers, cpu_expert_tensors=cpu_tensors)

    def fill_experts(self, setup: _Setup) -> tuple[tuple[int, ...], tuple[int, tuple[str, ...]] | None]:
        """The most whole layers' experts that fit, counted from the last layer down (llama.cpp's
        --n-cpu-moe keeps a prefix of layers on the CPU), then the subset of the next layer's expert
        tensors with the most bytes that still fits. Every prefix is tried, fewest CPU layers first:
        fit is not monotonic in the last steps, because the GPU's compute buffer holds a copy of the
        largest CPU-resident expert tensor for prompt batches, and that copy goes away (or shrinks)
        as the last CPU layers move over."""
        m = self.m
        layers = m.expert_layers
        gpu_layers: tuple[int, ...] = ()
        for n_cpu in range(len(layers) + 1):
            trial = tuple(layers[n_cpu:])
            if self.gpu_account(setup, self.placed(self.all_layers, trial, None)).fits_gpu:
                gpu_layers = trial
                break
        remaining = [layer for layer in m.expert_layers if layer not in gpu_layers]
        if not remaining:
            return gpu_layers, None
        boundary = remaining[-1]
        # split by pattern kind (up / gate / down / gate_up): one -ot pattern catches a kind's
        # weight and its bias (gpt-oss) alike
        by_kind: dict[str, list[_Tensor]] = {}
        for t in m.tensors:
            if t.kind and t.layer == boundary and t.loaded:
                by_kind.setdefault(t.kind, []).append(t)
        kinds = sorted(by_kind)
        subsets = []
        for mask in range(1, 2 ** len(kinds) - 1):  # proper, non-empty subsets: the whole layer did not fit
            chosen = [k for i, k in enumerate(kinds) if mask >> i & 1]
            names = tuple(t.info.name for k in chosen for t in by_kind[k])
            subsets.append((-sum(t.info.n_bytes for k in chosen for t in by_kind[k]), len(chosen), names))
        for _, _, names in sorted(subsets):
            partial = (boundary, names)
            if self.gpu_account(setup, self.placed(self.all_layers, gpu_layers, partial)).fits_gpu:
                return gpu_layers, partial
        return gpu_layers, None

    def load_mode(self, setup: _Setup, where: _Where) -> tuple[str, list[str]]:
        """Read into RAM (-lm none) when weights other than the embedding stay on the CPU and RAM
        holds them: the GPU then copies them for prompts from pinned memory, 4-5x faster
        (facts/gpu-build.md). Otherwise mmap."""
        if self.wishes.load_mode:
            return self.wishes.load_mode, []
        acc = self.gpu_account(setup, where)
        cpu_weights = any(d == CPU and not t.is_input for t, d in zip(self.m.tensors, where.devices))
        if not cpu_weights:
            return "mmap", []
        if acc.cpu.fits:
            return "none", ["load into RAM (-lm none): the GPU copies CPU-resident weights for prompts from pinned "
                            "memory, ~5x faster prompt processing than with mmap"]  # facts/gpu-build.md
        return "mmap", [f"mmap: loading into RAM needs {fmt_bytes(acc.cpu.total)} but about {fmt_bytes(acc.cpu.budget)} "
                        "is available"]

    def does_not_fit(self, setup: _Setup) -> None:
        acc = self.gpu_account(setup, self.base_where(0))
        short = acc.gpu.total - acc.gpu.budget
        raise DoesNotFit(
            f"{self.m.facts.name} does not fit CUDA{self.gpu.index}: even with every layer on the CPU the GPU needs "
            f"{fmt_bytes(acc.gpu.total)} (compute {fmt_bytes(acc.gpu.compute)} + runtime {fmt_bytes(acc.gpu.overhead)}) "
            f"of a {fmt_bytes(acc.gpu.budget)} budget: short by {fmt_bytes(short)} ({short} bytes)",
            "plan with --cpu-only, or free GPU memory",
        )

    def alternatives(self, setup: _Setup, ngl: int, gpu_layers, partial, params: LlamaParams, acc: _Account,
                     threads: int) -> list[Alternative]:
        m, out = self.m, []
        decode = _decode(m, self.placed(ngl, gpu_layers, partial), self.machine, self.gpu, acc.copied).bound

        def alt(label: str, where: _Where, alt_params: LlamaParams, reason: str, alt_setup: _Setup = setup) -> None:
            a = self.gpu_account(alt_setup, where)
            out.append(Alternative(label, alt_params, a.gpu.total if a.gpu else None,
                                   _decode(m, where, self.machine, self.gpu, a.copied).bound, reason))

        # llama.cpp's usual answer for a small GPU: a layer split without overrides
        naive = next((n for n in range(self.all_layers, -1, -1)
                      if self.gpu_account(setup, _where(m, n)).fits_gpu), None)
        all_on_gpu = ngl == self.all_layers and len(gpu_layers) == len(m.expert_layers)
        if naive is not None and naive != ngl and not (m.is_moe and all_on_gpu):
            naive_params = params.with_(n_gpu_layers=ALL_LAYERS if naive == self.all_layers else naive, cpu_moe=False,
                                        n_cpu_moe=0, tensor_overrides=())
            where = _where(m, naive)
            a = self.gpu_account(setup, where)
            bound = _decode(m, where, self.machine, self.gpu, a.copied).bound
            if m.is_moe:
                reason = ("a layer split keeps whole layers, experts included, on the GPU: every token then reads the "
                          "other layers' attention and shared weights from RAM")
                if bound and decode and bound > decode:
                    reason = "faster by the estimate, but chosen against: " + reason
                out.append(Alternative(f"naive layer split -ngl {naive}", naive_params, a.gpu.total, bound, reason))
        if m.is_moe and gpu_layers:
            alt("all experts on CPU (--cpu-moe)", self.base_where(self.all_layers),
                params.with_(cpu_moe=True, n_cpu_moe=0, tensor_overrides=()),
                "leaves GPU memory unused that could hold expert layers")
        if m.is_moe and ngl == self.all_layers and not all_on_gpu and self.wishes.n_ubatch is None:
            big = replace(setup, n_ubatch=2048, n_batch=max(setup.n_batch, 2048))
            if big.reserve_tokens > setup.reserve_tokens:
                a = self.gpu_account(big, self.placed(ngl, gpu_layers, partial))
                extra = a.gpu.total - acc.gpu.total
                out.append(Alternative("-ub 2048", params.with_(n_ubatch=2048, n_batch=big.n_batch), a.gpu.total, decode,
                                       f"a larger micro-batch amortises expert copies on long prompts but needs "
                                       f"{fmt_bytes(extra)} more GPU memory (logits of 2048 tokens), which holds experts "
                                       "that every generated token uses"))
        if setup.type_k != "f16" and self.wishes.type_k is None:
            out.append(Alternative("f16 KV cache", params.with_(type_k="f16", type_v="f16", flash_attn="auto"), None, None,
                                   "does not fit with the non-expert weights at this context"))
        return out


# ---------------------------------------------------------------------------------------------
# neighbours: what `moecli bench --sweep` compares


def neighbours(plan: Plan, steps: Iterable[int] = (1, 2)) -> list[tuple[str, LlamaParams]]:
    """Configurations around a plan, for benchmarking: the plan, +-k expert layers on the GPU, all
    experts on the CPU, a naive layer split of the same VRAM, and the other load mode. The ones
    with more on the GPU may not fit: evaluate them before loading."""
    if not plan.is_moe:
        raise NotMoE(f"{plan.model} is a dense model: the sweep moves experts, and it has none",
                     "benchmark it with `moecli bench` without --sweep")
    base = plan.params
    layers = plan.placement.expert_layers
    on_gpu = len(plan.placement.expert_layers_gpu)
    out: list[tuple[str, LlamaParams]] = [("plan", base)]

    def with_gpu_layers(count: int) -> LlamaParams:
        if count <= 0:
            return base.with_(cpu_moe=True, n_cpu_moe=0, tensor_overrides=())
        return base.with_(cpu_moe=False, n_cpu_moe=layers[len(layers) - count], tensor_overrides=())

    for k in steps:
        for sign, word in ((1, "more"), (-1, "fewer")):
            count = on_gpu + sign * k
            if 0 <= count <= len(layers) and count != on_gpu:
                p = with_gpu_layers(count)
                flag = "--cpu-moe" if p.cpu_moe else f"--n-cpu-moe {p.n_cpu_moe}"
                out.append((f"{k} {word} expert layer{'s' if k > 1 else ''} on GPU ({flag})", p))
    out.append(("all experts on CPU (--cpu-moe)", with_gpu_layers(0)))
    naive = next((a for a in plan.alternatives if a.label.startswith("naive")), None)
    if naive is not None:
        out.append((naive.label, naive.params))
    other = "mmap" if base.load_mode == "none" else "none"
    out.append((f"plan with -lm {other}", base.with_(load_mode=other)))
    seen, unique = set(), []
    for label, params in out:
        if params not in seen:
            seen.add(params)
            unique.append((label, params))
    return unique


# ---------------------------------------------------------------------------------------------
# small formatting helpers


def _ranges(values: Iterable[int]) -> str:
    values = sorted(values)
    if not values:
        return ""
    parts, start, prev = [], values[0], values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = v
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(parts)


def _kind(name: str) -> str:
    match = _EXPERT_KIND.search(name)
    return f"{match.group(1)}_exps" if match else name
