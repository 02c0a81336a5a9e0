"""How tokens are drawn: `Sampling` (llama.cpp's flags and defaults, a GGUF's recommendations) and
the llama.cpp sampler chain it makes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import llama_cpp.llama_cpp as _llama

from moecli.errors import BadInput

_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed

# general.sampling.* keys llama.cpp reads from a GGUF (common/common.cpp), and our field for each
_SAMPLING_KEYS = {
    "general.sampling.temp": ("temp", float),
    "general.sampling.top_k": ("top_k", int),
    "general.sampling.top_p": ("top_p", float),
    "general.sampling.min_p": ("min_p", float),
    "general.sampling.penalty_last_n": ("repeat_last_n", int),
    "general.sampling.penalty_repeat": ("repeat_penalty", float),
}


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn; names and defaults are llama.cpp's (common/common.h,
    common_params_sampling, and the -n/--temp/--top-k/... flags). The chain is llama.cpp's default
    order: penalties, top-k, top-p, min-p, temperature, then a draw (common/sampling.cpp); a
    temperature <= 0 always takes the most likely token."""

    temp: float = 0.8
    top_k: int = 40  # <= 0: the whole vocabulary
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # 0: off, -1: the whole context
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = _DEFAULT_SEED  # LLAMA_DEFAULT_SEED: a different draw each time
    n_predict: int = -1  # -1: until an end-of-generation token or a full context
    logit_bias: tuple[tuple[int, float], ...] = ()  # --logit-bias TOKEN_ID(+/-)BIAS; -inf bans a token
    ignore_eos: bool = False  # --ignore-eos: ban every end-of-generation token
    grammar: str | None = None  # a GBNF grammar (root rule `root`) the output must match (--grammar, json_schema)

    def __post_init__(self) -> None:
        if self.n_predict < -1:
            raise BadInput(f"-n {self.n_predict} is not a token count", "-1 means no limit")
        if self.repeat_last_n < -1:
            raise BadInput(f"--repeat-last-n {self.repeat_last_n} is not valid", "0 = off, -1 = whole context")
        if not 0.0 <= self.top_p <= 1.0 or not 0.0 <= self.min_p <= 1.0:
            raise BadInput("--top-p and --min-p are probabilities", "give values between 0 and 1")
        if self.repeat_penalty <= 0:
            raise BadInput(f"--repeat-penalty {self.repeat_penalty} must be positive", "1.0 turns it off")

    def with_(self, **changes) -> Sampling:
        return replace(self, **changes)

    @classmethod
    def from_model(cls, metadata: Mapping[str, object], **overrides) -> Sampling:
        """llama.cpp's defaults, replaced by the GGUF's `general.sampling.*` recommendations where it
        has them (as common_init_from_params does), then by `overrides` (what the user typed)."""
        values: dict[str, object] = {}
        for key, (name, kind) in _SAMPLING_KEYS.items():
            if key in metadata:
                try:
                    values[name] = kind(float(metadata[key])) if kind is int else kind(metadata[key])
                except (TypeError, ValueError):
                    pass  # a malformed recommendation is no reason to refuse the model
        values.update(overrides)
        return cls(**values)


def _sampler_chain(s: Sampling, prompt: Sequence[int], *, n_vocab: int, n_ctx: int,
                   eog_tokens: Callable[[], Sequence[int]], vocab=None) -> int:
    """A new llama_sampler chain for `s` (the caller frees it with llama_sampler_free), with the
    prompt accepted where penalties look back. eog_tokens() is called only for ignore_eos. A
    grammar (which needs the vocabulary) comes first: the other samplers see only the tokens it
    allows, and it sees only the tokens drawn (never the prompt)."""
    chain = _llama.llama_sampler_chain_init(_llama.llama_sampler_chain_default_params())
    add = lambda smpl: _llama.llama_sampler_chain_add(chain, smpl)  # noqa: E731
    if s.grammar is not None:
        grammar = _llama.llama_sampler_init_grammar(vocab, s.grammar.encode("utf-8"), b"root")
        if not grammar:
            _llama.llama_sampler_free(chain)
            raise BadInput("llama.cpp could not parse the grammar", "check it with llama.cpp's gbnf-validator")
        add(grammar)
    bias = list(s.logit_bias)
    if s.ignore_eos:  # as common/common.cpp does for --ignore-eos
        bias += [(token, float("-inf")) for token in eog_tokens()]
    if bias:
        array = (_llama.llama_logit_bias * len(bias))(*bias)  # llama.cpp copies it
        add(_llama.llama_sampler_init_logit_bias(n_vocab, len(bias), array))
    last_n = n_ctx if s.repeat_last_n == -1 else s.repeat_last_n
    penalties = last_n > 0 and (s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0)
    if penalties:
        smpl = _llama.llama_sampler_init_penalties(n_vocab, last_n, s.repeat_penalty,
                                                   s.frequency_penalty, s.presence_penalty)
        # llama-server accepts the prompt into the sampler, so the penalties see it
        for token in prompt[-last_n:]:
            _llama.llama_sampler_accept(smpl, token)
        add(smpl)
    if s.temp > 0:
        add(_llama.llama_sampler_init_top_k(s.top_k))
        add(_llama.llama_sampler_init_top_p(s.top_p, 0))
        add(_llama.llama_sampler_init_min_p(s.min_p, 0))
        add(_llama.llama_sampler_init_temp_ext(s.temp, 0.0, 1.0))
        add(_llama.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
    else:
        add(_llama.llama_sampler_init_greedy())
    return chain
