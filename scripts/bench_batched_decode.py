"""Aggregate decode speed of N sequences through one llama.cpp context, without the server: the
engine's Batcher (one llama_decode per step over the next token of every sequence) and one sampler
per sequence, as `moecli serve`'s scheduler uses them. Tells llama.cpp's own batched speed apart
from what the server's request path costs (compare with scripts/compare_llama_server.py's decode_4).

    python scripts/bench_batched_decode.py MODEL.gguf [-n 4] [-t 2] [--steps 64] [--greedy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("-n", "--sequences", type=int, default=4)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="temperature 0 (the comparison's requests)")
    args = parser.parse_args()

    from moecli.engine import Engine, Sampling
    from moecli.engine.batch import Batcher, Part, Sampler
    from moecli.params import LlamaParams

    n = args.sequences
    engine = Engine(args.model, LlamaParams(n_ctx=2048 * n, n_threads=args.threads, n_gpu_layers=0), n_seq_max=n)
    batcher = Batcher(engine)
    prompt = engine.tokenize("Tell me about the sea and the sky.")
    sampling = Sampling(temp=0.0) if args.greedy else Sampling()
    samplers = [Sampler(engine, sampling, prompt) for _ in range(n)]
    for s in range(n):
        batcher.decode([Part(s, 0, prompt, logits=True)])
    tokens = [samplers[s].sample(engine._ctx, -1) for s in range(n)]
    sampled = 0.0
    start = time.perf_counter()
    for i in range(args.steps):
        parts = [Part(s, len(prompt) + i, [tokens[s]], logits=True) for s in range(n)]
        batcher.decode(parts)
        t = time.perf_counter()
        tokens = [samplers[s].sample(engine._ctx, parts[s].index) for s in range(n)]
        for s in range(n):
            samplers[s].piece(tokens[s])
        sampled += time.perf_counter() - t
    seconds = time.perf_counter() - start
    print(f"{n} sequences, -t {args.threads}: {args.steps * n / seconds:.1f} tok/s aggregate, "
          f"{seconds / args.steps * 1e3:.1f} ms a step ({sampled / args.steps * 1e3:.2f} ms of it sampling)")
    for sampler in samplers:
        sampler.close()
    batcher.close()
    engine.close()


if __name__ == "__main__":
    main()
