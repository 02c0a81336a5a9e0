"""The model as the planner sees it: every tensor with the layer whose device it follows, whether it
is an input or a routed expert, whether llama.cpp loads it, and the shapes the memory rules need."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from moecli.facts import ModelFacts, Role, TensorInfo
from moecli.params import EXPS_REGEX
from moecli.planner.memory import CUDA_ALIGNMENT, _cuda_padding

_INPUT_TENSORS = ("token_embd", "pos_embd", "token_types", "per_layer_token_embd")  # LLM_TENSOR_LAYER_INPUT
_LAYER0_GLOBALS = ("rope_freqs", "rope_factors_long", "rope_factors_short", "token_embd_norm")  # REPEATING, no blk.N
_EXPERT_KIND = re.compile(EXPS_REGEX)


@dataclass(frozen=True)
class _Tensor:
    info: TensorInfo
    layer: int | None  # the layer whose device it follows; None for input / output tensors
    is_input: bool
    kind: str | None  # expert tensors: "up", "down", "gate", "gate_up"
    loaded: bool
    cuda_bytes: int  # what a CUDA buffer adds to its bytes: alignment and a padded last row


@dataclass(frozen=True)
class _Model:
    facts: ModelFacts
    tensors: tuple[_Tensor, ...]
    n_layer_all: int
    expert_layers: tuple[int, ...]
    kv_layers: tuple[tuple[int, int, int, int | None], ...]  # (layer, n_embd_k, n_embd_v, window)
    recurrent_per_layer: tuple[tuple[int, int], ...]  # (layer, bytes per sequence)
    floats_per_token: int  # widest layer's activations per token (see _compute)
    n_head: int
    tied_output: TensorInfo | None  # token_embd, duplicated as the output head by llama.cpp

    @property
    def is_moe(self) -> bool:
        return self.facts.is_moe and bool(self.expert_layers)

    @functools.cached_property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.info.name for t in self.tensors)


def _prepare(model: ModelFacts) -> _Model:
    blocks = max([model.n_layer, _meta_int(model, "block_count") or 0]
                 + [t.layer + 1 for t in model.tensors if t.layer is not None])
    tensors = []
    for t in model.tensors:
        base = t.name.rsplit(".", 1)[0] if t.name.endswith((".weight", ".bias")) else t.name
        is_input = t.layer is None and base in _INPUT_TENSORS
        layer = t.layer if t.layer is not None else (0 if base in _LAYER0_GLOBALS else None)
        kind = None
        if t.role is Role.EXPERT:
            match = _EXPERT_KIND.search(t.name)
            kind = match.group(1) if match else None
        # MTP/NextN blocks (blk.N, N >= n_layer): TENSOR_SKIP unless llama_model_params.load_mtp
        loaded = (t.layer is None or t.layer < model.n_layer) and t.role.value != "mtp"
        tensors.append(_Tensor(t, layer, is_input, kind, loaded, _cuda_padding(t) + CUDA_ALIGNMENT))
    expert_layers = tuple(sorted({t.layer for t in tensors if t.kind and t.loaded and t.layer is not None}))

    kv = tuple((k.layer, k.n_embd_k, k.n_embd_v, k.window) for k in model.kv_layers if k.layer < model.n_layer)
    recurrent_layers = sorted({t.layer for t in tensors if t.info.role is Role.RECURRENT and t.loaded
                               and t.layer is not None} - {k[0] for k in kv})
    if model.recurrent_state_bytes and not recurrent_layers:
        recurrent_layers = [i for i in range(model.n_layer) if i not in {k[0] for k in kv}] or [0]
    per = model.recurrent_state_bytes // len(recurrent_layers) if recurrent_layers else 0
    recurrent = [(layer, per) for layer in recurrent_layers]
    if recurrent:
        recurrent[-1] = (recurrent[-1][0], per + model.recurrent_state_bytes - per * len(recurrent_layers))

    tied = None
    names = {t.name for t in model.tensors}
    if "output.weight" not in names and "token_embd.weight" in names:
        tied = next(t for t in model.tensors if t.name == "token_embd.weight")

    n_head = _meta_int(model, "attention.head_count") or max(1, model.n_embd // 128)
    return _Model(model, tuple(tensors), blocks, expert_layers, kv, tuple(recurrent),
                  _floats_per_token(model, tensors), n_head, tied)


def _meta_int(model: ModelFacts, key: str) -> int | None:
    value = model.metadata.get(f"{model.arch}.{key}")
    if isinstance(value, (list, tuple)):
        value = max((v for v in value if isinstance(v, int)), default=None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _floats_per_token(model: ModelFacts, tensors: list[_Tensor]) -> int:
    """A bound on one layer's live activations per token, in floats: three rows of the residual
    stream, the output of every matrix of the layer (experts: top-k of them), once more the width
    of each up projection for the gated product silu(gate) * up, and 1024 floats for the graph's
    inputs (positions, masks, ids), which matter in small models.

    Against llama.cpp's no_alloc dry runs on the CPU (n_outputs_max = 1, so that the logits do not
    hide the layers; ub 512 and 2048, flash attention): Qwen3.6-35B-A3B peaks at 38,900 floats per
    token (this bound: 62,300), a dense qwen3 with n_embd 1024 / n_ff 4096 at 17,700 (18,900), the
    tiny qwen35moe demo at 6,200 (8,500), a tiny dense qwen3 at 4,100 (4,400)."""
    per_layer: dict[int, int] = {}
    used = model.n_expert_used or 1
    for t in tensors:
        if t.layer is None or not t.loaded or len(t.info.shape) < 2:
            continue
        width = t.info.shape[1] * (used if t.kind else 1)
        if "ffn_up" in t.info.name:
            width *= 2
        elif t.kind == "gate_up":
            width += width // 2
        per_layer[t.layer] = per_layer.get(t.layer, 0) + width
    return 1024 + 3 * model.n_embd + max(per_layer.values(), default=model.n_embd)
