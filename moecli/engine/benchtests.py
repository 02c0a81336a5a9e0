"""llama-bench's tests (tools/llama-bench/llama-bench.cpp) on a llama_context, as llama-bench runs
them: test_prompt, test_gen, the warm-up before a test, and one timed repetition. Like llama-bench's
they read the model, vocabulary and n_batch from the context; the caller sets the threads and clears
the memory first (Engine.bench_warmup, bench_prompt, bench_gen)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import llama_cpp.llama_cpp as _llama

from moecli.errors import EngineError


def _test_prompt(ctx: int, n_prompt: int, rng: random.Random) -> None:
    """llama-bench's test_prompt: n_prompt random tokens (BOS first where the vocab adds one),
    n_batch per llama_decode, then llama_synchronize."""
    vocab = _llama.llama_model_get_vocab(_llama.llama_get_model(ctx))
    n_vocab, n_batch = _llama.llama_vocab_n_tokens(vocab), _llama.llama_n_batch(ctx)
    add_bos = _llama.llama_vocab_get_add_bos(vocab)
    bos = _llama.llama_vocab_bos(vocab)
    array = (_llama.llama_token * n_batch)()
    n_processed = 0
    while n_processed < n_prompt:
        n_tokens = min(n_prompt - n_processed, n_batch)
        array[0] = bos if n_processed == 0 and add_bos else rng.randrange(n_vocab)
        for i in range(1, n_tokens):
            array[i] = rng.randrange(n_vocab)
        rc = _llama.llama_decode(ctx, _llama.llama_batch_get_one(array, n_tokens))
        if rc != 0:
            raise EngineError(f"llama.cpp failed to decode a prompt batch (returned {rc})", "try a smaller -b/-ub")
        n_processed += n_tokens
    _llama.llama_synchronize(ctx)


def _test_gen(ctx: int, n_gen: int, rng: random.Random) -> None:
    """llama-bench's test_gen: n_gen single-token decodes, each followed by llama_synchronize,
    the next token drawn at random; no sampling, no logits read, no detokenization."""
    vocab = _llama.llama_model_get_vocab(_llama.llama_get_model(ctx))
    n_vocab = _llama.llama_vocab_n_tokens(vocab)
    decode, synchronize, randrange = _llama.llama_decode, _llama.llama_synchronize, rng.randrange
    one = (_llama.llama_token * 1)()
    batch = _llama.llama_batch_get_one(one, 1)
    add_bos = _llama.llama_vocab_get_add_bos(vocab)
    token = _llama.llama_vocab_bos(vocab) if add_bos else randrange(n_vocab)
    for _ in range(n_gen):
        one[0] = token
        if decode(ctx, batch) != 0:
            raise EngineError("llama.cpp failed to decode a generation token", "load with a larger -c")
        synchronize(ctx)
        token = randrange(n_vocab)


def _warmup(ctx: int, n_prompt: int, n_gen: int) -> None:
    """llama-bench's warm-up before a test: the whole prompt test once, then one generated token."""
    rng = random.Random(0)
    if n_prompt > 0:
        _test_prompt(ctx, n_prompt, rng)
    if n_gen > 0:
        _test_gen(ctx, 1, rng)


def _timed(test: Callable[[int, int, random.Random], None], ctx: int, n: int, depth: int, seed: int) -> float:
    """Seconds for one repetition as llama-bench runs it on a cleared memory: evaluate `depth`
    random tokens untimed, then time the test."""
    rng = random.Random(seed)
    if depth:
        _test_prompt(ctx, depth, rng)
    t0 = time.perf_counter_ns()
    test(ctx, n, rng)
    return (time.perf_counter_ns() - t0) / 1e9
