"""Write GGUF files with real architectures and tensor shapes, filled with realistic random weights.

One job per module, along the seams of llama.cpp's gguf-py (gguf_writer.py, quants.py, vocab.py):
- `writer`: the GGUF writer: `write_gguf`, `write_split_gguf` (gguf-split's layout), the three
  fills ("random", "zeros", "sparse": holes, a 21 GB planning fixture in under a second).
- `tensor`: `TensorSpec`, one tensor's name, ggml shape and type, and its size.
- `quants`: random blocks of ggml's quant types (Q2_K ... Q6_K, Q8_0, Q4_0), `encode_floats`.
- `fill`: what fill="random" puts in each tensor (by its name), deterministic from a seed.
- `vocab`: the Qwen tokenizer's metadata and the chat templates shipped in moecli/data.
- `quantmix`: the type llama-quantize gives each tensor (`apply_quant`).
- `archs`: architectures' hyperparameters, tensor shapes and metadata (qwen35moe, qwen3).
- `presets`: `build_recipe` (Qwen3.6-35B-A3B, the demo, a tiny qwen3) and `ensure_demo_model`.
"""

from moecli.synth.archs import Qwen3Config, Qwen35MoeConfig, qwen3_metadata, qwen3_shapes, qwen35moe_metadata, qwen35moe_shapes
from moecli.synth.presets import DEMO_FILENAME, DEMO_VERSION, PRESETS, ModelRecipe, build_recipe, demo_recipe, ensure_demo_model
from moecli.synth.quantmix import QUANTS, apply_quant
from moecli.synth.quants import WEIGHT_STD, encode_floats, random_blocks
from moecli.synth.tensor import TensorSpec
from moecli.synth.vocab import QWEN3_VOCAB, QWEN_BOS, QWEN_EOS, QWEN_PAD, chat_template, qwen_tokenizer_metadata
from moecli.synth.writer import FILLS, data_size, split_paths, write_gguf, write_split_gguf

__all__ = [
    "DEMO_FILENAME", "DEMO_VERSION", "FILLS", "PRESETS", "QUANTS", "QWEN3_VOCAB", "QWEN_BOS", "QWEN_EOS", "QWEN_PAD",
    "WEIGHT_STD", "ModelRecipe", "Qwen3Config", "Qwen35MoeConfig", "TensorSpec", "apply_quant", "build_recipe",
    "chat_template", "data_size", "demo_recipe", "encode_floats", "ensure_demo_model", "qwen3_metadata", "qwen3_shapes",
    "qwen35moe_metadata", "qwen35moe_shapes", "qwen_tokenizer_metadata", "random_blocks", "split_paths", "write_gguf",
    "write_split_gguf",
]
