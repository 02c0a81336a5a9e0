#!/usr/bin/env python3
"""`moecli serve` under load: rounds of 32 requests from 8 concurrent clients, every fourth one cut
off mid-stream; all others must complete with a valid response, /health must stay 200, and the
server's RSS must not grow after the first round.

    python scripts/serve_load.py [MODEL] [--rounds 4] [-np 2] [-- EXTRA SERVE FLAGS]

MODEL defaults to the demo model. Prints one line per round (completed, cut off, failed, RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(base: str) -> int:
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            return r.status
    except OSError:
        return 0


def cut_off(port: int, i: int) -> bool:
    body = json.dumps({"messages": [{"role": "user", "content": f"request {i}: tell a long story"}],
                       "max_tokens": 2000, "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"data: ") < 3 and time.monotonic() < deadline:
            got += s.recv(4096)
    return got.count(b"data: ") >= 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("-np", "--parallel", type=int, default=2)
    ap.add_argument("extra", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    import openai

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moecli", "serve", args.model, "--port", str(port), "-np", str(args.parallel),
           *[a for a in args.extra if a != "--"]]
    print("+", " ".join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while health(base) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
        rss = []
        for rnd in range(args.rounds):
            counts = {"completed": 0, "cut": 0, "failed": 0}
            lock = threading.Lock()
            bad_health = []

            def worker(k: int, rnd=rnd, counts=counts, lock=lock, bad_health=bad_health) -> None:
                for j in range(4):
                    i = rnd * 32 + k * 4 + j
                    try:
                        if j == 3:
                            kind = "cut" if cut_off(port, i) else "failed"
                        else:
                            r = client.chat.completions.create(
                                model="m", messages=[{"role": "user", "content": f"Client {k} request {i}"}],
                                max_tokens=24, stream=j == 1, **({"stream_options": {"include_usage": True}} if j == 1 else {}))
                            if j == 1:
                                chunks = list(r)
                                ok = chunks and chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
                            else:
                                ok = r.choices[0].message.content is not None and r.usage.completion_tokens > 0
                            kind = "completed" if ok else "failed"
                    except Exception:  # noqa: BLE001 - counted
                        kind = "failed"
                    if health(base) != 200:
                        bad_health.append(i)
                    with lock:
                        counts[kind] += 1

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            rss.append(psutil.Process(proc.pid).memory_info().rss)
            print(f"round {rnd + 1}: {counts['completed']} completed, {counts['cut']} cut off, {counts['failed']} failed; "
                  f"/health not 200 {len(bad_health)} times; server RSS {rss[-1] / 2**20:.1f} MiB", flush=True)
        growth = (rss[-1] - rss[0]) / 2**20
        print(f"RSS after round 1: {rss[0] / 2**20:.1f} MiB, after round {len(rss)}: {rss[-1] / 2**20:.1f} MiB "
              f"({growth:+.1f} MiB)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
