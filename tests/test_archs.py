"""Per-architecture facts read from real checkpoints' headers (tests/archspecs.py): tensor roles,
experts, parameter counts against the model cards, KV cache and recurrent state computed by hand
from each config the way llama.cpp allocates them."""

from __future__ import annotations

from collections import Counter

import archspecs
import pytest

from moecli.archs import describe
from moecli.errors import ModelFileError
from moecli.facts import ModelFacts, Role
from moecli.gguf import read_model
from moecli.synth import TensorSpec, write_gguf

Q4_K = 144 / 256  # bytes per weight of the fixtures' expert tensors (block of 256 in 144 bytes)
Q8_0 = 34 / 32
MXFP4 = 17 / 32
F16 = 2  # bytes per KV element at the default cache type


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("archs")
    cache: dict[str, ModelFacts] = {}

    def read(key: str) -> ModelFacts:
        if key not in cache:
            cache[key] = read_model(archspecs.SPECS[key]().write(directory))
        return cache[key]

    return read


def roles(facts: ModelFacts) -> dict[Role, int]:
    return dict(Counter(t.role for t in facts.tensors))


def trunk_params(facts: ModelFacts) -> int:
    return sum(t.n_params for t in facts.tensors if t.role is not Role.MTP)


def assert_published(facts: ModelFacts, key: str, tolerance: float = 0.02) -> None:
    published = archspecs.SPECS[key]().published_params
    assert trunk_params(facts) == pytest.approx(published, rel=tolerance)


def test_qwen36_35b_a3b(model):
    m = model("qwen36-35b-a3b")
    assert (m.arch, m.n_layer, m.n_embd, m.n_vocab, m.n_ctx_train) == ("qwen35moe", 40, 2048, 248320, 262144)
    assert (m.n_expert, m.n_expert_used, m.n_expert_shared) == (256, 8, 1) and m.is_moe
    # 40 layers x 3 expert tensors; 40 x 3 shared-expert matrices + 40 shared gates; 40 routers;
    # 30 DeltaNet layers x (qkv, gate, conv1d, dt, a, beta, alpha, out) = 240 recurrent;
    # 10 attention layers x q/k/v/o = 40
    assert roles(m) == {Role.EXPERT: 120, Role.SHARED_EXPERT: 160, Role.ROUTER: 40, Role.RECURRENT: 240,
                        Role.ATTENTION: 40, Role.NORM: 131, Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_layers() == tuple(range(40))
    assert m.expert_bytes == 40 * 3 * 2048 * 512 * 256 * Q4_K
    assert m.expert_bytes / m.n_bytes > 0.9
    assert_published(m, "qwen36-35b-a3b")
    assert m.n_params == pytest.approx(34.7e9, rel=0.005)  # qwen36-35b-a3b.md: ~34.7 B
    assert m.n_active_params == pytest.approx(2.95e9, rel=0.01)  # ~2.95 B read per token
    # KV only in the 10 full-attention layers (3, 7, ..., 39): K and V of 2 heads x 256 each,
    # f16: 10 x (512 + 512) x 2 B = 20 KiB per token
    assert [kv.layer for kv in m.kv_layers] == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]
    assert m.kv_bytes(1) == 10 * (2 * 256 + 2 * 256) * F16 == 20 * 1024
    assert m.kv_bytes(65536) == 1.25 * 2**30  # 64K context = 1.25 GiB
    # 30 DeltaNet layers, f32: conv state (d_conv - 1) x conv_dim with conv_dim = d_inner + 2 x
    # n_group x d_state = 4096 + 2 x 16 x 128 = 8192, plus the ssm state d_state x d_inner = 128 x 4096
    assert m.recurrent_state_bytes == 30 * ((4 - 1) * 8192 + 128 * 4096) * 4 == 65_863_680  # 62.8 MiB


def test_qwen36_fixture_agrees_with_the_synth_preset():
    """Two independent transcriptions of Qwen3.6-35B-A3B (this fixture, synth's preset) agree on
    every tensor name and shape and on the architecture keys."""
    from moecli.synth import build_recipe

    recipe = build_recipe("qwen3.6-35b-a3b")
    spec = archspecs.qwen36_35b_a3b()
    assert {t.name: t.shape for t in recipe.tensors} == {t.name: t.shape for t in spec.tensors}
    arch_keys = {k: v for k, v in spec.metadata.items() if k.startswith("qwen35moe.") and "sections" not in k}
    assert {k: recipe.metadata.get(k) for k in arch_keys} == arch_keys


def test_qwen36_with_an_mtp_block(model, tmp_path):
    """A current converter appends the MTP block (block_count 41, nextn_predict_layers 1) and
    writes the layer types: llama.cpp skips the block by default and keeps no cache for it."""
    plain = model("qwen36-35b-a3b")
    m = read_model(archspecs.qwen36_35b_a3b(mtp=True).write(tmp_path))
    assert m.n_layer == 40
    mtp = [t for t in m.tensors if t.role is Role.MTP]
    assert {t.layer for t in mtp} == {40} and len(mtp) == 20  # a full-attention MoE block + nextn.*
    assert m.kv_layers == plain.kv_layers and m.recurrent_state_bytes == plain.recurrent_state_bytes
    assert m.expert_layers() == plain.expert_layers()
    assert m.n_active_params == plain.n_active_params


def test_qwen3_30b_a3b(model):
    m = model("qwen3-30b-a3b")
    assert (m.n_layer, m.n_expert, m.n_expert_used, m.n_expert_shared) == (48, 128, 8, 0)
    assert roles(m) == {Role.EXPERT: 144, Role.ROUTER: 48, Role.ATTENTION: 192, Role.NORM: 193,
                        Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_bytes == 48 * 3 * 2048 * 768 * 128 * Q4_K
    assert_published(m, "qwen3-30b-a3b")
    assert m.n_active_params == pytest.approx(3.3e9, rel=0.1)  # 3.3 B counts the embedding matrix too
    # 48 layers x (K 4 x 128 + V 4 x 128) x 2 B = 96 KiB per token
    assert m.kv_bytes(1) == 48 * (4 * 128 * 2) * F16 == 96 * 1024
    assert m.recurrent_state_bytes == 0


def test_qwen15_moe_a27b(model):
    m = model("qwen1.5-moe-a2.7b")
    assert (m.arch, m.n_expert, m.n_expert_used, m.n_expert_shared) == ("qwen2moe", 60, 4, 1)
    # 24 layers: 3 expert tensors, 3 shared + its gate, 1 router, q/k/v/o + 3 biases
    assert roles(m) == {Role.EXPERT: 72, Role.SHARED_EXPERT: 96, Role.ROUTER: 24, Role.ATTENTION: 168,
                        Role.NORM: 49, Role.EMBEDDING: 1, Role.OUTPUT: 1}
    # gate and up rows of 2048 are Q4_K; down rows of 1408 are not whole 256-blocks: Q8_0
    assert m.expert_bytes == 24 * 2048 * 1408 * 60 * (2 * Q4_K + Q8_0)
    assert_published(m, "qwen1.5-moe-a2.7b")
    assert m.kv_bytes(1) == 24 * (16 * 128 * 2) * F16  # no GQA: 16 KV heads of 128


def test_mixtral_8x7b(model):
    m = model("mixtral-8x7b")
    assert (m.arch, m.n_layer, m.n_expert, m.n_expert_used, m.n_expert_shared) == ("llama", 32, 8, 2, 0)
    assert roles(m) == {Role.EXPERT: 96, Role.ROUTER: 32, Role.ATTENTION: 128, Role.NORM: 65,
                        Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_bytes == 32 * 3 * 4096 * 14336 * 8 * Q4_K
    assert m.expert_bytes / m.n_bytes > 0.95
    assert_published(m, "mixtral-8x7b")
    assert m.n_active_params == pytest.approx(12.9e9, rel=0.02)  # Mistral: 12.9 B active
    assert m.kv_bytes(1) == 32 * (8 * 128 * 2) * F16 == 128 * 1024


def test_mixtral_8x22b(model):
    m = model("mixtral-8x22b")
    assert (m.n_layer, m.n_embd, m.n_expert, m.n_expert_used) == (56, 6144, 8, 2)
    assert roles(m)[Role.EXPERT] == 3 * 56
    assert m.expert_bytes == 56 * 3 * 6144 * 16384 * 8 * Q4_K
    assert_published(m, "mixtral-8x22b")
    assert m.n_active_params == pytest.approx(39e9, rel=0.02)  # Mistral: 39 B active
    assert m.kv_bytes(1) == 56 * (8 * 128 * 2) * F16


def test_dense_llama3_8b(model):
    m = model("llama3-8b")
    assert (m.n_expert, m.n_expert_used, m.n_expert_shared) == (0, 0, 0)
    assert not m.is_moe and m.expert_bytes == 0 and m.expert_layers() == ()
    assert roles(m) == {Role.FFN: 96, Role.ATTENTION: 128, Role.NORM: 65, Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert_published(m, "llama3-8b")
    assert m.kv_bytes(8192) == 32 * (8 * 128 * 2) * F16 * 8192 == 2**30  # 1 GiB at 8K


def test_deepseek_moe_16b(model):
    m = model("deepseek-moe-16b")
    assert (m.arch, m.n_expert, m.n_expert_used, m.n_expert_shared) == ("deepseek", 64, 6, 2)
    # layer 0 is dense (leading_dense_block_count 1); 27 MoE layers with 2 shared experts fused in
    # one shexp tensor of 2 x 1408
    assert roles(m) == {Role.FFN: 3, Role.EXPERT: 81, Role.SHARED_EXPERT: 81, Role.ROUTER: 27,
                        Role.ATTENTION: 112, Role.NORM: 57, Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_layers() == tuple(range(1, 28))
    assert m.expert_bytes == 27 * 2048 * 1408 * 64 * (2 * Q4_K + Q8_0)
    assert_published(m, "deepseek-moe-16b")
    assert m.kv_bytes(1) == 28 * (16 * 128 * 2) * F16


def test_deepseek_v2_lite_mla(model):
    m = model("deepseek-v2-lite")
    assert (m.arch, m.n_layer, m.n_expert, m.n_expert_used, m.n_expert_shared) == ("deepseek2", 27, 64, 6, 2)
    # attention per layer: q, kv_a_mqa, k_b, v_b, output (no q LoRA in the Lite model)
    assert roles(m) == {Role.FFN: 3, Role.EXPERT: 78, Role.SHARED_EXPERT: 78, Role.ROUTER: 26,
                        Role.ATTENTION: 135, Role.NORM: 82, Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert_published(m, "deepseek-v2-lite")
    assert m.n_active_params == pytest.approx(2.4e9, rel=0.05)  # 2.4 B active
    # MLA: llama.cpp caches the compressed latent, K = kv_lora_rank + qk_rope_head_dim = 512 + 64
    # per layer in one "head", and no V tensor (V is a view of K): 27 x 576 x 2 B per token
    assert {(kv.n_embd_k, kv.n_embd_v) for kv in m.kv_layers} == {(576, 0)}
    assert m.kv_bytes(1) == 27 * 576 * F16 == 31_104


def test_deepseek_v3(model):
    m = model("deepseek-v3")
    assert (m.n_layer, m.n_expert, m.n_expert_used, m.n_expert_shared) == (61, 256, 8, 1)
    r = roles(m)
    # 58 MoE layers: router + the expert-score bias (exp_probs_b); attention: q_a, q_b, kv_a_mqa,
    # k_b, v_b, output in all 61 layers
    assert (r[Role.EXPERT], r[Role.SHARED_EXPERT], r[Role.ROUTER], r[Role.ATTENTION], r[Role.FFN]) == \
           (174, 174, 116, 366, 9)
    assert m.expert_layers() == tuple(range(3, 61))
    assert m.expert_bytes == 58 * 3 * 7168 * 2048 * 256 * Q4_K
    assert_published(m, "deepseek-v3", tolerance=0.01)  # 671 B
    assert m.n_active_params == pytest.approx(37e9, rel=0.02)  # 37 B active
    assert m.kv_bytes(1) == 61 * (512 + 64) * F16 == 70_272


def test_grok1(model):
    m = model("grok-1")
    assert (m.arch, m.n_layer, m.n_expert, m.n_expert_used) == ("grok", 64, 8, 2)
    assert roles(m) == {Role.EXPERT: 192, Role.ROUTER: 64, Role.ATTENTION: 256, Role.NORM: 257,
                        Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_bytes == 64 * 3 * 6144 * 32768 * 8 * Q4_K
    assert_published(m, "grok-1")
    assert m.kv_bytes(1) == 64 * (8 * 128 * 2) * F16


def test_jamba_hybrid(model):
    m = model("jamba-v0.1")
    assert (m.arch, m.n_layer, m.n_expert, m.n_expert_used) == ("jamba", 32, 16, 2)
    # 28 Mamba layers x 9 recurrent tensors (in, conv1d w+b, x, dt w+b, a, d, out); 4 attention
    # layers x q/k/v/o; MoE in the 16 odd layers, dense FFN in the 16 even ones
    assert roles(m) == {Role.RECURRENT: 252, Role.ATTENTION: 16, Role.EXPERT: 48, Role.ROUTER: 16,
                        Role.FFN: 48, Role.NORM: 149, Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_layers() == tuple(range(1, 32, 2))
    assert_published(m, "jamba-v0.1")
    assert m.n_active_params == pytest.approx(12e9, rel=0.05)  # AI21: 12 B active
    # attention (head_count_kv 8) only in layers 4, 12, 20, 28: 4 x (8 x 128 x 2) x 2 B per token
    assert [kv.layer for kv in m.kv_layers] == [4, 12, 20, 28]
    assert m.kv_bytes(1) == 4 * (8 * 128 * 2) * F16 == 16 * 1024
    # Mamba-1 state per layer, f32: conv (d_conv - 1) x d_inner + ssm d_state x d_inner
    assert m.recurrent_state_bytes == 28 * (3 * 8192 + 16 * 8192) * 4 == 17_432_576


def test_dbrx(model):
    m = model("dbrx")
    assert (m.arch, m.n_expert, m.n_expert_used) == ("dbrx", 16, 4)
    assert roles(m) == {Role.EXPERT: 120, Role.ROUTER: 40, Role.ATTENTION: 80, Role.NORM: 81,
                        Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert m.expert_bytes == 40 * 3 * 6144 * 10752 * 16 * Q4_K
    assert_published(m, "dbrx")
    assert m.n_active_params == pytest.approx(36e9, rel=0.02)  # Databricks: 36 B active
    assert m.kv_bytes(1) == 40 * (8 * 128 * 2) * F16


def test_gpt_oss_20b_swa_and_mxfp4(model):
    m = model("gpt-oss-20b")
    assert (m.arch, m.file_type, m.n_layer, m.n_expert, m.n_expert_used) == ("gpt-oss", "MXFP4_MOE", 24, 32, 4)
    # experts: 3 matrices + 3 biases per layer; router weight + bias; attention q/k/v/o, 4 biases, sinks
    assert roles(m) == {Role.EXPERT: 144, Role.ROUTER: 48, Role.ATTENTION: 216, Role.NORM: 49,
                        Role.EMBEDDING: 1, Role.OUTPUT: 1}
    assert {t.ggml_type for t in m.tensors if t.role is Role.EXPERT and len(t.shape) == 3} == {"MXFP4"}
    assert m.expert_bytes == 24 * (3 * 2880 * 2880 * 32 * MXFP4 + 3 * 2880 * 32 * 4)
    assert_published(m, "gpt-oss-20b")
    assert m.n_active_params == pytest.approx(3.6e9, rel=0.02)  # OpenAI: 3.6 B active
    # even layers slide over 128 tokens, odd ones attend to everything (openai-moe.cpp, pattern 2)
    assert [kv.window for kv in m.kv_layers] == [128, None] * 12
    per_token = 8 * 64 * 2 * F16  # K + V of 8 heads x 64
    assert m.kv_bytes(128) == 24 * per_token * 128
    # llama.cpp keeps GGML_PAD(window + n_ubatch, 256) cells in a sliding-window layer (iswa cache)
    assert m.kv_bytes(4096) == 12 * per_token * 4096 + 12 * per_token * 768
    assert m.kv_bytes(4096, n_ubatch=128) == 12 * per_token * 4096 + 12 * per_token * 256


def test_glm45_air_with_mtp(model):
    m = model("glm-4.5-air")
    assert (m.arch, m.n_layer, m.n_expert, m.n_expert_used, m.n_expert_shared) == ("glm4moe", 46, 128, 8, 1)
    # the NextN block (blk.46) is MTP: 3 experts, 3 shared, router, bias, 7 attention, norms, nextn
    r = roles(m)
    assert r[Role.MTP] == 21 and {t.layer for t in m.tensors if t.role is Role.MTP} == {46}
    assert (r[Role.EXPERT], r[Role.SHARED_EXPERT], r[Role.ROUTER], r[Role.FFN]) == (135, 135, 90, 3)
    assert m.expert_layers() == tuple(range(1, 46))
    assert m.expert_bytes == 45 * 4096 * 1408 * 128 * (2 * Q4_K + Q8_0)  # down rows of 1408: Q8_0
    assert_published(m, "glm-4.5-air")
    assert m.n_active_params == pytest.approx(12e9, rel=0.08)  # Z.ai: 12 B active
    # the MTP layer gets no cache in the main context: 46 x (8 x 128 x 2) x 2 B per token
    assert [kv.layer for kv in m.kv_layers] == list(range(46))
    assert m.kv_bytes(1) == 46 * (8 * 128 * 2) * F16


# ---------------------------------------------------------------------------------------------
# against llama.cpp itself


LLAMA_CPP_CASES = [*archspecs.SPECS, "qwen36-35b-a3b-mtp"]


@pytest.mark.parametrize("key", LLAMA_CPP_CASES)
def test_llama_cpp_allocates_the_cache_we_predict(key, tmp_path):
    """llama.cpp loads each fixture (so the tensor names and shapes are the ones it expects) in a
    dry run (no_alloc, as its --fit does) and reports the exact bytes of its weights (MTP blocks
    not loaded) and of its KV cache + recurrent state: they equal what moecli predicts. The
    tokenizer is llama.cpp's "none" with dummy tokens, so no vocabulary needs writing."""
    from moecli.engine import dry_run
    from moecli.errors import EngineError
    from moecli.ggml import row_bytes
    from moecli.params import LlamaParams

    spec = archspecs.qwen36_35b_a3b(mtp=True) if key.endswith("-mtp") else archspecs.SPECS[key]()
    n_vocab = next(t.shape[1] for t in spec.tensors if t.name == "token_embd.weight")
    path = spec.write(tmp_path, **{"tokenizer.ggml.model": "none", f"{spec.arch}.vocab_size": n_vocab})
    facts = read_model(path)
    n_ctx, n_ubatch = 4096, 512
    try:
        buffers = dry_run(path, LlamaParams(n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch, n_gpu_layers=0,
                                            flash_attn="on", n_threads=1))
    except EngineError as exc:
        if "x86-64 Linux only" in str(exc):
            pytest.skip(str(exc))
        raise
    # sliding-window layers keep GGML_PAD(min(n_ctx, window + n_ubatch), 256) cells
    # (src/llama-kv-cache-iswa.cpp), full layers n_ctx
    kv = 0
    for layer in facts.kv_layers:
        cells = min(n_ctx, -(-(layer.window + n_ubatch) // 256) * 256) if layer.window else n_ctx
        kv += cells * (row_bytes("f16", layer.n_embd_k) + row_bytes("f16", layer.n_embd_v))
    assert sum(buffers.context.values()) == kv + facts.recurrent_state_bytes
    assert sum(buffers.model.values()) == sum(t.n_bytes for t in facts.tensors if t.role is not Role.MTP)


# ---------------------------------------------------------------------------------------------
# describe(): the rules for architectures without a fixture above, and bad metadata


def _meta(arch: str, **keys) -> dict:
    base = {"block_count": 4, "embedding_length": 256, "context_length": 4096}
    return {f"{arch}.{k}": v for k, v in {**base, **keys}.items()}


def test_mamba2_is_recurrent_only():
    # Mamba-2: conv over x, B and C (d_inner + 2 x n_group x d_state), ssm state d_state x d_inner
    a = describe("mamba2", _meta("mamba2", **{"ssm.conv_kernel": 4, "ssm.inner_size": 512, "ssm.state_size": 128,
                                              "ssm.group_count": 1, "ssm.time_step_rank": 8}))
    assert a.kv_layers == () and a.recurrent_layers == (0, 1, 2, 3)
    assert a.recurrent_state_bytes == 4 * ((4 - 1) * (512 + 2 * 128) + 128 * 512) * 4


def test_rwkv7_state():
    # RWKV: token-shift rows (token_shift_count x n_embd) and the wkv state (n_embd x head size)
    a = describe("rwkv7", _meta("rwkv7", **{"wkv.head_size": 64}))
    assert a.kv_layers == ()
    assert a.recurrent_state_bytes == 4 * (2 * 256 + 256 * 64) * 4


def test_falcon_h1_has_both_in_every_layer():
    a = describe("falcon-h1", _meta("falcon-h1", **{"attention.head_count": 4, "attention.head_count_kv": 2,
                                                    "ssm.conv_kernel": 4, "ssm.inner_size": 512,
                                                    "ssm.state_size": 16, "ssm.group_count": 1}))
    assert [kv.layer for kv in a.kv_layers] == [0, 1, 2, 3] and a.recurrent_layers == (0, 1, 2, 3)


def test_nemotron_h_layer_kinds():
    # attention where head_count_kv > 0; Mamba where head_count_kv = 0 and FFN length = 0; the rest
    # are FFN-only layers with neither cache
    a = describe("nemotron_h", _meta("nemotron_h", **{
        "attention.head_count": 4, "attention.head_count_kv": [0, 2, 0, 0], "feed_forward_length": [0, 0, 512, 0],
        "ssm.conv_kernel": 4, "ssm.inner_size": 512, "ssm.state_size": 16, "ssm.group_count": 2}))
    assert [kv.layer for kv in a.kv_layers] == [1] and a.recurrent_layers == (0, 3)


def test_lfm2_short_convolutions_and_window():
    a = describe("lfm2", _meta("lfm2", **{"attention.head_count": 4, "attention.head_count_kv": [0, 2, 0, 2],
                                          "shortconv.l_cache": 3, "attention.sliding_window": 512}))
    assert [(kv.layer, kv.window) for kv in a.kv_layers] == [(1, 512), (3, 512)]
    assert a.recurrent_state_bytes == 2 * (256 * (3 - 1)) * 4


def test_qwen35_recurrent_layers_key_wins():
    a = describe("qwen35moe", _meta("qwen35moe", **{"attention.head_count": 4, "attention.head_count_kv": 1,
                                                    "attention.recurrent_layers": [True, False, False, True],
                                                    "ssm.conv_kernel": 4, "ssm.inner_size": 64, "ssm.state_size": 16,
                                                    "ssm.group_count": 2}))
    assert [kv.layer for kv in a.kv_layers] == [1, 2] and a.recurrent_layers == (0, 3)


def test_swa_pattern_key_overrides_the_default():
    a = describe("gpt-oss", _meta("gpt-oss", **{"attention.head_count": 4, "attention.sliding_window": 64,
                                                "attention.sliding_window_pattern": [False, False, True, True]}))
    assert [kv.window for kv in a.kv_layers] == [None, None, 64, 64]
    b = describe("gemma3", _meta("gemma3", **{"attention.head_count": 4, "attention.sliding_window": 0}))
    assert all(kv.window is None for kv in b.kv_layers)  # gemma3 without a window: no SWA


def test_unknown_architecture_uses_the_generic_path(tmp_path):
    """An architecture moecli has no rules for still gets facts from the standard keys, with its
    `ffn_*_exps` tensors as experts."""
    meta = {**_meta("futuremoe", **{"attention.head_count": 4, "attention.head_count_kv": 2,
                                   "expert_count": 4, "expert_used_count": 2})}
    tensors = [TensorSpec("token_embd.weight", (256, 1000), "Q8_0")]
    for i in range(4):
        tensors += [TensorSpec(f"blk.{i}.attn_q.weight", (256, 256), "Q8_0"),
                    TensorSpec(f"blk.{i}.ffn_gate_inp.weight", (256, 4), "F32"),
                    TensorSpec(f"blk.{i}.ffn_up_exps.weight", (256, 512, 4), "Q4_K"),
                    TensorSpec(f"blk.{i}.ffn_down_exps.weight", (512, 256, 4), "Q4_K")]
    m = read_model(write_gguf(tmp_path / "f.gguf", "futuremoe", meta, tensors, fill="sparse"))
    assert m.is_moe and m.expert_layers() == (0, 1, 2, 3) and m.n_vocab == 1000
    assert m.kv_bytes(1) == 4 * (2 * 64 * 2) * F16
    assert not describe("futuremoe", meta).known and describe("qwen3moe", _meta("qwen3moe")).known


@pytest.mark.parametrize(("keys", "message"), [
    ({"block_count": None}, "has no x.block_count"),
    ({"embedding_length": None}, "has no x.embedding_length"),
    ({"block_count": 0}, r"x.block_count = 0 is not a layer count"),
    ({"block_count": 100000}, r"x.block_count = 100000 is not a count in \[0, 512\]"),
    ({"embedding_length": 2.5}, "x.embedding_length = 2.5 is not a count"),
    ({"attention.head_count_kv": [1, 2]}, "x.attention.head_count_kv has 2 values for 4 layers"),
    ({"expert_count": 4, "expert_used_count": 8}, "expert_used_count = 8 is not at most expert_count"),
    ({"nextn_predict_layers": 9}, "x.nextn_predict_layers = 9 is not a count in"),
])
def test_bad_metadata(keys, message):
    meta = _meta("x", **{"attention.head_count": 4})
    for k, v in keys.items():
        meta.pop(f"x.{k}", None)
        if v is not None:
            meta[f"x.{k}"] = v
    with pytest.raises(ModelFileError, match=message):
        describe("x", meta, where="x.gguf")
