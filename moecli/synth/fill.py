"""The tensor data of fill="random": weights the engine can run, deterministic from a seed.

What a tensor holds follows from its llama.cpp name: weights are zero-mean with |w| ~ 0.02, norm
gains ~ 1, biases ~ 0, Gated DeltaNet decays negative. Tensors larger than a pool repeat windows of
a per-type pool of random blocks, so a 20 GB file is written at disk speed with bounded memory
while experts still differ from one another. Given contents (`data`) are encoded as they are.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from moecli.errors import BadInput
from moecli.synth.quants import WEIGHT_STD, encode_floats, random_blocks
from moecli.synth.tensor import TensorSpec

CHUNK_BYTES = 4 << 20  # generation and write granularity (bounded memory)
_POOL_BYTES = 32 << 20  # tensors larger than this repeat windows of a per-type pool of blocks
_WINDOW_BYTES = 1 << 20  # size of one window taken from the pool at a random block offset


# What a tensor's values look like, from its name (llama.cpp's tensor names).
def _init_kind(name: str) -> str:
    if name.endswith("norm.weight"):
        return "ones"  # RMSNorm gains (convert_hf_to_gguf adds 1 where HF stores them as offsets)
    if name.endswith(".ssm_a") or name.endswith("ssm_a.weight"):
        return "decay"  # -exp(A_log): negative, or the recurrent state grows without bound
    if name.endswith("ssm_dt.bias"):
        return "ones"  # dt_bias, initialised to ones in Qwen3-Next/3.5
    if name.endswith(".bias"):
        return "small"
    return "weight"


def _float_values(kind: str, rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    if kind == "ones":
        return (1.0 + rng.standard_normal(n, dtype=np.float32) * np.float32(std)).astype(np.float32)
    if kind == "decay":
        return (-np.exp(rng.uniform(0.0, np.log(16.0), size=n))).astype(np.float32)
    if kind == "small":
        return rng.standard_normal(n, dtype=np.float32) * np.float32(std / 10)
    return rng.standard_normal(n, dtype=np.float32) * np.float32(std)


def seed_for(seed: int, *parts: str | int) -> list[int]:
    return [seed & 0xFFFFFFFF] + [zlib.crc32(p.encode()) if isinstance(p, str) else p for p in parts]


class RandomSource:
    """Deterministic random data for the tensors of one file (a pool per type, built on demand)."""

    def __init__(self, seed: int, data: Mapping[str, np.ndarray] | None = None, std: float = WEIGHT_STD) -> None:
        self.seed = seed
        self.data = dict(data or {})
        self.std = std
        self._pools: dict[GGMLQuantizationType, np.ndarray] = {}

    def _pool(self, qtype: GGMLQuantizationType) -> np.ndarray:
        if qtype not in self._pools:
            size = GGML_QUANT_SIZES[qtype][1]
            # a prime number of blocks: windows at different offsets never line up periodically
            n = _prime_below(_POOL_BYTES // size)
            rng = np.random.default_rng(seed_for(self.seed, "pool", qtype.name))
            self._pools[qtype] = random_blocks(qtype.name, n, rng, self.std).reshape(-1)
        return self._pools[qtype]

    def chunks(self, spec: TensorSpec) -> Iterator[memoryview | bytes]:
        qtype = spec.qtype
        block, size = GGML_QUANT_SIZES[qtype]
        if spec.name in self.data:
            yield _explicit_bytes(spec, self.data[spec.name]).data
            return
        kind = _init_kind(spec.name)
        if kind != "weight":
            values = _float_values(kind, np.random.default_rng(seed_for(self.seed, spec.name)), spec.n_elements, self.std)
            yield encode_floats(values.reshape(-1, spec.shape[0]), qtype).data
            return
        if spec.nbytes > _POOL_BYTES:
            pool = self._pool(qtype)
            n_pool = len(pool) // size
            per_window = max(1, _WINDOW_BYTES // size)
            rng = np.random.default_rng(seed_for(self.seed, spec.name))
            view = memoryview(pool)
            left = spec.n_blocks
            while left:
                n = min(per_window, left)
                start = int(rng.integers(0, n_pool - n + 1))
                yield view[start * size:(start + n) * size]
                left -= n
            return
        per_chunk = max(1, CHUNK_BYTES // size)
        for i, first in enumerate(range(0, spec.n_blocks, per_chunk)):
            n = min(per_chunk, spec.n_blocks - first)
            rng = np.random.default_rng(seed_for(self.seed, spec.name, i))
            yield random_blocks(qtype.name, n, rng, self.std).data


def _explicit_bytes(spec: TensorSpec, values: np.ndarray) -> np.ndarray:
    """Given contents of a tensor: float values (numpy order) to encode, or its raw uint8 encoding."""
    if values.dtype == np.uint8:
        raw = np.ascontiguousarray(values).reshape(-1)
    else:
        if values.size != spec.n_elements:
            raise BadInput(f"tensor {spec.name}: {values.size} values given for {spec.n_elements} elements",
                           "give values of the tensor's shape (numpy order: reversed ggml shape)")
        raw = encode_floats(values.reshape(-1, spec.shape[0]), spec.qtype).reshape(-1)
    if raw.nbytes != spec.nbytes:
        raise BadInput(f"tensor {spec.name}: {raw.nbytes} bytes given, its {spec.ggml_type} encoding takes {spec.nbytes}",
                       "give raw blocks of the tensor's type and size")
    return raw


def _prime_below(n: int) -> int:
    n = max(n, 3)
    while any(n % p == 0 for p in range(2, int(n**0.5) + 1)):
        n -= 1
    return n
