"""Several sequences through one llama.cpp context: one `llama_decode` per step over the next
token of every generating sequence and the prompt chunks of new ones (llama-server's continuous
batching, server-context.cpp update_slots). The context is made with n_seq_max sequences
(Engine(..., n_seq_max=N)); every llama.cpp call here must come from one thread."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp.llama_cpp as _llama

from moecli.engine import state
from moecli.engine.core import Engine, Utf8Stream
from moecli.engine.logs import _error_detail
from moecli.engine.rpc import watch as _rpc_watch
from moecli.engine.sampling import Sampling, _sampler_chain
from moecli.errors import EngineError


@dataclass
class Part:
    """Tokens of one sequence in a batch, at positions pos.., and whether the last one needs logits."""

    seq_id: int
    pos: int
    tokens: Sequence[int]
    logits: bool = False
    index: int = -1  # after decode(): the batch index of the last token (for sampling)


class DecodeFailed(EngineError):
    def __init__(self, rc: int, detail: str) -> None:
        super().__init__(f"llama.cpp failed to evaluate tokens (llama_decode returned {rc}): {detail}",
                         "the request was ended; the server goes on")
        self.rc = rc


class Batcher:
    """One llama_batch reused for every step, with room for n_batch tokens of n_seq_max sequences."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ctx = engine._ctx
        self.memory = engine._memory
        self.n_seq = engine.n_seq_max
        self.capacity = max(engine.n_batch, self.n_seq)
        self._batch = _llama.llama_batch_init(self.capacity, 0, self.n_seq)

    def close(self) -> None:
        if self._batch is not None:
            _llama.llama_batch_free(self._batch)
            self._batch = None

    def decode(self, parts: Sequence[Part]) -> None:
        """Evaluate all parts in one llama_decode (their total must fit `capacity`)."""
        b = self._batch
        n = 0
        for part in parts:
            last = len(part.tokens) - 1
            for i, token in enumerate(part.tokens):
                b.token[n] = token
                b.pos[n] = part.pos + i
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = part.seq_id
                b.logits[n] = part.logits and i == last
                n += 1
            part.index = n - 1 if part.logits else -1
        if n > self.capacity:
            raise ValueError("batch over capacity")
        b.n_tokens = n
        with _rpc_watch():
            rc = _llama.llama_decode(self.ctx, b)
        if rc != 0:
            sink = self.engine._sink
            raise DecodeFailed(rc, _error_detail(sink) if sink else "")

    def synchronize(self) -> None:
        _llama.llama_synchronize(self.ctx)

    # -- per sequence ---------------------------------------------------------------------------
    def cut(self, seq_id: int, from_pos: int) -> bool:
        """Remove positions from_pos.. of a sequence; False when its memory cannot be cut there
        (a recurrent state), and then nothing changed."""
        return bool(_llama.llama_memory_seq_rm(self.memory, seq_id, from_pos, -1))

    def clear(self, seq_id: int) -> None:
        _llama.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def save(self, seq_id: int, n_tokens: int) -> state.Checkpoint:
        with _rpc_watch():  # the state is read from the devices that hold it
            return state.save(self.ctx, seq_id, n_tokens)

    def restore(self, seq_id: int, checkpoint: state.Checkpoint) -> bool:
        with _rpc_watch():
            return state.restore(self.ctx, seq_id, checkpoint)


class Sampler:
    """A sequence's sampler chain (penalties see its prompt) and its text stream."""

    def __init__(self, engine: Engine, sampling: Sampling, prompt: Sequence[int], *, special: bool = False) -> None:
        self.engine = engine
        self.special = special  # control tokens written out (harmony's, Mistral's, DeepSeek's markers)
        self.chain = _sampler_chain(sampling, prompt, n_vocab=engine.n_vocab, n_ctx=engine.n_ctx,
                                    eog_tokens=lambda: engine.eog_tokens, vocab=engine._vocab)
        self.text = Utf8Stream()

    def sample(self, ctx: int, index: int) -> int:
        with _rpc_watch():  # the logits wait for the decode, which llama_decode only started
            return _llama.llama_sampler_sample(self.chain, ctx, index)  # also accepts the token

    def is_eog(self, token: int) -> bool:
        return bool(_llama.llama_vocab_is_eog(self.engine._vocab, token))

    def piece(self, token: int) -> str:
        return self.text.push(self.engine.token_piece(token, special=self.special))

    def close(self) -> str:
        if self.chain is not None:
            _llama.llama_sampler_free(self.chain)
            self.chain = None
        return self.text.flush()


def prompt_tokens(engine: Engine, text: str, *, parse_special: bool = True) -> list[int]:
    """A prompt's tokens as chat() and complete() evaluate them (BOS added once)."""
    return engine._prompt_tokens(text, parse_special)
