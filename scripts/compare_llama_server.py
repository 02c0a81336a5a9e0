#!/usr/bin/env python3
"""`moecli serve` against llama.cpp's own `llama-server`: same GGUF, same flags and threads, same
requests, one server after the other (never both at once), through the official openai client.

    scripts/build_llama_tool.sh llama-server           # once: llama-server from the pinned sdist
    python scripts/compare_llama_server.py [--llama-server BIN] [--model FILE] [-t 2] [-np 4] [-c 8192]
        [--json OUT.json]

Without --model it writes (once) a synthetic qwen35moe GGUF with Qwen3.6-35B-A3B's layer shapes,
4 layers of 32 experts and the Qwen3 vocabulary (the Qwen3.5 chat template): a token takes
milliseconds on a CPU. The servers run alternately (--passes), and each figure is the median over
all passes and rounds. Measured on each server:

  decode_1      single-stream decode tok/s (the server's own timings.predicted_per_second)
  decode_4      aggregate tok/s of 4 concurrent streams on 4 slots (client wall clock)
  ttft_ms       time to the first streamed token of a ~1,000-token prompt (client wall clock, median)
  cache_n       per turn of a 3-turn chat (timings.cache_n) and prompt_n (what was evaluated)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_model(path: Path) -> Path:
    if path.exists():
        return path
    cmd = [sys.executable, str(HERE / "make_model.py"), "--preset", "qwen3.6-35b-a3b", "--layers", "4",
           "--set", "n_expert=32", "--set", "n_vocab=151936", "--quant", "Q4_K_M", "--fill", "random", str(path)]
    print("+", shlex.join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    print("+", shlex.join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready")


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = "the cat sat on a mat and the dog ran to the city where people work in small houses".split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def measure(base: str, rounds: int) -> dict:
    import openai

    c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    fixed = {"temperature": 0, "extra_body": {"ignore_eos": True}}
    c.chat.completions.create(model="m", messages=[{"role": "user", "content": "warm up"}], max_tokens=8, **fixed)

    decode_1 = []
    for i in range(rounds):
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"Story {i}: " + words(20, i)}],
                                      max_tokens=128, **fixed)
        decode_1.append(r.model_extra["timings"]["predicted_per_second"])

    decode_4 = []
    for i in range(rounds):
        done = []

        def one(k: int, i=i, done=done) -> None:
            r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"Client {k} round {i}: "
                                                                + words(20, 100 + 10 * i + k)}],
                                          max_tokens=96, **fixed)
            done.append(r.usage.completion_tokens)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        decode_4.append(sum(done) / (time.perf_counter() - t0))

    ttft, ttft_prompt = [], 0
    for i in range(rounds):
        t0 = time.perf_counter()
        first = None
        for ch in c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"{i} " + words(900, 1000 + i)}],
                                            max_tokens=4, stream=True, stream_options={"include_usage": True}, **fixed):
            if first is None and ch.choices and (ch.choices[0].delta.content or
                                                 (ch.choices[0].delta.model_extra or {}).get("reasoning_content")):
                first = time.perf_counter()
            if ch.usage:
                ttft_prompt = ch.usage.prompt_tokens
        ttft.append((first - t0) * 1e3)

    messages = [{"role": "system", "content": "You are a helpful assistant. " + words(60, 7)}]
    turns = []
    for q in ("Hello, who are you?", "Tell me about cats and " + words(30, 8), "And about dogs?"):
        messages.append({"role": "user", "content": q})
        r = c.chat.completions.create(model="m", messages=messages, max_tokens=32, **fixed)
        t = r.model_extra["timings"]
        turns.append({"prompt_tokens": r.usage.prompt_tokens, "cache_n": t["cache_n"], "prompt_n": t["prompt_n"]})
        messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
    return {"decode_1": statistics.median(decode_1), "decode_1_samples": decode_1,
            "decode_4": statistics.median(decode_4), "decode_4_samples": decode_4,
            "ttft_ms": statistics.median(ttft), "ttft_samples": ttft, "ttft_prompt_tokens": ttft_prompt, "turns": turns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-server", default=str(ROOT / "build/llama-server/cmake/bin/llama-server"))
    ap.add_argument("--model", type=Path)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-np", "--parallel", type=int, default=4)
    ap.add_argument("-c", "--ctx", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2, help="repetitions of each measurement per pass")
    ap.add_argument("--passes", type=int, default=2, help="passes over both servers, alternating (noise hits both)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = args.model or make_model(ROOT / "build/serve-compare.gguf")
    flags = ["-c", str(args.ctx), "-np", str(args.parallel), "-t", str(args.threads)]
    passes: dict[str, list[dict]] = {"llama-server": [], "moecli": []}
    for n in range(args.passes):
        for name in (("llama-server", "moecli") if n % 2 == 0 else ("moecli", "llama-server")):
            port = free_port()
            if name == "llama-server":
                cmd = [args.llama_server, "-m", str(model), *flags, "--host", "127.0.0.1", "--port", str(port),
                       "-ngl", "0", "--no-webui", "--jinja"]
            else:
                cmd = [sys.executable, "-m", "moecli", "serve", str(model), *flags, "--port", str(port), "--cpu-only"]
            proc = start(cmd, port, ROOT / f"build/compare-{name}-{n}.log")
            try:
                got = measure(f"http://127.0.0.1:{port}", args.rounds)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            passes[name].append(got)
            print(f"{name}: {json.dumps({k: v for k, v in got.items() if not k.endswith('samples')})}", file=sys.stderr)
    results = {}
    for name, runs in passes.items():
        merged = {key: statistics.median([x for r in runs for x in r[key + "_samples"]])
                  for key in ("decode_1", "decode_4", "ttft")}
        results[name] = {"decode_1": merged["decode_1"], "decode_4": merged["decode_4"], "ttft_ms": merged["ttft"],
                         "ttft_prompt_tokens": runs[0]["ttft_prompt_tokens"], "turns": runs[0]["turns"], "passes": runs}
    ls, mc = results["llama-server"], results["moecli"]
    print(f"{'':28}{'llama-server':>14}{'moecli':>10}{'ratio':>8}")
    for key, label in (("decode_1", "decode 1 stream, tok/s"), ("decode_4", "decode 4 streams, tok/s"),
                       ("ttft_ms", f"TTFT {mc['ttft_prompt_tokens']}-tok prompt, ms")):
        print(f"{label:28}{ls[key]:14.2f}{mc[key]:10.2f}{mc[key] / ls[key]:8.3f}")
    for i, (a, b) in enumerate(zip(ls["turns"], mc["turns"]), 1):
        print(f"turn {i} cache_n / prompt_n      {a['cache_n']:>6} / {a['prompt_n']:<6} {b['cache_n']:>6} / {b['prompt_n']:<6}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), "flags": flags, "results": results}, indent=1))


if __name__ == "__main__":
    main()
