"""llama.cpp's RPC backend for real: two `moecli rpc-server` processes on 127.0.0.1, the demo model
split across the local CPU and both workers, the same greedy tokens as a local-only run, a bench
over RPC, and faults (a worker not there at start, a worker killed mid-run) as one line in bounded
time. Skipped, with the reason, where this llama-cpp-python was built without RPC."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from cliutil import ROOT, assert_one_error, env, moecli


def _rpc_build() -> bool:
    try:
        from moecli.engine import rpc

        return rpc.supported()
    except Exception:  # noqa: BLE001 - no llama.cpp at all: skip with the same reason
        return False


pytestmark = pytest.mark.skipif(not _rpc_build(), reason="this llama-cpp-python was built without RPC (GGML_RPC off): "
                                'rebuild it with CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-deps '
                                "--no-cache-dir llama-cpp-python==0.3.36")

GREEDY = ("--temp", "0", "-n", "24", "-c", "512", "-t", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "moecli", "rpc-server", "--port", str(port), "--threads", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(),
                            cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rpc-server exited: {proc.stdout.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("rpc-server did not listen within 60 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture()
def workers():
    ports = [free_port(), free_port()]
    procs = [start_worker(p) for p in ports]
    try:
        yield [f"127.0.0.1:{p}" for p in ports], procs
    finally:
        for proc in procs:
            stop(proc)


def test_run_split_over_cpu_and_two_workers_matches_local(workers):
    endpoints, _ = workers
    local = moecli("run", "demo", "-p", "Hello", *GREEDY, "--cpu-only")
    assert local.code == 0, local.output
    # the plan puts the layers on RPC0 and RPC1; layer 0's experts stay on the local CPU
    split = moecli("run", "demo", "-p", "Hello", *GREEDY, "--cpu-only", "--rpc", ",".join(endpoints),
                   "-ot", r"blk\.0\.ffn_(up|down|gate)_exps=CPU", "--verbose", timeout=300)
    assert split.code == 0, split.output
    assert split.stdout.strip() and split.stdout == local.stdout
    log = split.stderr
    assert "RPC0" in log and "RPC1" in log, log[-3000:]  # llama.cpp's own load log names both devices
    planned = moecli("plan", "demo", "--cpu-only", "--rpc", ",".join(endpoints), "--json")
    plan = json.loads(planned.stdout)["plan"]
    devices = {t["device"] for t in plan["tensors"]}
    assert {"RPC0", "RPC1", "CPU"} <= devices
    assert plan["params"]["rpc_servers"] == endpoints


def test_bench_over_rpc_reports_figures(workers):
    endpoints, _ = workers
    ran = moecli("bench", "demo", "--cpu-only", "--rpc", ",".join(endpoints), "-p", "32", "-n", "16", "-r", "2",
                 "-t", "1", "--json", timeout=300)
    assert ran.code == 0, ran.output
    rows = json.loads(ran.stdout)
    rows = rows if isinstance(rows, list) else rows.get("results", rows)
    assert any(r.get("avg_ts", 0) > 0 for r in rows), ran.stdout


def test_unreachable_worker_at_start_is_one_line():
    port = free_port()
    ran = moecli("run", "demo", "-p", "Hello", *GREEDY, "--cpu-only", "--rpc", f"127.0.0.1:{port}", timeout=60)
    assert_one_error(ran, f"RPC worker 127.0.0.1:{port}", "not reachable")


def test_worker_killed_mid_run_ends_the_run_with_one_line(workers):
    endpoints, procs = workers
    proc = subprocess.Popen([sys.executable, "-m", "moecli", "run", "demo", "-p", "Hello", "--temp", "0", "-n", "-1",
                             "--ignore-eos", "-c", "32768", "-t", "1", "--cpu-only", "--rpc", ",".join(endpoints)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=ROOT)
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        got, deadline = b"", time.monotonic() + 120
        while len(got) < 20 and time.monotonic() < deadline and proc.poll() is None:  # tokens are streaming
            got += proc.stdout.read() or b""
            time.sleep(0.05)
        assert len(got) >= 20, proc.stderr.read().decode(errors="replace") if proc.poll() is not None else "no tokens"
        procs[1].kill()
        killed = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    assert proc.returncode not in (0, None)
    assert took < 30
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RPC worker" in errors[0] and endpoints[1] in errors[0], err
    assert "Traceback" not in err
