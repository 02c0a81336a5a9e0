"""The interactive chat (`moecli run`): streams replies with a live tok/s line, keeps the history in
the model's chat template, slash commands, Ctrl-C stops a reply, Ctrl-D leaves.

The terminal is injected (an `Output` and a line reader), so tests drive the real code path; a few
pseudo-terminal tests cover what only a real terminal shows.

Thinking (Qwen3's `<think>…</think>`) is shown dimmed, or hidden (`--hide-thinking`: a status line
says the model is thinking). Qwen3.5/3.6 templates open the `<think>` in the prompt itself, so the
reply starts inside the thinking without a tag of its own: the rendered prompt says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from rich.live import Live
from rich.text import Text

from moecli.app.running import ctrl_c_sets
from moecli.engine.core import valid_text
from moecli.errors import MoecliError
from moecli.output import Output

HELP = """\
/help           this help
/reset          forget the conversation (keeps the system prompt)
/system TEXT    set the system prompt and start over (/system alone shows it)
/stats          figures of the last reply and of the session
/exit           leave (also Ctrl-D)
Ctrl-C stops the reply being written; at the prompt it clears the line."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
NOT_UTF8 = "not valid UTF-8: the bytes that are not are sent as \ufffd"


def valid_input(text: str) -> tuple[str, bool]:
    """What the user typed, as valid text: bytes that were not UTF-8 (lone surrogates in a str
    from the terminal or the command line) become U+FFFD; and whether there were any."""
    valid = valid_text(text)
    return valid, valid != text


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open `<think>` (the Qwen3.5 template's generation
    prompt is `<|im_start|>assistant\\n<think>\\n` unless enable_thinking is false)."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


class ThinkSplitter:
    """Splits streamed text into ("think", text) and ("answer", text) parts at `<think>`/`</think>`
    tags, which may arrive split over several pieces. `thinking`: the stream starts inside one."""

    def __init__(self, thinking: bool = False) -> None:
        self.thinking = thinking
        self._pending = ""

    def feed(self, piece: str) -> Iterator[tuple[str, str]]:
        text = self._pending + piece
        self._pending = ""
        while text:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = text.find(tag)
            if at >= 0:
                if at:
                    yield self._kind(), text[:at]
                self.thinking = not self.thinking
                text = text[at + len(tag):]
                continue
            keep = _partial_suffix(text, tag)  # a tag may be cut at the end of this piece
            if len(text) > keep:
                yield self._kind(), text[: len(text) - keep]
            self._pending = text[len(text) - keep:]
            return

    def flush(self) -> Iterator[tuple[str, str]]:
        if self._pending:
            yield self._kind(), self._pending
            self._pending = ""

    def _kind(self) -> str:
        return "think" if self.thinking else "answer"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


@dataclass
class ReplyFigures:
    """One reply's figures, as llama.cpp counted them (llama-server's field names)."""

    prompt_n: int
    prompt_per_second: float
    predicted_n: int
    predicted_per_second: float
    ttft_ms: float
    stopped: bool = False  # Ctrl-C
    context_full: bool = False

    def line(self, *, chat: bool = True) -> str:
        """The figures in one line; `chat=False` (`run -p`): without the chat's commands."""
        text = (
            f"prompt {self.prompt_n} tok, {self.prompt_per_second:.1f} tok/s · "
            f"generation {self.predicted_n} tok, {self.predicted_per_second:.1f} tok/s · "
            f"first token {self.ttft_ms / 1000:.2f} s"
        )
        if self.stopped:
            text += " · stopped"
        if self.context_full:
            text += " · the context is full: " + ("/reset starts over" if chat else "a larger -c gives more room")
        return text


def figures_of(timings, stopped: bool = False, stop_reason: str | None = None) -> ReplyFigures:
    return ReplyFigures(
        prompt_n=timings.prompt_n,
        prompt_per_second=timings.prompt_per_second,
        predicted_n=timings.predicted_n,
        predicted_per_second=timings.predicted_per_second,
        ttft_ms=timings.ttft_ms,
        stopped=stopped,
        context_full=stop_reason == "context_full",
    )


class _Counter:
    """Counts the pieces of a stream (about one per token) and when the first came."""

    def __init__(self, stream: Iterable[str]) -> None:
        self._stream = stream
        self.n = 0
        self.first_at: float | None = None

    def __iter__(self) -> Iterator[str]:
        for piece in self._stream:
            if self.first_at is None:
                self.first_at = time.perf_counter()
            self.n += 1
            yield piece

    def rate(self) -> float:
        if self.first_at is None or self.n < 2:
            return 0.0
        return (self.n - 1) / max(time.perf_counter() - self.first_at, 1e-6)


class _LiveStatus:
    """What the live area shows, computed when rich refreshes it (8 times a second): the line being
    written, then a dim status line. The main thread swaps `current` for a new Text; it never
    changes one that rich may be rendering."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter
        self.current = Text()
        self.thinking_hidden = False

    def __rich__(self) -> Text:
        c = self.counter
        if c.first_at is None:
            status = "waiting for the first token…"
        else:
            status = f"{c.rate():.1f} tok/s · {c.n} tok (live)"
            if self.thinking_hidden:
                status = "thinking… · " + status
        return Text.assemble(self.current, "\n", Text(status, style="dim"))


@dataclass
class ChatSession:
    """A conversation with one loaded engine."""

    engine: object  # moecli.engine.Engine: render_chat(), chat(), last_timings, last_stop_reason
    sampling: object
    out: Output
    system: str | None = None
    show_thinking: bool = True
    template_kwargs: dict = field(default_factory=dict)  # e.g. enable_thinking (llama.cpp's --reasoning)
    messages: list[dict] = field(default_factory=list)
    history: list[ReplyFigures] = field(default_factory=list)
    tool_calls: list = field(default_factory=list)  # the last reply's (moecli.templates.ToolCall)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    # --- one reply -----------------------------------------------------------------------------
    def reply(self, user_text: str) -> ReplyFigures:
        """Stream the model's answer to `user_text`, and remember both in the history. On an error
        the history is as it was before."""
        self.messages.append({"role": "user", "content": user_text})
        stop = [False]
        pieces: list[str] = []
        try:
            thinking = opens_thinking(self.engine.render_chat(self.messages, **self.template_kwargs))
            fmt = getattr(self.engine, "output_format", None)  # how its model writes tool calls
            self._format = fmt if fmt is not None and fmt.tools not in ("none", "harmony") else None
            special = {"special": True} if self._format and self._format.needs_special_tokens else {}
            with ctrl_c_sets(stop):
                stream = _Counter(self.engine.chat(self.messages, self.sampling, should_stop=lambda: stop[0],
                                                   template_kwargs=self.template_kwargs, **special))
                if self.out.is_terminal:
                    self._render_live(stream, pieces, thinking)
                else:
                    self._render_plain(stream, pieces, thinking)
        except MoecliError:
            self.messages.pop()
            raise
        figures = figures_of(self.engine.last_timings, stopped=stop[0], stop_reason=self.engine.last_stop_reason)
        self.history.append(figures)
        # the opening tag the prompt wrote belongs to the reply: the template strips old thinking
        text = "".join(pieces)
        self.messages.append({"role": "assistant", "content": (THINK_OPEN + "\n" + text) if thinking else text})
        return figures

    def _parts(self, stream: Iterable[str], pieces: list[str], thinking: bool) -> Iterator[tuple[str, str]]:
        """(kind, text) parts; without the thinking shown, the blank lines after `</think>` go too.
        A tool call the model writes (in its template's format) is one ("tool", line) part."""
        from moecli.templates import OutputParser

        splitter = ThinkSplitter(thinking)
        calls = OutputParser(self._format, reasoning=False) if getattr(self, "_format", None) else None
        self.tool_calls = []
        answer_started = False

        def parts(kind: str, text: str) -> Iterator[tuple[str, str]]:
            nonlocal answer_started
            if kind == "answer" and not answer_started and not self.show_thinking:
                text = text.lstrip()
            if kind == "answer" and text:
                answer_started = True
            if text:
                yield kind, text

        def answer(kind: str, text: str, final: bool = False) -> Iterator[tuple[str, str]]:
            if kind != "answer" or calls is None:
                yield from parts(kind, text)
                return
            delta = calls.finish() if final else calls.feed(text)
            yield from parts("answer", delta.content)
            for call in delta.tool_calls:
                self.tool_calls.append(call)
                yield "tool", f"→ tool call {call.name}({call.arguments})"

        for piece in stream:
            pieces.append(piece)
            for kind, text in splitter.feed(piece):
                yield from answer(kind, text)
        for kind, text in splitter.flush():
            yield from answer(kind, text)
        yield from answer("answer", "", final=True)

    def _render_plain(self, stream: Iterable[str], pieces: list[str], thinking: bool) -> None:
        """No terminal: plain text. Shown thinking keeps its tags (there is no dim in a pipe)."""
        write = self.out.stdout.write
        state = "answer"
        for kind, text in self._parts(stream, pieces, thinking):
            if kind == "think" and not self.show_thinking:
                continue
            if kind == "tool":
                write(("" if state == "tool" else "\n") + text + "\n")
                state = "tool"
                continue
            if kind != state and self.show_thinking and "think" in (kind, state):
                write(THINK_OPEN if kind == "think" else THINK_CLOSE)
            state = kind
            write(text)
            self.out.stdout.flush()
        if state == "think":
            write(THINK_CLOSE)
        write("\n")
        self.out.stdout.flush()

    def _render_live(self, stream: _Counter, pieces: list[str], thinking: bool) -> None:
        """A terminal: finished lines (ended by a newline, or full at the terminal's width) are
        printed for good; the line being written and a live tok/s figure stay in a two-line live
        area below them, so long replies scroll naturally."""
        console = self.out.console
        status = _LiveStatus(stream)
        with Live(status, console=console, refresh_per_second=8, transient=True) as live:
            for kind, text in self._parts(stream, pieces, thinking):
                hidden = kind == "think" and not self.show_thinking
                if hidden != status.thinking_hidden:  # say at once that it thinks, or stopped thinking
                    status.thinking_hidden = hidden
                    live.refresh()
                if hidden:
                    continue
                style = "dim italic" if kind == "think" else "cyan" if kind == "tool" else None
                if kind == "tool":
                    text = ("\n" if status.current.plain else "") + text + "\n"
                current, finished = status.current.copy(), []
                *done, rest = text.split("\n")
                for line in done:
                    current.append(line, style=style)
                    finished.append(current)
                    current = Text()
                current.append(rest, style=style)
                width = max(console.width, 20)
                if current.cell_len > width:
                    *full, current = current.wrap(console, width)
                    finished += full
                status.current = current  # before printing: the live area redraws below what is printed
                for line in finished:
                    live.console.print(line)
        if status.current.plain:
            console.print(status.current)


def complete_once(engine, prompt: str, sampling, out: Output) -> ReplyFigures:
    """Raw completion (`run --no-conversation -p TEXT`): the text continued as given, no template."""
    stop = [False]
    with ctrl_c_sets(stop):
        for piece in engine.complete(prompt, sampling, should_stop=lambda: stop[0]):
            out.stdout.write(piece)
            out.stdout.flush()
    out.stdout.write("\n")
    out.stdout.flush()
    return figures_of(engine.last_timings, stopped=stop[0], stop_reason=engine.last_stop_reason)


def run_repl(session: ChatSession, read_line: Callable[[str], str], out: Output) -> None:
    """The loop: a prompt, a reply, until /exit or Ctrl-D. Ctrl-C at the prompt clears the line; an
    error in one turn is reported and the chat goes on."""
    out.note("Type a message, /help for commands, Ctrl-D to leave.")
    while True:
        try:
            line = read_line(">>> ")
        except EOFError:
            out.print("")
            return
        except KeyboardInterrupt:
            out.print("")
            continue
        except UnicodeDecodeError:  # a reader that decodes strictly: the line is gone
            out.warn("that line was not valid UTF-8 and was dropped (is the terminal set to UTF-8?)")
            continue
        line, bad = valid_input(line)
        if bad:
            out.warn(f"that line was {NOT_UTF8} (is the terminal set to UTF-8?)")
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if handle_command(session, text, out) == "exit":
                return
            continue
        try:
            figures = session.reply(text)
        except MoecliError as err:
            out.error(err)
            continue
        out.note(figures.line())


def handle_command(session: ChatSession, text: str, out: Output) -> str | None:
    command, _, argument = text.partition(" ")
    command = command.lower()
    if command in ("/exit", "/quit", "/bye"):
        return "exit"
    if command in ("/help", "/?"):
        out.print(Text(HELP))
    elif command == "/reset":
        session.reset()
        out.print("conversation cleared", style="dim")
    elif command == "/system":
        if not argument.strip():
            out.print(Text(f"system prompt: {session.system or '(none)'}", style="dim"))
        else:
            session.system = argument.strip()
            session.reset()
            out.print("system prompt set; conversation cleared", style="dim")
    elif command == "/stats":
        show_stats(session, out)
    else:
        out.print(Text(f"unknown command {command}; /help lists them", style="yellow"))
    return None


def show_stats(session: ChatSession, out: Output) -> None:
    if not session.history:
        out.print("no reply yet", style="dim")
        return
    last = session.history[-1]
    out.print(f"last reply: {last.line()}")
    gen_n = sum(f.predicted_n for f in session.history)
    gen_s = sum(f.predicted_n / f.predicted_per_second for f in session.history if f.predicted_per_second > 0)
    avg = gen_n / gen_s if gen_s else 0.0
    out.print(f"session: {len(session.history)} replies, {gen_n} tokens generated, {avg:.1f} tok/s on average")
