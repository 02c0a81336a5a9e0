#!/usr/bin/env python3
"""Write a synthetic GGUF model with real shapes (moecli.synth) and say how big and how fast.

    python scripts/make_model.py --preset qwen3.6-35b-a3b --quant Q4_K_M --fill random OUT.gguf
    python scripts/make_model.py --preset qwen3.6-35b-a3b --fill sparse --split 3 OUT.gguf
    python scripts/make_model.py --preset demo OUT.gguf
    python scripts/make_model.py --preset qwen3.6-35b-a3b --layers 4 --set n_embd=256 --set n_expert=16 OUT.gguf
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from moecli.errors import MoecliError
from moecli.synth import FILLS, PRESETS, QUANTS, build_recipe, demo_recipe
from moecli.units import fmt_bytes


def _value(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output .gguf (with --split: the shard name prefix)")
    ap.add_argument("--preset", choices=PRESETS, default="qwen3.6-35b-a3b")
    ap.add_argument("--quant", choices=QUANTS, default=None, help="quantization mix (default: the preset's)")
    ap.add_argument("--fill", choices=FILLS, default="random")
    ap.add_argument("--split", type=int, default=1, metavar="N", help="write N gguf-split shards")
    ap.add_argument("--layers", type=int, default=None, metavar="N", help="number of layers (n_layer)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a hyperparameter of the preset, e.g. n_expert=16 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tokenizer", action="store_true", help="leave the tokenizer keys out")
    args = ap.parse_args(argv)

    overrides: dict[str, int | float] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected NAME=VALUE")
        try:
            overrides[name.strip()] = _value(value)
        except ValueError:
            ap.error(f"--set {item!r}: {value!r} is not a number")
    if args.layers is not None:
        overrides["n_layer"] = args.layers

    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 2 or done == total:
            last[0] = now
            rate = done / max(now - started, 1e-9) / 1e6
            print(f"\r{fmt_bytes(done)} / {fmt_bytes(total)}  {rate:,.0f} MB/s", end="", file=sys.stderr, flush=True)

    try:
        if args.preset == "demo" and not overrides and args.quant is None and not args.no_tokenizer:
            recipe = demo_recipe()
        else:
            recipe = build_recipe(args.preset, args.quant, tokenizer=not args.no_tokenizer, seed=args.seed,
                                  **overrides)
        paths = recipe.write(args.out, fill=args.fill, seed=args.seed, splits=args.split, progress=progress)
    except MoecliError as e:
        print(f"\nerror: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    size = sum(p.stat().st_size for p in paths)
    for p in paths:
        print(f"{p}  {fmt_bytes(p.stat().st_size)}")
    print(f"{len(recipe.tensors)} tensors, {recipe.n_params / 1e9:.3f} B params, {size:,} bytes ({fmt_bytes(size)}) "
          f"in {elapsed:.2f} s ({recipe.n_bytes / max(elapsed, 1e-9) / 1e6:,.0f} MB/s of tensor data, fill={args.fill})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
