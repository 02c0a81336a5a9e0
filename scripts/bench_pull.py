#!/usr/bin/env python3
"""moecli's download against curl, from a local Hub server (tests/hubserver.py): a benchmark, not a test.

    python scripts/bench_pull.py --runs 9          1 GiB (sparse): curl -o, curl -o + sha256sum, moecli's transfer
    python scripts/bench_pull.py --gguf FILE       ... and a whole `moecli pull` of FILE
        --tls             over https with the test certificate (tests/data/localhost-tls.pem)
        --rate-mib N      the server paced to N MiB/s, as a real link is
        --chunk-kib N     the transfer's read size (TransferOptions.chunk_bytes)

The README's Performance figures and the read sizes in moecli.hub.transfer were measured with it.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # moecli from this checkout; the test Hub server

from hubserver import LOCALHOST_TLS, HubServer  # noqa: E402

from moecli.hub.transfer import Digest, TransferOptions, fetch  # noqa: E402


def _serve_forever(path: Path, rate: float | None, tls: bool = False) -> None:
    """Serve `path` as bench/Big-GGUF:Q4_K_M; print the resolve URL and the sha256, then wait."""
    with HubServer(tls=LOCALHOST_TLS if tls else None) as hub:
        hub.faults.rate = rate
        hub.add_repo("bench/Big-GGUF", {"Big-Q4_K_M.gguf": path})
        served = hub.repos["bench/Big-GGUF"].files["Big-Q4_K_M.gguf"]
        print(f"{hub.url}/bench/Big-GGUF/resolve/main/Big-Q4_K_M.gguf {served.sha256}", flush=True)
        sys.stdin.read()  # until the parent closes our stdin


def bench(size: int, runs: int, workdir: Path, rate: float | None = None, gguf: Path | None = None,
          tls: bool = False, chunk_bytes: int | None = None) -> None:
    """Serve a sparse file of `size` bytes (or the real GGUF `gguf`) from a separate process (paced
    to `rate` bytes/s, as a real link would be, when given) and download it, alternately, with
    `curl -o`, with `curl -o` then `sha256sum` (the same guarantee moecli gives), and with
    moecli.hub.transfer.fetch (which hashes as it writes); with `gguf`, also with the whole `moecli pull`
    in a subprocess (its own figure: bytes over the seconds of its transfer, without start-up,
    listing and plan; its CPU figure includes them). With `tls`, over https with the test
    certificate (the server's TLS then takes CPU from the same two cores). Prints MiB/s per run,
    medians, and the CPU seconds each client spent per GiB. `chunk_bytes` overrides the transfer's
    read size (TransferOptions.chunk_bytes) for moecli fetch.
    Outputs are deleted and synced before each run, so that none pays for another's writeback."""
    workdir.mkdir(parents=True, exist_ok=True)
    if gguf is None:
        source = workdir / "served.gguf"
        with open(source, "wb") as f:
            f.truncate(size)
    else:
        source, size = gguf, gguf.stat().st_size
    pace = ["--rate-mib", str(rate / (1 << 20))] if rate else []
    if tls:
        os.environ["SSL_CERT_FILE"] = str(LOCALHOST_TLS)  # for moecli (and httpx) in this process and the pull
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(source), *pace, *(["--tls"] if tls else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url, sha = server.stdout.readline().split()
        out = workdir / "out.gguf"
        hf_home = workdir / "hf-home"

        def cpu(who: int) -> float:
            usage = resource.getrusage(who)
            return usage.ru_utime + usage.ru_stime

        def curl() -> None:
            subprocess.run(["curl", "-sSfL", *(["--cacert", str(LOCALHOST_TLS)] if tls else []), "-o", str(out), url],
                           check=True)

        def curl_sha256sum() -> None:
            curl()
            got = subprocess.run(["sha256sum", str(out)], check=True, capture_output=True, text=True).stdout.split()[0]
            assert got == sha

        def moecli() -> None:
            options = TransferOptions(chunk_bytes=chunk_bytes) if chunk_bytes else TransferOptions()
            fetch(url, out, label="bench", size=size, digest=Digest("sha256", sha), headers={}, on_bytes=lambda n: None,
                  options=options)

        def moecli_pull() -> float:
            env = {**os.environ, "HF_ENDPOINT": url.split("/bench/")[0], "HF_HOME": str(hf_home),
                   "MOECLI_HOME": str(workdir / "moecli-home"),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            line = subprocess.run([sys.executable, "-m", "moecli", "pull", "bench/Big-GGUF:Q4_K_M", "--yes"], env=env,
                                  check=True, capture_output=True, text=True).stdout
            return float(re.search(r" in ([0-9.]+) s, ", line).group(1))

        clients = {"curl -o": curl, "curl -o && sha256sum": curl_sha256sum, "moecli fetch (+sha256)": moecli}
        if gguf is not None:
            clients["moecli pull (+sha256, CLI)"] = moecli_pull
        speed: dict[str, list[float]] = {name: [] for name in clients}
        cpu_per_gib: dict[str, list[float]] = {name: [] for name in clients}
        for i in range(runs):
            for name, client in clients.items():
                out.unlink(missing_ok=True)
                shutil.rmtree(hf_home, ignore_errors=True)
                os.sync()
                before = cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                reported = client()
                wall = reported or time.perf_counter() - start
                spent = cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN) - before
                speed[name].append(size / (1 << 20) / wall)
                cpu_per_gib[name].append(spent / (size / (1 << 30)))
                print(f"run {i + 1}  {name:30s} {speed[name][-1]:6.0f} MiB/s  {cpu_per_gib[name][-1]:5.2f} CPU s/GiB",
                      flush=True)
        print()
        for name in clients:
            print(f"median {name:30s} {statistics.median(speed[name]):6.0f} MiB/s  "
                  f"{statistics.median(cpu_per_gib[name]):5.2f} CPU s/GiB")
        baseline = statistics.median(speed["curl -o"])
        ratios = [f"{name} / curl -o = {statistics.median(speed[name]) / baseline:.2f}" for name in clients if "moecli" in name]
        print("; ".join(ratios) + f"; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        for path in ([] if gguf else [source]) + [workdir / "out.gguf"]:
            path.unlink(missing_ok=True)
        for folder in ("hf-home", "moecli-home"):
            shutil.rmtree(workdir / folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve a big file and compare moecli's download with curl.")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "moecli-hub-bench")
    parser.add_argument("--rate-mib", type=float, help="pace the server to this many MiB/s (a real link)")
    parser.add_argument("--gguf", type=Path, help="serve this GGUF instead of a sparse file, and time `moecli pull` too")
    parser.add_argument("--tls", action="store_true", help="serve https (the test certificate in tests/data)")
    parser.add_argument("--chunk-kib", type=int, help="moecli fetch's read size (default: TransferOptions')")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rate = args.rate_mib * (1 << 20) if args.rate_mib else None
    if args.serve:
        _serve_forever(args.serve, rate, args.tls)
    else:
        bench(args.size_mib << 20, args.runs, args.dir, rate, args.gguf, args.tls,
              args.chunk_kib << 10 if args.chunk_kib else None)
