"""TensorSpec: one tensor of a GGUF file (name, ggml shape and type) and its size in bytes."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from moecli.errors import BadInput


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the contiguous dimension (ne0)
    ggml_type: str  # "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", ...

    @property
    def qtype(self) -> GGMLQuantizationType:
        try:
            return GGMLQuantizationType[self.ggml_type.upper()]
        except KeyError:
            raise BadInput(f"unknown ggml type {self.ggml_type!r} for tensor {self.name}",
                           "use a gguf.GGMLQuantizationType name such as F16, Q8_0 or Q4_K") from None

    @property
    def n_elements(self) -> int:
        return prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return self.n_elements // GGML_QUANT_SIZES[self.qtype][0]

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        return self.n_elements // block * size

    def check(self) -> None:
        block = GGML_QUANT_SIZES[self.qtype][0]
        if not self.shape or any(d <= 0 for d in self.shape):
            raise BadInput(f"tensor {self.name} has shape {self.shape}", "every dimension must be positive")
        if self.shape[0] % block:
            raise BadInput(f"tensor {self.name}: a row of {self.shape[0]} is not whole {self.ggml_type} blocks of {block}",
                           "pick a type whose block size divides ne0 (llama-quant falls back to Q8_0/Q5_0/F16)")
