"""The architectures synth writes: hyperparameters, every tensor's name and shape as llama.cpp's
loader creates it (ggml order), and the {arch}.* metadata keys convert_hf_to_gguf writes.

- `qwen35moe` (Qwen3.5/3.6 MoE: Gated DeltaNet and gated attention layers, routed and shared
  experts, optional MTP blocks): `Qwen35MoeConfig`, whose defaults are Qwen3.6-35B-A3B.
- `qwen3` (dense): `Qwen3Config`, whose defaults are a tiny test model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import GGUFValueType

from moecli.synth.vocab import QWEN3_VOCAB


@dataclass(frozen=True)
class Qwen35MoeConfig:
    """Hyperparameters of a `qwen35moe` model; the defaults are Qwen3.6-35B-A3B.

    Sources: the config.json of Qwen/Qwen3.6-35B-A3B on the Hugging Face Hub, and llama.cpp's
    src/models/qwen35moe.cpp and conversion/qwen.py (Qwen3_5MoeTextModel), which turn it into
    these hyperparameters. The Gated DeltaNet shapes follow llama.cpp:
    key heads = ssm.group_count, value heads = ssm.time_step_rank, head dim = ssm.state_size.
    """

    n_layer: int = 40
    n_embd: int = 2048
    n_vocab: int = 248_320
    n_ctx_train: int = 262_144
    n_head: int = 16
    n_head_kv: int = 2
    head_dim: int = 256
    n_expert: int = 256
    n_expert_used: int = 8
    n_ff_exp: int = 512
    n_ff_shexp: int = 512
    ssm_d_conv: int = 4
    ssm_n_group: int = 16  # Gated DeltaNet QK heads
    ssm_dt_rank: int = 32  # Gated DeltaNet V heads
    ssm_d_state: int = 128  # Gated DeltaNet head dim
    full_attention_interval: int = 4  # every 4th layer is full attention: 3 DeltaNet + 1 attention
    rope_freq_base: float = 10_000_000.0
    partial_rotary_factor: float = 0.25  # rope.dimension_count = head_dim * 0.25 = 64
    rope_sections: tuple[int, int, int, int] = (11, 11, 10, 0)  # conversion/qwen.py default mrope_section
    rms_norm_eps: float = 1e-6
    n_mtp: int = 0  # MTP/NextN blocks after the trunk (published GGUFs of Qwen3.6 have none)

    def is_recurrent(self, il: int) -> bool:
        return il < self.n_layer and (il + 1) % self.full_attention_interval != 0


def qwen35moe_shapes(c: Qwen35MoeConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's qwen35moe loader creates (load_arch_tensors), ggml order."""
    key_dim = c.ssm_d_state * c.ssm_n_group
    value_dim = c.ssm_d_state * c.ssm_dt_rank
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (c.n_embd, c.n_vocab),
        "output_norm.weight": (c.n_embd,),
        "output.weight": (c.n_embd, c.n_vocab),
    }
    for il in range(c.n_layer + c.n_mtp):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (c.n_embd,)
        shapes[b + "post_attention_norm.weight"] = (c.n_embd,)
        if c.is_recurrent(il):
            shapes[b + "attn_qkv.weight"] = (c.n_embd, key_dim * 2 + value_dim)
            shapes[b + "attn_gate.weight"] = (c.n_embd, value_dim)
            shapes[b + "ssm_conv1d.weight"] = (c.ssm_d_conv, key_dim * 2 + value_dim)
            shapes[b + "ssm_dt.bias"] = (c.ssm_dt_rank,)
            shapes[b + "ssm_a"] = (c.ssm_dt_rank,)
            shapes[b + "ssm_beta.weight"] = (c.n_embd, c.ssm_dt_rank)
            shapes[b + "ssm_alpha.weight"] = (c.n_embd, c.ssm_dt_rank)
            shapes[b + "ssm_norm.weight"] = (c.ssm_d_state,)
            shapes[b + "ssm_out.weight"] = (value_dim, c.n_embd)
        else:  # gated attention: attn_q holds the query and its output gate (2 x head_dim per head)
            shapes[b + "attn_q.weight"] = (c.n_embd, c.head_dim * c.n_head * 2)
            shapes[b + "attn_k.weight"] = (c.n_embd, c.head_dim * c.n_head_kv)
            shapes[b + "attn_v.weight"] = (c.n_embd, c.head_dim * c.n_head_kv)
            shapes[b + "attn_output.weight"] = (c.head_dim * c.n_head, c.n_embd)
            shapes[b + "attn_q_norm.weight"] = (c.head_dim,)
            shapes[b + "attn_k_norm.weight"] = (c.head_dim,)
        shapes[b + "ffn_gate_inp.weight"] = (c.n_embd, c.n_expert)
        shapes[b + "ffn_gate_exps.weight"] = (c.n_embd, c.n_ff_exp, c.n_expert)
        shapes[b + "ffn_up_exps.weight"] = (c.n_embd, c.n_ff_exp, c.n_expert)
        shapes[b + "ffn_down_exps.weight"] = (c.n_ff_exp, c.n_embd, c.n_expert)
        shapes[b + "ffn_gate_inp_shexp.weight"] = (c.n_embd,)
        shapes[b + "ffn_gate_shexp.weight"] = (c.n_embd, c.n_ff_shexp)
        shapes[b + "ffn_up_shexp.weight"] = (c.n_embd, c.n_ff_shexp)
        shapes[b + "ffn_down_shexp.weight"] = (c.n_ff_shexp, c.n_embd)
        if il >= c.n_layer:  # the MTP block's own tensors (load_block_mtp)
            shapes[b + "nextn.eh_proj.weight"] = (2 * c.n_embd, c.n_embd)
            shapes[b + "nextn.enorm.weight"] = (c.n_embd,)
            shapes[b + "nextn.hnorm.weight"] = (c.n_embd,)
            shapes[b + "nextn.shared_head_norm.weight"] = (c.n_embd,)
    return shapes


def qwen35moe_metadata(c: Qwen35MoeConfig) -> dict[str, Any]:
    """The {arch}.* keys convert_hf_to_gguf writes for Qwen3_5MoeForCausalLM and llama.cpp reads."""
    a = "qwen35moe"
    md: dict[str, Any] = {
        f"{a}.block_count": c.n_layer + c.n_mtp,
        f"{a}.context_length": c.n_ctx_train,
        f"{a}.embedding_length": c.n_embd,
        f"{a}.attention.head_count": c.n_head,
        f"{a}.attention.head_count_kv": c.n_head_kv,
        f"{a}.attention.key_length": c.head_dim,
        f"{a}.attention.value_length": c.head_dim,
        f"{a}.attention.layer_norm_rms_epsilon": c.rms_norm_eps,
        f"{a}.rope.freq_base": c.rope_freq_base,
        f"{a}.rope.dimension_count": int(c.head_dim * c.partial_rotary_factor),
        f"{a}.rope.dimension_sections": (list(c.rope_sections), GGUFValueType.INT32),
        f"{a}.expert_count": c.n_expert,
        f"{a}.expert_used_count": c.n_expert_used,
        f"{a}.expert_feed_forward_length": c.n_ff_exp,
        f"{a}.expert_shared_feed_forward_length": c.n_ff_shexp,
        f"{a}.ssm.conv_kernel": c.ssm_d_conv,
        f"{a}.ssm.state_size": c.ssm_d_state,
        f"{a}.ssm.group_count": c.ssm_n_group,
        f"{a}.ssm.time_step_rank": c.ssm_dt_rank,
        f"{a}.ssm.inner_size": c.ssm_d_state * c.ssm_dt_rank,
        f"{a}.full_attention_interval": c.full_attention_interval,
    }
    if c.n_mtp:
        md[f"{a}.nextn_predict_layers"] = c.n_mtp
    return md


@dataclass(frozen=True)
class Qwen3Config:
    """A dense `qwen3` model (src/models/qwen3.cpp); the defaults are a tiny test model."""

    n_layer: int = 2
    n_embd: int = 256
    n_vocab: int = QWEN3_VOCAB
    n_ctx_train: int = 4096
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    rope_freq_base: float = 1_000_000.0
    rms_norm_eps: float = 1e-6


def qwen3_shapes(c: Qwen3Config) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (c.n_embd, c.n_vocab),
        "output_norm.weight": (c.n_embd,),
        "output.weight": (c.n_embd, c.n_vocab),
    }
    for il in range(c.n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (c.n_embd,)
        shapes[b + "attn_q.weight"] = (c.n_embd, c.head_dim * c.n_head)
        shapes[b + "attn_k.weight"] = (c.n_embd, c.head_dim * c.n_head_kv)
        shapes[b + "attn_v.weight"] = (c.n_embd, c.head_dim * c.n_head_kv)
        shapes[b + "attn_output.weight"] = (c.head_dim * c.n_head, c.n_embd)
        shapes[b + "attn_q_norm.weight"] = (c.head_dim,)
        shapes[b + "attn_k_norm.weight"] = (c.head_dim,)
        shapes[b + "ffn_norm.weight"] = (c.n_embd,)
        shapes[b + "ffn_gate.weight"] = (c.n_embd, c.n_ff)
        shapes[b + "ffn_up.weight"] = (c.n_embd, c.n_ff)
        shapes[b + "ffn_down.weight"] = (c.n_ff, c.n_embd)
    return shapes


def qwen3_metadata(c: Qwen3Config) -> dict[str, Any]:
    a = "qwen3"
    return {
        f"{a}.block_count": c.n_layer,
        f"{a}.context_length": c.n_ctx_train,
        f"{a}.embedding_length": c.n_embd,
        f"{a}.feed_forward_length": c.n_ff,
        f"{a}.attention.head_count": c.n_head,
        f"{a}.attention.head_count_kv": c.n_head_kv,
        f"{a}.attention.key_length": c.head_dim,
        f"{a}.attention.value_length": c.head_dim,
        f"{a}.attention.layer_norm_rms_epsilon": c.rms_norm_eps,
        f"{a}.rope.freq_base": c.rope_freq_base,
    }
