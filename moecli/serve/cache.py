"""The prompt cache: each slot keeps the tokens its sequence holds and state checkpoints, and a new
prompt reuses the longest common prefix (llama-server's cache_prompt with context checkpoints).

A KV cache is cut back to the common prefix. A recurrent or hybrid model's state cannot be cut
(llama_memory_seq_rm refuses): then the latest checkpoint at or before the prefix is restored and
the KV cut there; without one the sequence starts over. Checkpoints are bounded per slot (count)
and over all slots (bytes): the oldest go first."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from moecli.engine.batch import Batcher
from moecli.engine.state import Checkpoint


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


@dataclass
class SlotCache:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the sequence holds, positions 0..n-1
    checkpoints: list[Checkpoint] = field(default_factory=list)  # ascending n_tokens
    last_used: float = 0.0

    def similarity(self, prompt: Sequence[int]) -> int:
        return common_prefix(self.tokens, prompt)


class PromptCache:
    """The slots' caches and the checkpoint budget they share."""

    def __init__(self, n_slots: int, *, recurrent: bool, max_checkpoints: int = 32,
                 max_bytes: int = 8192 * 2**20) -> None:
        self.slots = [SlotCache(i) for i in range(n_slots)]
        self.recurrent = recurrent
        self.max_checkpoints = max_checkpoints
        self.max_bytes = max_bytes
        self.n_restored = 0  # prompts resumed from a checkpoint

    @property
    def checkpoint_bytes(self) -> int:
        return sum(c.size for s in self.slots for c in s.checkpoints)

    def choose(self, free: Sequence[SlotCache], prompt: Sequence[int], threshold: float = 0.1) -> SlotCache:
        """The free slot whose cache shares the longest prefix with the prompt, if it covers more
        than `threshold` of it (llama-server's --slot-prompt-similarity); else the one unused longest."""
        best = max(free, key=lambda s: (s.similarity(prompt), -s.last_used))
        if prompt and best.similarity(prompt) > threshold * len(prompt):
            return best
        return min(free, key=lambda s: s.last_used)

    def prepare(self, batcher: Batcher, slot: SlotCache, prompt: Sequence[int]) -> int:
        """Make the slot's sequence hold a prefix of `prompt` (at least one token is left to
        evaluate, for logits); returns how many tokens were reused (cache_n)."""
        slot.last_used = time.monotonic()
        n = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
        if n == len(slot.tokens):
            return n
        if n > 0 and batcher.cut(slot.seq_id, n):
            self._keep(slot, n)
            return n
        for checkpoint in reversed(slot.checkpoints):
            if 0 < checkpoint.n_tokens <= n:
                if batcher.restore(slot.seq_id, checkpoint) and batcher.cut(slot.seq_id, checkpoint.n_tokens):
                    self._keep(slot, checkpoint.n_tokens)
                    self.n_restored += 1
                    return checkpoint.n_tokens
                break
        self.forget(batcher, slot)
        return 0

    def forget(self, batcher: Batcher, slot: SlotCache) -> None:
        batcher.clear(slot.seq_id)
        slot.tokens.clear()
        slot.checkpoints.clear()

    def _keep(self, slot: SlotCache, n: int) -> None:
        del slot.tokens[n:]
        slot.checkpoints = [c for c in slot.checkpoints if c.n_tokens <= n]

    def checkpoint(self, batcher: Batcher, slot: SlotCache) -> None:
        """Save the sequence's state now (recurrent models only), within the bounds."""
        if not self.recurrent or not slot.tokens:
            return
        n = len(slot.tokens)
        slot.checkpoints = [c for c in slot.checkpoints if c.n_tokens != n]
        slot.checkpoints.append(batcher.save(slot.seq_id, n))
        while len(slot.checkpoints) > self.max_checkpoints:
            slot.checkpoints.pop(0)
        while self.checkpoint_bytes > self.max_bytes:
            oldest = min((s for s in self.slots if s.checkpoints), key=lambda s: s.last_used)
            oldest.checkpoints.pop(0)
