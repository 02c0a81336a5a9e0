"""Sizes of ggml types, from llama.cpp's own gguf package (GGML_QUANT_SIZES)."""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


def ggml_type(name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def row_bytes(type_name: str, n_elements: int) -> int:
    """Bytes of n_elements of a type (a whole number of blocks, as ggml_row_size)."""
    block, size = GGML_QUANT_SIZES[ggml_type(type_name)]
    if n_elements % block:
        raise ValueError(f"{n_elements} elements are not whole {type_name} blocks of {block}")
    return n_elements // block * size


def bits_per_weight(type_name: str) -> float:
    block, size = GGML_QUANT_SIZES[ggml_type(type_name)]
    return size * 8 / block
