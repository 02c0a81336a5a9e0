"""The one output object: plain text without escape codes when stdout is not a terminal, rich on a
terminal, JSON alone on stdout; errors as one line and a hint."""

from __future__ import annotations

import enum
import io
import json
from dataclasses import dataclass

from cliutil import ESC

from moecli.errors import BadInput, MoecliError
from moecli.output import Output


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def pipes(**kwargs) -> Output:
    return Output(stdout=io.StringIO(), stderr=io.StringIO(), **kwargs)


def test_a_pipe_gets_plain_text():
    out = pipes()
    assert not out.is_terminal
    out.print("result", style="bold green")
    out.note("a remark")
    out.warn("careful")
    out.console.print(out.table("Title", ["a", "b"], [["1", "two"], ["3", "four"]]))
    text = out.stdout.getvalue() + out.stderr.getvalue()
    assert ESC not in text
    assert out.stdout.getvalue().startswith("result\n")
    assert out.stderr.getvalue() == "a remark\nwarning: careful\n"  # side remarks never on stdout


def test_long_lines_are_not_wrapped_in_a_pipe():
    out = pipes()
    out.print("x" * 500)
    assert out.stdout.getvalue() == "x" * 500 + "\n"


def test_a_terminal_gets_styles(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Output(stdout=TTY(), stderr=TTY())
    assert out.is_terminal
    out.print("result", style="bold")
    out.note("a remark")
    assert out.stdout.getvalue() == "\x1b[1mresult\x1b[0m\n"
    assert out.stderr.getvalue() == "\x1b[2ma remark\x1b[0m\n"


def test_no_color_is_honoured_on_a_terminal(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = Output(stdout=TTY(), stderr=TTY())
    out.print("result", style="bold red")
    assert out.stdout.getvalue() == "result\n"


def test_text_is_never_taken_for_markup():
    out = pipes()
    out.print(r"-ot blk\.[0-9]+\.ffn_.*_exps=CPU [bold]not bold[/bold]")
    out.warn("[red]x[/red]")
    out.console.print(out.table(None, ["path"], [["/models/[v2]/a.gguf"]]))
    assert out.stdout.getvalue().startswith(r"-ot blk\.[0-9]+\.ffn_.*_exps=CPU [bold]not bold[/bold]" + "\n")
    assert "/models/[v2]/a.gguf" in out.stdout.getvalue()
    assert out.stderr.getvalue() == "warning: [red]x[/red]\n"


def test_an_error_is_one_line_and_a_hint():
    out = pipes()
    out.error(BadInput("--vram '6XB' has an unknown unit 'XB'", "use B, KiB, MiB, GiB"))
    out.error(MoecliError("no hint here"))
    assert out.stderr.getvalue() == ("error: --vram '6XB' has an unknown unit 'XB'\n  hint: use B, KiB, MiB, GiB\n"
                                     "error: no hint here\n")
    assert out.stdout.getvalue() == ""


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Point:
    x: int
    tags: tuple[str, ...]
    colour: Colour


class WithToDict:
    def to_dict(self) -> dict:
        return {"mine": True}


def test_json_mode_keeps_stdout_for_the_json():
    out = pipes(json_mode=True)
    assert not out.is_terminal
    out.print("people's text goes to stderr")
    out.json({"point": Point(1, ("a",), Colour.RED), "own": WithToDict(), "set": frozenset({3})})
    assert json.loads(out.stdout.getvalue()) == {"point": {"x": 1, "tags": ["a"], "colour": "red"},
                                                 "own": {"mine": True}, "set": [3]}
    assert out.stderr.getvalue() == "people's text goes to stderr\n"


def test_json_mode_on_a_terminal_is_still_only_json():
    out = Output(stdout=TTY(), stderr=io.StringIO(), json_mode=True)
    out.json([1, 2])
    assert json.loads(out.stdout.getvalue()) == [1, 2] and ESC not in out.stdout.getvalue()


def test_raw_text_is_written_as_is():
    out = pipes()
    out.raw("a,b\n1,2")
    out.raw("llama-server -m x.gguf\n")
    assert out.stdout.getvalue() == "a,b\n1,2\nllama-server -m x.gguf\n"
