"""Model recipes: the presets as whole models (architecture, metadata, tensor types), and the demo.

- `build_recipe`: "qwen3.6-35b-a3b" (Qwen3.6-35B-A3B's exact shapes as `qwen35moe`), "demo" (the
  tiny qwen35moe chat model) and "qwen3-tiny" (a tiny dense `qwen3`), with the Qwen tokenizer and
  llama-quantize's type mix (Q4_K_M, ...); `ModelRecipe.write` writes one through synth/writer.py.
- The demo's readable vocabulary: an output bias toward common English words, so its random
  weights answer in words and stop by themselves.
- `ensure_demo_model`: the versioned demo file behind the model name `demo`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import Keys

from moecli.errors import BadInput
from moecli.synth.archs import Qwen3Config, Qwen35MoeConfig, qwen3_metadata, qwen3_shapes, qwen35moe_metadata, qwen35moe_shapes
from moecli.synth.fill import seed_for
from moecli.synth.quantmix import FTYPE, apply_quant
from moecli.synth.quants import f16_bytes, random_blocks
from moecli.synth.tensor import TensorSpec
from moecli.synth.vocab import QWEN3_VOCAB, QWEN_EOS, qwen_bpe, qwen_tokenizer_metadata
from moecli.synth.writer import write_gguf, write_split_gguf


@dataclass(frozen=True)
class ModelRecipe:
    """Everything needed to write a model: architecture, metadata, tensors (in file order) and
    the given contents of some tensors (the rest is filled at write time)."""

    arch: str
    metadata: Mapping[str, Any] = field(repr=False)
    tensors: tuple[TensorSpec, ...]
    data: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        """Bytes of tensor data (the file adds its header and alignment padding)."""
        return sum(t.nbytes for t in self.tensors)

    def write(self, path: str | os.PathLike[str], *, fill: str = "random", seed: int = 0, splits: int = 1,
              progress: Callable[[int, int], None] | None = None) -> list[Path]:
        """Write the model as one file (splits=1) or as gguf-split shards named from `path`."""
        if splits == 1:
            return [write_gguf(path, self.arch, self.metadata, self.tensors, fill=fill, seed=seed,
                               progress=progress, data=self.data)]
        return write_split_gguf(path, self.arch, self.metadata, self.tensors, splits, fill=fill, seed=seed,
                                progress=progress, data=self.data)


# The first words of the usual "most common English words" lists: the demo model's output head
# favours them, so its random text reads as words.
_COMMON_WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from or "
    "had by word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water "
    "than call first who may down side been now find any new work part take get place made live where "
    "after back little only round man year came show every good me give our under name very through just "
    "form sentence great think say help low line turn cause much mean before move right boy old too same "
    "tell does set three want air well also play small end put home read hand port large spell add even "
    "land here must big high such follow act why ask men change went light kind off need house picture "
    "try us again animal point mother world near build self earth father head stand own page should "
    "country found answer school grow study still learn plant cover food sun four between state keep eye "
    "never last let thought city tree cross farm hard start might story saw far sea draw left late run "
    "while press close night real life few north open seem together next white children begin got walk "
    "example ease paper group always music those both mark often letter until mile river car feet care "
    "second book carry took science eat room friend began idea fish mountain stop once base hear horse "
    "cut sure watch color face wood main enough plain girl usual young ready above ever red list though "
    "feel talk bird soon body dog family direct pose leave song measure door product black short numeral "
    "class wind question happen complete ship area half rock order fire south problem piece told knew "
    "pass since top whole king space heard best hour better true during hundred five remember step early "
    "hold west ground interest reach fast verb sing listen six table travel less morning ten simple"
).split()


def _q4_0_rows_with_head(head: np.ndarray, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Raw Q4_0 blocks of a (len(head), n_cols) matrix whose elements 0 and 1 are head[:, 0:2]
    (each 0 or +-max of its row, so Q4_0 holds them exactly; elements 2-31 are 0); the other
    blocks are random weights."""
    n_rows = len(head)
    blocks = random_blocks("Q4_0", n_rows * (n_cols // 32), rng).reshape(n_rows, n_cols // 32, 18)
    d = np.abs(head).max(axis=1) / 7.0  # w = d * (q - 8): +-max is q = 15 or 1
    safe = np.where(d > 0, d, 1.0)
    q = (8 + np.rint(head / safe[:, None])).astype(np.uint8)
    first = blocks[:, 0, :]
    first[:, 0:2] = f16_bytes(d.astype(np.float16))
    first[:, 2:] = 0x88  # every nibble 8: weight 0
    first[:, 2] = 0x80 | q[:, 0]  # qs[j]: element j in the low nibble, j + 16 in the high one
    first[:, 3] = 0x80 | q[:, 1]
    return blocks


def _readable_vocab_tensors(n_embd: int, n_vocab: int, n_layer: int, seed: int) -> dict[str, np.ndarray]:
    """A cheap trick (no training) so the demo's random text reads as words and ends by itself.

    Every token embedding has the constant 0.5 on dimension 0; it survives to the final norm,
    where the output head's column 0 turns it into a bias toward common English words,
    punctuation and, a little, <|im_end|>. The other dimensions stay random, so the choice among
    those words depends on the context. The newline that ends the generation prompt
    ("<|im_start|>assistant\n") carries -0.5 on dimension 1, which <|im_end|> reads negatively:
    replies are not empty. The layers' input norms have a zero gain on dimensions 0 and 1, so the
    layers never see these constants (otherwise every token would pick the same experts).
    """
    rng = np.random.default_rng(seed_for(seed, "readable-vocab"))
    tokens, _ = qwen_bpe()
    index = {t: i for i, t in enumerate(tokens)}
    out_head = np.zeros((n_vocab, 2), dtype=np.float32)
    for rank, word in enumerate(_COMMON_WORDS):
        token = index.get("Ġ" + word)
        if token is not None:
            out_head[token, 0] = 0.30 - 0.012 * np.log1p(rank)
    out_head[index[","], 0] = out_head[index["."], 0] = 0.27
    out_head[QWEN_EOS] = 0.28  # replies of ~10-100 tokens end on their own (tried 0.25-0.29)
    embd_head = np.zeros((n_vocab, 2), dtype=np.float32)
    embd_head[:, 0] = 0.5
    embd_head[index["Ċ"], 1] = -0.5  # "\n"
    data = {
        "token_embd.weight": _q4_0_rows_with_head(embd_head, n_embd, rng),
        "output.weight": _q4_0_rows_with_head(out_head, n_embd, rng),
    }
    gain = np.ones(n_embd, dtype=np.float32)
    gain[:2] = 0.0
    for il in range(n_layer):
        data[f"blk.{il}.attn_norm.weight"] = gain
        data[f"blk.{il}.post_attention_norm.weight"] = gain
    return data


PRESETS = ("qwen3.6-35b-a3b", "demo", "qwen3-tiny")

_DEMO_CONFIG = Qwen35MoeConfig(
    n_layer=4, n_embd=256, n_vocab=QWEN3_VOCAB, n_ctx_train=32_768, n_head=4, n_head_kv=2, head_dim=64,
    n_expert=16, n_expert_used=4, n_ff_exp=256, n_ff_shexp=256, ssm_n_group=2, ssm_dt_rank=4, ssm_d_state=64,
    rope_sections=(3, 3, 2, 0),  # head_dim 64 x 0.25 = 16 rotary dims: sections sum to 8 pairs
)


def _config(base: Any, overrides: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise BadInput(f"unknown hyperparameter(s) {', '.join(unknown)} for this preset",
                       f"use some of: {', '.join(sorted(names))}")
    for key, value in overrides.items():
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise BadInput(f"{key} must be positive, got {value}", "give a positive number")
    return replace(base, **overrides)


def build_recipe(preset: str, quant: str | None = None, *, tokenizer: bool = True, seed: int = 0,
                 **overrides: Any) -> ModelRecipe:
    """A model of a preset: "qwen3.6-35b-a3b" (Qwen3.6-35B-A3B's exact shapes, Q4_K_M by default),
    "demo" (the tiny qwen35moe chat model) or "qwen3-tiny" (a tiny dense qwen3). Hyperparameters
    of the preset's config class can be overridden (n_layer=4, n_expert=16, ...)."""
    if preset not in PRESETS:
        raise BadInput(f"unknown preset {preset!r}", f"use one of: {', '.join(PRESETS)}")
    if preset == "qwen3-tiny":
        c3 = _config(Qwen3Config(), overrides)
        arch, shapes, md = "qwen3", qwen3_shapes(c3), qwen3_metadata(c3)
        n_expert, n_layer_all, n_vocab, n_embd = 0, c3.n_layer, c3.n_vocab, c3.n_embd
        name, template, pre, default_quant = "moecli tiny dense qwen3", "qwen3", "qwen2", "Q4_K_M"
    else:
        base = Qwen35MoeConfig() if preset == "qwen3.6-35b-a3b" else _DEMO_CONFIG
        c = _config(base, overrides)
        if c.n_expert_used > c.n_expert:
            raise BadInput(f"{c.n_expert_used} experts used of {c.n_expert}", "n_expert_used must be <= n_expert")
        arch, shapes, md = "qwen35moe", qwen35moe_shapes(c), qwen35moe_metadata(c)
        n_expert, n_layer_all, n_vocab, n_embd = c.n_expert, c.n_layer + c.n_mtp, c.n_vocab, c.n_embd
        if preset == "demo":
            name, template, pre = "moecli demo (tiny random qwen35moe)", "qwen3", "qwen2"
        else:
            name, template, pre = "Qwen3.6-35B-A3B (synthetic, random weights)", "qwen3.5", "qwen35"
        default_quant = "Q4_K_M"
    quant = quant or default_quant
    specs = apply_quant(shapes, quant, n_expert=n_expert, n_layer_all=n_layer_all)
    data: dict[str, np.ndarray] = {}
    if preset == "demo" and n_embd % 32 == 0 and n_vocab <= QWEN3_VOCAB and tokenizer:
        data = _readable_vocab_tensors(n_embd, n_vocab, n_layer_all, seed)
        vocab_tensors = ("token_embd.weight", "output.weight")
        specs = [TensorSpec(s.name, s.shape, "Q4_0") if s.name in vocab_tensors else s for s in specs]
    metadata: dict[str, Any] = {
        Keys.General.TYPE: "model",
        Keys.General.NAME: name,
        Keys.General.FILE_TYPE: FTYPE[quant],
    }
    if quant not in ("F16", "BF16"):
        metadata[Keys.General.QUANTIZATION_VERSION] = 2  # GGML_QNT_VERSION
    metadata.update(md)
    if tokenizer:
        metadata.update(qwen_tokenizer_metadata(n_vocab, pre=pre, template=template))
    return ModelRecipe(arch, metadata, tuple(specs), data)


# ---------------------------------------------------------------------------------------------
# the demo model

DEMO_VERSION = 1  # bump when the demo recipe changes: the file name carries it, so a new one is built
DEMO_FILENAME = f"moecli-demo-v{DEMO_VERSION}.gguf"
_DEMO_PATTERN = re.compile(r"moecli-demo-v(\d+)\.gguf")


def demo_recipe() -> ModelRecipe:
    recipe = build_recipe("demo")
    metadata = dict(recipe.metadata)
    metadata[Keys.General.VERSION] = f"moecli-demo-v{DEMO_VERSION}"
    return replace(recipe, metadata=metadata)


def ensure_demo_model(directory: Path | None = None) -> Path:
    """The demo model's path, building it (deterministically, offline, in about a second) if it is
    not there yet. Older versions of it in the directory are removed."""
    from moecli import paths
    from moecli.errors import StoreError

    directory = Path(directory) if directory is not None else paths.models_dir()
    path = directory / DEMO_FILENAME
    if path.is_file():
        return path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        demo_recipe().write(path, fill="random", seed=0)
        for old in directory.iterdir():
            m = _DEMO_PATTERN.fullmatch(old.name)
            if m and int(m.group(1)) != DEMO_VERSION:
                old.unlink(missing_ok=True)
    except PermissionError as e:
        raise StoreError(f"cannot write the demo model in {directory}: {e.strerror}",
                         "set MOECLI_HOME to a writable directory") from None
    return path
