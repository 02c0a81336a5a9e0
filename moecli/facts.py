"""The vocabulary of the core: what a model is and what a machine is.

Frozen dataclasses, produced at the edges (`gguf.read_model`, `machine.probe`) and consumed by the
pure planner. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

KV_CELL_PAD = 256  # llama_context pads the KV cell count to a multiple of 256


class Role(str, Enum):
    """What a tensor does, which decides where it is worth keeping."""

    EXPERT = "expert"  # routed experts: blk.N.ffn_{up,down,gate,gate_up}_(ch)exps, 3-D
    SHARED_EXPERT = "shared_expert"  # blk.N.ffn_*_shexp: read for every token
    ROUTER = "router"  # blk.N.ffn_gate_inp(.weight), expert-probability bias
    FFN = "ffn"  # a dense FFN (dense models, and the dense leading layers of DeepSeek/GLM)
    ATTENTION = "attention"  # q/k/v/o, MLA projections, attention gates and sinks
    RECURRENT = "recurrent"  # SSM / Gated DeltaNet / RWKV weights
    NORM = "norm"
    EMBEDDING = "embedding"  # token_embd: a row lookup per token
    OUTPUT = "output"  # the output head (lm_head)
    MTP = "mtp"  # blk.N with N >= n_layer: MTP/NextN draft blocks, loaded only with load_mtp (default off)
    OTHER = "other"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] is the contiguous dimension
    ggml_type: str  # "Q4_K", "F32", ... (gguf.GGMLQuantizationType names)
    n_bytes: int
    offset: int  # absolute byte offset of the data in its shard
    shard: int  # index into ModelFacts.shards
    layer: int | None  # blk.N -> N; None for global tensors
    role: Role

    @property
    def n_params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ShardInfo:
    """One file of a (possibly split) GGUF model."""

    location: str  # local path or URL
    data_offset: int  # where tensor data starts (after the header and its alignment padding)
    expected_size: int  # data_offset + end of the last tensor: a shorter file is truncated
    actual_size: int | None  # the file's real size (None when unknown, e.g. remote without HEAD)


@dataclass(frozen=True)
class KvLayer:
    """A layer that keeps a KV cache; per cached token it stores n_embd_k + n_embd_v elements."""

    layer: int
    n_embd_k: int  # n_head_kv * head_dim_k (MLA: kv_lora_rank + rope dim)
    n_embd_v: int  # n_head_kv * head_dim_v (0 where V is a view of K, as in MLA)
    window: int | None = None  # sliding-window layers cache at most this many tokens

    def cells(self, n_cells: int, n_ubatch: int = 512, n_seq: int = 1, kv_unified: bool = False) -> int:
        """The cells this layer keeps out of the context's n_cells: all of them, or for a
        sliding-window layer at most GGML_PAD(window + n_ubatch, 256) (llama-kv-cache-iswa.cpp).

        With n_seq sequences (n_seq_max) the window is kept per sequence: without a unified cache
        n_cells is n_seq streams of n_cells / n_seq and each stream keeps its own window; a
        unified cache is one stream of GGML_PAD(min(n_cells, n_swa * n_seq_max + n_ubatch), 256)
        (llama_kv_cache_iswa: size_swa = n_swa * (unified ? n_seq_max : 1) + n_ubatch)."""
        if not self.window:
            return n_cells
        streams = 1 if kv_unified or n_seq <= 1 else n_seq
        window = self.window * (max(1, n_seq) if kv_unified else 1)
        per_stream = min(n_cells // streams, -(-(window + n_ubatch) // KV_CELL_PAD) * KV_CELL_PAD)
        return per_stream * streams


@dataclass(frozen=True)
class ModelFacts:
    """Everything the planner needs to know about a model, read from its GGUF header(s)."""

    source: str  # what the user named: a path, a URL, a store name
    arch: str  # general.architecture
    name: str  # general.name, or the file name
    file_type: str | None  # "Q4_K_M", ... from general.file_type; None when absent
    n_layer: int  # block_count (transformer blocks, without MTP/NextN blocks)
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_expert: int  # routed experts per MoE layer; 0 for a dense model
    n_expert_used: int  # top-k
    n_expert_shared: int  # shared experts per MoE layer (0 or more)
    kv_layers: tuple[KvLayer, ...]  # only the layers that keep a KV cache
    recurrent_state_bytes: int  # per sequence (f32), summed over recurrent layers; 0 if none
    tensors: tuple[TensorInfo, ...]
    shards: tuple[ShardInfo, ...]
    metadata: dict = field(default_factory=dict, compare=False, hash=False)  # scalar KVs only

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0 and any(t.role is Role.EXPERT for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def expert_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors if t.role is Role.EXPERT)

    @property
    def n_active_params(self) -> int:
        """Parameters one token reads: everything but the routed experts, plus top-k of them.
        The token embedding counts once per token as a row, not as a matrix."""
        total = 0
        for t in self.tensors:
            if t.role is Role.MTP:
                continue  # not part of the forward pass (llama.cpp skips loading them by default)
            if t.role is Role.EXPERT:
                total += t.n_params * self.n_expert_used // max(self.n_expert, 1)
            elif t.role is Role.EMBEDDING:
                total += t.shape[0]
            else:
                total += t.n_params
        return total

    def expert_layers(self) -> tuple[int, ...]:
        """The layers that hold routed experts, in order."""
        return tuple(sorted({t.layer for t in self.tensors if t.role is Role.EXPERT and t.layer is not None}))

    def kv_bytes(self, n_ctx: int, type_k: str = "f16", type_v: str = "f16", n_ubatch: int = 512) -> int:
        """Bytes of KV cache for n_ctx cells. llama.cpp pads the cell count to 256 (llama_context);
        the caller passes the padded value when it wants llama.cpp's exact figure."""
        from moecli.ggml import row_bytes  # local: keep this module free of heavy imports

        total = 0
        for kv in self.kv_layers:
            cells = kv.cells(n_ctx, n_ubatch)
            total += row_bytes(type_k, kv.n_embd_k) * cells
            if kv.n_embd_v:
                total += row_bytes(type_v, kv.n_embd_v) * cells
        return total


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    bandwidth: float | None = None  # bytes/s of its memory, where it can be derived
    runtime_overhead: int | None = None  # the CUDA context and workspaces, when measured or profiled
    link_bandwidth: float | None = None  # bytes/s between it and the host (PCIe); None: PCIe 3.0 x16

    @property
    def name_llama(self) -> str:
        return f"CUDA{self.index}"


@dataclass(frozen=True)
class RpcFacts:
    """A device of a llama.cpp RPC worker (`moecli rpc-server`, ggml's rpc-server): its memory as the
    server reports it (`ggml_backend_rpc_get_device_memory`) or as the user says (`--rpc-mem`, for a
    worker not started yet), and the network link to it."""

    endpoint: str  # "host:port"
    index: int  # llama.cpp's device name is RPC<index>, counted over every worker in --rpc order
    device: int  # the device's index on its server (its buffer type is RPC<device>[host:port])
    total_bytes: int
    free_bytes: int
    bandwidth: float | None = None  # bytes/s of its memory, when known
    link_bandwidth: float | None = None  # bytes/s of the network; None: gigabit Ethernet
    link_latency: float | None = None  # seconds per crossing of a token's activations; None: from round_trip
    round_trip: float | None = None  # seconds of one RPC round trip to the worker, measured (None: not asked)
    runtime_overhead: int = 0  # what its backend keeps for itself beyond the reported free memory
    reported: bool = False  # True: read from the running server; False: from --rpc-mem

    @property
    def name_llama(self) -> str:
        return f"RPC{self.index}"

    @property
    def buffer_type(self) -> str:
        return f"RPC{self.device}[{self.endpoint}]"


@dataclass(frozen=True)
class MachineFacts:
    gpus: tuple[GpuFacts, ...]
    ram_total: int
    ram_available: int
    physical_cores: int
    ram_bandwidth: float | None = None  # bytes/s, from a profile or a measurement
    source: str = "probed"  # "probed", "profile gtx1060-6gb", "probed + --vram 6GiB", ...
    logical_cores: int | None = None  # hardware threads, where known (this machine's; a profile has none)
    rpc: tuple[RpcFacts, ...] = ()  # RPC workers' devices, in llama.cpp's order

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def devices(self) -> tuple[GpuFacts | RpcFacts, ...]:
        """The devices besides the CPU in the order llama.cpp numbers them for -ts: RPC devices
        first (llama_model_load_from_file: "add RPC servers at the front of the list"), then GPUs."""
        return (*self.rpc, *self.gpus)
