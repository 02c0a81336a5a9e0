"""`moecli serve`: a real server process on 127.0.0.1 with the demo model, driven by the official
`openai` client (and raw HTTP where the client would hide what is sent). Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cliutil import ROOT, env

openai = pytest.importorskip("openai")

from moecli.serve.cache import PromptCache, SlotCache, common_prefix  # noqa: E402
from moecli.serve.slots import StopMatcher  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                             timeout=kw.pop("timeout", 60), **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start(tmp: Path, *args: str, home: Path, extra_env: dict | None = None, model: str = "demo") -> Server:
    port = _free_port()
    log = tmp / f"serve-{port}.log"
    handle = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moecli", "serve", model, "--port", str(port), *args],
                            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env=env(MOECLI_HOME=str(home), HF_HOME=str(tmp / "hf"), NO_COLOR="1", **(extra_env or {})))
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {server.log_text()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError("the server did not become ready: " + server.log_text())


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_model_session) -> Path:
    """A MOECLI_HOME holding the session's demo model."""
    from moecli import paths

    home = tmp_path_factory.mktemp("serve-home")
    old = os.environ.get("MOECLI_HOME")
    os.environ["MOECLI_HOME"] = str(home / "moecli")
    try:
        models = paths.models_dir()
    finally:
        if old is None:
            del os.environ["MOECLI_HOME"]
        else:
            os.environ["MOECLI_HOME"] = old
    models.mkdir(parents=True)
    os.link(demo_model_session, models / demo_model_session.name)
    return home / "moecli"


@pytest.fixture(scope="module")
def server(tmp_path_factory, home):
    s = start(tmp_path_factory.mktemp("serve"), "-np", "2", home=home)
    yield s
    s.stop()


def raw(server: Server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON) of one request, without the openai client."""
    req = urllib.request.Request(server.url + path, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def get_text(server: Server, path: str, headers: dict | None = None):
    """(status, headers, text) of a GET, for what is not JSON (/metrics)."""
    req = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def scrape(server: Server) -> dict[str, float]:
    """GET /metrics as {name: value}, each sample checked to come after its HELP and TYPE lines."""
    status, headers, text = get_text(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4"), text
    values, helped, typed = {}, set(), set()
    for line in text.splitlines():
        words = line.split(" ")
        if words[:2] == ["#", "HELP"]:
            helped.add(words[2])
        elif words[:2] == ["#", "TYPE"]:
            assert words[3] in ("counter", "gauge"), line
            typed.add(words[2])
        else:
            name, value = words
            assert name in helped and name in typed, line
            values[name] = float(value)
    return values


def slots(server: Server) -> list[dict]:
    status, body = raw(server, "GET", "/slots")
    assert status == 200, body
    return body


def wait_until(condition, timeout: float = 10.0, step: float = 0.005) -> float:
    """Seconds until condition() held; fails after `timeout`."""
    t0 = time.perf_counter()
    while not condition():
        assert time.perf_counter() - t0 < timeout, "not within the time allowed"
        time.sleep(step)
    return time.perf_counter() - t0


USER = [{"role": "user", "content": "Tell me a story about a cat."}]


# --- the endpoints ---------------------------------------------------------------------------------
def test_chat_completion_has_content_usage_and_timings(server):
    r = server.client().chat.completions.create(model="anything", messages=USER, max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("length", "stop")
    assert r.object == "chat.completion" and r.model == "moecli-demo-v1.gguf"
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    t = r.model_extra["timings"]
    for key in ("cache_n", "prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                "predicted_per_second"):
        assert key in t
    assert t["predicted_n"] == r.usage.completion_tokens and t["prompt_n"] + t["cache_n"] == r.usage.prompt_tokens
    assert t["prompt_per_second"] > 0 and t["predicted_per_second"] > 0


def test_chat_streams_deltas_then_usage(server):
    stream = server.client().chat.completions.create(model="x", messages=USER, max_tokens=10, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and "timings" in finals[0].model_extra
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_stream_ends_with_done_and_no_usage_unless_asked(server):
    body = json.dumps({"messages": USER, "max_tokens": 5, "stream": True}).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in r.read().decode().splitlines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert not any('"usage"' in line for line in lines)


def test_completions_streaming_and_not(server):
    c = server.client()
    r = c.completions.create(model="x", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text.strip()
    assert r.model_extra["timings"]["predicted_n"] == r.usage.completion_tokens
    pieces = [ch.choices[0].text for ch in c.completions.create(model="x", prompt="Once upon a time", max_tokens=8,
                                                                temperature=0, stream=True) if ch.choices]
    assert "".join(pieces) == r.choices[0].text  # greedy: the same text either way


def test_stop_strings_across_tokens_are_not_emitted(server):
    c = server.client()
    full = c.completions.create(model="x", prompt="The city", max_tokens=24, temperature=0).choices[0].text
    stop = full[6:10]
    assert len(stop) == 4
    r = c.completions.create(model="x", prompt="The city", max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="x", prompt="The city", max_tokens=24, temperature=0, stop=stop, stream=True) if ch.choices)
    assert streamed == r.choices[0].text


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["moecli-demo-v1.gguf"]
    assert raw(server, "GET", "/health") == (200, {"status": "ok"})


def test_a_repeated_prompt_is_served_from_the_cache(server):
    c = server.client()
    messages = [{"role": "user", "content": "What is the capital of a country with many cats?"}]
    first = c.chat.completions.create(model="x", messages=messages, max_tokens=4, temperature=0)
    again = c.chat.completions.create(model="x", messages=messages, max_tokens=4, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 5 > 0
    assert again.model_extra["timings"]["cache_n"] == again.usage.prompt_tokens_details.cached_tokens


# --- slots ---------------------------------------------------------------------------------------
def test_eight_clients_on_two_slots_are_all_answered(server):
    c = server.client()
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        stream = c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"Client {i} says hi"}],
                                           max_tokens=16, stream=i % 2 == 0)
        if i % 2 == 0:
            results[i] = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        else:
            results[i] = stream.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(8)) and all(text.strip() for text in results.values())


def test_a_client_cut_off_mid_stream_frees_its_slot(server):
    """Two streams that would run to the end of the context are cut off after a few chunks; the
    next request is answered at once (both slots would be busy otherwise) and the log says why."""
    body = json.dumps({"messages": USER, "max_tokens": 100000, "ignore_eos": True, "stream": True}).encode()
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = b""
        while got.count(b"data: ") < 4:
            got += s.recv(4096)
        s.close()
    r = server.client(timeout=30).chat.completions.create(model="x", messages=USER, max_tokens=4)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens > 0
    deadline = time.monotonic() + 10
    while server.log_text().count("went away") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_text().count("went away") >= 2


# --- /slots and /metrics ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def solo(tmp_path_factory, home):
    """One slot, and /metrics."""
    s = start(tmp_path_factory.mktemp("solo"), "-np", "1", "--metrics", home=home)
    yield s
    s.stop()


def test_slots_show_the_request_a_slot_runs_then_the_slot_idle(server):
    c = server.client()
    prompt = "Once upon a time, in a city of cats,"
    n_prompt = c.completions.create(model="x", prompt=prompt, max_tokens=1).usage.prompt_tokens
    stream = c.completions.create(model="x", prompt=prompt, max_tokens=600, temperature=0.3, top_p=0.9, seed=42,
                                  stream=True, extra_body={"top_k": 7, "ignore_eos": True})
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    running = slots(server)
    assert len(running) == 2 and [s["id"] for s in running] == [0, 1]
    busy = [s for s in running if s["is_processing"]]
    assert len(busy) == 1
    slot = busy[0]
    assert slot["n_ctx"] == 2048 and slot["speculative"] is False and isinstance(slot["id_task"], int)
    params = slot["params"]
    assert (params["temperature"], params["top_p"], params["top_k"], params["seed"]) == (0.3, 0.9, 7, 42)
    assert params["max_tokens"] == params["n_predict"] == 600 and params["stream"] is True and params["ignore_eos"] is True
    assert slot["n_prompt_tokens_processed"] + slot["n_prompt_tokens_cache"] == n_prompt
    (token,) = slot["next_token"]
    assert token["has_next_token"] is True and token["n_decoded"] >= 2  # as of the last step: 3 chunks, 2 or 3
    assert token["n_remain"] == 600 - token["n_decoded"]
    assert slot["n_prompt_tokens"] == slot["prompt_cache"]["n_tokens"] >= n_prompt + token["n_decoded"] - 1
    stream.close()  # the client goes away: its slot is free again
    wait_until(lambda: not any(s["is_processing"] for s in slots(server)))
    idle = slots(server)[slot["id"]]
    assert idle["id_task"] == slot["id_task"] and idle["params"] == params  # the last request, as llama-server shows it
    assert idle["next_token"] == [{"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}]
    cache = idle["prompt_cache"]
    assert cache["n_tokens"] > n_prompt + token["n_decoded"] - 1
    assert cache["checkpoints"] >= 1 and cache["checkpoint_bytes"] > 0  # the hybrid demo: its reply's end
    assert raw(server, "GET", "/slots?fail_on_no_slot=1")[0] == 200


def test_metrics_are_off_without_the_flag(server):
    status, _, text = get_text(server, "/metrics")
    body = json.loads(text)
    assert status == 501 and body["error"]["type"] == "not_supported_error" and "--metrics" in body["error"]["message"]


LLAMA_METRICS = ("prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total", "tokens_predicted_total",
                 "tokens_predicted_seconds_total", "n_decode_total", "n_tokens_max", "prompt_tokens_seconds",
                 "predicted_tokens_seconds", "requests_processing", "requests_deferred", "n_busy_slots_per_decode")


def test_metrics_count_exactly_the_tokens_of_each_request(solo):
    c = solo.client()
    before = scrape(solo)
    assert all(f"llamacpp:{name}" in before for name in LLAMA_METRICS)
    r = c.completions.create(model="x", prompt="The cat sat on the mat and", max_tokens=20, temperature=0,
                             extra_body={"ignore_eos": True})
    after = scrape(solo)
    t = r.model_extra["timings"]

    def grew(name):
        return after[f"llamacpp:{name}"] - before[f"llamacpp:{name}"]

    assert grew("prompt_tokens_total") == t["prompt_n"] == r.usage.prompt_tokens - t["cache_n"]
    assert grew("prompt_tokens_cached_total") == t["cache_n"]
    assert grew("tokens_predicted_total") == r.usage.completion_tokens == 20
    assert grew("tokens_predicted_seconds_total") == pytest.approx(t["predicted_ms"] / 1e3, abs=1e-6)
    assert 0 < grew("prompt_seconds_total") <= t["prompt_ms"] / 1e3
    # the prompt in two batches (the hybrid demo's checkpoint 4 tokens before its end), then each token but the last
    assert grew("n_decode_total") == 2 + 19
    assert after["llamacpp:n_busy_slots_per_decode"] == 1.0  # one slot, always busy when decoding
    assert after["llamacpp:predicted_tokens_seconds"] == pytest.approx(19 / (t["predicted_ms"] / 1e3), rel=1e-6)
    assert after["llamacpp:prompt_tokens_seconds"] == pytest.approx(
        grew("prompt_tokens_total") / grew("prompt_seconds_total"), rel=1e-6)
    assert after["llamacpp:requests_processing"] == after["llamacpp:requests_deferred"] == 0
    assert after["llamacpp:n_tokens_max"] >= r.usage.total_tokens - 1
    again = c.completions.create(model="x", prompt="The cat sat on the mat and", max_tokens=5, temperature=0)
    last = scrape(solo)
    assert again.model_extra["timings"]["cache_n"] > 0
    assert last["llamacpp:prompt_tokens_cached_total"] - after["llamacpp:prompt_tokens_cached_total"] == again.model_extra["timings"]["cache_n"]
    assert last["llamacpp:tokens_predicted_total"] - after["llamacpp:tokens_predicted_total"] == again.usage.completion_tokens
    assert last["moecli:checkpoints"] >= 1 and last["moecli:checkpoint_bytes"] > 0


def test_a_client_gone_from_a_non_streaming_reply_frees_its_slot_at_once(solo):
    """The only slot runs a reply that would fill the context (seconds); its client closes the
    connection. The slot is free within a few tokens (a handler that only looked when no token had
    come for a while would never see it), and the next request is answered at once."""
    port = int(solo.url.rsplit(":", 1)[1])
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 100000, "ignore_eos": True}).encode()
    before = scrape(solo)["llamacpp:tokens_predicted_total"]
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_until(lambda: slots(solo)[0]["is_processing"] and slots(solo)[0]["next_token"][0]["n_decoded"] >= 5)
    assert raw(solo, "GET", "/slots?fail_on_no_slot=1")[0] == 503
    assert scrape(solo)["llamacpp:requests_processing"] == 1
    seen = slots(solo)[0]["next_token"][0]["n_decoded"]
    s.close()
    assert wait_until(lambda: not slots(solo)[0]["is_processing"]) < 0.5  # a step is ~6 ms here
    generated = scrape(solo)["llamacpp:tokens_predicted_total"] - before
    assert seen <= generated < seen + 50  # of the ~4090 it would have made
    t0 = time.perf_counter()
    r = solo.client(timeout=30).completions.create(model="x", prompt="hello", max_tokens=3,
                                                   extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and time.perf_counter() - t0 < 5
    wait_until(lambda: "went away" in solo.log_text())


# --- bad input ---------------------------------------------------------------------------------------
def test_bad_requests_get_openai_shaped_errors(server):
    status, body = raw(server, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == 400
    status, body = raw(server, "POST", "/v1/chat/completions", json.dumps({"max_tokens": 3}).encode())
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = raw(server, "POST", "/v1/chat/completions", json.dumps({"messages": USER, "temperature": "hot"}).encode())
    assert status == 400 and "temperature" in body["error"]["message"]
    status, body = raw(server, "GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == 404
    status, body = raw(server, "POST", "/v1/completions", json.dumps({"prompt": "hi", "logit_bias": {"x": 1}}).encode())
    assert status == 400 and "logit_bias" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="n = 2"):
        server.client().chat.completions.create(model="x", messages=USER, n=2)


def test_a_prompt_longer_than_the_context_names_both_numbers(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().completions.create(model="x", prompt="cat " * 5000, max_tokens=1)
    error = err.value.body
    assert error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == 2048  # -c 4096 divided among -np 2 slots, as llama-server does without -kvu
    assert f"({error['n_prompt_tokens']} tokens)" in error["message"] and "(2048 tokens)" in error["message"]


def test_a_body_over_the_limit_is_413(server):
    status, body = raw(server, "POST", "/v1/completions", json.dumps({"prompt": "x" * (9 * 2**20)}).encode())
    assert status == 413 and body["error"]["code"] == 413


def test_the_api_key(tmp_path, home):
    s = start(tmp_path, "-np", "1", "--metrics", "--no-slots", home=home, extra_env={"LLAMA_API_KEY": "sekrit"})
    try:
        for path in ("/slots", "/metrics"):
            status, _, text = get_text(s, path)
            assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error"
        key = {"Authorization": "Bearer sekrit"}
        assert get_text(s, "/metrics", key)[0] == 200
        status, _, text = get_text(s, "/slots", key)  # past the key: --no-slots answers as llama-server's
        assert status == 501 and "--slots" in json.loads(text)["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        status, body = raw(s, "GET", "/v1/models")
        assert status == 401 and body["error"]["type"] == "authentication_error"
        assert raw(s, "GET", "/health")[0] == 200  # needs no key, as llama-server's
        r = s.client(api_key="sekrit").chat.completions.create(model="x", messages=USER, max_tokens=3)
        assert r.usage.completion_tokens > 0
    finally:
        s.stop()


def test_a_request_llama_cpp_cannot_take_fails_alone(tmp_path, home):
    """Two slots share a KV cache of 1024 cells: a second 600-token prompt beside a first one
    makes llama_decode fail (no room). That request gets the error; the first one goes on."""
    s = start(tmp_path, "-np", "2", "--kv-unified", "-c", "1024", home=home)
    try:
        long_prompt = "cat " * 600
        # the first must still be generating when the second comes (at most 1024 - 601 tokens)
        first = s.client().completions.create(model="x", prompt=long_prompt, max_tokens=400, temperature=0,
                                              stream=True, extra_body={"ignore_eos": True})
        pieces = [next(first).choices[0].text for _ in range(3)]
        with pytest.raises(openai.InternalServerError, match="no room"):
            s.client().completions.create(model="x", prompt="dog " * 600, max_tokens=5)
        rest = list(first)
        assert rest[-1].choices[0].finish_reason == "length"
        assert len(pieces) + sum(1 for ch in rest if ch.choices and ch.choices[0].text) > 100
        assert raw(s, "GET", "/health")[0] == 200
        assert s.client().completions.create(model="x", prompt="hello", max_tokens=3).usage.completion_tokens == 3
    finally:
        s.stop()


# --- Qwen3.5: thinking, and the prompt cache over a conversation ------------------------------------------
@pytest.fixture(scope="module")
def qwen35_file(tmp_path_factory) -> Path:
    """The demo model with the Qwen3.5/3.6 chat template (its generation prompt opens <think>)."""
    from gguf import Keys

    from moecli import synth

    recipe = synth.demo_recipe()
    metadata = {**recipe.metadata, Keys.Tokenizer.CHAT_TEMPLATE: synth.chat_template("qwen3.5")}
    return synth.write_gguf(tmp_path_factory.mktemp("qwen35") / "demo-qwen35.gguf", recipe.arch, metadata,
                            recipe.tensors, data=recipe.data)


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory, home, qwen35_file):
    tmp = tmp_path_factory.mktemp("qwen35-serve")
    s = start(tmp, "-np", "2", home=home, model=str(qwen35_file))
    yield s
    s.stop()


def test_thinking_comes_back_as_reasoning_content(qwen35):
    c = qwen35.client()
    r = c.chat.completions.create(model="x", messages=USER, max_tokens=12, temperature=0)
    assert r.choices[0].message.model_extra["reasoning_content"].strip()  # the reply started inside <think>
    chunks = list(c.chat.completions.create(model="x", messages=USER, max_tokens=12, temperature=0, stream=True))
    streamed = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for ch in chunks if ch.choices)
    assert streamed.strip() == r.choices[0].message.model_extra["reasoning_content"]
    off = c.chat.completions.create(model="x", messages=USER, max_tokens=12, temperature=0,
                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.choices[0].message.content.strip() and "reasoning_content" not in off.choices[0].message.model_extra


def test_a_three_turn_chat_reuses_the_earlier_turns(qwen35):
    """The Qwen3.5 template drops earlier thinking, so each prompt differs from the last inside the
    previous reply; the hybrid model's recurrent state cannot be cut back there: the state
    checkpoints make the later turns reuse the earlier ones anyway."""
    c = qwen35.client()
    messages = [{"role": "system", "content": "You are a helpful assistant who likes cats."}]
    turns = []
    for question in ("Hello there, who are you?", "Tell me about cats.", "And about dogs?"):
        messages.append({"role": "user", "content": question})
        r = c.chat.completions.create(model="x", messages=messages, max_tokens=16, temperature=0)
        turns.append(r)
        messages.append({"role": "assistant", "content": r.choices[0].message.content or "ok"})
    cached = [t.model_extra["timings"]["cache_n"] for t in turns]
    prompts = [t.usage.prompt_tokens for t in turns]
    assert cached[0] >= 0
    # each later turn reuses at least the previous prompt up to its last few tokens (the generation prompt)
    assert cached[1] >= prompts[0] - 5 > 0 and cached[2] >= prompts[1] - 5 > cached[1]


def test_the_chat_of_moecli_run_keeps_checkpoints_too(qwen35_file):
    """Engine.chat (what `moecli run` calls) on the hybrid demo with the Qwen3.5 template: the
    later turns reuse the earlier ones through its state checkpoints."""
    from moecli.engine import Engine, Sampling

    with Engine(qwen35_file) as engine:
        messages, cached = [{"role": "system", "content": "You like cats."}], []
        for question in ("Hello there, who are you?", "Tell me about cats.", "And about dogs?"):
            messages.append({"role": "user", "content": question})
            text = "".join(engine.chat(messages, Sampling(temp=0, n_predict=12)))
            cached.append((engine.last_timings.cache_n, engine.last_timings.prompt_n))
            messages.append({"role": "assistant", "content": "<think>\n" + text})
    assert cached[0][0] == 0
    assert cached[1][0] >= cached[0][1] - 5 > 0 and cached[2][0] >= sum(cached[1]) - 5


# --- stopping ------------------------------------------------------------------------------------------
def test_sigterm_while_streaming_ends_the_stream_and_the_server(tmp_path, home):
    s = start(tmp_path, "-np", "1", home=home)
    got: list[str] = []
    finished = threading.Event()

    def stream() -> None:
        try:
            for ch in s.client().chat.completions.create(model="x", messages=USER, max_tokens=100000, stream=True,
                                                         extra_body={"ignore_eos": True}):
                if ch.choices:
                    got.append(ch.choices[0].delta.content or "")
        except Exception:  # noqa: BLE001 - a cut connection is acceptable; a hang is not
            pass
        finished.set()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) >= 5
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=30) == 0
    assert finished.wait(timeout=30)


# --- the parts ---------------------------------------------------------------------------------------------
def test_stop_matcher_holds_back_a_partial_stop():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("Dxyz") == ("", True)
    m = StopMatcher(["END"])
    assert m.feed("E") == ("", False) and m.feed("x") == ("Ex", False)


def test_slot_choice_prefers_the_longest_shared_prefix():
    cache = PromptCache(3, recurrent=False)
    a, b, c = cache.slots
    a.tokens, b.tokens, c.tokens = [1, 2, 3, 4], [1, 2, 9], []
    a.last_used, b.last_used, c.last_used = 3.0, 2.0, 1.0
    assert cache.choose([a, b, c], [1, 2, 3, 4, 5]) is a
    assert cache.choose([b, c], [1, 2, 3, 4, 5]) is b
    assert cache.choose([a, b, c], [7, 7, 7]) is c  # nothing shared: the slot unused longest
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert isinstance(a, SlotCache)


# --- the plan's slots ---------------------------------------------------------------------------------------
def test_each_slot_costs_a_recurrent_state_and_divides_the_context():
    from modelfacts import qwen36_35b_a3b

    from moecli import machine as machine_mod
    from moecli.planner import Wishes, plan

    qwen = qwen36_35b_a3b()
    gtx = machine_mod.load_profile("gtx1060-6gb")
    one, four = plan(qwen, gtx, Wishes(n_ctx=4096)), plan(qwen, gtx, Wishes(n_ctx=4096, n_seq=4, kv_unified=True))
    assert sum(d.recurrent for d in four.devices) == 4 * sum(d.recurrent for d in one.devices) == 4 * qwen.recurrent_state_bytes
    assert four.n_ctx == one.n_ctx == 4096  # one KV cache shared: no more cells
    split = plan(qwen, gtx, Wishes(n_ctx=4000, n_seq=3))
    assert split.n_ctx == 3 * 1536  # llama_context: n_ctx padded to 256, then n_ctx / n_seq padded again


def test_auto_slots_cost_no_expert_layer_on_the_gpu():
    from modelfacts import qwen36_35b_a3b

    from moecli import app as usecases
    from moecli import machine as machine_mod

    qwen = qwen36_35b_a3b()
    gtx = machine_mod.load_profile("gtx1060-6gb")
    request = usecases.Request.from_options(ctx="4096")
    job = usecases.serve_job(qwen, gtx, request)
    one = usecases.serve_job(qwen, gtx, request, 1)
    assert 1 <= job.slots.n <= 4 and job.slots.kv_unified and job.note
    assert job.plan.placement.expert_layers_gpu == one.plan.placement.expert_layers_gpu
    assert job.plan.fits
    four = usecases.serve_job(qwen, gtx, request, 4, True)
    assert four.slots.n == 4 and "4 slots" in four.note
    roomy = usecases.serve_job(qwen, machine_mod.apply_overrides(gtx, cpu_only=True, ram="64GiB"), request)
    assert roomy.slots.n == 4  # no GPU to take expert layers from, RAM for every state
    tight = usecases.serve_job(qwen, machine_mod.apply_overrides(gtx, cpu_only=True), request)
    assert tight.plan.fits and tight.slots.n < 4  # 24 GiB of RAM: not for 4 states and the weights


def test_a_step_puts_the_slots_in_order_whatever_order_they_were_taken(demo_model_session):
    """Without a unified KV cache llama.cpp puts only sequences with consecutive ids in one ubatch
    (llama_batch_allocr::split_equal): 4 slots out of order cost 4 passes over the weights a step."""
    from moecli.engine import Engine, Sampling
    from moecli.params import LlamaParams
    from moecli.serve.slots import Job, Scheduler

    with Engine(demo_model_session, LlamaParams(n_ctx=1024, n_threads=1), n_seq_max=4) as engine:
        scheduler = Scheduler(engine)
        steps: list[list[int]] = []
        decode = scheduler.batcher.decode
        scheduler.batcher.decode = lambda parts: (steps.append([p.seq_id for p in parts if len(p.tokens) == 1]),
                                                  decode(parts))[1]
        for slot, last_used in zip(scheduler.cache.slots, (4.0, 3.0, 2.0, 1.0)):
            slot.last_used = last_used  # the unused-longest slot is taken first: 3, then 2, 1, 0
        done = threading.Semaphore(0)
        taken = []
        for k in range(4):
            scheduler.submit(Job(engine.tokenize(f"prompt {k}"), Sampling(temp=0.0, ignore_eos=True),
                                 lambda kind, value: kind in ("done", "error") and (taken.append(value), done.release()),
                                 n_predict=12))
        try:
            assert all(done.acquire(timeout=60) for _ in range(4))
        finally:
            scheduler.stop()
    assert all(not isinstance(v, Exception) for v in taken)
    together = [s for s in steps if len(s) == 4]
    assert together, steps  # the four did decode together
    assert all(s == sorted(s) for s in steps), steps


def test_auto_slots_count_what_every_slot_costs(tmp_path):
    """A model without a recurrent state still pays per slot: gpt-oss-20b's sliding-window layers
    keep a window per sequence (a unified cache: n_swa x n_seq + n_ubatch cells), and each slot a
    row of logits. On a 12 GB card at -c 16384 -ub 2048 the third and fourth slots would move
    expert weights off the GPU, so auto stops at two (it took four when slots were free)."""
    import archspecs

    from moecli import app as usecases
    from moecli import machine as machine_mod
    from moecli.facts import MachineFacts
    from moecli.gguf import read_model
    from moecli.units import GiB

    gpt_oss = read_model(archspecs.SPECS["gpt-oss-20b"]().write_for_llama_cpp(tmp_path))
    card = machine_mod.load_profile("rtx3060-12gb", host=MachineFacts((), 32 * GiB, 29 * GiB, 8, 51.2e9, source="host"))
    request = usecases.Request.from_options(ctx="16384", ub=2048, b=2048)
    one = usecases.serve_job(gpt_oss, card, request, 1)
    auto = usecases.serve_job(gpt_oss, card, request)
    four = usecases.serve_job(gpt_oss, card, request, 4, True)
    def experts(job):  # whole expert layers on the GPU, and tensors of a split one
        return len(job.plan.placement.expert_layers_gpu), len(job.plan.placement.partial_gpu)

    assert auto.slots.n == 2 and auto.slots.kv_unified and experts(auto) == experts(one)
    assert experts(four) < experts(one) and four.plan.fits
    assert auto.note.startswith("2 slots: ") and "more than one slot" in auto.note and "recurrent" not in auto.note
    assert one.note is None
