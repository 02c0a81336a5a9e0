"""What llama.cpp does with each architecture's hyperparameters: layers, experts, KV cache, recurrent state.

Everything here restates the llama.cpp that llama-cpp-python 0.3.36 vendors, so the planner sizes
memory the way the engine will allocate it:
- `llama_model_base::load_hparams` (src/llama-model.cpp): the keys every architecture reads, their
  defaults, per-layer arrays (`get_key_or_arr`: a scalar, or an array of exactly block_count values),
  and `n_layer() = block_count - nextn_predict_layers` (MTP/NextN blocks are appended at the end).
- `src/models/<arch>.cpp` `load_arch_hparams`: sliding-window patterns, which layers are recurrent.
- `src/llama-hparams.cpp`: n_embd_k_gqa / n_embd_v_gqa (head size x KV heads, per layer),
  n_embd_r / n_embd_s (the two recurrent-state rows per layer), set_swa_pattern.
- `llama_model::create_memory` (src/llama-model.cpp) and src/llama-kv-cache.cpp,
  src/llama-memory-recurrent.cpp, src/llama-memory-hybrid.cpp: which layers get K/V tensors (MTP
  layers are filtered out of the main context; with MLA there is no V tensor, V is a view of K) and
  which get recurrent-state rows (f32, one row of each kind per sequence).

An architecture not listed here goes through the generic path (standard `<arch>.*` keys, K and V in
every trunk layer, MLA when the MLA keys are there): right for plain transformers, an overestimate
where llama.cpp slides a window or keeps a recurrent state instead, and blind to caches it keeps
beside K/V (the DSA indexers of deepseek32/glm-dsa). `ArchFacts.known` says which path was taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moecli.errors import ModelFileError
from moecli.facts import KvLayer

LLAMA_MAX_LAYERS = 512  # src/llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # src/llama-hparams.h
_F32 = 4  # recurrent states are always f32 (create_memory: GGML_TYPE_F32 for r and s)

# Transformers whose KV cache is the standard one (`llama_kv_cache`: one K and one V row per token
# in every trunk layer, K only with MLA), checked in src/models/<arch>.cpp and create_memory. Other
# standard transformers come out the same through the generic path, only marked not `known`.
_STANDARD = frozenset({
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "deepseek", "deepseek2", "grok", "dbrx", "glm4moe",
})

# Sliding-window attention: arch -> (default pattern, dense_first, default window, needs window key).
# `load_swa_pattern(ml, n_pattern, dense_first)`; a `sliding_window_pattern` key (an int, or a bool
# per layer) overrides the default.
_SWA: dict[str, tuple[int, bool, int, bool]] = {
    "gpt-oss": (2, False, 0, True),  # openai-moe.cpp: even layers SWA, odd layers full
    "gemma2": (2, False, 4096, False),
    "gemma3": (6, False, 0, True),  # only when sliding_window > 0
    "cohere2": (4, False, 0, True),
    "cohere2moe": (4, True, 0, True),
    "afmoe": (4, False, 0, True),  # only when sliding_window > 0
    "exaone-moe": (4, False, 128, False),
}

# Hybrids (llm_arch_is_hybrid): recurrent layers beside attention layers. How each marks them:
_HYBRID_RECR_BY_NO_KV_HEADS = frozenset({"jamba", "granitehybrid", "lfm2", "lfm2moe", "plamo2"})
_HYBRID_DELTANET = frozenset({"qwen3next", "qwen35", "qwen35moe"})  # Gated DeltaNet
_HYBRID_NEMOTRON = frozenset({"nemotron_h", "nemotron_h_moe"})
_HYBRID_PARALLEL = frozenset({"falcon-h1"})  # every layer has both an SSM and attention
# Pure recurrent (llm_arch_is_recurrent): no KV cache at all.
_RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})

KNOWN_ARCHS = frozenset(
    _STANDARD | set(_SWA) | _HYBRID_RECR_BY_NO_KV_HEADS | _HYBRID_DELTANET | _HYBRID_NEMOTRON
    | _HYBRID_PARALLEL | _RECURRENT
)


@dataclass(frozen=True)
class ArchFacts:
    """The hyperparameters and memory layout llama.cpp derives from one model's metadata."""

    arch: str
    known: bool  # False: the generic path (standard keys, KV in every trunk layer)
    n_layer: int  # trunk blocks: block_count without MTP/NextN blocks
    n_layer_all: int  # block_count
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_expert: int
    n_expert_used: int  # the largest top-k over layers
    n_expert_shared: int
    kv_layers: tuple[KvLayer, ...]
    recurrent_layers: tuple[int, ...]
    recurrent_state_bytes: int  # per sequence, f32, summed over recurrent layers

    @property
    def mtp_layers(self) -> range:
        """Blocks llama.cpp loads only for speculative MTP decoding (llama_model_params.load_mtp)."""
        return range(self.n_layer, self.n_layer_all)

    def is_recurrent_only(self, layer: int) -> bool:
        """A layer with a recurrent state and no KV cache: its `attn_*` weights are the linear
        attention's (Gated DeltaNet), not softmax attention."""
        return layer in self.recurrent_layers and all(kv.layer != layer for kv in self.kv_layers)


class _Keys:
    """`<arch>.*` metadata with llama.cpp's typing: unsigned counts, per-layer scalars or arrays."""

    def __init__(self, arch: str, metadata: Mapping[str, Any], where: str) -> None:
        self.arch = arch
        self.metadata = metadata
        self.where = where

    def bad(self, key: str, value: Any, what: str) -> ModelFileError:
        return ModelFileError(f"{self.where}: metadata {key} = {value!r} is not {what}",
                              "the file is damaged or was written by a broken converter; download it again")

    def count(self, suffix: str, default: int | None = None, *, limit: int = 2**32 - 1) -> int:
        key = f"{self.arch}.{suffix}"
        value = self.metadata.get(key)
        if value is None:
            if default is None:
                raise ModelFileError(f"{self.where} has no {key}",
                                     "llama.cpp needs it to load the model: the file is damaged or not a model")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise self.bad(key, value, f"a count in [0, {limit}]")
        return value

    def has(self, suffix: str) -> bool:
        return f"{self.arch}.{suffix}" in self.metadata

    def per_layer(self, suffix: str, n: int, default: int | list[int]) -> list[int]:
        """`get_key_or_arr`: one value for every layer, or an array of exactly n values."""
        key = f"{self.arch}.{suffix}"
        value = self.metadata.get(key)
        if value is None:
            return list(default) if isinstance(default, list) else [default] * n
        if isinstance(value, (tuple, list)):
            if len(value) != n:
                raise ModelFileError(f"{self.where}: {key} has {len(value)} values for {n} layers",
                                     "llama.cpp refuses this file (wrong array length); download it again")
            out = []
            for item in value:
                if not isinstance(item, int) or item < 0:  # bools are ints here: per-layer flags
                    raise self.bad(key, value, "a list of counts")
                out.append(int(item))
            return out
        return [self.count(suffix)] * n


def _swa_layers(arch: str, keys: _Keys, n_layer_all: int, recr: list[bool]) -> tuple[list[bool], int]:
    """Which layers use a sliding window, and the window (`set_swa_pattern`, llama-hparams.cpp)."""
    if arch == "lfm2":  # lfm2.cpp: with a window, every attention (non-recurrent) layer slides
        window = keys.count("attention.sliding_window", 0)
        return ([not r for r in recr] if window else [False] * n_layer_all), window
    rule = _SWA.get(arch)
    if rule is None:
        return [False] * n_layer_all, 0
    n_pattern, dense_first, default_window, needs_key = rule
    window = keys.count("attention.sliding_window", default_window)
    if window == 0 and needs_key:
        return [False] * n_layer_all, 0
    pattern = keys.metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, (tuple, list)):  # a flag per layer
        flags = [bool(v) for v in pattern][:n_layer_all]
        return flags + [False] * (n_layer_all - len(flags)), window
    if pattern is not None:
        n_pattern = keys.count("attention.sliding_window_pattern")
    n_trunk = n_layer_all - keys.count("nextn_predict_layers", 0)
    flags = []
    for il in range(n_layer_all):
        if il >= n_trunk:
            flags.append(False)
        elif n_pattern == 0:
            flags.append(True)
        elif dense_first:
            flags.append(il % n_pattern != 0)
        else:
            flags.append(il % n_pattern < n_pattern - 1)
    return flags, window


def _recurrent_flags(arch: str, keys: _Keys, n_layer: int, n_layer_all: int,
                     n_head_kv: list[int], n_ff: list[int]) -> list[bool]:
    """`is_recr(il)` as each architecture's load_arch_hparams sets it."""
    if arch in _RECURRENT:
        return [True] * n_layer_all
    if arch in _HYBRID_PARALLEL:
        return [True] * n_layer_all
    if arch in _HYBRID_RECR_BY_NO_KV_HEADS:
        return [il < n_layer and n_head_kv[il] == 0 for il in range(n_layer_all)]
    if arch in _HYBRID_NEMOTRON:
        return [il < n_layer and n_head_kv[il] == 0 and n_ff[il] == 0 for il in range(n_layer_all)]
    if arch in _HYBRID_DELTANET:
        if keys.has("attention.recurrent_layers"):
            return [bool(v) for v in keys.per_layer("attention.recurrent_layers", n_layer_all, 0)]
        interval = keys.count("full_attention_interval", 4) or 4
        return [il < n_layer and (il + 1) % interval != 0 for il in range(n_layer_all)]
    return [False] * n_layer_all


def _attention_filter(arch: str, il: int, n_layer: int, recr: list[bool], n_ff: list[int]) -> bool:
    """Whether create_memory gives layer il a KV cache in the main (non-MTP) context."""
    if arch in _RECURRENT:
        return False
    if arch in _HYBRID_PARALLEL:
        return True
    if arch in _HYBRID_NEMOTRON:
        return not recr[il] and n_ff[il] == 0
    if arch in _HYBRID_DELTANET:
        return il < n_layer and not recr[il]
    if arch in _HYBRID_RECR_BY_NO_KV_HEADS:
        return not recr[il]
    # the standard cache (and its SWA variant): MTP layers are filtered out of the main context
    return il < n_layer


def _recurrent_row_elements(keys: _Keys, n_embd: int) -> int:
    """n_embd_r() + n_embd_s(): the conv/shift state and the SSM/WKV state of one layer."""
    wkv = keys.count("wkv.head_size", 0)
    if wkv:  # RWKV: token shift rows and the wkv state
        return keys.count("token_shift_count", 2) * n_embd + n_embd * wkv
    l_cache = keys.count("shortconv.l_cache", 0)
    d_conv = keys.count("ssm.conv_kernel", 0)
    d_inner = keys.count("ssm.inner_size", 0)
    d_state = keys.count("ssm.state_size", 0)
    n_group = keys.count("ssm.group_count", 0)
    if l_cache:  # LFM2 short convolutions: no SSM state (ssm_d_state = 0)
        r = n_embd * (l_cache - 1)
    else:  # Mamba / Mamba-2 / Gated DeltaNet: conv state over x (and B, C: 2 * groups * d_state)
        r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
    return r + d_state * d_inner


def _n_vocab(keys: _Keys, tensor_shapes: Mapping[str, tuple[int, ...]], n_tokens: int | None) -> int:
    """llama.cpp's n_vocab is the tokenizer's token count; `<arch>.vocab_size` or the embedding
    matrix stand in when the tokenizer is not known."""
    if n_tokens:
        return n_tokens
    if keys.has("vocab_size"):
        return keys.count("vocab_size")
    shape = tensor_shapes.get("token_embd.weight")
    return shape[1] if shape and len(shape) > 1 else 0


def describe(arch: str, metadata: Mapping[str, Any], *, tensor_shapes: Mapping[str, tuple[int, ...]] | None = None,
             n_tokens: int | None = None, where: str = "model") -> ArchFacts:
    """Hyperparameters, KV-cache layers and recurrent state of one model, as llama.cpp derives them.

    metadata: the GGUF key/values (scalars, and per-layer arrays as tuples); tensor_shapes: name ->
    ggml shape (to tell how many shared experts a model has when no key says); n_tokens: the length
    of tokenizer.ggml.tokens; where: the file name, for error messages.
    """
    shapes = tensor_shapes or {}
    keys = _Keys(arch, metadata, where)
    n_layer_all = keys.count("block_count", limit=LLAMA_MAX_LAYERS)
    if n_layer_all == 0:
        raise keys.bad(f"{arch}.block_count", 0, f"a layer count in [1, {LLAMA_MAX_LAYERS}]")
    nextn = keys.count("nextn_predict_layers", 0, limit=n_layer_all)
    n_layer = n_layer_all - nextn
    n_embd = keys.count("embedding_length")
    n_ctx_train = keys.count("context_length")

    n_expert = keys.count("expert_count", 0, limit=LLAMA_MAX_EXPERTS)
    n_expert_used = max(keys.per_layer("expert_used_count", n_layer_all, 0))
    if n_expert_used > n_expert:
        raise keys.bad(f"{arch}.expert_used_count", n_expert_used, f"at most expert_count ({n_expert})")
    if keys.has("expert_shared_count"):
        n_expert_shared = keys.count("expert_shared_count")
    else:  # Qwen2/3.5-MoE: one shared expert, sized by expert_shared_feed_forward_length
        n_expert_shared = int(any("_shexp." in name and "gate_inp" not in name for name in shapes))

    # attention geometry (load_hparams): head counts per layer, head sizes for full and SWA layers
    n_head = keys.per_layer("attention.head_count", n_layer_all, 0)
    n_head_kv = keys.per_layer("attention.head_count_kv", n_layer_all, n_head)
    n_ff = keys.per_layer("feed_forward_length", n_layer_all, 0)
    head_default = n_embd // n_head[0] if n_head[0] else 0
    head_k = keys.count("attention.key_length", head_default)
    head_v = keys.count("attention.value_length", head_default)
    head_k_swa = keys.count("attention.key_length_swa", head_k)
    head_v_swa = keys.count("attention.value_length_swa", head_v)
    # MLA (deepseek2 and kin): K holds kv_lora_rank + rope dims in one "head"; V is a view of K
    # (llama_kv_cache: has_v = !is_mla)
    is_mla = keys.count("attention.key_length_mla", 0) > 0 and keys.count("attention.value_length_mla", 0) > 0

    recr = _recurrent_flags(arch, keys, n_layer, n_layer_all, n_head_kv, n_ff)
    swa, window = _swa_layers(arch, keys, n_layer_all, recr)

    kv_layers = []
    for il in range(n_layer_all):
        if not _attention_filter(arch, il, n_layer, recr, n_ff):
            continue
        k = (head_k_swa if swa[il] else head_k) * n_head_kv[il]
        v = 0 if is_mla else (head_v_swa if swa[il] else head_v) * n_head_kv[il]
        if k == 0:  # no attention in this layer (n_head_kv = 0)
            continue
        kv_layers.append(KvLayer(layer=il, n_embd_k=k, n_embd_v=v, window=window if swa[il] else None))

    recurrent_layers = tuple(il for il in range(n_layer) if recr[il])
    row = _recurrent_row_elements(keys, n_embd) if recurrent_layers else 0

    return ArchFacts(
        arch=arch,
        known=arch in KNOWN_ARCHS,
        n_layer=n_layer,
        n_layer_all=n_layer_all,
        n_embd=n_embd,
        n_vocab=_n_vocab(keys, shapes, n_tokens),
        n_ctx_train=n_ctx_train,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_expert_shared=n_expert_shared,
        kv_layers=tuple(kv_layers),
        recurrent_layers=recurrent_layers,
        recurrent_state_bytes=row * _F32 * len(recurrent_layers),
    )
