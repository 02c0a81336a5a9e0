"""The Qwen tokenizer's metadata: the Qwen2/Qwen3 byte-level BPE and chat templates shipped in
moecli/data (see moecli/data/README.md), as the tokenizer.* keys of llama.cpp's GGUFs (gguf-py's
vocab.py writes the same keys from a Hugging Face tokenizer)."""

from __future__ import annotations

import json
import lzma
from functools import lru_cache
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, Keys

from moecli.errors import BadInput

QWEN_EOS = 151645  # <|im_end|>: Qwen chat models end a turn (and generation) there
QWEN_BOS = QWEN_PAD = 151643  # <|endoftext|>

# Qwen3's added tokens from 151643 (tokenizer_config.json): "special" ones are CONTROL tokens in
# llama.cpp's GGUFs, the others USER_DEFINED.
_QWEN3_ADDED = [
    ("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<|object_ref_start|>", 3),
    ("<|object_ref_end|>", 3), ("<|box_start|>", 3), ("<|box_end|>", 3), ("<|quad_start|>", 3),
    ("<|quad_end|>", 3), ("<|vision_start|>", 3), ("<|vision_end|>", 3), ("<|vision_pad|>", 3),
    ("<|image_pad|>", 3), ("<|video_pad|>", 3), ("<tool_call>", 4), ("</tool_call>", 4),
    ("<|fim_prefix|>", 3), ("<|fim_middle|>", 3), ("<|fim_suffix|>", 3), ("<|fim_pad|>", 3),
    ("<|repo_name|>", 3), ("<|file_sep|>", 3), ("<tool_response>", 4), ("</tool_response>", 4),
    ("<think>", 4), ("</think>", 4),
]
QWEN3_VOCAB = 151936  # Qwen2/Qwen3 embedding rows (the tokenizer pads with [PAD<i>] up to here)
_DATA = Path(__file__).parent.parent / "data"


@lru_cache(maxsize=1)
def qwen_bpe() -> tuple[list[str], list[str]]:
    """The BPE tokens (without the added ones) and merges."""
    with lzma.open(_DATA / "qwen-bpe.json.xz", "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["tokens"], data["merges"]


def chat_template(name: str) -> str:
    """A shipped chat template: "qwen3" (Qwen3, <think> handling) or "qwen3.5" (Qwen3.5/3.6)."""
    files = {"qwen3": "qwen3-chat-template.jinja", "qwen3.5": "qwen3.5-chat-template.jinja"}
    if name not in files:
        raise BadInput(f"unknown chat template {name!r}", f"use one of: {', '.join(files)}")
    return (_DATA / files[name]).read_text(encoding="utf-8")


def qwen_tokenizer_metadata(n_vocab: int = QWEN3_VOCAB, *, pre: str = "qwen2", template: str = "qwen3") -> dict[str, Any]:
    """tokenizer.* keys for the Qwen3 vocabulary, padded to n_vocab entries.

    Rows up to 151,936 are padded as Qwen's own tokenizer does ([PAD<i>], USER_DEFINED); rows past
    it (a model with a larger embedding, like Qwen3.5/3.6's 248,320) are UNUSED tokens, which
    llama.cpp's vocab loader accepts and keeps out of its special-token cache (src/llama-vocab.cpp).
    """
    bpe, merges = qwen_bpe()
    n_base = len(bpe) + len(_QWEN3_ADDED)
    if n_vocab < n_base:
        raise BadInput(f"a vocabulary of {n_vocab} is smaller than the {n_base} Qwen tokens",
                       f"use n_vocab >= {n_base}")
    tokens = bpe + [t for t, _ in _QWEN3_ADDED] + [f"[PAD{i}]" for i in range(n_base, n_vocab)]
    types = ([1] * len(bpe) + [k for _, k in _QWEN3_ADDED] + [4] * max(0, min(n_vocab, QWEN3_VOCAB) - n_base)
             + [5] * max(0, n_vocab - max(n_base, QWEN3_VOCAB)))
    return {
        Keys.Tokenizer.MODEL: "gpt2",
        Keys.Tokenizer.PRE: pre,
        Keys.Tokenizer.LIST: tokens,
        Keys.Tokenizer.TOKEN_TYPE: (types, GGUFValueType.INT32),
        Keys.Tokenizer.MERGES: merges,
        Keys.Tokenizer.EOS_ID: QWEN_EOS,
        Keys.Tokenizer.PAD_ID: QWEN_PAD,
        Keys.Tokenizer.BOS_ID: QWEN_BOS,
        Keys.Tokenizer.ADD_BOS: False,
        Keys.Tokenizer.CHAT_TEMPLATE: chat_template(template),
    }
