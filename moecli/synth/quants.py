"""Random quantized blocks: valid encodings of zero-mean weights of a chosen standard deviation.

The block layouts are ggml's (`block_q4_K` ... in ggml/src/ggml-common.h, decoded by
ggml/src/ggml-quants.c). K-quants are built directly rather than quantized: gguf-py's
`gguf.quants` does not implement them. `encode_floats` encodes given values (F32, F16, BF16 and
what `gguf.quants` quantizes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from moecli.errors import BadInput
from moecli.synth.tensor import TensorSpec

# The typical magnitude of a trained transformer weight (the usual init std, and what released
# checkpoints show for hidden 2048); larger values overflow the residual stream in the CUDA path.
WEIGHT_STD = 0.02


def f16_bytes(x: np.ndarray) -> np.ndarray:
    """Values as float16, two bytes a row (the d and dmin fields of ggml's blocks)."""
    return np.ascontiguousarray(x, dtype=np.float16).view(np.uint8).reshape(len(x), 2)


def _super_scale(rng: np.random.Generator, n: int, std: float, unit: float) -> np.ndarray:
    """Per-block scales so that weights come out at `std` (`unit`: the std of a block at scale 1),
    varying from block to block as in real files."""
    return (std / unit) * rng.uniform(0.8, 1.2, size=n)


def _rms(values: range) -> float:
    return float(np.sqrt(np.mean(np.square(np.array(values, dtype=np.float64)))))


def _uniform_std(n_levels: int) -> float:
    """Standard deviation of a quant uniform over n_levels consecutive integers."""
    return float(np.sqrt((n_levels**2 - 1) / 12))


def _pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins into 12 bytes (inverse of get_scale_min_k4 in ggml-quants.c)."""
    out = np.empty((len(sc), 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return out


def _rand_bytes(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    words = (n * width + 7) // 8
    raw = rng.integers(0, 2**64, size=words, dtype=np.uint64, endpoint=False).view(np.uint8)
    return raw[: n * width].reshape(n, width)


def _q4_k(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q4_K: d, dmin (f16), scales[12], qs[128]; w = d*sc*q - dmin*m, q uniform in 0..15.
    return _k_quant_with_mins(rng, n, std, levels=16, quant_bytes=128)


def _q5_k(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q5_K: d, dmin, scales[12], qh[32], qs[128]; q = 5 bits uniform in 0..31.
    return _k_quant_with_mins(rng, n, std, levels=32, quant_bytes=160)


def _k_quant_with_mins(rng: np.random.Generator, n: int, std: float, levels: int, quant_bytes: int) -> np.ndarray:
    """Q4_K and Q5_K blocks: d, dmin (f16), 8 six-bit scales and mins in 12 bytes, then the quants.
    m = sc and dmin = d * the mean quant value ((levels - 1) / 2) make every sub-block zero-mean."""
    sc = rng.integers(32, 64, size=(n, 8), dtype=np.uint8)
    d = _super_scale(rng, n, std, _rms(range(32, 64)) * _uniform_std(levels)).astype(np.float16)
    out = np.empty((n, 16 + quant_bytes), dtype=np.uint8)
    out[:, 0:2] = f16_bytes(d)
    out[:, 2:4] = f16_bytes(d.astype(np.float32) * ((levels - 1) / 2))
    out[:, 4:16] = _pack_k4_scales(sc, sc)
    out[:, 16:] = _rand_bytes(rng, n, quant_bytes)
    return out


def _q6_k(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q6_K: ql[128], qh[64], scales[16] (int8), d; w = d*sc*(q-32), q uniform in 0..63.
    # (q-32) has mean -0.5: random signs on the scales cancel it.
    mag = rng.integers(16, 64, size=(n, 16), dtype=np.int16)
    sign = rng.integers(0, 2, size=(n, 16), dtype=np.int16) * 2 - 1
    d = _super_scale(rng, n, std, _rms(range(16, 64)) * _uniform_std(64)).astype(np.float16)
    out = np.empty((n, 210), dtype=np.uint8)
    out[:, 0:192] = _rand_bytes(rng, n, 192)
    out[:, 192:208] = (mag * sign).astype(np.int8).view(np.uint8)
    out[:, 208:210] = f16_bytes(d)
    return out


def _q2_k(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q2_K: scales[16] (scale | min << 4), qs[64], d, dmin; q uniform in 0..3, mean 1.5.
    sc = rng.integers(8, 16, size=(n, 16), dtype=np.uint8)
    d = _super_scale(rng, n, std, _rms(range(8, 16)) * _uniform_std(4)).astype(np.float16)
    out = np.empty((n, 84), dtype=np.uint8)
    out[:, 0:16] = sc | (sc << 4)
    out[:, 16:80] = _rand_bytes(rng, n, 64)
    out[:, 80:82] = f16_bytes(d)
    out[:, 82:84] = f16_bytes(d.astype(np.float32) * 1.5)
    return out


def _q3_k(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q3_K: hmask[32], qs[64], scales[12], d; w = d*(s-32)*q, q in -4..3, s 6-bit.
    # Random scale bits give signed scales symmetric around 0, so the blocks are zero-mean.
    d = _super_scale(rng, n, std, _rms(range(-32, 32)) * _uniform_std(8)).astype(np.float16)
    out = np.empty((n, 110), dtype=np.uint8)
    out[:, 0:108] = _rand_bytes(rng, n, 108)
    out[:, 108:110] = f16_bytes(d)
    return out


def _q8_0(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q8_0: d, qs[32] int8 uniform in -128..127.
    d = _super_scale(rng, n, std, _uniform_std(256)).astype(np.float16)
    out = np.empty((n, 34), dtype=np.uint8)
    out[:, 0:2] = f16_bytes(d)
    out[:, 2:] = _rand_bytes(rng, n, 32)
    return out


def _q4_0(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    # block_q4_0: d, qs[16]; w = d*(q-8) has mean -0.5*d: a random sign on d cancels it.
    sign = rng.integers(0, 2, size=n) * 2 - 1
    d = (sign * _super_scale(rng, n, std, _uniform_std(16))).astype(np.float16)
    out = np.empty((n, 18), dtype=np.uint8)
    out[:, 0:2] = f16_bytes(d)
    out[:, 2:] = _rand_bytes(rng, n, 16)
    return out


_BLOCK_MAKERS: dict[GGMLQuantizationType, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    GGMLQuantizationType.Q2_K: _q2_k,
    GGMLQuantizationType.Q3_K: _q3_k,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q5_K: _q5_k,
    GGMLQuantizationType.Q6_K: _q6_k,
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
}


def encode_floats(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Float32 values (numpy order, last axis = ne0) as the bytes of a ggml type."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == GGMLQuantizationType.F32:
        return values.reshape(-1).view(np.uint8)
    if qtype == GGMLQuantizationType.F16:
        return values.astype(np.float16).reshape(-1).view(np.uint8)
    if qtype == GGMLQuantizationType.BF16:
        bits = values.reshape(-1).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        return rounded.view(np.uint8)
    try:
        return gguf_quants.quantize(values, qtype).reshape(-1).view(np.uint8)
    except NotImplementedError:
        raise BadInput(f"explicit values cannot be encoded as {qtype.name} here",
                       "give such tensors a type gguf.quants can quantize (F16, Q8_0, Q4_0, ...)") from None


def random_blocks(ggml_type: str, n_blocks: int, rng: np.random.Generator, std: float = WEIGHT_STD) -> np.ndarray:
    """`n_blocks` valid blocks of a ggml type encoding zero-mean weights of standard deviation `std`,
    as an (n_blocks, type_size) uint8 array."""
    qtype = TensorSpec("", (1,), ggml_type).qtype
    maker = _BLOCK_MAKERS.get(qtype)
    if maker is not None:
        return maker(rng, n_blocks, std)
    block, size = GGML_QUANT_SIZES[qtype]
    values = rng.standard_normal(n_blocks * block, dtype=np.float32) * np.float32(std)
    return encode_floats(values.reshape(n_blocks, block), qtype).reshape(n_blocks, size)
