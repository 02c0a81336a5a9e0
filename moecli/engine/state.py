"""State checkpoints of one sequence: the part of llama.cpp's memory that cannot be cut back.

A KV cache can be cut at any position (llama_memory_seq_rm); a recurrent state (Gated DeltaNet,
Mamba) holds only the state after its last token, so a prompt that diverges inside what was
evaluated must start over, unless a copy of the state at an earlier position was kept. These are
llama-server's context checkpoints (server-context.cpp, create_checkpoint): the sequence's state
with LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY, which for a hybrid model is the recurrent part only (its
attention KV stays in the cache and is cut with seq_rm after a restore)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp.llama_cpp as _llama

from moecli.errors import EngineError

PARTIAL_ONLY = _llama.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY


@dataclass(frozen=True)
class Checkpoint:
    """The state of a sequence after its first n_tokens tokens."""

    n_tokens: int
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def save(ctx: int, seq_id: int, n_tokens: int) -> Checkpoint:
    """The sequence's non-removable state now (it holds n_tokens tokens)."""
    size = _llama.llama_state_seq_get_size_ext(ctx, seq_id, PARTIAL_ONLY)
    buf = (ctypes.c_uint8 * max(size, 1))()
    written = _llama.llama_state_seq_get_data_ext(ctx, buf, size, seq_id, PARTIAL_ONLY)
    if written != size:
        raise EngineError(f"llama.cpp wrote {written} of {size} bytes of a state checkpoint", "")
    return Checkpoint(n_tokens, bytes(buf)[:size])


def restore(ctx: int, seq_id: int, checkpoint: Checkpoint) -> bool:
    """Put the checkpoint's state back into the sequence; False when llama.cpp refused it."""
    data = checkpoint.data
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data) if data else (ctypes.c_uint8 * 1)()
    return _llama.llama_state_seq_set_data_ext(ctx, buf, len(data), seq_id, PARTIAL_ONLY) == len(data) > 0
