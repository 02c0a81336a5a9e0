"""The planner's vocabulary: what the user wishes (`Wishes`), what the planner answers (`Plan`, with
memory per device, every tensor's device, the decode estimate, the alternatives it rejected and its
findings), and the defaults it starts from."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from moecli.errors import BadInput
from moecli.params import CPU, EXPS_REGEX, KV_TYPES, LlamaParams
from moecli.units import GiB, MiB

DEFAULT_CTX = 4096  # moecli's default context: llama.cpp's own fitter also keeps at least 4096 (--fit-ctx)
DEFAULT_UBATCH = 512  # llama.cpp's default -ub
DEFAULT_BATCH = 2048  # llama.cpp's default -b
MIN_CTX = 512  # the smallest context the planner gives up to
# Kept free on the GPU for what the plan cannot see: other programs, a desktop, estimate error.
# llama.cpp's fitter keeps 1024 MiB (--fit-target); our terms are known well enough to keep less.
DEFAULT_MARGIN = 256 * MiB
RAM_RESERVE = 1 * GiB  # RAM left to the OS beyond what psutil reports as available
KV_QUANT_LADDER = ("q8_0", "q4_0")  # what automatic KV quantization tries, in order

GPU = "GPU"  # internal device tag; reports name the card "CUDA<index>" as llama.cpp does

_EXPERT_KIND = re.compile(EXPS_REGEX)


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
