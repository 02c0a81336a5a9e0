"""The chat (`moecli run`): thinking display, the reply loop and its slash commands on the real
engine (the demo model), and the REPL as a user drives it in a pseudo-terminal: two turns, Ctrl-C
in the middle of a reply and at the prompt, /help, /reset, /system, /stats, /exit and Ctrl-D."""

from __future__ import annotations

import io
import re

import pytest
from cliutil import ESC, invoke, plain, screen, spawn
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from moecli import synth
from moecli.chat import ChatSession, ThinkSplitter, figures_of, handle_command, opens_thinking, run_repl, show_stats
from moecli.engine import Engine, Sampling, Timings
from moecli.output import Output
from moecli.params import LlamaParams


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def pipe_output() -> Output:
    return Output(stdout=io.StringIO(), stderr=io.StringIO())


def render(template: str, messages, **kwargs) -> str:
    formatter = Jinja2ChatFormatter(template=synth.chat_template(template), eos_token="<|im_end|>",
                                    bos_token="", add_generation_prompt=True)
    return formatter(messages=messages, **kwargs).prompt


USER = [{"role": "user", "content": "Why is the sky blue?"}]


# --- thinking ----------------------------------------------------------------------------------------


def test_think_tags_split_across_pieces():
    splitter = ThinkSplitter()
    pieces = ["Hi <th", "ink>let me ", "see</thi", "nk>\n\nBlue", " light."]
    parts = [part for piece in pieces for part in splitter.feed(piece)] + list(splitter.flush())
    merged: list[list[str]] = []
    for kind, text in parts:
        if merged and merged[-1][0] == kind:
            merged[-1][1] += text
        else:
            merged.append([kind, text])
    assert merged == [["answer", "Hi "], ["think", "let me see"], ["answer", "\n\nBlue light."]]


def test_a_stream_can_start_inside_the_thinking():
    splitter = ThinkSplitter(thinking=True)
    assert list(splitter.feed("hmm</think>ok")) == [("think", "hmm"), ("answer", "ok")]
    assert list(ThinkSplitter().feed("a <b> c")) == [("answer", "a <b> c")]  # not a tag: kept as is
    held = ThinkSplitter()
    assert list(held.feed("x </thi")) == [("answer", "x </thi")]  # only the opening tag counts outside
    assert list(held.feed("nk <")) == [("answer", "nk ")] and list(held.flush()) == [("answer", "<")]


def test_templates_say_whether_the_prompt_opens_the_thinking():
    """Qwen3.5/3.6 open <think> in the generation prompt; enable_thinking=false (llama.cpp's
    --reasoning off) closes it there; Qwen3's template leaves it to the model."""
    assert opens_thinking(render("qwen3.5", USER))
    assert not opens_thinking(render("qwen3.5", USER, enable_thinking=False))
    assert not opens_thinking(render("qwen3", USER))
    assert render("qwen3", USER, enable_thinking=False).endswith("<think>\n\n</think>\n\n")


class ScriptedEngine:
    """The engine's chat interface with a reply fixed in advance, for what the demo's random weights
    never write (`<think>` tags); prompts are rendered by the real chat templates."""

    def __init__(self, pieces: list[str], template: str = "qwen3.5") -> None:
        self.pieces, self.template = pieces, template
        self.last_timings = self.last_stop_reason = None

    def render_chat(self, messages, **kwargs) -> str:
        return render(self.template, messages, **kwargs)

    def chat(self, messages, sampling, *, should_stop, template_kwargs=None):
        for piece in self.pieces:
            if should_stop():
                break
            yield piece
        self.last_timings = Timings(prompt_n=12, prompt_ms=10.0, predicted_n=len(self.pieces), predicted_ms=50.0,
                                    ttft_ms=12.0)
        self.last_stop_reason = "eog"


THINKING_REPLY = ["Rayleigh ", "scattering", "…</th", "ink>\n\n", "Short ", "waves ", "scatter ", "more."]


def test_plain_output_keeps_thinking_between_its_tags():
    out = pipe_output()
    session = ChatSession(ScriptedEngine(THINKING_REPLY), Sampling(), out)
    session.reply("Why is the sky blue?")
    assert out.stdout.getvalue() == "<think>Rayleigh scattering…</think>\n\nShort waves scatter more.\n"
    assert session.messages[-1]["content"].startswith("<think>\nRayleigh")  # the prompt's tag belongs to it


def test_hidden_thinking_shows_only_the_answer():
    out = pipe_output()
    ChatSession(ScriptedEngine(THINKING_REPLY), Sampling(), out, show_thinking=False).reply("Why?")
    assert out.stdout.getvalue() == "Short waves scatter more.\n"


def test_on_a_terminal_thinking_is_dimmed(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Output(stdout=TTY(), stderr=io.StringIO())
    ChatSession(ScriptedEngine(THINKING_REPLY), Sampling(), out).reply("Why?")
    text = out.stdout.getvalue()
    assert "\x1b[2;3mRayleigh " in text and "\x1b[2;3mscattering" in text  # dim italic
    assert "\x1b[2;3mShort" not in text
    assert screen(text) == ["Rayleigh scattering…", "", "Short waves scatter more."]
    hidden = Output(stdout=TTY(), stderr=io.StringIO())
    ChatSession(ScriptedEngine(THINKING_REPLY), Sampling(), hidden, show_thinking=False).reply("Why?")
    assert "thinking… ·" in plain(hidden.stdout.getvalue())  # the status line while it thought
    assert screen(hidden.stdout.getvalue()) == ["Short waves scatter more."]


def test_long_lines_scroll_instead_of_growing_the_live_area(monkeypatch):
    """A reply without newlines is printed line by line at the terminal's width; the live area
    below it stays two lines (the line being written, the tok/s figure)."""
    monkeypatch.setenv("COLUMNS", "40")
    out = Output(stdout=TTY(), stderr=io.StringIO())
    words = [f"word{i} " for i in range(60)]
    ChatSession(ScriptedEngine(words, template="qwen3"), Sampling(), out).reply("Talk.")
    raw = out.stdout.getvalue()
    # rich's Live erases its previous frame with one "cursor up" per line beyond the first
    erase_runs = re.findall(r"\r((?:\x1b\[2K\x1b\[1A)*)\x1b\[2K", raw)
    assert erase_runs and max(run.count("\x1b[1A") for run in erase_runs) <= 1
    shown = [line.rstrip() for line in screen(raw) if line.strip()]
    assert all(len(line) <= 40 for line in shown), shown
    assert " ".join(shown).split() == [word.strip() for word in words]  # each word once, in order


def test_figures_line():
    timings = Timings(prompt_n=20, prompt_ms=100.0, predicted_n=50, predicted_ms=500.0, ttft_ms=130.0)
    assert figures_of(timings).line() == ("prompt 20 tok, 200.0 tok/s · generation 50 tok, 100.0 tok/s · "
                                          "first token 0.13 s")
    assert figures_of(timings, stopped=True).line().endswith("· stopped")
    assert "the context is full: /reset starts over" in figures_of(timings, stop_reason="context_full").line()


# --- the real engine ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(demo_model_session):
    with Engine.load(demo_model_session, LlamaParams(n_ctx=512, n_threads=1)) as e:
        yield e


def scripted(typed: list[str]):
    """A read_line for run_repl that returns `typed` line by line, then EOF (Ctrl-D)."""
    lines = iter(typed)

    def read_line(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return read_line


def test_repl_turns_and_commands_on_the_demo_model(engine):
    out = pipe_output()
    session = ChatSession(engine, Sampling(seed=3, n_predict=12), out)
    typed = ["Hello", "/stats", "/system Be brief.", "/system", "/reset", "/help", "/bogus", "  ", "Hi again"]
    run_repl(session, scripted(typed), out)
    stdout, stderr = out.stdout.getvalue(), out.stderr.getvalue()
    assert ESC not in stdout + stderr
    assert len(session.history) == 2 and all(f.predicted_n > 0 for f in session.history)
    assert stderr.count("tok/s · generation") == 2  # one figures line per reply
    assert "last reply: prompt" in stdout and "session: 1 replies" in stdout
    assert "system prompt set; conversation cleared" in stdout and "system prompt: Be brief." in stdout
    assert "conversation cleared" in stdout and "/system TEXT" in stdout and "unknown command /bogus" in stdout
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]  # after /reset: one turn
    assert session.messages[0]["content"] == "Be brief."


def test_an_error_in_one_turn_leaves_the_chat_going(engine):
    out = pipe_output()
    session = ChatSession(engine, Sampling(seed=3, n_predict=4), out)
    run_repl(session, scripted(["word " * 800, "Hello"]), out)  # the first is larger than the 512-token context
    errors = [line for line in out.stderr.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit the context (512)" in errors[0]
    assert [m["role"] for m in session.messages] == ["user", "assistant"]  # the failed turn left no trace
    assert session.messages[0]["content"] == "Hello"


def test_a_full_context_is_reported(demo_model_session):
    out = pipe_output()
    with Engine.load(demo_model_session, LlamaParams(n_ctx=256, n_threads=1)) as small:
        figures = ChatSession(small, Sampling(seed=1, ignore_eos=True), out).reply("word " * 200)
    assert figures.context_full and "/reset starts over" in figures.line()
    assert "/reset" not in figures.line(chat=False)
    assert figures.prompt_n + figures.predicted_n >= 255


def test_reasoning_off_reaches_the_template(engine):
    session = ChatSession(engine, Sampling(n_predict=1), pipe_output(), template_kwargs={"enable_thinking": False})
    prompt = engine.render_chat([*session.messages, {"role": "user", "content": "Hi"}], **session.template_kwargs)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ran = invoke("run", "demo", "-t", "1", "-p", "Hi", "-n", "4", "--reasoning", "off", "--hide-thinking")
    assert ran.code == 0, ran.output


def test_stats_before_any_reply():
    out = pipe_output()
    session = ChatSession(ScriptedEngine(["x"]), Sampling(), out)
    show_stats(session, out)
    assert handle_command(session, "/EXIT", out) == "exit"
    assert out.stdout.getvalue() == "no reply yet\n"


# --- in a pseudo-terminal ----------------------------------------------------------------------------


def test_chat_in_a_terminal_two_turns_and_commands():
    pexpect = pytest.importorskip("pexpect")
    child = spawn("run", "demo", "-t", "1", "-n", "24", "--ignore-eos", "--seed", "5", rows=24, cols=80)
    child.expect_exact(">>> ")
    child.sendline("Hello there.")
    child.expect(r"generation 24 tok, [0-9.]+ tok/s")  # the first answer, and its speeds
    child.expect_exact(">>> ")
    child.sendline("And a second question?")
    child.expect(r"prompt [0-9]+ tok, [0-9.]+ tok/s · generation 24 tok")
    child.expect_exact(">>> ")
    child.send("half a question")
    child.expect_exact("half a question")  # echoed: readline is reading (a Ctrl-C before that is not seen
    child.sendintr()  # until Enter, a race in CPython's readline no person is quick enough to hit)
    child.expect_exact(">>> ")  # Ctrl-C at the prompt cleared the line
    child.sendline("/stats")
    child.expect(r"session: 2 replies, 48 tokens generated, [0-9.]+ tok/s on average")
    child.expect_exact(">>> ")
    child.sendline("/system You answer in one line.")
    child.expect_exact("system prompt set; conversation cleared")
    child.expect_exact(">>> ")
    child.sendline("/help")
    child.expect_exact("/reset")
    child.expect_exact(">>> ")
    child.sendline("/reset")
    child.expect_exact("conversation cleared")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in plain(child.before or "")


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on():
    pexpect = pytest.importorskip("pexpect")
    child = spawn("run", "demo", "-t", "1", "--ignore-eos", "--seed", "5", rows=24, cols=80)  # replies never end
    child.expect_exact(">>> ")
    child.sendline("Tell me a long story.")
    child.expect(r"[0-9.]+ tok/s · [0-9]+ tok \(live\)")  # the reply streams with a live figure
    child.expect(r"\(live\)")
    child.sendintr()  # Ctrl-C in the middle of the reply
    child.expect(r"generation [0-9]+ tok, [0-9.]+ tok/s")
    child.expect_exact("stopped")  # the figures line (it may wrap before this word)
    child.expect_exact(">>> ")  # the prompt is back
    child.sendline("And now?")  # the next turn works
    child.expect(r"\(live\)")
    child.sendintr()
    child.expect_exact("stopped")
    child.expect_exact(">>> ")
    child.sendline("/stats")
    child.expect(r"session: 2 replies")
    child.expect_exact(">>> ")
    child.sendeof()  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("io_encoding", [None, "utf-8:strict"])  # a C.UTF-8 locale escapes bad bytes; others refuse them
def test_a_line_of_invalid_utf8_is_answered_and_the_chat_goes_on(io_encoding):
    """Issue 11, defect 1: a line that is not UTF-8 (a Latin-1 terminal, pasted binary) used to end
    the session with a traceback from the tokenizer."""
    import os

    pexpect = pytest.importorskip("pexpect")
    extra = {"PYTHONIOENCODING": io_encoding} if io_encoding else {}
    child = spawn("run", "demo", "-t", "1", "-n", "4", "--ignore-eos", rows=24, cols=200, codec_errors="replace",
                  **extra)
    child.expect_exact(">>> ")
    os.write(child.child_fd, b"\xff\xfe hello\r")  # raw bytes, as such a terminal sends them
    child.expect_exact("not valid UTF-8")
    child.expect(r"generation 4 tok")  # answered, with U+FFFD for the bad bytes
    child.expect_exact(">>> ")
    child.sendline("And the next line?")
    child.expect(r"generation 4 tok")
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in plain(child.before or "")


def test_the_repl_drops_a_line_a_strict_reader_could_not_decode(engine):
    def reader(lines):
        def read(prompt):
            item = next(lines)
            if isinstance(item, BaseException):
                raise item
            return item
        return read

    out = pipe_output()
    session = ChatSession(engine, Sampling(n_predict=2, seed=1), out)
    bad = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    run_repl(session, reader(iter([bad, "Hi", EOFError()])), out)
    assert "was not valid UTF-8 and was dropped" in out.stderr.getvalue()
    assert len(session.history) == 1


def test_sigterm_during_a_reply_leaves_the_cursor_visible():
    """Issue 11, defect 9: SIGTERM while a reply streamed left the terminal's cursor hidden."""
    import signal

    pexpect = pytest.importorskip("pexpect")
    child = spawn("run", "demo", "-t", "1", "--ignore-eos", "--seed", "5", rows=24, cols=80)
    child.expect_exact(">>> ")
    child.sendline("Tell me a long story.")
    child.expect(r"\(live\)")  # streaming: the live area hid the cursor
    child.kill(signal.SIGTERM)
    child.expect(pexpect.EOF)
    child.close()
    seen = child.before or ""
    assert seen.rfind("\x1b[?25h") > seen.rfind("\x1b[?25l"), repr(seen[-300:])
    assert child.exitstatus == 143 and "Traceback" not in plain(seen)
