"""Header fixtures: the real tensor names, shapes (ggml order: ne[0] first) and metadata keys of
released checkpoints, written as sparse GGUF files (header + holes) by `moecli.synth.write_gguf`.

Shapes follow each model's config.json (Hugging Face) through llama.cpp's converter
(conversion/*.py) and the shapes `load_arch_tensors` expects (src/models/<arch>.cpp). Quant types
are Q4_K_M-like (K-quants where a row is whole 256-blocks, else Q8_0; norms, biases and routers
F32): the tests assert on shapes, counts and roles, never on a particular quant mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moecli.synth import TensorSpec, write_gguf


@dataclass(frozen=True)
class ArchSpec:
    key: str  # fixture name
    model: str  # the checkpoint it copies
    arch: str  # general.architecture
    metadata: dict[str, Any]
    tensors: list[TensorSpec] = field(repr=False)
    published_params: float  # total parameters as the model card states them (MTP blocks excluded)

    def write(self, directory: Path, **metadata: Any) -> Path:
        path = Path(directory) / f"{self.key}.gguf"
        return write_gguf(path, self.arch, {**self.metadata, **metadata}, self.tensors, fill="sparse")

    def write_for_llama_cpp(self, directory: Path) -> Path:
        """The fixture as llama.cpp loads it in a dry run: its "none" tokenizer with dummy tokens, so
        no vocabulary needs writing."""
        n_vocab = next(t.shape[1] for t in self.tensors if t.name == "token_embd.weight")
        return self.write(directory, **{"tokenizer.ggml.model": "none", f"{self.arch}.vocab_size": n_vocab})


def _type(shape: tuple[int, ...], preferred: str) -> str:
    if len(shape) == 1:
        return "F32"
    if preferred.endswith("_K") and shape[0] % 256 == 0:
        return preferred
    if preferred == "MXFP4" and shape[0] % 32 == 0:
        return preferred
    return "Q8_0" if shape[0] % 32 == 0 else "F16"


class _Tensors:
    """Collects TensorSpecs: `t("blk.0.attn_q.weight", 2048, 4096)`."""

    def __init__(self) -> None:
        self.specs: list[TensorSpec] = []

    def __call__(self, name: str, *shape: int, q: str = "Q4_K") -> None:
        self.specs.append(TensorSpec(name, tuple(shape), _type(tuple(shape), q)))

    def f32(self, name: str, *shape: int) -> None:
        self.specs.append(TensorSpec(name, tuple(shape), "F32"))

    def embeddings(self, n_embd: int, n_vocab: int, *, tied: bool = False) -> None:
        self("token_embd.weight", n_embd, n_vocab)
        self.f32("output_norm.weight", n_embd)
        if not tied:
            self("output.weight", n_embd, n_vocab, q="Q6_K")

    def attention(self, b: str, n_embd: int, n_q: int, n_kv: int, *, bias: bool = False) -> None:
        """q/k/v/o with n_q = heads * head_dim and n_kv = kv_heads * head_dim."""
        for part, width in (("q", n_q), ("k", n_kv), ("v", n_kv)):
            self(f"{b}.attn_{part}.weight", n_embd, width)
            if bias:
                self.f32(f"{b}.attn_{part}.bias", width)
        self(f"{b}.attn_output.weight", n_q, n_embd)

    def experts(self, b: str, n_embd: int, n_ff: int, n_expert: int, q: str = "Q4_K") -> None:
        self.f32(f"{b}.ffn_gate_inp.weight", n_embd, n_expert)
        self(f"{b}.ffn_gate_exps.weight", n_embd, n_ff, n_expert, q=q)
        self(f"{b}.ffn_up_exps.weight", n_embd, n_ff, n_expert, q=q)
        self(f"{b}.ffn_down_exps.weight", n_ff, n_embd, n_expert, q=q)

    def shared(self, b: str, n_embd: int, n_ff: int) -> None:
        self(f"{b}.ffn_gate_shexp.weight", n_embd, n_ff)
        self(f"{b}.ffn_up_shexp.weight", n_embd, n_ff)
        self(f"{b}.ffn_down_shexp.weight", n_ff, n_embd)

    def dense(self, b: str, n_embd: int, n_ff: int) -> None:
        self(f"{b}.ffn_gate.weight", n_embd, n_ff)
        self(f"{b}.ffn_up.weight", n_embd, n_ff)
        self(f"{b}.ffn_down.weight", n_ff, n_embd)


def _vocab(n: int) -> dict[str, Any]:
    """A tokenizer of n tokens shaped like a byte-level BPE one (tokens, types and merges)."""
    tokens = [f"\u0120tok{i}" for i in range(n)]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen35",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * n,
        "tokenizer.ggml.merges": [f"\u0120t ok{i}" for i in range(n - 733)],
        "tokenizer.ggml.eos_token_id": 248046,
        "tokenizer.chat_template": "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
                                   "{{ message.content }}<|im_end|>\n{%- endfor %}",
    }


# ---------------------------------------------------------------------------------------------
# Qwen3.6-35B-A3B (qwen35moe): 40 layers = 10 x (3 Gated DeltaNet + 1 gated full attention)


def qwen36_35b_a3b(*, vocab: bool = False, mtp: bool = False) -> ArchSpec:
    """config: hidden 2048, 40 layers, full_attention_interval 4, 16 q heads / 2 kv heads of 256,
    256 experts (top 8) of 512, one shared expert of 512, linear attention 16 k-heads / 32 v-heads
    of 128, conv kernel 4, vocab 248320. mtp=True adds the MTP block a current converter appends."""
    e, ff, n_exp, vocab_n = 2048, 512, 256, 248320
    n_layer = 40
    t = _Tensors()
    t.embeddings(e, vocab_n)
    for i in range(n_layer + (1 if mtp else 0)):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.f32(f"{b}.post_attention_norm.weight", e)
        if (i + 1) % 4 == 0 or i >= n_layer:  # gated full attention: q carries q and its gate
            t(f"{b}.attn_q.weight", e, 16 * 256 * 2)
            t(f"{b}.attn_k.weight", e, 2 * 256)
            t(f"{b}.attn_v.weight", e, 2 * 256)
            t(f"{b}.attn_output.weight", 16 * 256, e)
            t.f32(f"{b}.attn_q_norm.weight", 256)
            t.f32(f"{b}.attn_k_norm.weight", 256)
        else:  # Gated DeltaNet: key_dim 16*128, value_dim 32*128, conv_dim 2*2048 + 4096
            t(f"{b}.attn_qkv.weight", e, 8192)
            t(f"{b}.attn_gate.weight", e, 4096)
            t.f32(f"{b}.ssm_conv1d.weight", 4, 8192)
            t.f32(f"{b}.ssm_dt.bias", 32)
            t.f32(f"{b}.ssm_a", 32)
            t(f"{b}.ssm_beta.weight", e, 32)
            t(f"{b}.ssm_alpha.weight", e, 32)
            t.f32(f"{b}.ssm_norm.weight", 128)
            t(f"{b}.ssm_out.weight", 4096, e)
        t.experts(b, e, ff, n_exp)
        t.f32(f"{b}.ffn_gate_inp_shexp.weight", e)
        t.shared(b, e, ff)
        if i >= n_layer:
            t(f"{b}.nextn.eh_proj.weight", 2 * e, e)
            t.f32(f"{b}.nextn.enorm.weight", e)
            t.f32(f"{b}.nextn.hnorm.weight", e)
            t.f32(f"{b}.nextn.shared_head_norm.weight", e)
    a = "qwen35moe"
    meta: dict[str, Any] = {
        "general.name": "Qwen3.6-35B-A3B", "general.file_type": 15, "general.quantization_version": 2,
        f"{a}.block_count": n_layer + (1 if mtp else 0), f"{a}.context_length": 262144,
        f"{a}.embedding_length": e, f"{a}.attention.head_count": 16, f"{a}.attention.head_count_kv": 2,
        f"{a}.attention.key_length": 256, f"{a}.attention.value_length": 256,
        f"{a}.rope.freq_base": 10000000.0, f"{a}.rope.dimension_count": 64,
        f"{a}.rope.dimension_sections": [11, 11, 10, 0], f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 8, f"{a}.expert_feed_forward_length": ff,
        f"{a}.expert_shared_feed_forward_length": ff,
        f"{a}.ssm.conv_kernel": 4, f"{a}.ssm.state_size": 128, f"{a}.ssm.group_count": 16,
        f"{a}.ssm.time_step_rank": 32, f"{a}.ssm.inner_size": 4096, f"{a}.full_attention_interval": 4,
    }
    if mtp:  # a current converter writes the layer types and the MTP block count
        meta[f"{a}.nextn_predict_layers"] = 1
        meta[f"{a}.attention.recurrent_layers"] = [(i + 1) % 4 != 0 for i in range(n_layer)] + [False]
    if vocab:
        meta.update(_vocab(vocab_n))
    return ArchSpec("qwen36-35b-a3b" + ("-mtp" if mtp else ""), "Qwen/Qwen3.6-35B-A3B", a, meta, t.specs, 35e9)


def qwen3_30b_a3b() -> ArchSpec:
    """hidden 2048, 48 layers, 32 q heads / 4 kv heads of 128 with q/k norms, 128 experts (top 8)
    of 768, no shared expert, vocab 151936, untied head."""
    e, n_exp, ff = 2048, 128, 768
    t = _Tensors()
    t.embeddings(e, 151936)
    for i in range(48):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, 32 * 128, 4 * 128)
        t.f32(f"{b}.attn_q_norm.weight", 128)
        t.f32(f"{b}.attn_k_norm.weight", 128)
        t.f32(f"{b}.ffn_norm.weight", e)
        t.experts(b, e, ff, n_exp)
    a = "qwen3moe"
    meta = {
        "general.name": "Qwen3-30B-A3B", "general.file_type": 15,
        f"{a}.block_count": 48, f"{a}.context_length": 40960, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 6144, f"{a}.attention.head_count": 32, f"{a}.attention.head_count_kv": 4,
        f"{a}.attention.key_length": 128, f"{a}.attention.value_length": 128, f"{a}.rope.freq_base": 1000000.0,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6, f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 8,
        f"{a}.expert_feed_forward_length": ff,
    }
    return ArchSpec("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", a, meta, t.specs, 30.5e9)


def qwen15_moe_a27b() -> ArchSpec:
    """hidden 2048, 24 layers, 16 heads of 128 (no GQA) with q/k/v biases, 60 experts (top 4) of
    1408, one shared expert of 5632 with its sigmoid gate, vocab 151936."""
    e = 2048
    t = _Tensors()
    t.embeddings(e, 151936)
    for i in range(24):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, e, e, bias=True)
        t.f32(f"{b}.ffn_norm.weight", e)
        t.experts(b, e, 1408, 60)
        t.f32(f"{b}.ffn_gate_inp_shexp.weight", e)
        t.shared(b, e, 5632)
    a = "qwen2moe"
    meta = {
        "general.name": "Qwen1.5-MoE-A2.7B", "general.file_type": 15,
        f"{a}.block_count": 24, f"{a}.context_length": 8192, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 5632, f"{a}.attention.head_count": 16, f"{a}.attention.head_count_kv": 16,
        f"{a}.rope.freq_base": 1000000.0, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.expert_count": 60, f"{a}.expert_used_count": 4, f"{a}.expert_feed_forward_length": 1408,
        f"{a}.expert_shared_feed_forward_length": 5632,
    }
    return ArchSpec("qwen1.5-moe-a2.7b", "Qwen/Qwen1.5-MoE-A2.7B", a, meta, t.specs, 14.3e9)


def _mixtral(key: str, model: str, e: int, n_layer: int, n_head: int, ff: int, vocab: int, ctx: int,
             published: float) -> ArchSpec:
    t = _Tensors()
    t.embeddings(e, vocab)
    for i in range(n_layer):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, e, 8 * 128)
        t.f32(f"{b}.ffn_norm.weight", e)
        t.experts(b, e, ff, 8)
    a = "llama"
    meta = {
        "general.name": model.split("/")[1], "general.file_type": 15,
        f"{a}.block_count": n_layer, f"{a}.context_length": ctx, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": ff, f"{a}.attention.head_count": n_head, f"{a}.attention.head_count_kv": 8,
        f"{a}.rope.freq_base": 1000000.0, f"{a}.rope.dimension_count": 128,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.expert_count": 8, f"{a}.expert_used_count": 2,
        f"{a}.vocab_size": vocab,
    }
    return ArchSpec(key, model, a, meta, t.specs, published)


def mixtral_8x7b() -> ArchSpec:
    """hidden 4096, 32 layers, 32 q / 8 kv heads of 128, 8 experts (top 2) of 14336, vocab 32000."""
    return _mixtral("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", 4096, 32, 32, 14336, 32000, 32768, 46.7e9)


def mixtral_8x22b() -> ArchSpec:
    """hidden 6144, 56 layers, 48 q / 8 kv heads of 128, 8 experts (top 2) of 16384, vocab 32768."""
    return _mixtral("mixtral-8x22b", "mistralai/Mixtral-8x22B-v0.1", 6144, 56, 48, 16384, 32768, 65536, 141e9)


def llama3_8b() -> ArchSpec:
    """Dense: hidden 4096, 32 layers, 32 q / 8 kv heads of 128, FFN 14336, vocab 128256."""
    e = 4096
    t = _Tensors()
    t.embeddings(e, 128256)
    for i in range(32):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, e, 1024)
        t.f32(f"{b}.ffn_norm.weight", e)
        t.dense(b, e, 14336)
    a = "llama"
    meta = {
        "general.name": "Meta-Llama-3-8B", "general.file_type": 15,
        f"{a}.block_count": 32, f"{a}.context_length": 8192, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 14336, f"{a}.attention.head_count": 32, f"{a}.attention.head_count_kv": 8,
        f"{a}.rope.freq_base": 500000.0, f"{a}.rope.dimension_count": 128,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.vocab_size": 128256,
    }
    return ArchSpec("llama3-8b", "meta-llama/Meta-Llama-3-8B", a, meta, t.specs, 8.03e9)


def deepseek_moe_16b() -> ArchSpec:
    """hidden 2048, 28 layers (layer 0 dense, FFN 10944), 16 heads of 128, 64 experts (top 6) of
    1408 and 2 shared experts (one shexp tensor of 2 x 1408), vocab 102400."""
    e = 2048
    t = _Tensors()
    t.embeddings(e, 102400)
    for i in range(28):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, e, e)
        t.f32(f"{b}.ffn_norm.weight", e)
        if i == 0:
            t.dense(b, e, 10944)
        else:
            t.experts(b, e, 1408, 64)
            t.shared(b, e, 2 * 1408)
    a = "deepseek"
    meta = {
        "general.name": "deepseek-moe-16b-base", "general.file_type": 15,
        f"{a}.block_count": 28, f"{a}.context_length": 4096, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 10944, f"{a}.attention.head_count": 16, f"{a}.attention.head_count_kv": 16,
        f"{a}.rope.freq_base": 10000.0, f"{a}.rope.dimension_count": 128,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6, f"{a}.leading_dense_block_count": 1,
        f"{a}.expert_count": 64, f"{a}.expert_used_count": 6, f"{a}.expert_feed_forward_length": 1408,
        f"{a}.expert_shared_count": 2, f"{a}.expert_weights_scale": 1.0, f"{a}.vocab_size": 102400,
    }
    return ArchSpec("deepseek-moe-16b", "deepseek-ai/deepseek-moe-16b-base", a, meta, t.specs, 16.4e9)


def _deepseek2(key: str, model: str, *, e: int, n_layer: int, n_head: int, q_lora: int | None, n_dense: int,
               ff: int, ff_exp: int, n_exp: int, used: int, shared: int, vocab: int, published: float,
               gate_bias: bool, extra: dict[str, Any]) -> ArchSpec:
    """MLA as the current converter writes it: kv_b split into k_b (transposed) and v_b, and the
    cache geometry key_length = kv_lora_rank + rope dim, value_length = kv_lora_rank, 1 KV head."""
    kv_lora, rope, nope, v_head = 512, 64, 128, 128
    t = _Tensors()
    t.embeddings(e, vocab)
    for i in range(n_layer):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        if q_lora:
            t(f"{b}.attn_q_a.weight", e, q_lora)
            t.f32(f"{b}.attn_q_a_norm.weight", q_lora)
            t(f"{b}.attn_q_b.weight", q_lora, n_head * (nope + rope))
        else:
            t(f"{b}.attn_q.weight", e, n_head * (nope + rope))
        t(f"{b}.attn_kv_a_mqa.weight", e, kv_lora + rope)
        t.f32(f"{b}.attn_kv_a_norm.weight", kv_lora)
        t(f"{b}.attn_k_b.weight", nope, kv_lora, n_head)
        t(f"{b}.attn_v_b.weight", kv_lora, v_head, n_head)
        t(f"{b}.attn_output.weight", n_head * v_head, e)
        t.f32(f"{b}.ffn_norm.weight", e)
        if i < n_dense:
            t.dense(b, e, ff)
        else:
            t.experts(b, e, ff_exp, n_exp)
            if gate_bias:  # V3's aux-loss-free balancing: e_score_correction_bias
                t.f32(f"{b}.exp_probs_b.bias", n_exp)
            t.shared(b, e, shared * ff_exp)
    a = "deepseek2"
    meta = {
        "general.name": model.split("/")[1], "general.file_type": 15,
        f"{a}.block_count": n_layer, f"{a}.context_length": 163840, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": ff, f"{a}.attention.head_count": n_head, f"{a}.attention.head_count_kv": 1,
        f"{a}.rope.freq_base": 10000.0, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.expert_used_count": used, f"{a}.leading_dense_block_count": n_dense, f"{a}.vocab_size": vocab,
        f"{a}.attention.kv_lora_rank": kv_lora, f"{a}.attention.key_length": kv_lora + rope,
        f"{a}.attention.value_length": kv_lora, f"{a}.attention.key_length_mla": nope + rope,
        f"{a}.attention.value_length_mla": v_head, f"{a}.expert_feed_forward_length": ff_exp,
        f"{a}.expert_count": n_exp, f"{a}.expert_shared_count": shared, f"{a}.rope.dimension_count": rope,
        f"{a}.rope.scaling.type": "yarn", f"{a}.rope.scaling.factor": 40.0,
        f"{a}.rope.scaling.original_context_length": 4096, **extra,
    }
    if q_lora:
        meta[f"{a}.attention.q_lora_rank"] = q_lora
    return ArchSpec(key, model, a, meta, t.specs, published)


def deepseek_v2_lite() -> ArchSpec:
    """hidden 2048, 27 layers (layer 0 dense, 10944), 16 heads, no q LoRA, kv_lora_rank 512,
    qk nope/rope 128/64, v 128, 64 experts (top 6) of 1408 + 2 shared, vocab 102400."""
    return _deepseek2("deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite", e=2048, n_layer=27, n_head=16, q_lora=None,
                      n_dense=1, ff=10944, ff_exp=1408, n_exp=64, used=6, shared=2, vocab=102400, published=15.7e9,
                      gate_bias=False, extra={"deepseek2.expert_weights_scale": 1.0, "deepseek2.expert_gating_func": 1})


def deepseek_v3() -> ArchSpec:
    """hidden 7168, 61 layers (3 dense, 18432), 128 heads, q_lora_rank 1536, kv_lora_rank 512,
    256 experts (top 8) of 2048 + 1 shared, sigmoid gating with a bias, vocab 129280. The
    converter drops the MTP layer (skip_mtp), so the file has 61 blocks."""
    return _deepseek2("deepseek-v3", "deepseek-ai/DeepSeek-V3", e=7168, n_layer=61, n_head=128, q_lora=1536,
                      n_dense=3, ff=18432, ff_exp=2048, n_exp=256, used=8, shared=1, vocab=129280, published=671e9,
                      gate_bias=True, extra={"deepseek2.expert_weights_scale": 2.5,
                                             "deepseek2.expert_weights_norm": True,
                                             "deepseek2.expert_gating_func": 2, "deepseek2.expert_group_count": 8,
                                             "deepseek2.expert_group_used_count": 4})


def grok1() -> ArchSpec:
    """hidden 6144, 64 layers, 48 q / 8 kv heads of 128, 8 experts (top 2) of 32768, vocab 131072,
    with the post-attention and post-MoE norms (attn_output_norm, layer_output_norm)."""
    e = 6144
    t = _Tensors()
    t.embeddings(e, 131072)
    for i in range(64):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, e, 8 * 128)
        t.f32(f"{b}.attn_output_norm.weight", e)
        t.f32(f"{b}.ffn_norm.weight", e)
        t.experts(b, e, 32768, 8)
        t.f32(f"{b}.layer_output_norm.weight", e)
    a = "grok"
    meta = {
        "general.name": "Grok", "general.file_type": 15,
        f"{a}.block_count": 64, f"{a}.context_length": 8192, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 32768, f"{a}.attention.head_count": 48, f"{a}.attention.head_count_kv": 8,
        f"{a}.rope.freq_base": 10000.0, f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{a}.expert_count": 8, f"{a}.expert_used_count": 2, f"{a}.attn_logit_softcapping": 30.0,
        f"{a}.router_logit_softcapping": 30.0, f"{a}.embedding_scale": 78.38367176906169,
        f"{a}.logit_scale": 0.5773502691896257,
    }
    return ArchSpec("grok-1", "xai-org/grok-1", a, meta, t.specs, 314e9)


def jamba_v01() -> ArchSpec:
    """hidden 4096, 32 layers: attention every 8th from layer 4 (32 q / 8 kv heads of 128), Mamba
    elsewhere (d_inner 8192, d_state 16, d_conv 4, dt_rank 256); MoE every 2nd from layer 1
    (16 experts, top 2, of 14336), dense FFN 14336 in the others; vocab 65536."""
    e, d_inner, d_state, dt_rank = 4096, 8192, 16, 256
    t = _Tensors()
    t.embeddings(e, 65536)
    for i in range(32):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        if i % 8 == 4:
            t.attention(b, e, e, 8 * 128)
        else:
            t(f"{b}.ssm_in.weight", e, 2 * d_inner)
            t.f32(f"{b}.ssm_conv1d.weight", 4, d_inner)
            t.f32(f"{b}.ssm_conv1d.bias", d_inner)
            t(f"{b}.ssm_x.weight", d_inner, dt_rank + 2 * d_state)
            t.f32(f"{b}.ssm_dt_norm.weight", dt_rank)
            t(f"{b}.ssm_dt.weight", dt_rank, d_inner)
            t.f32(f"{b}.ssm_dt.bias", d_inner)
            t.f32(f"{b}.ssm_b_norm.weight", d_state)
            t.f32(f"{b}.ssm_c_norm.weight", d_state)
            t.f32(f"{b}.ssm_a", d_state, d_inner)
            t.f32(f"{b}.ssm_d", d_inner)
            t(f"{b}.ssm_out.weight", d_inner, e)
        t.f32(f"{b}.ffn_norm.weight", e)
        if i % 2 == 1:
            t.experts(b, e, 14336, 16)
        else:
            t.dense(b, e, 14336)
    a = "jamba"
    meta = {
        "general.name": "Jamba-v0.1", "general.file_type": 15,
        f"{a}.block_count": 32, f"{a}.context_length": 262144, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 14336, f"{a}.attention.head_count": 32,
        f"{a}.attention.head_count_kv": [8 if i % 8 == 4 else 0 for i in range(32)],
        f"{a}.ssm.conv_kernel": 4, f"{a}.ssm.inner_size": d_inner, f"{a}.ssm.state_size": d_state,
        f"{a}.ssm.time_step_rank": dt_rank, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.expert_count": 16, f"{a}.expert_used_count": 2,
    }
    return ArchSpec("jamba-v0.1", "ai21labs/Jamba-v0.1", a, meta, t.specs, 51.6e9)


def dbrx() -> ArchSpec:
    """hidden 6144, 40 layers, fused qkv (48 q / 8 kv heads of 128), 16 experts (top 4) of 10752,
    vocab 100352."""
    e = 6144
    t = _Tensors()
    t.embeddings(e, 100352)
    for i in range(40):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t(f"{b}.attn_qkv.weight", e, e + 2 * 8 * 128)
        t(f"{b}.attn_output.weight", e, e)
        t.f32(f"{b}.attn_output_norm.weight", e)
        t.experts(b, e, 10752, 16)
    a = "dbrx"
    meta = {
        "general.name": "dbrx-base", "general.file_type": 15,
        f"{a}.block_count": 40, f"{a}.context_length": 32768, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 10752, f"{a}.attention.head_count": 48, f"{a}.attention.head_count_kv": 8,
        f"{a}.rope.freq_base": 500000.0, f"{a}.attention.clamp_kqv": 8.0,
        f"{a}.attention.layer_norm_epsilon": 1e-5, f"{a}.expert_count": 16, f"{a}.expert_used_count": 4,
    }
    return ArchSpec("dbrx", "databricks/dbrx-base", a, meta, t.specs, 132e9)


def gpt_oss_20b() -> ArchSpec:
    """hidden 2880, 24 layers alternating sliding-window (128) and full attention, 64 q / 8 kv heads
    of 64 with biases and sinks, 32 experts (top 4) of 2880 in MXFP4 with biases, vocab 201088."""
    e, n_exp = 2880, 32
    t = _Tensors()
    t.embeddings(e, 201088)
    for i in range(24):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, 64 * 64, 8 * 64, bias=True)
        t.f32(f"{b}.attn_output.bias", e)
        t.f32(f"{b}.attn_sinks.weight", 64)
        t.f32(f"{b}.post_attention_norm.weight", e)
        t.experts(b, e, e, n_exp, q="MXFP4")
        t.f32(f"{b}.ffn_gate_inp.bias", n_exp)
        t.f32(f"{b}.ffn_gate_exps.bias", e, n_exp)
        t.f32(f"{b}.ffn_up_exps.bias", e, n_exp)
        t.f32(f"{b}.ffn_down_exps.bias", e, n_exp)
    a = "gpt-oss"
    meta = {
        "general.name": "Gpt-Oss-20B", "general.file_type": 38,
        f"{a}.block_count": 24, f"{a}.context_length": 131072, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": e, f"{a}.attention.head_count": 64, f"{a}.attention.head_count_kv": 8,
        f"{a}.attention.key_length": 64, f"{a}.attention.value_length": 64, f"{a}.rope.freq_base": 150000.0,
        f"{a}.rope.dimension_count": 64, f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{a}.attention.sliding_window": 128, f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 4,
        f"{a}.expert_feed_forward_length": e, f"{a}.rope.scaling.type": "yarn", f"{a}.rope.scaling.factor": 32.0,
        f"{a}.rope.scaling.original_context_length": 4096,
    }
    return ArchSpec("gpt-oss-20b", "openai/gpt-oss-20b", a, meta, t.specs, 20.9e9)


def glm45_air() -> ArchSpec:
    """hidden 4096, 46 layers + 1 MTP (NextN) block, layer 0 dense (10944), 96 q / 8 kv heads of
    128 with q/k/v biases, 128 experts (top 8) of 1408 + 1 shared, sigmoid gating with a bias,
    vocab 151552."""
    e, n_exp, ff_exp = 4096, 128, 1408
    t = _Tensors()
    t.embeddings(e, 151552)
    for i in range(47):
        b = f"blk.{i}"
        t.f32(f"{b}.attn_norm.weight", e)
        t.attention(b, e, 96 * 128, 8 * 128, bias=True)
        t.f32(f"{b}.post_attention_norm.weight", e)
        if i == 0:
            t.dense(b, e, 10944)
        else:
            t.experts(b, e, ff_exp, n_exp)
            t.f32(f"{b}.exp_probs_b.bias", n_exp)
            t.shared(b, e, ff_exp)
        if i == 46:
            t(f"{b}.nextn.eh_proj.weight", 2 * e, e)
            t.f32(f"{b}.nextn.enorm.weight", e)
            t.f32(f"{b}.nextn.hnorm.weight", e)
            t.f32(f"{b}.nextn.shared_head_norm.weight", e)
    a = "glm4moe"
    meta = {
        "general.name": "GLM-4.5-Air", "general.file_type": 15,
        f"{a}.block_count": 47, f"{a}.context_length": 131072, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": 10944, f"{a}.attention.head_count": 96, f"{a}.attention.head_count_kv": 8,
        f"{a}.attention.key_length": 128, f"{a}.attention.value_length": 128, f"{a}.rope.dimension_count": 64,
        f"{a}.rope.freq_base": 1000000.0, f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 8, f"{a}.expert_shared_count": 1,
        f"{a}.expert_feed_forward_length": ff_exp, f"{a}.leading_dense_block_count": 1,
        f"{a}.expert_weights_scale": 1.0, f"{a}.expert_weights_norm": True, f"{a}.expert_gating_func": 2,
        f"{a}.nextn_predict_layers": 1, f"{a}.vocab_size": 151552,
    }
    return ArchSpec("glm-4.5-air", "zai-org/GLM-4.5-Air", a, meta, t.specs, 106e9)


SPECS: dict[str, Callable[[], ArchSpec]] = {
    "qwen36-35b-a3b": qwen36_35b_a3b,
    "qwen3-30b-a3b": qwen3_30b_a3b,
    "qwen1.5-moe-a2.7b": qwen15_moe_a27b,
    "mixtral-8x7b": mixtral_8x7b,
    "mixtral-8x22b": mixtral_8x22b,
    "llama3-8b": llama3_8b,
    "deepseek-moe-16b": deepseek_moe_16b,
    "deepseek-v2-lite": deepseek_v2_lite,
    "deepseek-v3": deepseek_v3,
    "grok-1": grok1,
    "jamba-v0.1": jamba_v01,
    "dbrx": dbrx,
    "gpt-oss-20b": gpt_oss_20b,
    "glm-4.5-air": glm45_air,
}
