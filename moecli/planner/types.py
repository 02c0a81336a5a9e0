"""The planner's vocabulary: what the user wishes (`Wishes`), what the planner answers (`Plan`, with
memory per device, every tensor's device, the decode estimate, the alternatives it rejected and its
findings), and the defaults it starts from."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import ClassVar

from moecli.errors import BadInput
from moecli.params import CPU, KV_TYPES, LlamaParams
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
    n_seq: int = 1  # sequences in the context (the server's -np slots): a recurrent state each
    kv_unified: bool = False  # llama.cpp's -kvu: one KV cache for all sequences (else -c is divided among them)

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
        if self.n_seq < 1:
            raise BadInput(f"{self.n_seq} slots: give at least 1", "e.g. -np 4")
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
    # several devices: (device, its layers, the layers whose experts it holds), in llama.cpp's order
    by_device: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    # several devices: the layers whose expert tensors are split, each with (device, its tensors)
    split_layers: tuple[tuple[int, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()


@dataclass(frozen=True)
class DecodeEstimate:
    """Tokens per second while generating, from the bytes each token reads on each device over that
    device's bandwidth. An upper bound, with the range real systems reach."""

    bound: float | None  # tok/s if every byte moved at the device's peak bandwidth
    low: float | None  # bound x EFFICIENCY[0] (over several devices: of the memory part, the links paid whole)
    high: float | None  # bound x EFFICIENCY[1]
    bytes_per_token: tuple[tuple[str, int], ...]  # per device
    bandwidths: tuple[tuple[str, float | None], ...]  # bytes/s per device
    basis: str


@dataclass(frozen=True)
class SpeedInputs:
    """What decides a configuration's speed, as the speed model sees it (and as a measurement
    records it, so that a fit carries over to models and placements never benched)."""

    model: str  # planner.speed.model_key: file name and tensor bytes
    config: str  # planner.speed.config_key: llama-bench's flags, without the context
    n_layer: int
    n_threads: int
    n_ubatch: int
    gpu: str | None  # the GPU's name, None on the CPU alone
    decode_bytes: tuple[tuple[str, int], ...]  # per device, bytes each generated token reads
    bandwidths: tuple[tuple[str, float | None], ...]  # per device, bytes/s (nominal: profiled or measured)
    prompt_flops: tuple[tuple[str, float], ...]  # per device, FLOPs per prompt token (2 per active weight)
    prompt_weight_bytes: tuple[tuple[str, int], ...]  # per device, weights read once per ubatch
    prompt_copy_bytes: int = 0  # CPU-resident weights copied to the GPU once per ubatch
    pinned: bool = False  # those copies come from pinned memory (-lm none)

    @classmethod
    def from_dict(cls, data: dict) -> SpeedInputs:
        """From its JSON form (asdict); raises KeyError/TypeError/ValueError on another shape."""
        pairs = ("decode_bytes", "bandwidths", "prompt_flops", "prompt_weight_bytes")
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(tuple(p) for p in v) if k in pairs else v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SpeedSample:
    """One measured test (llama-bench's tg or pp) of one configuration on this machine."""

    inputs: SpeedInputs
    test: str  # "tg" | "pp"
    tokens_per_s: float
    when: str  # ISO 8601
    n_tokens: int = 0  # the test's size: pp's n_prompt, tg's n_gen (0: llama-bench's defaults, 512 and 128)
    spread: float = 0.0  # the relative standard deviation of its repetitions (stddev_ts / avg_ts)


@dataclass(frozen=True)
class Calibration:
    """This machine's measurements, as facts for the planner (moecli.measurements reads them)."""

    samples: tuple[SpeedSample, ...] = ()


@dataclass(frozen=True)
class SpeedFigure:
    """One speed with its basis. kind: "measured" (this model and configuration benched here; the
    newest run), "calibrated" (the speed model fitted to n_runs runs of n_configs configurations
    here), "estimate" (uncalibrated: decode's bound and the range real systems reach), "none"."""

    test: str  # "tg" (decode) | "pp" (prompt)
    kind: str
    tokens_per_s: float | None
    n_runs: int = 0
    n_configs: int = 0
    when: str | None = None  # measured: when
    terms: tuple[tuple[str, float], ...] = ()  # calibrated: the fitted coefficients
    low: float | None = None  # estimate
    high: float | None = None
    bound: float | None = None
    other_runs: int = 0  # estimate/none: runs here that did not apply (other threads, another device)


@dataclass(frozen=True)
class Speed:
    decode: SpeedFigure
    prompt: SpeedFigure
    inputs: SpeedInputs


@dataclass(frozen=True)
class Alternative:
    """A configuration the planner considered and did not choose, and why."""

    label: str
    params: LlamaParams
    gpu_total: int | None  # one GPU: its total; several devices: the sum over them (the CPU not counted)
    decode_bound: float | None
    reason: str
    devices: tuple[MemoryBreakdown, ...] = ()  # several devices: each one's memory, in llama.cpp's order, then the CPU


# ---------------------------------------------------------------------------------------------
# findings: what the planner found, as data (render.finding_text words them)


class Kind(str, Enum):
    GAVE_UP = "gave_up"  # what the plan gave up to fit (KV precision, micro-batch, context, layers)
    WARNING = "warning"  # what will not work, or not well, as planned
    NOTE = "note"  # why the plan is as it is


@dataclass(frozen=True)
class Finding:
    """One thing the planner found. A subclass per `code` (a short, stable string) carries the
    figures as fields: bytes, counts, names. No words here: `moecli.render.finding_text` writes them."""

    code: ClassVar[str]
    kind: ClassVar[Kind]

    def to_dict(self) -> dict:
        return {"code": self.code, "kind": self.kind.value, **{f.name: getattr(self, f.name) for f in fields(self)}}


# -- warnings


@dataclass(frozen=True)
class GpuOverBudget(Finding):
    """The GPU needs more than its budget (flags accounted as given)."""

    code: ClassVar[str] = "gpu_over_budget"
    kind: ClassVar[Kind] = Kind.WARNING
    device: str  # "CUDA0"
    needed: int  # bytes
    budget: int  # bytes


@dataclass(frozen=True)
class RamLoadFails(Finding):
    """The CPU side does not fit RAM and the load mode reads the weights into it (-lm none)."""

    code: ClassVar[str] = "ram_load_fails"
    kind: ClassVar[Kind] = Kind.WARNING
    needed: int  # bytes: the CPU side's total (weights, KV, recurrent state, compute buffers)
    budget: int  # bytes: available RAM minus RAM_RESERVE


@dataclass(frozen=True)
class RamPages(Finding):
    """The CPU side does not fit RAM and the weights are mapped: the OS pages them from disk."""

    code: ClassVar[str] = "ram_pages"
    kind: ClassVar[Kind] = Kind.WARNING
    needed: int  # bytes, as in RamLoadFails
    budget: int


@dataclass(frozen=True)
class RamWouldFit(Finding):
    """What would fit RAM when the CPU side does not, with the same placement: a smaller context,
    smaller weights (a smaller quant), or more RAM. Follows RamLoadFails or RamPages."""

    code: ClassVar[str] = "ram_would_fit"
    kind: ClassVar[Kind] = Kind.WARNING
    needed: int  # bytes: the CPU side's total
    budget: int  # bytes: the RAM budget
    weights: int  # bytes of it that are weights (what a smaller quant shrinks)
    n_ctx: int | None  # the largest context (at least MIN_CTX) with which the CPU side fits; None: none does


@dataclass(frozen=True)
class RpcWouldFit(Finding):
    """The memory missing on this machine, which RPC workers (other machines' memory) can give.
    Follows RamWouldFit."""

    code: ClassVar[str] = "rpc_would_fit"
    kind: ClassVar[Kind] = Kind.WARNING
    missing: int  # bytes the CPU side needs beyond the RAM budget


@dataclass(frozen=True)
class MmapExpertsSlowPrompt(Finding):
    """Expert weights on the CPU, loaded with mmap: the GPU copies them for prompts from pageable
    memory, ~5x slower prompt processing than from -lm none's pinned buffers. In the H100 runs (see
    moecli.planner): host->device copies at 55 GB/s from pinned memory, 8 GB/s from pageable;
    pp512 with every expert on the CPU 1131 t/s with -lm none, 220 t/s with mmap."""

    code: ClassVar[str] = "mmap_experts_slow_prompt"
    kind: ClassVar[Kind] = Kind.WARNING
    planned: bool  # True: `plan` chose the configuration; False: flags accounted as given (`evaluate`)


@dataclass(frozen=True)
class UbatchBelowOffload(Finding):
    """A micro-batch below ggml-cuda's offload threshold: prompts run on the CPU's weights there."""

    code: ClassVar[str] = "ubatch_below_offload"
    kind: ClassVar[Kind] = Kind.WARNING
    n_ubatch: int
    min_batch: int  # OP_OFFLOAD_MIN_BATCH


@dataclass(frozen=True)
class NonExpertsOnCpu(Finding):
    """Some non-expert weights on the CPU while experts are on the GPU (flags as given)."""

    code: ClassVar[str] = "non_experts_on_cpu"
    kind: ClassVar[Kind] = Kind.WARNING


@dataclass(frozen=True)
class ThreadsOverCores(Finding):
    """More threads (-t) than the machine has hardware threads: llama.cpp's threads wait for each
    other at every step of every token."""

    code: ClassVar[str] = "threads_over_cores"
    kind: ClassVar[Kind] = Kind.WARNING
    threads: int
    logical_cores: int


# -- what was given up


@dataclass(frozen=True)
class GaveUpKvQuant(Finding):
    """The KV cache quantized to fit (or, with --ctx max, to reach a longer context)."""

    code: ClassVar[str] = "gave_up_kv_quant"
    kind: ClassVar[Kind] = Kind.GAVE_UP
    before: str  # the KV cache type given up ("f16")
    after: str  # the type taken ("q8_0")
    rescue: bool = False  # given up when not even -ngl 0 fitted
    n_ctx: int | None = None  # --ctx max: the context `after` reaches ...
    n_ctx_before: int | None = None  # ... and the one `before` reached


@dataclass(frozen=True)
class GaveUpUbatch(Finding):
    """A smaller prompt micro-batch (-ub): a smaller compute buffer, slower prompts."""

    code: ClassVar[str] = "gave_up_ubatch"
    kind: ClassVar[Kind] = Kind.GAVE_UP
    before: int
    after: int
    rescue: bool = False  # given up when not even -ngl 0 fitted


@dataclass(frozen=True)
class GaveUpCtx(Finding):
    """A shorter context (given up when not even -ngl 0 fitted)."""

    code: ClassVar[str] = "gave_up_ctx"
    kind: ClassVar[Kind] = Kind.GAVE_UP
    before: int  # tokens: the context the search started from
    after: int  # tokens


@dataclass(frozen=True)
class GaveUpLayers(Finding):
    """Layers left to the CPU: -ngl below all (n_gpu_layers counts the output layer)."""

    code: ClassVar[str] = "gave_up_layers"
    kind: ClassVar[Kind] = Kind.GAVE_UP
    n_gpu_layers: int  # -ngl
    n_layer: int  # repeating layers in all


# -- notes


@dataclass(frozen=True)
class CtxMaxFallsBack(Finding):
    """--ctx max fell back to the default context, with a layer split."""

    code: ClassVar[str] = "ctx_max_falls_back"
    kind: ClassVar[Kind] = Kind.NOTE
    n_ctx: int  # tokens
    moe: bool  # True: the non-expert weights did not fit the GPU; False: the (dense) model did not


@dataclass(frozen=True)
class NoExpertsOnGpu(Finding):
    """Something was given up: the memory it freed holds non-expert weights, not experts."""

    code: ClassVar[str] = "no_experts_on_gpu"
    kind: ClassVar[Kind] = Kind.NOTE


@dataclass(frozen=True)
class CrossingsWeighed(Finding):
    """Several devices: the plan keeps experts with their layers, as the search's candidates go,
    because filling every device's room with experts crosses between the devices more often per
    token, slower by the plan's own decode estimate. `device`: the one with the slowest link, over
    `via` (its endpoint, or PCIe), at `crossing_ms` a crossing to the host."""

    code: ClassVar[str] = "crossings_weighed"
    kind: ClassVar[Kind] = Kind.NOTE
    crossings: int
    link_ms: float
    fill_crossings: int
    fill_link_ms: float
    bound: float
    fill_bound: float
    device: str
    via: str
    crossing_ms: float


@dataclass(frozen=True)
class DeviceUnused(Finding):
    """Several devices: the plan puts nothing on this one (it stays in -dev, with -ts 0): what it
    could hold fits the others, and a token passing through it would cross between devices twice
    more, at `crossing_ms` each (over `via`: its endpoint, or PCIe), slower by the estimate."""

    code: ClassVar[str] = "device_unused"
    kind: ClassVar[Kind] = Kind.NOTE
    device: str
    via: str
    crossing_ms: float


@dataclass(frozen=True)
class LoadIntoRam(Finding):
    """-lm none chosen: CPU-resident weights are copied for prompts from pinned memory."""

    code: ClassVar[str] = "load_into_ram"
    kind: ClassVar[Kind] = Kind.NOTE


@dataclass(frozen=True)
class MmapRamShort(Finding):
    """mmap chosen because loading into RAM (-lm none) does not fit it."""

    code: ClassVar[str] = "mmap_ram_short"
    kind: ClassVar[Kind] = Kind.NOTE
    needed: int  # bytes: the CPU side's total
    budget: int  # bytes: the RAM budget


@dataclass(frozen=True)
class CpuOnly(Finding):
    """No GPU: every tensor on the CPU."""

    code: ClassVar[str] = "cpu_only"
    kind: ClassVar[Kind] = Kind.NOTE


@dataclass(frozen=True)
class DenseModel(Finding):
    """A dense model: expert placement does not apply, layers are split with -ngl."""

    code: ClassVar[str] = "dense_model"
    kind: ClassVar[Kind] = Kind.NOTE


@dataclass(frozen=True)
class OneGpu(Finding):
    """Planned for one GPU of several: load with split mode none and this main GPU."""

    code: ClassVar[str] = "one_gpu"
    kind: ClassVar[Kind] = Kind.NOTE
    gpu: int  # its index


@dataclass(frozen=True)
class MtpNotLoaded(Finding):
    """MTP/NextN layers in the file that llama.cpp does not load."""

    code: ClassVar[str] = "mtp_not_loaded"
    kind: ClassVar[Kind] = Kind.NOTE
    n_bytes: int


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
    findings: tuple[Finding, ...] = ()  # what gave way, what to watch, what to know (render.finding_text words them)
    alternatives: tuple[Alternative, ...] = ()
    file_bytes: int = 0  # the tensor bytes in the file(s)
    copied_bytes: int = 0  # bytes llama.cpp holds twice (a tied output head on the GPU)
    not_loaded_bytes: int = 0  # bytes llama.cpp does not load (MTP layers)
    speed: Speed | None = None  # decode and prompt speed with their basis (planner.calibrated)

    @property
    def fits(self) -> bool:
        """The verdict: every device holds what the plan puts there, RAM included (weights kept in
        RAM or mapped from the file, KV cache, recurrent state and compute buffers on the CPU,
        against the RAM budget: what does not fit there is paged from disk, or fails to load)."""
        return all(d.fits for d in self.devices)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind is Kind.WARNING)

    @property
    def gave_up(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind is Kind.GAVE_UP)

    @property
    def notes(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind is Kind.NOTE)

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
            "params": {**_without_empty(asdict(self.params), ("tensor_split", "devices", "rpc_servers")),
                       "tensor_overrides": [str(o) for o in self.params.tensor_overrides],
                       "llama_args": self.params.to_llama_args()},
            "devices": [d.to_dict() for d in self.devices],
            "placement": _without_empty(asdict(self.placement), ("by_device", "split_layers")),
            "decode": asdict(self.decode),
            "speed": asdict(self.speed) if self.speed is not None else None,
            "findings": [f.to_dict() for f in self.findings],
            "alternatives": [_alternative_dict(a) for a in self.alternatives],
            "file_bytes": self.file_bytes, "copied_bytes": self.copied_bytes, "not_loaded_bytes": self.not_loaded_bytes,
            "tensors": [asdict(t) for t in self.tensors],
        }


def _alternative_dict(a: Alternative) -> dict:
    data = {**asdict(a), "params": a.params.to_llama_args(), "devices": [d.to_dict() for d in a.devices]}
    return _without_empty(data, ("devices",))


def _without_empty(data: dict, keys: tuple[str, ...]) -> dict:
    """The several-device fields only where a plan has several devices (one GPU's JSON stays as it was)."""
    return {k: v for k, v in data.items() if not (k in keys and not v)}
