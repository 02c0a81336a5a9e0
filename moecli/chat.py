"""The interactive chat (`moecli run`): streams replies with a live tok/s line, keeps the history in
the model's chat template, slash commands, Ctrl-C stops a reply, Ctrl-D leaves.

The terminal is injected (an `Output` and a line reader), so tests drive the real code path; a few
pseudo-terminal tests cover what only a real terminal shows.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.live import Live
from rich.text import Text

from moecli.output import Output

HELP = """\
/help           this help
/reset          forget the conversation (keeps the system prompt)
/system TEXT    set the system prompt and start over
/stats          figures of the last reply and of the session
/exit           leave (also Ctrl-D)
Ctrl-C stops the reply being written."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """Splits streamed text into ("think", text) and ("answer", text) parts at Qwen3's
    `<think>`/`</think>` tags, which may arrive split over several pieces."""

    def __init__(self) -> None:
        self.thinking = False
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
    stopped: bool = False

    def line(self) -> str:
        text = (
            f"prompt {self.prompt_n} tok, {self.prompt_per_second:.1f} tok/s · "
            f"generation {self.predicted_n} tok, {self.predicted_per_second:.1f} tok/s · "
            f"first token {self.ttft_ms / 1000:.2f} s"
        )
        return text + (" · stopped" if self.stopped else "")


def figures_of(timings, stopped: bool = False) -> ReplyFigures:
    return ReplyFigures(
        prompt_n=timings.prompt_n,
        prompt_per_second=timings.prompt_per_second,
        predicted_n=timings.predicted_n,
        predicted_per_second=timings.predicted_per_second,
        ttft_ms=timings.ttft_ms,
        stopped=stopped,
    )


@contextmanager
def ctrl_c_sets(flag: list[bool]):
    """While a reply streams, Ctrl-C only raises a flag the engine polls between tokens: a
    KeyboardInterrupt inside llama.cpp's decode would leave the context in an unknown state."""

    def handler(signum, frame):
        flag[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (tests): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class ChatSession:
    """A conversation with one loaded engine."""

    engine: object  # moecli.engine.Engine (duck-typed: chat(messages, sampling, should_stop), last_timings)
    sampling: object
    out: Output
    system: str | None = None
    show_thinking: bool = True
    messages: list[dict] = field(default_factory=list)
    history: list[ReplyFigures] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    # --- one reply -----------------------------------------------------------------------------
    def reply(self, user_text: str) -> ReplyFigures:
        """Stream the model's answer to `user_text`, and remember both in the history."""
        self.messages.append({"role": "user", "content": user_text})
        stop = [False]
        pieces: list[str] = []
        with ctrl_c_sets(stop):
            stream = self.engine.chat(self.messages, self.sampling, should_stop=lambda: stop[0])
            if self.out.is_terminal:
                self._render_live(stream, pieces)
            else:
                self._render_plain(stream, pieces)
        figures = figures_of(self.engine.last_timings, stopped=stop[0])
        self.history.append(figures)
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        return figures

    def _parts(self, stream: Iterable[str], pieces: list[str]) -> Iterator[tuple[str, str]]:
        splitter = ThinkSplitter()
        for piece in stream:
            pieces.append(piece)
            yield from splitter.feed(piece)
        yield from splitter.flush()

    def _render_plain(self, stream: Iterable[str], pieces: list[str]) -> None:
        """No terminal: the answer as plain text, thinking included only when asked to show it."""
        write = self.out.stdout.write
        for kind, text in self._parts(stream, pieces):
            if kind == "answer" or self.show_thinking:
                write(text)
                self.out.stdout.flush()
        write("\n")

    def _render_live(self, stream: Iterable[str], pieces: list[str]) -> None:
        """A terminal: finished lines are printed for good; the line being written and a live tok/s
        figure stay in a small live area below them, so long replies scroll naturally."""
        console = self.out.console
        current = Text()
        first_at: float | None = None
        n_pieces = 0

        def status() -> Text:
            if first_at is None:
                live_line = Text("waiting for the first token…", style="dim")
            else:
                elapsed = max(time.perf_counter() - first_at, 1e-6)
                rate = (n_pieces - 1) / elapsed if n_pieces > 1 else 0.0
                live_line = Text(f"{rate:.1f} tok/s · {n_pieces} tok (live)", style="dim")
            return Text.assemble(current, "\n", live_line)

        with Live(status(), console=console, refresh_per_second=8, transient=True) as live:
            for kind, text in self._parts(stream, pieces):
                n_pieces += 1
                if first_at is None:
                    first_at = time.perf_counter()
                if kind == "think" and not self.show_thinking:
                    continue
                style = "dim italic" if kind == "think" else None
                *done, rest = text.split("\n")
                for line in done:
                    current.append(line, style=style)
                    live.console.print(current)
                    current = Text()
                current.append(rest, style=style)
                live.update(status())
        if current.plain:
            console.print(current)


def run_repl(session: ChatSession, read_line: Callable[[str], str], out: Output) -> None:
    """The loop: a prompt, a reply, until /exit or Ctrl-D. Ctrl-C at the prompt clears the line."""
    out.print("Type a message, /help for commands, Ctrl-D to leave.", style="dim")
    while True:
        try:
            line = read_line(">>> ")
        except EOFError:
            out.print("")
            return
        except KeyboardInterrupt:
            out.print("")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if handle_command(session, text, out) == "exit":
                return
            continue
        figures = session.reply(text)
        out.note(figures.line())


def handle_command(session: ChatSession, text: str, out: Output) -> str | None:
    command, _, argument = text.partition(" ")
    command = command.lower()
    if command in ("/exit", "/quit", "/bye"):
        return "exit"
    if command in ("/help", "/?"):
        out.print(HELP)
    elif command == "/reset":
        session.reset()
        out.print("conversation cleared", style="dim")
    elif command == "/system":
        if not argument.strip():
            out.print(f"system prompt: {session.system or '(none)'}", style="dim")
        else:
            session.system = argument.strip()
            session.reset()
            out.print("system prompt set; conversation cleared", style="dim")
    elif command == "/stats":
        show_stats(session, out)
    else:
        out.print(f"unknown command {command}; /help lists them", style="yellow")
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
