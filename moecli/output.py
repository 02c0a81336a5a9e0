"""One output object per command, chosen once: rich on a terminal, plain text when stdout is a pipe
or a file (no escape codes), JSON or CSV for scripts. A command hands its result to `result()`,
which renders it in the mode chosen; commands never test `if json:`.

The terminal is injected (stdin, stdout, stderr, whether stdin is a terminal), as httpie's
`Environment` does, so that questions (`pull`, `rm`) and terminal-only behaviour are testable
without a pseudo-terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from moecli.errors import MoecliError


class OutputFailed(MoecliError):
    """stdout cannot be written (a full disk, a closed pipe): the command's result is lost. A
    closed pipe (`moecli plan demo | head -1`) is what the reader wanted: no message, exit 141 as
    a process killed by SIGPIPE."""

    def __init__(self, message: str, hint: str = "", *, broken_pipe: bool = False) -> None:
        super().__init__(message, hint)
        self.broken_pipe = broken_pipe
        if broken_pipe:
            self.exit_code = 141


class _Guarded:
    """A stream whose write errors become OutputFailed, naming the stream and the cause: `moecli
    plan demo > /dev/full` gives one line on stderr, not a traceback from inside rich."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream, self._name = stream, name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputFailed:
        _silence(self._stream)
        return OutputFailed(f"cannot write to {self._name}: {exc.strerror or exc}",
                            f"free space on the disk {self._name} goes to, or redirect it elsewhere",
                            broken_pipe=isinstance(exc, BrokenPipeError))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guarded(stream: TextIO, name: str = "stdout") -> TextIO:
    """`stream` with its write errors as OutputFailed (once: a guarded stream is returned as it is)."""
    return stream if isinstance(stream, _Guarded) else _Guarded(stream, name)  # type: ignore[return-value]


def _silence(stream: TextIO) -> None:
    """Point a failed stream at /dev/null, so that Python's flush at exit does not fail again."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Output:
    """Where a command's results go. `json_mode` prints only JSON on stdout; everything for people
    (progress, notes) then goes to stderr."""

    json_mode: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdin_is_terminal: bool | None = None  # None: ask stdin
    csv_mode: bool = False

    def __post_init__(self) -> None:
        self.json_mode = self.json_mode or self.csv_mode  # results only on stdout
        self.stdout = guarded(self.stdout)
        if self.stdin_is_terminal is None:
            self.stdin_is_terminal = _is_tty(self.stdin)
        self.is_terminal = _is_tty(self.stdout) and not self.json_mode
        plain = not self.is_terminal
        no_color = plain or bool(os.environ.get("NO_COLOR"))
        # A pipe gets plain text: no colours, no cursor tricks, and lines as long as they need to be.
        self.console = Console(
            file=self.stdout,
            force_terminal=self.is_terminal,
            no_color=no_color,
            color_system=None if no_color else "auto",
            highlight=False,
            width=None if self.is_terminal else 200,
            soft_wrap=plain,
        )
        err_tty = _is_tty(self.stderr)
        self.err = Console(
            file=self.stderr,
            force_terminal=err_tty,
            no_color=not err_tty or bool(os.environ.get("NO_COLOR")),
            highlight=False,
            width=None if err_tty else 200,
            soft_wrap=not err_tty,
        )

    # --- for people -------------------------------------------------------------------------
    # Strings are printed as they are (markup=False): they carry paths, regexes and model names,
    # whose brackets rich would otherwise take for markup. Styled text is passed as rich Text.
    def print(self, *objects: Any, style: str | None = None) -> None:
        """A line for people: on stdout normally, on stderr in JSON mode (stdout is for the JSON)."""
        target = self.err if self.json_mode else self.console
        target.print(*objects, style=style, markup=False)

    def note(self, text: str) -> None:
        """A side remark (dim on a terminal); always on stderr so pipelines only see results."""
        self.err.print(text, style="dim", markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", style="yellow", markup=False)

    def error(self, err: MoecliError) -> None:
        self.err.print(f"error: {err.message}", style="bold red", markup=False)
        if err.hint:
            self.err.print(f"  hint: {err.hint}", style="red", markup=False)

    def table(self, title: str | None, columns: list[str], rows: list[list[Any]], *, justify: dict | None = None) -> Table:
        table = Table(title=title, box=box.SIMPLE_HEAVY if self.is_terminal else box.SIMPLE, title_justify="left",
                      show_edge=False)
        for name in columns:
            table.add_column(name, justify=(justify or {}).get(name, "left"))
        for row in rows:
            table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
        return table

    def confirm(self, question: str, *, default: bool) -> bool:
        """A yes/no question on stderr, answered on stdin (an empty answer or end of input: the
        default). Only asked where stdin is a terminal; callers check `stdin_is_terminal` first."""
        self.err.print(f"{question} [{'Y/n' if default else 'y/N'}]: ", end="", markup=False)
        self.err.file.flush()
        while True:
            answer = self.stdin.readline()
            if not answer:
                self.err.print()
                return default
            word = answer.strip().lower()
            if not word:
                return default
            if word in ("y", "yes", "n", "no"):
                return word.startswith("y")
            self.err.print("please answer y or n: ", end="", markup=False)
            self.err.file.flush()

    # --- results ------------------------------------------------------------------------------
    def result(self, data: Callable[[], Any], *, human: Callable[[], None], csv: Callable[[], str] | None = None) -> None:
        """A command's result in the mode chosen: `data()` as JSON, `csv()` as CSV, or `human()`
        (tables and lines for people). Each form is built only in its own mode (a plan's JSON
        form alone costs a sixth of `moecli plan`)."""
        if self.csv_mode:
            assert csv is not None, "this result has no CSV form"
            self.raw(csv())
        elif self.json_mode:
            self.json(data())
        else:
            human()

    # --- for scripts --------------------------------------------------------------------------
    def json(self, obj: Any) -> None:
        self.stdout.write(json.dumps(obj, indent=2, default=_jsonable) + "\n")
        self.stdout.flush()

    def raw(self, text: str) -> None:
        """Text exactly as given (flags, CSV): no wrapping, no markup."""
        self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "value"):  # enums
        return obj.value
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)
