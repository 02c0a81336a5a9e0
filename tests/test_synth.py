"""moecli.synth: GGUF files with real shapes, realistic random weights, split files, the demo model."""

from __future__ import annotations

import collections
import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from moecli import paths, synth
from moecli.errors import BadInput, DiskSpaceError
from moecli.synth import TensorSpec, build_recipe, ensure_demo_model, random_blocks, write_gguf, write_split_gguf

REPO = Path(__file__).resolve().parent.parent

ALL_TYPES = [
    TensorSpec("token_embd.weight", (256, 40), "Q4_K"),
    TensorSpec("output_norm.weight", (256,), "F32"),
    TensorSpec("blk.0.attn_norm.weight", (256,), "F32"),
    TensorSpec("blk.0.ffn_up_exps.weight", (256, 64, 4), "Q5_K"),
    TensorSpec("blk.0.ffn_down_exps.weight", (256, 64, 4), "Q6_K"),
    TensorSpec("blk.0.attn_q.weight", (64, 64), "Q8_0"),
    TensorSpec("blk.0.attn_k.weight", (64, 64), "Q4_0"),
    TensorSpec("blk.0.attn_v.weight", (64, 64), "F16"),
    TensorSpec("blk.0.attn_output.weight", (64, 64), "BF16"),
    TensorSpec("blk.0.ffn_gate.weight", (256, 8), "Q2_K"),
    TensorSpec("blk.0.ffn_up.weight", (256, 8), "Q3_K"),
    TensorSpec("blk.0.ffn_down.weight", (64, 8), "Q5_0"),
    TensorSpec("blk.0.ssm_a", (32,), "F32"),
    TensorSpec("blk.0.ssm_dt.bias", (32,), "F32"),
    TensorSpec("blk.0.attn_q.bias", (64,), "F32"),
]


def _values(reader: GGUFReader) -> dict[str, np.ndarray]:
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1) for t in reader.tensors}


# --- the writer -----------------------------------------------------------------------------


def test_header_has_the_intended_names_shapes_types_and_metadata(tmp_path):
    metadata = {
        "general.name": "t",
        "x.count": 3,
        "x.negative": -3,
        "x.big": 2**40,
        "x.ratio": 1.5,
        "x.flag": True,
        "x.list": [1, 2, 3],
        "x.words": ["a", "b", ""],
        "x.floats": [1.0, 2],
        "x.forced": ([1, 2, 3], GGUFValueType.INT32),
        "x.u16": (7, GGUFValueType.UINT16),
    }
    path = write_gguf(tmp_path / "m.gguf", "llama", metadata, ALL_TYPES)
    reader = GGUFReader(path)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    expected_types = {
        "x.count": [GGUFValueType.UINT32],
        "x.negative": [GGUFValueType.INT32],
        "x.big": [GGUFValueType.UINT64],
        "x.ratio": [GGUFValueType.FLOAT32],
        "x.flag": [GGUFValueType.BOOL],
        "x.list": [GGUFValueType.ARRAY, GGUFValueType.UINT32],
        "x.words": [GGUFValueType.ARRAY, GGUFValueType.STRING],
        "x.floats": [GGUFValueType.ARRAY, GGUFValueType.FLOAT32],
        "x.forced": [GGUFValueType.ARRAY, GGUFValueType.INT32],
        "x.u16": [GGUFValueType.UINT16],
    }
    for key, types in expected_types.items():
        assert fields[key].types == types, key
    assert fields["x.words"].contents() == ["a", "b", ""]
    assert fields["x.negative"].contents() == -3
    assert fields["x.big"].contents() == 2**40
    assert [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors] == [
        (s.name, s.shape, s.ggml_type) for s in ALL_TYPES
    ]
    assert sum(t.n_bytes for t in reader.tensors) == sum(s.nbytes for s in ALL_TYPES)
    last = reader.tensors[-1]
    assert path.stat().st_size == last.data_offset + (last.n_bytes + 31) // 32 * 32


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_gguf(tmp_path / "a.gguf", "llama", {}, ALL_TYPES, seed=7).read_bytes()
    b = write_gguf(tmp_path / "b.gguf", "llama", {}, ALL_TYPES, seed=7).read_bytes()
    c = write_gguf(tmp_path / "c.gguf", "llama", {}, ALL_TYPES, seed=8).read_bytes()
    assert a == b
    assert a != c and len(a) == len(c)


def test_random_weights_look_trained_norms_are_one_decay_is_negative(tmp_path):
    values = _values(GGUFReader(write_gguf(tmp_path / "m.gguf", "llama", {}, ALL_TYPES)))
    for name, v in values.items():
        assert np.isfinite(v).all(), name
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ssm_dt.bias"):
        assert abs(values[name].mean() - 1.0) < 0.01, name
    assert (values["blk.0.ssm_a"] < 0).all()  # -exp(A_log)
    assert abs(values["blk.0.attn_q.bias"]).max() < 0.02
    weights = [s.name for s in ALL_TYPES if s.name.endswith("weight") and "norm" not in s.name]
    for name in weights:
        v = values[name]
        assert 0.012 < v.std() < 0.03, (name, v.std())
        assert abs(v.mean()) < 0.15 * v.std() + 3 * v.std() / np.sqrt(v.size), (name, v.mean())


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "F16", "BF16"])
def test_random_blocks_dequantize_to_zero_mean_and_the_asked_scale(type_name):
    qtype = GGMLQuantizationType[type_name]
    rng = np.random.default_rng(0)
    blocks = random_blocks(type_name, 2000, rng, std=0.05)
    assert blocks.shape == (2000, gguf.GGML_QUANT_SIZES[qtype][1]) and blocks.dtype == np.uint8
    w = gguf.quants.dequantize(blocks.reshape(-1), qtype)
    assert np.isfinite(w).all()
    assert 0.04 < w.std() < 0.065, w.std()
    assert abs(w.mean()) < 0.02 * w.std(), w.mean()


@pytest.mark.parametrize("type_name, mean_q", [("Q4_K", 7.5), ("Q5_K", 15.5)])
def test_k_quant_min_is_scale_times_mean_quant_so_every_sub_block_is_centred(type_name, mean_q):
    blocks = random_blocks(type_name, 500, np.random.default_rng(1))
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64).ravel()
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float64).ravel()
    np.testing.assert_allclose(dmin, d * mean_q, rtol=2e-3)
    # the 6-bit scales and mins are equal in every sub-block (get_scale_min_k4)
    w = gguf.quants.dequantize(blocks.reshape(-1), GGMLQuantizationType[type_name]).reshape(500, 8, 32)
    sub_means = w.mean(axis=2)
    sub_stds = w.std(axis=2)
    assert abs(sub_means.mean()) < 0.02 * sub_stds.mean()


def test_zeros_fill_writes_zero_bytes_and_sparse_fill_writes_holes(tmp_path):
    big = [TensorSpec("blk.0.ffn_up_exps.weight", (2048, 512, 16), "Q4_K"), TensorSpec("a.weight", (256,), "F32")]
    zeros = write_gguf(tmp_path / "z.gguf", "llama", {}, big, fill="zeros")
    sparse = write_gguf(tmp_path / "s.gguf", "llama", {}, big, fill="sparse")
    assert zeros.read_bytes() == sparse.read_bytes()  # same header, zero data
    assert sparse.stat().st_size > 9_000_000
    assert sparse.stat().st_blocks * 512 < sparse.stat().st_size // 10  # not written: holes
    assert not any(gguf.quants.dequantize(t.data, t.tensor_type).any() for t in GGUFReader(sparse).tensors)


def test_custom_alignment_is_declared_and_honoured(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama", {}, ALL_TYPES, alignment=64)
    reader = GGUFReader(path)
    assert reader.fields["general.alignment"].contents() == 64
    assert all(t.data_offset % 64 == 0 for t in reader.tensors)


def test_explicit_tensor_data_is_written_as_given(tmp_path):
    values = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    specs = [TensorSpec("a.weight", (64, 64), "F32"), TensorSpec("b.weight", (64, 64), "Q8_0")]
    path = write_gguf(tmp_path / "m.gguf", "llama", {}, specs, data={"a.weight": values, "b.weight": values})
    got = _values(GGUFReader(path))
    np.testing.assert_array_equal(got["a.weight"], values.ravel())
    np.testing.assert_allclose(got["b.weight"], values.ravel(), atol=0.01)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    specs = [TensorSpec("a.weight", (64, 64), "F32"), TensorSpec("b.weight", (64, 64), "F32")]
    wrong = np.zeros(10, dtype=np.uint8)
    with pytest.raises(BadInput, match="b.weight"):
        write_gguf(tmp_path / "m.gguf", "llama", {}, specs, data={"b.weight": wrong})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fill": "noise"}, "unknown fill"),
        ({"tensors": [TensorSpec("a", (100,), "Q4_K")]}, "not whole Q4_K blocks"),
        ({"tensors": [TensorSpec("a", (32,), "Q9_X")]}, "unknown ggml type"),
        ({"tensors": [TensorSpec("a", (32,), "F32")] * 2}, "listed twice"),
        ({"tensors": [TensorSpec("a", (0, 3), "F32")]}, "shape"),
        ({"metadata": {"x.empty": []}}, "empty list"),
        ({"metadata": {"x.obj": object()}}, "cannot infer"),
        ({"metadata": {"general.architecture": "qwen3"}}, "general.architecture"),
        ({"alignment": 12}, "alignment"),
        ({"data": {"nope.weight": np.zeros(4, np.float32)}}, "not in the model"),
    ],
)
def test_bad_input_is_refused_with_a_hint(tmp_path, kwargs, match):
    args = {"metadata": {}, "tensors": [TensorSpec("a", (32,), "F32")], **kwargs}
    with pytest.raises(BadInput, match=match) as info:
        write_gguf(tmp_path / "m.gguf", "llama", args.pop("metadata"), args.pop("tensors"), **args)
    assert info.value.hint


def test_not_enough_disk_is_a_disk_space_error(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(100, 90, 10))
    with pytest.raises(DiskSpaceError):
        write_gguf(tmp_path / "m.gguf", "llama", {}, ALL_TYPES)
    write_gguf(tmp_path / "s.gguf", "llama", {}, ALL_TYPES, fill="sparse")  # holes need no space


# --- split files ----------------------------------------------------------------------------


def test_split_files_are_named_and_keyed_like_gguf_split(tmp_path):
    recipe = build_recipe("demo", n_layer=4, tokenizer=False)
    whole = recipe.write(tmp_path / "whole.gguf", seed=3)[0]
    shards = recipe.write(tmp_path / "model.gguf", seed=3, splits=3)
    assert [p.name for p in shards] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    readers = [GGUFReader(p) for p in shards]
    for i, r in enumerate(readers):
        assert r.fields["split.no"].contents() == i and r.fields["split.no"].types == [GGUFValueType.UINT16]
        assert r.fields["split.count"].contents() == 3
        assert r.fields["split.tensors.count"].contents() == len(recipe.tensors)
        assert r.fields["split.tensors.count"].types == [GGUFValueType.INT32]
        assert len(r.tensors) > 0
    # metadata in the first shard only (gguf-split: gguf_set_kv for i_split == 0)
    assert readers[0].fields["general.architecture"].contents() == "qwen35moe"
    assert "qwen35moe.block_count" in readers[0].fields
    assert all(set(r.fields) == {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "split.no", "split.count",
                                 "split.tensors.count"} for r in readers[1:])
    # the same tensors, in order, with the same bytes as the unsplit file
    unsplit = {t.name: bytes(t.data) for t in GGUFReader(whole).tensors}
    split = [(t.name, bytes(t.data)) for r in readers for t in r.tensors]
    assert [n for n, _ in split] == list(unsplit)
    assert all(unsplit[n] == b for n, b in split)


def test_split_count_must_fit_the_tensors(tmp_path):
    specs = [TensorSpec("a", (32,), "F32"), TensorSpec("b", (32,), "F32")]
    with pytest.raises(BadInput, match="cannot split"):
        write_split_gguf(tmp_path / "m", "llama", {}, specs, 3)
    assert [p.name for p in write_split_gguf(tmp_path / "m", "llama", {}, specs, 2)] == [
        "m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]


# --- presets and quant mixes ----------------------------------------------------------------


def test_qwen36_preset_has_the_real_shapes_count_params_and_q4_k_m_size(tmp_path):
    recipe = build_recipe("qwen3.6-35b-a3b")
    assert len(recipe.tensors) == 3 + 30 * 19 + 10 * 16  # 40 layers = 10 x (3 DeltaNet + 1 attention)
    assert 34.5e9 < recipe.n_params < 34.8e9  # the text trunk of the model card's "35B in total" (Qwen/Qwen3.6-35B-A3B: + vision, MTP)
    path = recipe.write(tmp_path / "q36.gguf", fill="sparse")[0]
    assert 20.5e9 < path.stat().st_size < 21.5e9  # Q4_K_M ~21 GB (19.7 GiB)
    assert len(recipe.metadata["tokenizer.ggml.tokens"]) == 248_320
    # (GGUFReader takes ~20 s over 400,000 tokenizer strings: read the same header without them)
    reader = GGUFReader(build_recipe("qwen3.6-35b-a3b", tokenizer=False).write(tmp_path / "h.gguf", fill="sparse")[0])
    f = {k: v.contents() for k, v in reader.fields.items()}
    assert f["general.architecture"] == "qwen35moe" and f["general.file_type"] == 15
    assert f["qwen35moe.block_count"] == 40 and f["qwen35moe.embedding_length"] == 2048
    assert f["qwen35moe.expert_count"] == 256 and f["qwen35moe.expert_used_count"] == 8
    assert f["qwen35moe.expert_feed_forward_length"] == 512 and f["qwen35moe.context_length"] == 262_144
    assert f["qwen35moe.attention.head_count"] == 16 and f["qwen35moe.attention.head_count_kv"] == 2
    assert f["qwen35moe.attention.key_length"] == 256 and f["qwen35moe.rope.dimension_count"] == 64
    assert f["qwen35moe.ssm.group_count"] == 16 and f["qwen35moe.ssm.time_step_rank"] == 32
    assert f["qwen35moe.ssm.state_size"] == 128 and f["qwen35moe.ssm.inner_size"] == 4096
    assert f["qwen35moe.rope.dimension_sections"] == [11, 11, 10, 0]
    t = {x.name: (tuple(int(d) for d in x.shape), x.tensor_type.name) for x in reader.tensors}
    assert t["token_embd.weight"] == ((2048, 248_320), "Q4_K")
    assert t["output.weight"] == ((2048, 248_320), "Q6_K")
    assert t["blk.0.attn_qkv.weight"] == ((2048, 8192), "Q6_K")  # 16*128*2 + 32*128, use_more_bits
    assert t["blk.5.attn_qkv.weight"][1] == "Q4_K"
    assert t["blk.3.attn_q.weight"] == ((2048, 8192), "Q4_K")  # 16 heads x 256 x (query + gate)
    assert t["blk.3.attn_v.weight"] == ((2048, 512), "Q6_K")
    assert "blk.3.ssm_out.weight" not in t and "blk.4.attn_q.weight" not in t
    assert t["blk.0.ffn_gate_exps.weight"] == ((2048, 512, 256), "Q4_K")
    assert t["blk.0.ffn_down_exps.weight"] == ((512, 2048, 256), "Q6_K")
    assert t["blk.5.ffn_down_exps.weight"][1] == "Q4_K" and t["blk.7.ffn_down_exps.weight"][1] == "Q6_K"
    for name in ("blk.0.ffn_gate_inp.weight", "blk.0.ssm_conv1d.weight", "blk.0.ssm_a", "blk.0.attn_norm.weight",
                 "blk.0.ffn_gate_inp_shexp.weight"):
        assert t[name][1] == "F32", name
    # every name is one the gguf package knows for this architecture
    known = {gguf.TENSOR_NAMES[k] for k in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN35MOE]}
    for name in t:
        base = name if name.endswith("ssm_a") else name.rsplit(".", 1)[0]
        generic = ".".join(["blk", "{bid}", *base.split(".")[2:]]) if base.startswith("blk.") else base
        assert generic in known, name


@pytest.mark.parametrize("quant, output, embd, expert", [
    ("Q8_0", "Q8_0", "Q8_0", "Q8_0"), ("Q4_0", "Q6_K", "Q4_0", "Q4_0"), ("F16", "F16", "F16", "F16"),
])
def test_uniform_mixes(quant, output, embd, expert):
    types = {s.name: s.ggml_type for s in build_recipe("qwen3.6-35b-a3b", quant, n_layer=4, tokenizer=False).tensors}
    assert types["output.weight"] == output and types["token_embd.weight"] == embd
    assert types["blk.1.ffn_down_exps.weight"] == expert and types["blk.3.attn_v.weight"] == expert
    assert types["blk.1.ssm_norm.weight"] == "F32" and types["blk.1.ffn_gate_inp.weight"] == "F32"


def test_rows_that_are_not_whole_k_blocks_fall_back_like_llama_quant():
    types = {s.name: s.ggml_type for s in build_recipe("demo", n_embd=160, tokenizer=False).tensors}
    assert types["blk.0.ffn_gate_exps.weight"] == "Q5_0"  # Q4_K -> Q5_0
    assert types["blk.0.ffn_down_exps.weight"] == "Q4_K"  # ne0 = n_ff_exp = 256 still fits
    assert types["blk.3.ffn_down_exps.weight"] == "Q6_K"  # use_more_bits(3, 4)
    assert types["output.weight"] == "Q8_0"  # nx % 256 -> Q8_0
    assert types["blk.0.attn_qkv.weight"] == "Q5_0"  # Q4_K -> Q5_0
    assert types["blk.3.attn_v.weight"] == "Q8_0"  # use_more_bits: Q6_K -> Q8_0


def test_eight_expert_models_get_llama_quants_q8_0_attention():
    types = {s.name: s.ggml_type for s in build_recipe("demo", n_expert=8, tokenizer=False).tensors}
    assert types["blk.3.attn_k.weight"] == "Q8_0" and types["blk.3.attn_v.weight"] == "Q8_0"
    assert types["blk.3.attn_output.weight"] == "Q5_K"


@pytest.mark.parametrize("args, match", [
    (("nope",), "unknown preset"),
    (("demo", "Q3_K_XL"), "unknown quantization"),
    (("demo", None), "unknown hyperparameter"),
])
def test_bad_preset_arguments(args, match):
    extra = {"bogus": 1} if match == "unknown hyperparameter" else {}
    with pytest.raises(BadInput, match=match):
        build_recipe(*args, **extra)


def test_bad_hyperparameters():
    with pytest.raises(BadInput, match="positive"):
        build_recipe("demo", n_layer=0)
    with pytest.raises(BadInput, match="experts used"):
        build_recipe("demo", n_expert_used=20)
    with pytest.raises(BadInput, match="smaller than"):
        build_recipe("qwen3-tiny", n_vocab=1000)


def test_dense_preset_is_a_qwen3_with_the_same_tokenizer():
    recipe = build_recipe("qwen3-tiny")
    assert recipe.arch == "qwen3"
    assert not any("exps" in s.name for s in recipe.tensors)
    assert recipe.metadata["tokenizer.ggml.eos_token_id"] == synth.QWEN_EOS
    assert "<|im_start|>" in recipe.metadata["tokenizer.chat_template"]


# --- llama.cpp loads and runs what we write ---------------------------------------------------


class _RoutingProbe:
    """Counts the experts llama.cpp picks per layer (the ffn_moe_topk-N tensors) through the
    context's eval callback."""

    def __init__(self) -> None:
        import llama_cpp

        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.lib = lib
        self.picked: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

    def _on_tensor(self, tensor: int, ask: bool, _user: int) -> bool:
        name = self.lib.ggml_get_name(tensor).decode()
        if not name.startswith("ffn_moe_topk"):
            return not ask
        if ask:
            return True
        ne = (ctypes.c_int64 * 4).from_address(tensor + 16)  # struct ggml_tensor: type, buffer, ne[4], nb[4]
        nb = (ctypes.c_size_t * 4).from_address(tensor + 48)
        size = self.lib.ggml_nbytes(tensor)
        buf = (ctypes.c_char * size)()
        self.lib.ggml_backend_tensor_get(tensor, buf, 0, size)
        raw = np.frombuffer(bytes(buf), dtype=np.uint8)
        for row in range(ne[1]):
            self.picked[name].update(raw[row * nb[1]: row * nb[1] + ne[0] * 4].view(np.int32).tolist())
        return True


def _run_prompt(model: Path, text: bytes, probe: _RoutingProbe | None = None) -> np.ndarray:
    """Decode a prompt with llama.cpp's C API; the last token's logits."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    lmodel = llama_cpp.llama_model_load_from_file(str(model).encode(), mparams)
    assert lmodel
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = 256
    if probe is not None:
        cparams.cb_eval = probe.callback
    ctx = llama_cpp.llama_init_from_model(lmodel, cparams)
    try:
        vocab = llama_cpp.llama_model_get_vocab(lmodel)
        tokens = (llama_cpp.llama_token * 256)()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), tokens, 256, False, True)
        assert 0 < n < 256
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, n)) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(lmodel)


CHAT = b"<|im_start|>user\nHello there, how are you today? Tell me about the sea.<|im_end|>\n<|im_start|>assistant\n"


def test_demo_model_is_found_in_models_dir_without_rebuilding(demo_model_session):
    path = ensure_demo_model()
    assert path == paths.models_dir() / synth.DEMO_FILENAME
    assert path.stat().st_ino == demo_model_session.stat().st_ino  # the session's file, linked


def test_demo_model_builds_deterministically_and_replaces_old_versions(tmp_path, demo_model_session):
    (tmp_path / "moecli-demo-v0.gguf").write_bytes(b"old")
    (tmp_path / "other.gguf").write_bytes(b"keep")
    path = ensure_demo_model(tmp_path)
    assert path.read_bytes() == demo_model_session.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([synth.DEMO_FILENAME, "other.gguf"])
    assert 20e6 < path.stat().st_size < 80e6  # small enough to build on first use


def test_demo_model_routes_over_many_experts_with_finite_logits(demo_model_session):
    probe = _RoutingProbe()
    logits = _run_prompt(demo_model_session, CHAT, probe)
    assert np.isfinite(logits).all() and logits.std() > 0.01
    assert sorted(probe.picked) == [f"ffn_moe_topk-{i}" for i in range(4)]
    for layer, counts in probe.picked.items():
        n_tokens = sum(counts.values()) // 4  # top-4
        assert len(counts) >= 10, (layer, counts)  # of 16 experts
        assert max(counts.values()) < n_tokens, (layer, counts)  # no expert is picked by every token


def test_demo_model_chats_through_llama_cpp_python(demo_model_session):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(demo_model_session), n_ctx=512, seed=1, verbose=False)
    assert llm.metadata["general.architecture"] == "qwen35moe"
    assert llm.tokenize(b"Hello world", add_bos=False) == [9707, 1879]  # the Qwen2/Qwen3 BPE ids
    assert llm.token_eos() == 151645 and llm.detokenize([151645], special=True) == b"<|im_end|>"
    assert llm.detokenize([151667], special=True) == b"<think>"
    assert "<think>" in llm.metadata["tokenizer.chat_template"]
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=32)
    choice = out["choices"][0]
    words = choice["message"]["content"].split()
    assert choice["finish_reason"] in ("stop", "length") and out["usage"]["completion_tokens"] > 0
    common = set(synth.presets._COMMON_WORDS) | {",", "."}
    assert words and sum(w.strip(",.") in common for w in words) >= 0.8 * len(words), words


def test_scaled_down_qwen36_with_its_248k_vocabulary_loads_split_in_llama_cpp(tmp_path):
    recipe = build_recipe("qwen3.6-35b-a3b", n_layer=4, n_embd=256, n_expert=16, n_expert_used=4,
                          n_ff_exp=256, n_ff_shexp=256)
    shards = recipe.write(tmp_path / "q36.gguf", fill="sparse", splits=3)
    logits = _run_prompt(shards[0], CHAT)
    assert logits.shape == (248_320,) and np.isfinite(logits).all()


def test_dense_preset_runs(tmp_path):
    path = build_recipe("qwen3-tiny").write(tmp_path / "dense.gguf")[0]
    logits = _run_prompt(path, CHAT)
    assert np.isfinite(logits).all() and logits.std() > 0


# --- scripts/make_model.py --------------------------------------------------------------------


def test_make_model_script_writes_and_reports(tmp_path):
    out = tmp_path / "m.gguf"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_model.py"), "--preset", "qwen3.6-35b-a3b", "--layers", "2",
         "--fill", "sparse", "--split", "2", str(out)],
        capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "m-00001-of-00002.gguf").is_file() and (tmp_path / "m-00002-of-00002.gguf").is_file()
    assert "tensors" in run.stdout and "GiB" in run.stdout
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "make_model.py"), "--set", "bogus=1", str(out)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "unknown hyperparameter" in bad.stderr and "hint:" in bad.stderr
