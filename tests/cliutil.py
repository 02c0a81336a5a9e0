"""Running the `moecli` command in tests: in-process through typer's CliRunner (fast; stdin, stdout
and stderr are not terminals), as a real subprocess (proves what a shell sees: exit codes, no
traceback), or in a pseudo-terminal (pexpect: what only a terminal shows)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ESC = "\x1b["  # the start of every colour / cursor escape sequence
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z])")
ROOT = Path(__file__).resolve().parent.parent

# Variables that make rich or typer colour output that is not a terminal (typer forces a terminal
# under GitHub Actions): the subprocesses here run as a user's shell would, without them.
_FORCING = ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in _FORCING}
    out.update(extra)
    return out


def invoke(*args: str, input: str | None = None, stdin_is_terminal: bool = False) -> Ran:
    """`moecli ARGS` in this process (typer's CliRunner: stdout and stderr are not terminals; stdin
    is one only where `stdin_is_terminal`, injected as the Output's, so that questions are asked)."""
    from typer.testing import CliRunner

    from moecli.cli import app

    obj = {"stdin_is_terminal": True} if stdin_is_terminal else None
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False, obj=obj)
    return Ran(result.exit_code, result.stdout, result.stderr)


def moecli(*args: str, timeout: float = 120, stdin=subprocess.DEVNULL, **extra_env: str) -> Ran:
    """`moecli ARGS` as a subprocess with pipes (stdin: /dev/null, as in CI)."""
    done = subprocess.run([sys.executable, "-m", "moecli", *args], stdin=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env(**extra_env), cwd=ROOT)
    return Ran(done.returncode, done.stdout, done.stderr)


def spawn(*args: str, rows: int = 40, cols: int = 80, timeout: float = 60, codec_errors: str = "strict",
          **extra_env: str):
    """`moecli ARGS` in a pseudo-terminal of rows x cols (`codec_errors="replace"` where the terminal
    echoes bytes that are not UTF-8)."""
    pexpect = pytest.importorskip("pexpect")
    return pexpect.spawn(sys.executable, ["-m", "moecli", *args], dimensions=(rows, cols), encoding="utf-8",
                         codec_errors=codec_errors, timeout=timeout, env=env(TERM="xterm", **extra_env),
                         cwd=str(ROOT))


def plain(text: str) -> str:
    """Terminal output without its escape sequences, carriage returns folded away."""
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "")


def screen(raw: str) -> list[str]:
    """What a terminal shows after `raw` (enough of one for rich's output: text, CR, LF, erase line,
    cursor up; colours and cursor visibility ignored). Lines are not wrapped: rich wraps itself."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\n":
            row, col = row + 1, 0
            lines.extend([""] * (row + 1 - len(lines)))
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            lines[row] = ""
        elif token.startswith("\x1b[") and token.endswith("A"):
            row = max(0, row - int(token[2:-1] or 1))
        elif not token.startswith("\x1b"):
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def assert_one_error(ran: Ran, *fragments: str) -> str:
    """A user error as moecli reports it: exit code not 0, exactly one `error:` line (an optional
    hint line after it, nothing else on stderr), no traceback, no escape codes. Returns the line."""
    assert ran.code != 0, ran.output
    assert "Traceback" not in ran.output, ran.output
    assert ESC not in ran.output, ran.output
    errors = ran.error_lines()
    assert len(errors) == 1, ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    at = lines.index(errors[0])
    assert all(not line.startswith("  hint: ") or i == at + 1 for i, line in enumerate(lines)), ran.stderr
    assert len(lines[at:]) <= 2 and (len(lines[at:]) == 1 or lines[at + 1].startswith("  hint: ")), ran.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def measured_bandwidth(tmp_path_factory) -> Path:
    """This machine's RAM bandwidth, measured once per session (the probe caches it per user dir)."""
    from moecli import machine

    home = tmp_path_factory.mktemp("bandwidth-home")
    saved = os.environ.get("MOECLI_HOME")
    os.environ["MOECLI_HOME"] = str(home)
    try:
        machine.ram_bandwidth()
        return machine._bandwidth_cache()  # noqa: SLF001 - the cache file is the probe's own
    finally:
        if saved is None:
            del os.environ["MOECLI_HOME"]
        else:
            os.environ["MOECLI_HOME"] = saved


@pytest.fixture(autouse=True)
def probed_once(measured_bandwidth) -> None:
    """Every test's (isolated) user dir gets the session's measured bandwidth: a command that
    probes this machine then reads it instead of measuring again (0.5 s each)."""
    from moecli import machine

    target = machine._bandwidth_cache()  # noqa: SLF001
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(measured_bandwidth, target)
