#!/usr/bin/env python3
"""moecli's overhead over llama.cpp: `moecli bench` against llama.cpp's own `llama-bench`, same file,
same threads, same placement, run alternately in one session so machine noise hits both.

    scripts/build_llama_tool.sh llama-bench /tmp/lbench # once: llama-bench from the pinned sdist
    python scripts/compare_llama_bench.py --llama-bench /tmp/lbench/cmake/bin/llama-bench \
        [--model FILE | --make-model] [--same-libs] [-t 2] [-n 128] [-r 5] [--rounds 3] [--json OUT.json] [-- EXTRA FLAGS]

Without --model it writes (once) a synthetic qwen35moe GGUF of 1.5 GiB with Qwen3.6-35B-A3B's layer
shapes (the project's own writer, random weights): a token takes tens of milliseconds on a CPU. EXTRA FLAGS (after
`--`) are llama.cpp placement flags given to both tools identically (e.g. `-ngl 99 --n-cpu-moe 4`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_model(path: Path) -> Path:
    if path.exists():
        return path
    # Qwen3.6-35B-A3B's layer shapes, 8 layers of 64 experts, the Qwen3 vocabulary: 1.5 GiB
    cmd = [sys.executable, str(HERE / "make_model.py"), "--preset", "qwen3.6-35b-a3b", "--layers", "8",
           "--set", "n_expert=64", "--set", "n_vocab=151936", "--quant", "Q4_K_M", "--fill", "random", str(path)]
    print("+", shlex.join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return path


def llama_cpp_python_libs() -> str:
    import llama_cpp

    return str(Path(llama_cpp.__file__).parent / "lib")


def llama_bench(binary: str, model: Path, threads: int, n_gen: int, n_prompt: int, reps: int, extra: list[str],
                same_libs: bool) -> dict:
    cmd = [binary, "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json", *extra]
    env = dict(os.environ)
    if same_libs:  # llama-bench's own code on the very libllama/libggml that moecli loads
        env["LD_LIBRARY_PATH"] = os.pathsep.join([llama_cpp_python_libs(), str(Path(binary).parent), env.get("LD_LIBRARY_PATH", "")])
    print("+", ("LD_LIBRARY_PATH=" + env["LD_LIBRARY_PATH"] + " ") if same_libs else "", shlex.join(cmd), file=sys.stderr)
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    return {("pp" if r["n_prompt"] else "tg"): r for r in rows}


def moecli_bench(model: Path, threads: int, n_gen: int, n_prompt: int, reps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "moecli", "bench", str(model), "-t", str(threads), "-p", str(n_prompt),
           "-n", str(n_gen), "-r", str(reps), "--json", *extra]
    print("+", shlex.join(cmd), file=sys.stderr)
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["results"]
    return {("pp" if r["n_prompt"] else "tg"): r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--make-model", action="store_true")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-p", "--n-prompt", type=int, default=0)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the two tools this many times")
    ap.add_argument("--same-libs", action="store_true",
                    help="run llama-bench on llama-cpp-python's libllama/libggml (isolates the wrapper's own cost "
                         "from compiler-flag differences between the two builds)")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument("extra", nargs="*", help="placement flags for both tools (after --)")
    args = ap.parse_args()

    model = args.model or Path("build/bench-cpu-q4km.gguf")
    if args.make_model or not args.model:
        make_model(model)
    runs: dict[str, list[dict]] = {"llama-bench": [], "moecli": []}
    for _ in range(args.rounds):
        runs["llama-bench"].append(llama_bench(args.llama_bench, model, args.threads, args.n_gen, args.n_prompt, args.reps, args.extra,
                                                  args.same_libs))
        runs["moecli"].append(moecli_bench(model, args.threads, args.n_gen, args.n_prompt, args.reps, args.extra))

    report = {"model": str(model), "model_size": model.stat().st_size, "threads": args.threads, "same_libs": args.same_libs,
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "tests": {}}
    for test in ("pp", "tg") if args.n_prompt else ("tg",):
        ref = [r[test]["avg_ts"] for r in runs["llama-bench"]]
        ours = [r[test]["avg_ts"] for r in runs["moecli"]]
        ratio = statistics.mean(ours) / statistics.mean(ref)
        report["tests"][test] = {"llama_bench_ts": ref, "moecli_ts": ours, "ratio_of_means": ratio}
        print(f"{test}: llama-bench {statistics.mean(ref):.2f} t/s (rounds {', '.join(f'{x:.2f}' for x in ref)}) | "
              f"moecli {statistics.mean(ours):.2f} t/s (rounds {', '.join(f'{x:.2f}' for x in ours)}) | ratio {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"report": report, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
