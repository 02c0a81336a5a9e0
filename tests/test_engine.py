"""The engine through real llama.cpp on the demo model (a tiny qwen35moe: Gated DeltaNet and
attention layers, routed and shared experts, the Qwen tokenizer and a ChatML template)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from moecli.engine import Engine, LoadReport, Sampling, Utf8Stream, available_buffer_types, dry_run, gpu_offload_supported
from moecli.errors import BadInput, EngineError, ModelFileError
from moecli.gguf import read_model
from moecli.params import EXPS_REGEX, LlamaParams, TensorOverride

CTX = 512


@pytest.fixture(scope="module")
def demo(demo_model_session):
    return demo_model_session


@pytest.fixture(scope="module")
def engine(demo):
    with Engine.load(demo, LlamaParams(n_ctx=CTX)) as e:
        yield e


@pytest.fixture(scope="module")
def tensor_names(demo) -> list[str]:
    return [t.name for t in read_model(str(demo)).tensors]  # from the GGUF header


def load(demo, **changes) -> Engine:
    return Engine.load(demo, LlamaParams(n_ctx=CTX).with_(**changes))


# --- loading and what llama.cpp reports --------------------------------------------------------


def test_load_reports_what_llama_cpp_allocated(engine):
    report = engine.report
    assert isinstance(report, LoadReport)
    assert report.load_mode == "mmap"  # llama.cpp resolves -lm auto to mmap on a CPU
    assert report.flash_attn is True  # -fa auto, as llama.cpp; Llama() would have said off
    assert report.n_ctx == engine.n_ctx == CTX
    assert report.type_k == report.type_v == "f16"
    buffers = engine.buffers
    assert buffers.model.get("CPU_Mapped", 0) > 0
    assert buffers.compute.get("CPU", 0) > 0
    assert buffers.recurrent.get("CPU", 0) > 0  # the DeltaNet layers' state
    assert 0 < buffers.kv["CPU"] < buffers.context["CPU"]
    assert buffers.device_bytes() == {}  # all of it is RAM here, CPU_REPACK included
    assert buffers.host_bytes == sum(buffers.total().values())
    assert engine.is_recurrent and engine.arch == "qwen35moe"
    assert engine.n_ctx_train >= CTX
    assert "<|im_start|>" in (engine.chat_template or "")


def test_chat_streams_text_and_llama_cpp_timings(engine):
    sampling = Sampling(seed=7, n_predict=12, ignore_eos=True)
    pieces = list(engine.chat([{"role": "user", "content": "Say hello."}], sampling))
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    t = engine.last_timings
    assert engine.last_stop_reason == "n_predict"
    assert t.predicted_n == 12  # every token shown was evaluated
    prompt = engine._prompt_tokens(engine.render_chat([{"role": "user", "content": "Say hello."}]))
    assert t.prompt_n == len(prompt) - t.cache_n
    assert t.prompt_ms > 0 and t.predicted_ms > 0 and t.ttft_ms > 0
    assert t.prompt_per_second > 0 and t.predicted_per_second > 0
    assert t.ttft_ms >= t.prompt_ms  # the first token needs the whole prompt evaluated


def test_same_seed_same_reply(engine):
    sampling = Sampling(seed=42, n_predict=8, ignore_eos=True)
    messages = [{"role": "user", "content": "Count."}]
    engine.reset()
    first = "".join(engine.chat(messages, sampling))
    assert first.strip()  # 8 tokens were generated: an empty reply would make the test pass for nothing
    engine.reset()
    assert "".join(engine.chat(messages, sampling)) == first


def test_stops_at_end_of_generation(engine):
    im_end = engine.tokenize("<|im_end|>")
    assert len(im_end) == 1 and im_end[0] in engine.eog_tokens
    reply = list(engine.chat([{"role": "user", "content": "Hi"}], Sampling(logit_bias=((im_end[0], 100.0),))))
    assert reply == []
    assert engine.last_stop_reason == "eog"
    assert engine.last_timings.predicted_n == 0


def test_should_stop_stops_mid_reply(engine):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    sampling = Sampling(n_predict=100, ignore_eos=True, seed=1)
    list(engine.complete("Once upon a time", sampling, should_stop=should_stop))
    assert engine.last_stop_reason == "should_stop"
    assert engine.last_timings.predicted_n == 3


def test_closing_the_stream_early_keeps_the_engine_usable(engine):
    stream = engine.complete("One two three", Sampling(n_predict=50, ignore_eos=True, seed=3))
    next(stream)
    stream.close()
    assert engine.last_timings is not None
    assert "".join(engine.complete("Four", Sampling(n_predict=3, ignore_eos=True))).strip()
    assert engine.last_timings.predicted_n == 3


def test_context_full_stops_generation(demo):
    with Engine.load(demo, LlamaParams(n_ctx=256)) as e:
        prompt = "word " * 240
        list(e.complete(prompt, Sampling(ignore_eos=True, seed=1)))
        assert e.last_stop_reason == "context_full"
        assert len(e._cached) == 256
        with pytest.raises(EngineError, match="does not fit the context"):
            e.complete("word " * 300)


# --- the KV cache between calls ----------------------------------------------------------------


def test_a_prompt_that_extends_the_cache_reuses_it(engine):
    engine.reset()
    first = "The capital of France is Paris."
    list(engine.complete(first, Sampling(n_predict=0)))
    assert engine.last_stop_reason == "n_predict" and engine.last_timings.predicted_n == 0
    n_first = len(engine._prompt_tokens(first))
    second = first + " The capital of Italy is"
    list(engine.complete(second, Sampling(n_predict=2, ignore_eos=True)))
    t = engine.last_timings
    assert t.cache_n == n_first
    assert t.prompt_n == len(engine._prompt_tokens(second)) - n_first


def test_a_diverging_prompt_starts_over_on_a_recurrent_model(engine):
    # a Gated DeltaNet state cannot be cut back to the common prefix (llama_memory_seq_rm refuses)
    engine.reset()
    list(engine.complete("Alpha beta gamma delta", Sampling(n_predict=2, ignore_eos=True)))
    list(engine.complete("Alpha beta epsilon", Sampling(n_predict=2, ignore_eos=True)))
    t = engine.last_timings
    assert t.cache_n == 0 and t.prompt_n == len(engine._prompt_tokens("Alpha beta epsilon"))
    assert t.predicted_n == 2


def test_chat_turns_reuse_the_conversation(engine):
    engine.reset()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
    reply = "".join(engine.chat(messages, Sampling(n_predict=6, ignore_eos=True, seed=5)))
    cached = list(engine._cached)  # the first prompt and the reply's tokens
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    prompt = engine._prompt_tokens(engine.render_chat(messages))
    list(engine.chat(messages, Sampling(n_predict=2, ignore_eos=True)))
    # the template renders the reply again; where its tokens come out the same, nothing is redone
    # (a recurrent state cannot be cut back to a shorter common prefix: then everything is)
    common = next((i for i, (a, b) in enumerate(zip(cached, prompt)) if a != b), len(cached))
    expected = common if common == len(cached) or not engine.is_recurrent else 0
    assert engine.last_timings.cache_n == expected
    assert engine.last_timings.prompt_n == len(prompt) - expected


# --- text: whole UTF-8 characters only ----------------------------------------------------------


def test_characters_split_over_tokens_are_held_back(engine):
    text = "naïve café, 日本語の文字, emoji 🎉🦀 and ẞ"
    tokens = engine.tokenize(text)
    pieces = [engine.token_piece(t) for t in tokens]
    split = [p for p in pieces if not _decodes(p)]
    assert split, "the real vocabulary splits some of these characters over tokens"
    streamed = list(engine.detokenize_stream(tokens))
    assert "".join(streamed) == text
    assert all("\ufffd" not in s for s in streamed)
    naive = [p.decode("utf-8", "replace") for p in pieces]
    assert any("\ufffd" in s for s in naive)  # what per-token decoding would have shown


def test_utf8_stream_replaces_bytes_that_never_complete():
    stream = Utf8Stream()
    assert stream.push("é".encode()[:1]) == ""
    assert stream.push(b"x") == "\ufffdx"
    assert stream.push("🎉".encode()[:3]) == ""
    assert stream.flush() == "\ufffd"


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# --- parameters reach llama.cpp -----------------------------------------------------------------


def test_overrides_reach_llama_cpp(demo, tensor_names):
    pattern = r"blk\.1\.ffn_(up|down)_exps"
    expected = {name for name in tensor_names if re.search(pattern, name)}
    assert len(expected) == 2
    with load(demo, tensor_overrides=(TensorOverride(pattern, "CPU"),)) as e:
        # llama.cpp logs each tensor its std::regex matched, with the buffer type it chose: for the
        # CPU buffer type it takes the CPU's best, CPU_REPACK for these Q4_K weights (AVX2 here)
        # or plain CPU. On a CPU-only build that is where they would have gone anyway, so the
        # buffer sizes cannot show the move; on a GPU build they leave the CUDA0 buffer.
        assert {name for name, _ in e.report.overridden} == expected
        assert {buft for _, buft in e.report.overridden} <= {"CPU", "CPU_REPACK"}
        assert any("tensor overrides to CPU are used with mmap enabled" in line for line in e.report.log)
    with load(demo) as e:
        assert e.report.overridden == ()
        assert not any("tensor overrides" in line for line in e.report.log)


def test_n_cpu_moe_and_cpu_moe_reach_llama_cpp(demo, tensor_names):
    with load(demo, n_cpu_moe=1) as e:
        assert {name for name, _ in e.report.overridden} == {
            n for n in tensor_names if n.startswith("blk.0.") and re.search(EXPS_REGEX, n)}
    with load(demo, cpu_moe=True) as e:
        moved = {name for name, _ in e.report.overridden}
        assert moved == {n for n in tensor_names if re.search(EXPS_REGEX, n)}
        assert not any("shexp" in n or "gate_inp" in n for n in moved)  # shared experts, routers stay


def test_unknown_buffer_type_names_the_available_ones(demo):
    with pytest.raises(EngineError, match="unknown buffer type 'CUDA0'") as err:
        load(demo, tensor_overrides=(TensorOverride(EXPS_REGEX, "CUDA0"),))
    assert "CPU" in err.value.hint
    assert "CPU" in available_buffer_types()
    if not gpu_offload_supported():  # a GPU build lists its devices' buffer types too ("CUDA0", ...)
        assert available_buffer_types() == ("CPU",)


@pytest.mark.parametrize("load_mode", ["none", "mlock"])  # mmap: the module's engine
def test_load_modes(demo, load_mode):
    with load(demo, load_mode=load_mode) as e:
        assert e.report.load_mode == load_mode
        assert "CPU_Mapped" not in e.buffers.model
        assert list(e.complete("Hi", Sampling(n_predict=2, ignore_eos=True)))


def test_quantized_kv_cache_and_threads(demo, engine):
    import psutil

    assert engine.n_threads == engine.n_threads_batch == (psutil.cpu_count(logical=False) or psutil.cpu_count())
    with load(demo, type_k="q8_0", type_v="q8_0", n_threads=1, n_threads_batch=2) as e:
        assert (e.report.type_k, e.report.type_v) == ("q8_0", "q8_0")
        f16, q8 = engine.buffers.kv["CPU"], e.buffers.kv["CPU"]
        # q8_0 stores 32 values in 34 bytes, f16 in 64 (the recurrent state is f32 either way)
        assert q8 == pytest.approx(f16 * 34 / 64, rel=0.05)
        assert e.buffers.recurrent == engine.buffers.recurrent
        assert (e.n_threads, e.n_threads_batch) == (1, 2)
        assert list(e.complete("Hi", Sampling(n_predict=2, ignore_eos=True)))


def test_flash_attention_off_is_honoured(demo):
    with load(demo, flash_attn="off") as e:
        assert e.report.flash_attn is False
        assert any(re.search(r"flash_attn += disabled", line) for line in e.report.log)
    with pytest.raises(EngineError, match="quantized V cache requires flash_attn"):
        load(demo, flash_attn="off", type_v="q8_0")


# --- slots: n_seq_max sequences in one context ---------------------------------------------------


def test_four_slots_allocate_what_the_plan_counts(demo):
    """The server's -np 4 (n_seq_max 4, kv_unified off: four streams of n_ctx / 4 cells): llama.cpp's
    logged output buffer is four rows of n_vocab f32 logits; its logged compute + output buffers are
    the plan's CPU compute figure to within 1 % (the plan is 0.24 MiB above them for this model and
    shape, measured with scripts/measure_slot_buffers.py's dry runs); KV cache + recurrent state
    (four states) are exactly the plan's."""
    from moecli.facts import MachineFacts
    from moecli.planner import Wishes, evaluate
    from moecli.units import GiB, MiB

    lines: list[str] = []
    params = LlamaParams(n_ctx=1024, n_batch=256, n_ubatch=256)
    with Engine.load(demo, params, on_log=lines.append, n_seq_max=4) as e:
        assert e.n_ctx == 1024
        context = e.buffers.context["CPU"]
    log = "".join(lines)
    compute = float(re.search(r"CPU compute buffer size = +([\d.]+) MiB", log).group(1))
    output = float(re.search(r"CPU +output buffer size = +([\d.]+) MiB", log).group(1))
    facts = read_model(str(demo))
    host = MachineFacts((), 16 * GiB, 14 * GiB, 2, 20e9, source="test host")
    plan = evaluate(facts, host, params, Wishes(n_seq=4))
    assert output == pytest.approx(4 * facts.n_vocab * 4 / MiB, abs=0.005)
    assert plan.cpu.compute / MiB == pytest.approx(compute + output, rel=0.01)
    assert plan.cpu.kv + plan.cpu.recurrent == context
    assert plan.cpu.recurrent == 4 * facts.recurrent_state_bytes


# --- dry runs ----------------------------------------------------------------------------------


def test_dry_run_equals_the_real_load(demo):
    params = LlamaParams(n_ctx=CTX, load_mode="none", type_k="q8_0")
    planned = dry_run(demo, params)
    with Engine.load(demo, params) as e:
        real = e.buffers
    assert planned.model == real.model and planned.model
    assert planned.context == real.context and planned.compute == real.compute
    assert planned.recurrent == real.recurrent and planned.output == real.output


def test_dry_run_never_maps_the_file(demo):
    # as llama.cpp's --fit: a no_alloc pass reads nothing, so weights count where a load into RAM puts them
    mapped, read = dry_run(demo, LlamaParams(n_ctx=CTX)), dry_run(demo, LlamaParams(n_ctx=CTX, load_mode="none"))
    assert mapped == read and "CPU_Mapped" not in mapped.model


# --- errors ------------------------------------------------------------------------------------


def test_context_larger_than_training_is_refused(demo, engine):
    with pytest.raises(EngineError) as err:
        load(demo, n_ctx=engine.n_ctx_train * 2)
    assert str(engine.n_ctx_train * 2) in str(err.value) and str(engine.n_ctx_train) in str(err.value)
    assert f"-c {engine.n_ctx_train}" in err.value.hint


def test_unknown_architecture(tmp_path):
    from moecli.synth import TensorSpec, write_gguf

    path = write_gguf(tmp_path / "foo.gguf", "foo", {"foo.block_count": 1},
                      [TensorSpec("token_embd.weight", (32, 16), "F32")])
    with pytest.raises(ModelFileError, match="llama.cpp does not know architecture 'foo'"):
        Engine.load(path)


def test_missing_truncated_and_foreign_files(tmp_path, demo):
    with pytest.raises(ModelFileError, match="no model file"):
        Engine.load(tmp_path / "nothing.gguf")
    truncated = tmp_path / "truncated.gguf"
    with open(demo, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(demo.stat().st_size // 2))
    with pytest.raises(ModelFileError, match="truncated or corrupt: .*file bounds"):
        Engine.load(truncated)
    foreign = tmp_path / "notes.gguf"
    foreign.write_bytes(b"these are not weights" * 100)
    with pytest.raises(ModelFileError, match="not a GGUF file .*magic"):
        Engine.load(foreign)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        dry_run(foreign)


# --- llama.cpp's log, progress, lifetime ------------------------------------------------------


def test_llama_cpp_is_quiet_unless_asked(demo):
    # a process of its own: nothing else may hold llama.cpp's (process-wide) log callback
    script = f"""
import ctypes, sys
import llama_cpp.llama_cpp as L
from moecli.engine import Engine, Sampling, dry_run
from moecli.params import LlamaParams
def callback():
    cb, ud = ctypes.c_void_p(), ctypes.c_void_p()
    L._lib["llama_log_get"](ctypes.byref(cb), ctypes.byref(ud))
    return cb.value
before = callback()
with Engine.load({str(demo)!r}, LlamaParams(n_ctx=256)) as e:
    "".join(e.complete("Hi", Sampling(n_predict=2)))
dry_run({str(demo)!r}, LlamaParams(n_ctx=256))
assert callback() == before, "the previous log callback is back"
seen = []
Engine.load({str(demo)!r}, LlamaParams(n_ctx=256), on_log=seen.append).close()
sys.stdout.write(str(sum("model buffer size" in t for t in seen)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert int(done.stdout) >= 1  # --verbose gets llama.cpp's own lines


def test_progress_and_cancel(demo, tmp_path):
    values: list[float] = []
    with Engine.load(demo, LlamaParams(n_ctx=CTX, load_mode="none"), on_progress=values.append):
        pass
    assert values and values[-1] == 1.0 and values == sorted(values)

    class Cancelled(Exception):
        pass

    def cancel(value: float) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        Engine.load(demo, LlamaParams(n_ctx=CTX, load_mode="none"), on_progress=cancel)


def test_closed_engine_refuses_work(demo):
    e = load(demo)
    e.close()
    e.close()
    with pytest.raises(EngineError, match="closed"):
        e.complete("Hi")


def test_sampling_from_model_metadata():
    meta = {"general.sampling.temp": "0.600000", "general.sampling.top_k": "20", "general.sampling.top_p": "0.95",
            "general.sampling.min_p": "0.000000", "general.sampling.penalty_repeat": "oops"}
    s = Sampling.from_model(meta, seed=3)
    assert (s.temp, s.top_k, s.top_p, s.min_p, s.repeat_penalty, s.seed) == (0.6, 20, 0.95, 0.0, 1.0, 3)
    assert Sampling.from_model({}) == Sampling()
    assert Sampling.from_model(meta, temp=1.0).temp == 1.0
    with pytest.raises(BadInput):
        Sampling(top_p=1.5)
    with pytest.raises(BadInput):
        Sampling(n_predict=-2)


# --- benchmarks --------------------------------------------------------------------------------


def test_bench_like_llama_bench(engine):
    engine.bench_warmup(64, 16)
    pp = engine.bench_prompt(64)
    tg = engine.bench_gen(16)
    assert pp > 0 and tg > 0
    assert engine.bench_gen(8, depth=32) > 0
    # the benchmark leaves an empty cache, and the chat works after it
    assert engine._cached == []
    assert list(engine.complete("Hi", Sampling(n_predict=2, ignore_eos=True)))
    with pytest.raises(BadInput, match=f"needs {CTX + 1} tokens of context") as err:
        engine.bench_prompt(CTX + 1)
    assert f"-c {CTX + 1}" in err.value.hint


def test_bench_gen_evaluates_exactly_n_tokens(engine):
    """bench_gen does what llama-bench's test_gen does: n single-token decodes, counted by llama.cpp."""
    import llama_cpp.llama_cpp as L

    engine.bench_gen(1)
    L.llama_perf_context_reset(engine._ctx)
    engine.bench_gen(10)
    perf = L.llama_perf_context(engine._ctx)
    assert perf.n_eval == 10 and perf.t_p_eval_ms == 0
    L.llama_perf_context_reset(engine._ctx)
    engine.bench_prompt(100)
    perf = L.llama_perf_context(engine._ctx)
    assert perf.n_p_eval == 100 and perf.t_eval_ms == 0



def test_should_stop_during_a_long_prompt(demo):
    """Ctrl-C is seen between prompt batches, not only between generated tokens."""
    with load(demo, n_batch=32, n_ubatch=32) as e:
        calls = []

        def should_stop() -> bool:
            calls.append(1)
            return len(calls) >= 2  # after the second batch

        assert list(e.complete("word " * 200, Sampling(n_predict=5), should_stop=should_stop)) == []
        assert e.last_stop_reason == "should_stop"
        assert e.last_timings.prompt_n == 64 and e.last_timings.predicted_n == 0
        assert len(e._cached) == 64
