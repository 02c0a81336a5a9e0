"""llama.cpp's RPC backend for real: two `moecli rpc-server` processes on 127.0.0.1, the demo model
split across the local CPU and both workers, the same greedy tokens as a local-only run, a bench
over RPC, and faults (a worker not there at start, a worker killed mid-run) as one line in bounded
time; `serve` over both workers, and a worker killed or hung mid-stream: the requests end with
503s naming it, the server goes on answering and stops cleanly. Skipped, with the reason, where
this llama-cpp-python was built without RPC."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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
    # the plan alone keeps the demo on one worker (every device crossing costs a network round
    # trip); these overrides put layer 0's experts on the local CPU and layer 1's on RPC0
    pins = rf"blk\.0\.ffn_(up|down|gate)_exps=CPU,blk\.1\.ffn_(up|down|gate)_exps=RPC0[{endpoints[0]}]"
    split = moecli("run", "demo", "-p", "Hello", *GREEDY, "--cpu-only", "--rpc", ",".join(endpoints),
                   "-ot", pins, "--verbose", timeout=300)
    assert split.code == 0, split.output
    assert split.stdout.strip() and split.stdout == local.stdout
    log = split.stderr
    assert "RPC0" in log and "RPC1" in log, log[-3000:]  # llama.cpp's own load log names both devices
    planned = moecli("plan", "demo", "--cpu-only", "--rpc", ",".join(endpoints), "-ot", pins, "--json")
    plan = json.loads(planned.stdout)["plan"]
    devices = {t["device"] for t in plan["tensors"]}
    assert {"RPC0", "RPC1", "CPU"} <= devices
    assert plan["params"]["rpc_servers"] == endpoints
    basis = plan["decode"]["basis"]  # the running workers' round trips were timed
    assert basis.count("round trips of") == 2 and "measured" in basis and "assumed" not in basis, basis


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


# --- serve ----------------------------------------------------------------------------------------
SERVE = ("--cpu-only", "-np", "2", "-c", "8192", "-t", "1")
LONG = {"max_tokens": 100000, "extra_body": {"ignore_eos": True}}


def _serve(tmp_path, *args: str, **extra_env: str):
    """`moecli serve demo ARGS` as test_serve starts it (ready once /health is 200)."""
    from test_serve import start  # skips where the openai package is missing

    return start(tmp_path, *SERVE, *args, home=Path(os.environ["MOECLI_HOME"]), extra_env=extra_env)


def _greedy(server) -> str:
    r = server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "Hello"}],
                                                max_tokens=24, temperature=0)
    return r.choices[0].message.content


def test_serve_over_two_workers_answers_as_a_local_server(tmp_path, workers):
    endpoints, _ = workers
    local = _serve(tmp_path)
    try:
        expected = _greedy(local)
    finally:
        assert local.stop() == 0
    split = _serve(tmp_path, "--rpc", ",".join(endpoints))
    try:
        assert expected.strip() and _greedy(split) == expected
    finally:
        assert split.stop() == 0
    assert "RPC0" in split.log_text() and "RPC1" in split.log_text()  # the plan's line names both devices


class _Request(threading.Thread):
    """One long chat request in a thread: its text pieces, and the exception that ended it."""

    def __init__(self, server, stream: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.stream, self.pieces, self.error = server, stream, [], None

    def run(self) -> None:
        try:
            r = self.server.client(timeout=60).chat.completions.create(
                model="x", messages=[{"role": "user", "content": "Tell me a story."}], stream=self.stream, **LONG)
            for chunk in r if self.stream else ():
                if chunk.choices:
                    self.pieces.append(chunk.choices[0].delta.content or "")
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            self.error = exc


def _lose_a_worker_mid_stream(tmp_path, workers, fault, *extra, **extra_env):
    """A server over both workers with a stream and a whole reply in flight; `fault(worker)` then
    ends a worker. Returns (server, the two requests, seconds until both ended, the worker)."""
    endpoints, procs = workers
    server = _serve(tmp_path, "--rpc", ",".join(endpoints), *extra, **extra_env)
    whole, stream = _Request(server, stream=False), _Request(server, stream=True)
    whole.start()
    time.sleep(0.3)
    stream.start()
    deadline = time.monotonic() + 60
    while len(stream.pieces) < 5 and stream.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(stream.pieces) >= 5 and whole.is_alive(), (stream.error, whole.error, server.log_text())
    fault(procs[1])
    faulted = time.monotonic()
    whole.join(30)
    stream.join(30)
    return server, whole, stream, time.monotonic() - faulted, endpoints[1]


def _assert_lost(server, whole, stream, took, worker, words):
    """Both requests ended with OpenAI-shaped 503s naming the worker, in bounded time; the next
    request and /health say the same; the server goes on answering, and SIGTERM ends it at once."""
    import openai
    from test_serve import raw

    assert not whole.is_alive() and not stream.is_alive() and took < 20, (took, server.log_text())
    assert isinstance(stream.error, openai.APIError) and worker in stream.error.message, stream.error
    assert words in stream.error.message and "restart the worker" in stream.error.message
    assert stream.error.body["code"] == 503 and stream.error.body["type"] == "unavailable_error"
    assert isinstance(whole.error, openai.APIStatusError) and whole.error.status_code == 503, whole.error
    assert worker in whole.error.message
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as later:
        _greedy(server)
    assert later.value.status_code == 503 and worker in later.value.message and time.monotonic() - t0 < 5
    status, body = raw(server, "GET", "/health")
    assert status == 503 and worker in body["error"]["message"] and body["error"]["type"] == "unavailable_error"
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert server.proc.wait(timeout=15) == 0 and time.monotonic() - t0 < 10
    assert "Traceback" not in server.log_text()


def test_serve_worker_killed_mid_stream_ends_the_requests_not_the_server(tmp_path, workers):
    server, whole, stream, took, worker = _lose_a_worker_mid_stream(tmp_path, workers, lambda p: p.kill())
    try:
        _assert_lost(server, whole, stream, took, worker, "stopped answering")
        assert workers[0][0] not in stream.error.message  # the worker still there is not blamed
    finally:
        server.stop()


def test_serve_hung_worker_ends_the_requests_after_the_timeout(tmp_path, workers):
    """A worker that stops without closing its sockets (SIGSTOP): the watchdog ends the engine."""
    procs = workers[1]
    try:
        server, whole, stream, took, worker = _lose_a_worker_mid_stream(
            tmp_path, workers, lambda p: p.send_signal(signal.SIGSTOP), MOECLI_RPC_TIMEOUT="3")
        try:
            assert took >= 3
            _assert_lost(server, whole, stream, took, worker, "did not answer within 3 s")
        finally:
            server.stop()
    finally:
        procs[1].kill()  # a stopped process would not heed the fixture's SIGTERM
