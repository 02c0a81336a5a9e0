"""Quantization mixes: the ggml type llama-quantize gives each tensor of a model at Q4_K_M, Q8_0, ...

After llama.cpp's src/llama-quant.cpp (llama_tensor_get_type, tensor_type_fallback, the order of
llama_model_loader's weights_map), without an imatrix or overrides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from moecli.errors import BadInput
from moecli.synth.tensor import TensorSpec

QUANTS = ("Q4_K_M", "Q8_0", "Q4_0", "F16", "BF16")
FTYPE = {"Q4_K_M": 15, "Q8_0": 7, "Q4_0": 2, "F16": 1, "BF16": 32}  # llama_ftype / gguf.LlamaFileType
_DEFAULT_TYPE = {"Q4_K_M": "Q4_K", "Q8_0": "Q8_0", "Q4_0": "Q4_0", "F16": "F16", "BF16": "BF16"}
# tensor_type_fallback: a row that is not whole blocks of a 256-block type takes a 32-block type
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# convert_hf_to_gguf keeps these in F32 whatever the output type (conversion/base.py)
_ALWAYS_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _sort_like_llama(names: Sequence[str]) -> list[str]:
    """The order of llama_model_loader's weights_map (layer, then name), which llama-quantize
    writes and counts in."""
    return sorted(names, key=lambda n: (_layer_of(n), n))


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """tensor_allows_quantization() for the tensors our presets make."""
    return (len(shape) >= 2 and name.endswith("weight") and not name.endswith("_norm.weight")
            and not name.endswith(_ALWAYS_F32))


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _fallback(type_name: str, ne0: int) -> str:
    block = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]
    if ne0 % block == 0:
        return type_name
    new = _FALLBACK.get(type_name, type_name)
    if ne0 % GGML_QUANT_SIZES[GGMLQuantizationType[new]][0]:
        new = "F16"
    return new


def apply_quant(shapes: Mapping[str, tuple[int, ...]], quant: str, *, n_expert: int, n_layer_all: int) -> list[TensorSpec]:
    """Types for each tensor as `llama-quantize <F16/BF16 file> <quant>` picks them (no imatrix,
    no overrides), in llama-quantize's output order.

    Shapes are ggml order. Non-quantizable tensors (1-D, norms, the router, conv1d, ssm_a, biases)
    are F32 as convert_hf_to_gguf writes them.
    """
    if quant not in QUANTS:
        raise BadInput(f"unknown quantization {quant!r}", f"use one of: {', '.join(QUANTS)}")
    default = _DEFAULT_TYPE[quant]
    names = _sort_like_llama(list(shapes))
    attn_v_like = ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")  # category_is_attn_v
    n_attention_wv = sum(1 for n in names if any(k in n for k in attn_v_like))
    i_attention_wv = 0
    specs = []
    for name in names:
        shape = tuple(shapes[name])
        if not _quantizable(name, shape):
            specs.append(TensorSpec(name, shape, "F32"))
            continue
        new = default
        quantized = default not in ("F16", "BF16", "F32")
        if quantized and name == "output.weight":
            if shape[0] % GGML_QUANT_SIZES[GGMLQuantizationType[default]][0]:
                new = "Q8_0"
            elif default != "Q8_0":
                new = "Q6_K"
        elif quantized and any(k in name for k in attn_v_like):
            if quant == "Q4_K_M" and _use_more_bits(i_attention_wv, n_attention_wv):
                new = "Q6_K"
            if n_expert == 8:  # "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
                new = "Q8_0"
            i_attention_wv += 1
        elif quantized and "attn_k.weight" in name and n_expert == 8:
            new = "Q8_0"
        elif quantized and "ffn_down" in name and name != "output.weight":
            if quant == "Q4_K_M" and _use_more_bits(_layer_of(name), n_layer_all):
                new = "Q6_K"
        elif quantized and "attn_output.weight" in name and n_expert == 8 and quant == "Q4_K_M":
            new = "Q5_K"
        if quantized:
            new = _fallback(new, shape[0])
        specs.append(TensorSpec(name, shape, new))
    return specs
