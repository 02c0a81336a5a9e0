"""Hand-built ModelFacts for the planner's tests: no GGUF file, no parser, no other helper's code.

`qwen36_35b_a3b()` follows llama.cpp's own loader for arch `qwen35moe` (src/models/qwen35moe.cpp:
tensor names and shapes; src/llama-quant.cpp: which tensor gets which type at Q4_K_M) for the
hyperparameters in the config.json of Qwen/Qwen3.6-35B-A3B on the Hugging Face Hub. Its tensors
come to 19.70 GiB, as in the file `scripts/make_model.py --preset qwen3.6-35b-a3b --quant Q4_K_M`
writes, and one expert layer is 432 MiB (3 x 144 MiB at Q4_K) or 498 MiB (ffn_down at Q6_K, 210 MiB,
on llama-quant's "use_more_bits" layers).

`moe_model()` / `dense_model()` build smaller models of any shape for property tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from moecli.facts import KvLayer, ModelFacts, Role, ShardInfo, TensorInfo
from moecli.ggml import row_bytes

GGUF_HEADER_BYTES = 6 << 20  # a made-up header size: the planner never looks at offsets


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]  # ggml order (ne0 first)
    ggml_type: str
    role: Role
    layer: int | None

    @property
    def n_bytes(self) -> int:
        rows = 1
        for d in self.shape[1:]:
            rows *= d
        return row_bytes(self.ggml_type, self.shape[0]) * rows


def facts_from_specs(specs: list[Spec], *, name: str, arch: str, n_layer: int, n_embd: int, n_vocab: int,
                     n_ctx_train: int, n_expert: int, n_expert_used: int, n_expert_shared: int,
                     kv_layers: tuple[KvLayer, ...], recurrent_state_bytes: int, metadata: dict | None = None,
                     file_type: str | None = None) -> ModelFacts:
    tensors = []
    offset = GGUF_HEADER_BYTES
    for s in specs:
        tensors.append(TensorInfo(s.name, s.shape, s.ggml_type, s.n_bytes, offset, 0, s.layer, s.role))
        offset += -(-s.n_bytes // 32) * 32  # GGUF's default alignment
    shard = ShardInfo(f"/models/{name}.gguf", GGUF_HEADER_BYTES, offset, offset)
    return ModelFacts(
        source=f"/models/{name}.gguf", arch=arch, name=name, file_type=file_type, n_layer=n_layer,
        n_embd=n_embd, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_expert=n_expert,
        n_expert_used=n_expert_used, n_expert_shared=n_expert_shared, kv_layers=kv_layers,
        recurrent_state_bytes=recurrent_state_bytes, tensors=tuple(tensors), shards=(shard,),
        metadata=dict(metadata or {}),
    )


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama-quant.cpp's rule for which layers' ffn_down / attn_v get more bits at Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def qwen36_specs(n_layer: int = 40) -> list[Spec]:
    """Every tensor of Qwen3.6-35B-A3B at Q4_K_M, in file order (token_embd, output, then blocks)."""
    n_embd, n_vocab, n_expert, n_ff_exp, n_ff_shexp = 2048, 248320, 256, 512, 512
    n_head, n_head_kv, head_dim = 16, 2, 256
    d_state, n_k_heads, n_v_heads, d_conv = 128, 16, 32, 4
    key_dim, value_dim = d_state * n_k_heads, d_state * n_v_heads
    conv_dim = 2 * key_dim + value_dim

    R = Role
    specs = [
        Spec("token_embd.weight", (n_embd, n_vocab), "Q4_K", R.EMBEDDING, None),
        Spec("output_norm.weight", (n_embd,), "F32", R.NORM, None),
        Spec("output.weight", (n_embd, n_vocab), "Q6_K", R.OUTPUT, None),
    ]
    for i in range(n_layer):
        more = use_more_bits(i, n_layer)
        v_type = "Q6_K" if more else "Q4_K"  # attn_v and attn_qkv share the attn_v rule (category_is_attn_v)
        down_type = "Q6_K" if more else "Q4_K"

        def t(suffix: str, shape: tuple[int, ...], ggml_type: str, role: Role, layer: int = i) -> Spec:
            return Spec(f"blk.{layer}.{suffix}", shape, ggml_type, role, layer)

        specs.append(t("attn_norm.weight", (n_embd,), "F32", R.NORM))
        specs.append(t("post_attention_norm.weight", (n_embd,), "F32", R.NORM))
        if (i + 1) % 4 == 0:  # full attention every 4th layer (full_attention_interval = 4)
            specs += [
                t("attn_q.weight", (n_embd, head_dim * n_head * 2), "Q4_K", R.ATTENTION),  # query + gate
                t("attn_k.weight", (n_embd, head_dim * n_head_kv), "Q4_K", R.ATTENTION),
                t("attn_v.weight", (n_embd, head_dim * n_head_kv), v_type, R.ATTENTION),
                t("attn_output.weight", (head_dim * n_head, n_embd), "Q4_K", R.ATTENTION),
                t("attn_q_norm.weight", (head_dim,), "F32", R.NORM),
                t("attn_k_norm.weight", (head_dim,), "F32", R.NORM),
            ]
        else:  # Gated DeltaNet
            specs += [
                t("attn_qkv.weight", (n_embd, conv_dim), v_type, R.RECURRENT),
                t("attn_gate.weight", (n_embd, value_dim), "Q4_K", R.RECURRENT),
                t("ssm_conv1d.weight", (d_conv, conv_dim), "F32", R.RECURRENT),
                t("ssm_dt.bias", (n_v_heads,), "F32", R.RECURRENT),
                t("ssm_a", (n_v_heads,), "F32", R.RECURRENT),
                t("ssm_beta.weight", (n_embd, n_v_heads), "Q4_K", R.RECURRENT),
                t("ssm_alpha.weight", (n_embd, n_v_heads), "Q4_K", R.RECURRENT),
                t("ssm_norm.weight", (d_state,), "F32", R.NORM),
                t("ssm_out.weight", (value_dim, n_embd), "Q4_K", R.RECURRENT),
            ]
        specs += [
            t("ffn_gate_inp.weight", (n_embd, n_expert), "F32", R.ROUTER),
            t("ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), down_type, R.EXPERT),
            t("ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), "Q4_K", R.EXPERT),
            t("ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), "Q4_K", R.EXPERT),
            t("ffn_gate_inp_shexp.weight", (n_embd,), "F32", R.SHARED_EXPERT),
            t("ffn_gate_shexp.weight", (n_embd, n_ff_shexp), "Q4_K", R.SHARED_EXPERT),
            t("ffn_up_shexp.weight", (n_embd, n_ff_shexp), "Q4_K", R.SHARED_EXPERT),
            t("ffn_down_shexp.weight", (n_ff_shexp, n_embd), down_type, R.SHARED_EXPERT),
        ]
    return specs


QWEN36_METADATA = {
    "qwen35moe.block_count": 40,
    "qwen35moe.context_length": 262144,
    "qwen35moe.embedding_length": 2048,
    "qwen35moe.attention.head_count": 16,
    "qwen35moe.attention.head_count_kv": 2,
    "qwen35moe.attention.key_length": 256,
    "qwen35moe.attention.value_length": 256,
    "qwen35moe.expert_count": 256,
    "qwen35moe.expert_used_count": 8,
    "qwen35moe.expert_feed_forward_length": 512,
    "qwen35moe.expert_shared_feed_forward_length": 512,
    "qwen35moe.ssm.conv_kernel": 4,
    "qwen35moe.ssm.inner_size": 4096,
    "qwen35moe.ssm.state_size": 128,
    "qwen35moe.ssm.time_step_rank": 32,
    "qwen35moe.ssm.group_count": 16,
    "qwen35moe.full_attention_interval": 4,
}


def qwen36_35b_a3b(n_layer: int = 40) -> ModelFacts:
    """Qwen3.6-35B-A3B at Q4_K_M (n_layer < 40 gives a shortened variant with the same layer shapes)."""
    head_dim, n_head_kv = 256, 2
    kv_layers = tuple(KvLayer(i, head_dim * n_head_kv, head_dim * n_head_kv) for i in range(n_layer) if (i + 1) % 4 == 0)
    # Recurrent state per DeltaNet layer, f32 (llama_hparams::n_embd_r / n_embd_s):
    # conv state (d_conv - 1) x conv_dim + ssm state head_v_dim^2 x n_v_heads.
    n_recurrent = n_layer - len(kv_layers)
    per_layer = ((4 - 1) * 8192 + 128 * 128 * 32) * 4
    return facts_from_specs(
        qwen36_specs(n_layer), name="Qwen3.6-35B-A3B-Q4_K_M", arch="qwen35moe", n_layer=n_layer, n_embd=2048,
        n_vocab=248320, n_ctx_train=262144, n_expert=256, n_expert_used=8, n_expert_shared=1,
        kv_layers=kv_layers, recurrent_state_bytes=n_recurrent * per_layer,
        metadata={**QWEN36_METADATA, "qwen35moe.block_count": n_layer}, file_type="Q4_K_M",
    )


def moe_model(*, n_layer: int = 8, n_embd: int = 256, n_vocab: int = 1024, n_expert: int = 8, n_expert_used: int = 2,
              n_ff_exp: int = 256, shared: bool = True, attention_every: int = 1, n_head_kv: int = 2, head_dim: int = 64,
              window: int | None = None, expert_type: str = "Q4_K", other_type: str = "Q8_0",
              tied_output: bool = False, gate_up_fused: bool = False, dense_lead: int = 0, expert_bias: bool = False,
              n_ctx_train: int = 32768, name: str = "moe") -> ModelFacts:
    """A generic MoE model: attention every `attention_every` layers (the rest recurrent), experts in
    every layer after the first `dense_lead` dense-FFN layers; expert biases as gpt-oss has them."""
    R = Role
    specs = [Spec("token_embd.weight", (n_embd, n_vocab), other_type, R.EMBEDDING, None),
             Spec("output_norm.weight", (n_embd,), "F32", R.NORM, None)]
    if not tied_output:
        specs.append(Spec("output.weight", (n_embd, n_vocab), other_type, R.OUTPUT, None))
    kv, n_recurrent = [], 0
    for i in range(n_layer):
        def t(suffix, shape, ggml_type, role, i=i):
            return Spec(f"blk.{i}.{suffix}", shape, ggml_type, role, i)
        specs.append(t("attn_norm.weight", (n_embd,), "F32", R.NORM))
        if (i + 1) % attention_every == 0:
            specs += [t("attn_q.weight", (n_embd, n_embd), other_type, R.ATTENTION),
                      t("attn_k.weight", (n_embd, n_head_kv * head_dim), other_type, R.ATTENTION),
                      t("attn_v.weight", (n_embd, n_head_kv * head_dim), other_type, R.ATTENTION),
                      t("attn_output.weight", (n_embd, n_embd), other_type, R.ATTENTION)]
            kv.append(KvLayer(i, n_head_kv * head_dim, n_head_kv * head_dim, window))
        else:
            n_recurrent += 1
            specs += [t("attn_qkv.weight", (n_embd, 3 * n_embd), other_type, R.RECURRENT),
                      t("ssm_out.weight", (n_embd, n_embd), other_type, R.RECURRENT)]
        specs.append(t("ffn_norm.weight", (n_embd,), "F32", R.NORM))
        if i < dense_lead:
            specs += [t("ffn_gate.weight", (n_embd, 4 * n_embd), other_type, R.FFN),
                      t("ffn_up.weight", (n_embd, 4 * n_embd), other_type, R.FFN),
                      t("ffn_down.weight", (4 * n_embd, n_embd), other_type, R.FFN)]
            continue
        specs.append(t("ffn_gate_inp.weight", (n_embd, n_expert), "F32", R.ROUTER))
        if gate_up_fused:
            specs.append(t("ffn_gate_up_exps.weight", (n_embd, 2 * n_ff_exp, n_expert), expert_type, R.EXPERT))
        else:
            specs += [t("ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), expert_type, R.EXPERT),
                      t("ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), expert_type, R.EXPERT)]
        specs.append(t("ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), expert_type, R.EXPERT))
        if expert_bias:
            for kind, width in (("gate_up", 2 * n_ff_exp),) if gate_up_fused else (("gate", n_ff_exp), ("up", n_ff_exp)):
                specs.append(t(f"ffn_{kind}_exps.bias", (width, n_expert), "F32", R.EXPERT))
            specs.append(t("ffn_down_exps.bias", (n_embd, n_expert), "F32", R.EXPERT))
        if shared:
            specs += [t("ffn_gate_shexp.weight", (n_embd, n_ff_exp), other_type, R.SHARED_EXPERT),
                      t("ffn_up_shexp.weight", (n_embd, n_ff_exp), other_type, R.SHARED_EXPERT),
                      t("ffn_down_shexp.weight", (n_ff_exp, n_embd), other_type, R.SHARED_EXPERT)]
    return facts_from_specs(
        specs, name=name, arch="testmoe", n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_ctx_train=n_ctx_train,
        n_expert=n_expert, n_expert_used=n_expert_used, n_expert_shared=1 if shared else 0, kv_layers=tuple(kv),
        recurrent_state_bytes=n_recurrent * n_embd * 64 * 4,
        metadata={"testmoe.attention.head_count": max(1, n_embd // head_dim),
                  "testmoe.attention.key_length": head_dim},
    )


def dense_model(*, n_layer: int = 8, n_embd: int = 512, n_vocab: int = 2048, n_ff: int = 1536, ggml_type: str = "Q8_0",
                n_head_kv: int = 4, head_dim: int = 64, tied_output: bool = False, n_ctx_train: int = 8192,
                name: str = "dense") -> ModelFacts:
    """A Llama-like dense model (no experts)."""
    R = Role
    specs = [Spec("token_embd.weight", (n_embd, n_vocab), ggml_type, R.EMBEDDING, None),
             Spec("output_norm.weight", (n_embd,), "F32", R.NORM, None)]
    if not tied_output:
        specs.append(Spec("output.weight", (n_embd, n_vocab), ggml_type, R.OUTPUT, None))
    for i in range(n_layer):
        def t(suffix, shape, role, i=i):
            return Spec(f"blk.{i}.{suffix}", shape, "F32" if len(shape) == 1 else ggml_type, role, i)
        specs += [t("attn_norm.weight", (n_embd,), R.NORM),
                  t("attn_q.weight", (n_embd, n_embd), R.ATTENTION),
                  t("attn_k.weight", (n_embd, n_head_kv * head_dim), R.ATTENTION),
                  t("attn_v.weight", (n_embd, n_head_kv * head_dim), R.ATTENTION),
                  t("attn_output.weight", (n_embd, n_embd), R.ATTENTION),
                  t("ffn_norm.weight", (n_embd,), R.NORM),
                  t("ffn_gate.weight", (n_embd, n_ff), R.FFN),
                  t("ffn_up.weight", (n_embd, n_ff), R.FFN),
                  t("ffn_down.weight", (n_ff, n_embd), R.FFN)]
    kv = tuple(KvLayer(i, n_head_kv * head_dim, n_head_kv * head_dim) for i in range(n_layer))
    return facts_from_specs(
        specs, name=name, arch="llama", n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_ctx_train=n_ctx_train,
        n_expert=0, n_expert_used=0, n_expert_shared=0, kv_layers=kv, recurrent_state_bytes=0,
        metadata={"llama.attention.head_count": max(1, n_embd // head_dim), "llama.attention.key_length": head_dim},
    )
