"""Does llama.cpp's own `llama-server -hf REPO:QUANT --offline` still find a quant that moecli pulled
before the repo got a new commit and another quant was pulled? (issue: a moved `refs/main` hid it.)

    python scripts/check_llama_server_offline.py PATH/TO/llama-server

Pulls quant A (the demo model) from a local Hub server (tests/hubserver.py), gives the repo a new
commit, pulls quant B, then starts llama-server offline on A and waits for it to answer /health
with 200. Prints what llama-server said about the model and the verdict. Needs a llama-server built
from the vendored source (scripts/build_llama_tool.sh llama-server).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    server_bin = sys.argv[1]
    root = Path(tempfile.mkdtemp(prefix="llcheck-"))
    os.environ.update(MOECLI_HOME=str(root / "moecli"), HF_HOME=str(root / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    from hubserver import HubServer, write_tiny_repo

    from moecli import app
    from moecli.synth import ensure_demo_model

    tiny = write_tiny_repo(root / "repo")
    repo = "tiny-org/Moving-GGUF"
    files = {"Moving-Q4_0.gguf": ensure_demo_model(root / "demo"), "Moving-Q8_0.gguf": tiny["Tiny-MoE-Q8_0.gguf"],
             "README.md": b"1\n"}
    with HubServer() as hub:
        hub.add_repo(repo, files)
        os.environ["HF_ENDPOINT"] = hub.url
        first, _ = app.pull_and_record(f"{repo}:Q4_0")
        hub.add_repo(repo, {**files, "README.md": b"2\n"})  # a new commit upstream
        second, _ = app.pull_and_record(f"{repo}:Q8_0")
    print(f"pulled Q4_0 at {first.candidate.commit[:12]}, then Q8_0 at {second.candidate.commit[:12]}")
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}
    log = root / "llama-server.log"
    with open(log, "w") as out:
        child = subprocess.Popen([server_bin, "-hf", f"{repo}:Q4_0", "--offline", "--host", "127.0.0.1", "--port",
                                  str(port), "-c", "256", "-t", "1"], env=env, stdout=out, stderr=subprocess.STDOUT)
    ok, deadline = False, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as answer:
                    models = json.load(answer)
                    ok = True
                    print("llama-server /v1/models:", [m.get("id") for m in models.get("data", [])])
                    break
            except OSError:
                time.sleep(0.5)
    finally:
        child.terminate()
        child.wait(30)
    said = [line for line in log.read_text(errors="replace").splitlines()
            if any(k in line for k in ("load_model", "snapshots", "error", "no GGUF", "general.name"))]
    print("\n".join(said[:12]))
    print("verdict:", "llama-server -hf --offline loads the earlier quant" if ok else "llama-server did NOT load it")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
