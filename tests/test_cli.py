"""The `moecli` command as users meet it: plan, run, pull, list, rm and their errors, through
typer's CliRunner (in-process; stdin/stdout/stderr are not terminals), real subprocesses (exit
codes and no traceback as a shell sees them) and pseudo-terminals (80 columns, questions)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cliutil import ESC, ROOT, assert_one_error, env, invoke, moecli, screen, spawn
from hubserver import GATED_REPO, TINY_REPO

from moecli import store
from moecli.synth import build_recipe

PROFILE = ("--profile", "gtx1060-6gb")  # a 6 GB card: plans with a GPU on a machine without one


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """A dense qwen3 (synth's qwen3-tiny preset, with the Qwen tokenizer): no experts at all."""
    return build_recipe("qwen3-tiny").write(tmp_path_factory.mktemp("dense") / "dense.gguf")[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, demo_model_session) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    data = demo_model_session.read_bytes()
    files = {"not-gguf": folder / "notes.gguf", "short-header": folder / "short-header.gguf",
             "corrupt-header": folder / "corrupt-header.gguf", "truncated": folder / "truncated.gguf"}
    files["not-gguf"].write_text("these are notes, not a model\n")
    files["short-header"].write_bytes(data[:100])
    corrupt = bytearray(data[:4096])
    corrupt[8:16] = (1 << 62).to_bytes(8, "little")  # a tensor count no file can hold
    files["corrupt-header"].write_bytes(bytes(corrupt))
    files["truncated"].write_bytes(data[: len(data) // 2])
    # an architecture llama.cpp does not know, with every standard key (moecli plans it generically)
    recipe = build_recipe("qwen3-tiny", tokenizer=False, n_vocab=512)
    metadata = {k.replace("qwen3.", "foobar.", 1): v for k, v in recipe.metadata.items()}
    (files["unknown-arch"],) = replace(recipe, arch="foobar", metadata=metadata).write(folder / "foobar.gguf",
                                                                                        fill="sparse")
    return files


# --- plan ------------------------------------------------------------------------------------------


def test_plan_demo_renders_the_report_as_plain_text():
    ran = invoke("plan", "demo")
    assert ran.code == 0, ran.output
    assert ESC not in ran.output
    for heading in ("Machine", "Model", "Memory", "Placement", "Context", "Expected decode speed",
                    "Verdict: fits", "llama.cpp equivalent"):
        assert heading in ran.stdout
    assert "qwen35moe" in ran.stdout and "MoE: 16 experts, 4 active per token" in ran.stdout
    assert "llama-server -m " in ran.stdout and "--fit off" in ran.stdout


def test_plan_json_is_valid_and_complete():
    ran = invoke("plan", "demo", *PROFILE, "--json")
    assert ran.code == 0, ran.output
    data = json.loads(ran.stdout)  # nothing but JSON on stdout
    assert data["model"]["arch"] == "qwen35moe" and data["model"]["is_moe"]
    assert data["machine"]["gpus"][0]["name"] == "NVIDIA GeForce GTX 1060 6GB"
    p = data["plan"]
    assert p["fits"] and p["n_ctx"] == 4096
    assert [d["device"] for d in p["devices"]] == ["CUDA0", "CPU"]
    assert {"weights", "kv", "recurrent", "compute", "overhead", "total", "budget", "free"} <= set(p["devices"][0])
    assert p["params"]["llama_args"][:2] == ["-ngl", "all"]
    assert len(p["tensors"]) == len({t["name"] for t in p["tensors"]}) > 0


def test_plan_llama_args_is_one_line_to_paste(demo_model_session):
    ran = invoke("plan", "demo", *PROFILE, "--ctx", "8k", "--llama-args")
    assert ran.code == 0, ran.output
    assert ran.stdout.count("\n") == 1
    argv = shlex.split(ran.stdout)
    assert argv[:2] == ["llama-server", "-m"]
    assert Path(argv[2]).is_file() and Path(argv[2]).name == demo_model_session.name
    assert argv[argv.index("-c") + 1] == "8192" and argv[-2:] == ["--fit", "off"]
    assert argv[argv.index("-t") + 1] == "4"  # the profile's cores


def test_plan_with_llama_cpp_flags_accounts_for_them():
    ran = invoke("plan", "demo", "--vram", "6GiB", "--n-cpu-moe", "2", "--json")
    assert ran.code == 0, ran.output
    placement = json.loads(ran.stdout)["plan"]["placement"]
    assert placement["expert_layers_cpu"] == [0, 1] and placement["expert_layers_gpu"] == [2, 3]


def test_plan_dense_model_says_expert_placement_does_not_apply(dense):
    ran = invoke("plan", str(dense), *PROFILE)
    assert ran.code == 0, ran.output
    assert "dense (no experts)" in ran.stdout
    assert "expert placement (--cpu-moe, --n-cpu-moe, expert -ot) does not apply" in ran.stdout
    assert "experts on" not in ran.stdout


def test_plan_of_a_hub_model_reads_only_its_header_and_plans_like_the_local_copy(hub, tiny_files):
    path = "Tiny-MoE-Q8_0.gguf"
    remote = invoke("plan", f"{TINY_REPO}:Q8_0", *PROFILE, "--json")
    assert remote.code == 0, remote.output
    size = tiny_files[path].stat().st_size
    assert 0 < hub.sent(path) < size / 4  # the header's range requests, not the tensor data
    local = invoke("plan", str(tiny_files[path]), *PROFILE, "--json")
    assert json.loads(remote.stdout)["plan"] == json.loads(local.stdout)["plan"]
    args = invoke("plan", f"{TINY_REPO}:Q8_0", *PROFILE, "--llama-args")
    assert shlex.split(args.stdout)[:3] == ["llama-server", "-hf", f"{TINY_REPO}:Q8_0"]  # llama.cpp fetches it itself


def test_plan_report_reads_well_on_80_columns():
    pexpect = pytest.importorskip("pexpect")
    child = spawn("plan", "demo", *PROFILE, rows=60, cols=80, NO_COLOR="")
    child.expect(pexpect.EOF)
    # what the terminal shows: the spinner's frames (more of them on a busy machine) overwrite
    # one another there, rather than adding up to one long line
    lines = [line.rstrip() for line in screen(child.before)]
    command = [line for line in lines if line.lstrip().startswith("llama-server")]
    assert len(command) == 1  # soft-wrapped by the terminal, one line when copied
    assert all(len(line) <= 80 for line in lines if line not in command), "\n".join(lines)
    memory = lines[lines.index("Memory") + 1:lines.index("Placement")]
    assert any(line.split()[:1] == ["total"] and line.count("MiB") + line.count("GiB") == 2 for line in memory), memory
    alternatives = lines[lines.index("Alternatives considered") + 1:]
    assert any("leaves GPU memory unused that could hold expert layers" in line for line in alternatives), alternatives


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "args", "fragments"), [
    ("missing path", ["plan", "no/such/model.gguf"], ["does not exist"]),
    ("vram unit", ["plan", "demo", "--vram", "6XB"], ["--vram '6XB'", "unknown unit"]),
    ("unknown profile", ["plan", "demo", "--profile", "gtx9090"], ["unknown machine profile 'gtx9090'"]),
    ("budget below overhead", ["plan", "demo", "--vram", "512MiB"], ["does not even hold the CUDA runtime"]),
    ("context above training", ["plan", "demo", "--ctx", "64k"], ["context 65536 is above", "training context 32768"]),
    ("bad ctx", ["plan", "demo", "--ctx", "lots"], ["--ctx 'lots'"]),
    ("placement without GPU", ["plan", "demo", "-ngl", "2"], ["-ngl place tensors", "has no GPU"]),
    ("kv type", ["plan", "demo", "-ctk", "q9"], ["-ctk 'q9'"]),
    ("unknown alias", ["plan", "nosuchmodel"], ["'nosuchmodel' is not a Hub repo"]),
    ("not pulled", ["run", "org/model-GGUF:Q4_K_M", "-p", "hi"], ["not pulled yet"]),
    ("run placement without GPU", ["run", "demo", "--n-cpu-moe", "1", "-p", "hi"], ["no GPU to load on"]),
])
def test_errors_are_one_line(case, args, fragments):
    assert_one_error(invoke(*args), *fragments)


@pytest.mark.parametrize(("case", "fragments"), [
    ("not-gguf", ["is not a GGUF file"]),
    ("short-header", ["is truncated", "needs at least"]),
    ("corrupt-header", ["corrupt GGUF header"]),
    ("truncated", ["is truncated", "MiB of tensor data missing"]),
])
def test_bad_files_are_one_line_errors(bad_files, case, fragments):
    assert_one_error(invoke("plan", str(bad_files[case])), *fragments)
    assert_one_error(invoke("run", str(bad_files[case]), "-p", "hi"), *fragments)  # from the header: never loaded


def test_unknown_architecture_is_named_when_llama_cpp_refuses_it(bad_files):
    assert invoke("plan", str(bad_files["unknown-arch"]), "--json").code == 0  # moecli's generic rules plan it
    assert_one_error(invoke("run", str(bad_files["unknown-arch"]), "-p", "hi"),
                     "llama.cpp does not know architecture 'foobar'")


def test_expert_flags_on_a_dense_model(dense):
    for command in (["plan", str(dense), *PROFILE], ["run", str(dense), "-p", "hi"]):
        assert_one_error(invoke(*command, "--n-cpu-moe", "1"), "is a dense model", "--n-cpu-moe")


def test_context_is_checked_from_the_header_before_loading():
    ran = invoke("run", "demo", "--ctx", "40000", "--verbose", "-p", "hi")
    assert_one_error(ran, "above", "training context 32768")
    assert "llama_model_loader" not in ran.output  # --verbose shows llama.cpp's log: it never ran


def test_unknown_quant_tag_lists_the_tags(hub):
    ran = invoke("plan", f"{TINY_REPO}:Q9_9")
    assert_one_error(ran, f"{TINY_REPO} has no Q9_9 GGUF")
    assert "hint: tags in the repo: Q8_0, Q4_K_M, UD-Q4_K_XL, Q4_0" in ran.stderr


@pytest.mark.parametrize(("args", "fragments"), [
    (["plan", "missing.gguf"], ["missing.gguf does not exist"]),
    (["plan", "pyproject.toml"], ["is not a GGUF file"]),
    (["plan", "demo", "--vram", "6XB"], ["unknown unit"]),
    (["run", "demo", "--ctx", "99999", "-p", "hi"], ["training context"]),
])
def test_errors_through_a_real_process(args, fragments):
    ran = moecli(*args)
    assert_one_error(ran, *fragments)
    assert ran.stdout == ""


@pytest.mark.parametrize("args", [
    ["plan", "demo", "--json"], ["plan", "demo", "--llama-args"], ["plan", "demo", *PROFILE],
    ["bench", "demo", "-t", "1", "-p", "8", "-n", "2", "-r", "1", "--json"],
    ["bench", "demo", "-t", "1", "-p", "8", "-n", "2", "-r", "1", "--csv"],
    ["list"], ["list", "--json"],
])
def test_no_escape_codes_when_stdout_is_not_a_terminal(args):
    ran = invoke(*args)
    assert ran.code == 0, ran.output
    assert ESC not in ran.output


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"], ["run", "-h"], ["--version"]])
def test_help_and_version_are_plain_in_a_pipe(args):
    ran = moecli(*args)
    assert ran.code == 0 and ran.stdout.strip()
    assert ESC not in ran.output


def test_a_usage_error_is_plain_in_a_pipe():
    ran = moecli("plan", "demo", "--no-such-flag")
    assert ran.code == 2 and "No such option" in ran.stderr
    assert ESC not in ran.output and "Traceback" not in ran.output


# --- run ---------------------------------------------------------------------------------------------


def test_run_prompt_streams_a_reply_and_its_speeds():
    ran = moecli("run", "demo", "-t", "1", "-p", "Hello", "-n", "24", "--seed", "1")
    assert ran.code == 0, ran.output
    assert ESC not in ran.output
    assert ran.stdout.strip()  # the reply, alone on stdout
    figures = ran.stderr.splitlines()[-1]
    assert figures.startswith("prompt ") and " tok/s · generation " in figures and figures.endswith("s")
    assert ran.stderr.splitlines()[0].startswith("plan: CPU only, ctx 4096 · -ngl 0 -c 4096 -lm mmap -t 1")


def test_run_a_dense_model(dense):
    ran = invoke("run", str(dense), "-t", "1", "-p", "Hello", "-n", "8", "--ignore-eos")
    assert ran.code == 0, ran.output
    assert "generation 8 tok" in ran.stderr


def test_run_without_a_terminal_wants_a_prompt():
    assert_one_error(invoke("run", "demo"), "no terminal to chat in")


def test_run_bad_reasoning_value():
    assert_one_error(invoke("run", "demo", "-p", "hi", "--reasoning", "maybe"), "--reasoning 'maybe'")


def test_ctrl_c_while_loading_exits_130_without_a_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "moecli", "run", "demo", "-t", "1", "-p", "hi", "--ignore-eos"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=ROOT)
    first = proc.stderr.readline()  # the plan line: printed just before llama.cpp loads the model
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first.startswith("plan: ")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception" not in err


def test_ctrl_c_during_a_prompt_reply_stops_it_and_exits_130():
    proc = subprocess.Popen([sys.executable, "-m", "moecli", "run", "demo", "-t", "1", "-p", "hi", "--ignore-eos"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=ROOT)
    started = proc.stdout.read(40)  # the reply is streaming
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert len(started) == 40
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("· stopped") and "Traceback" not in err


# --- pull, list, rm ------------------------------------------------------------------------------------


def test_pull_list_rm_end_to_end(hub):
    pulled = moecli("pull", f"{TINY_REPO}:Q4_K_M")  # stdin is not a terminal: no question asked
    assert pulled.code == 0, pulled.output
    assert ESC not in pulled.output  # no progress bar leaks into a pipe
    lines = pulled.stdout.splitlines()
    assert lines[0].startswith(f"{TINY_REPO}:Q4_K_M (") and "in 3 files): Q4_K_M was asked for" in lines[0]
    assert lines[1].startswith("on this machine: fits")  # the plan, before the download ...
    assert lines[-1].startswith(f"pulled {TINY_REPO}:Q4_K_M (downloaded ")  # ... and the result after it
    assert re.search(r"\(downloaded [0-9.]+ [KM]iB in [0-9.]+ s, [0-9.]+ [KMG]iB/s\), verified: ", lines[-1])
    record = store.get(f"{TINY_REPO}:Q4_K_M")
    assert all(p.is_file() for p in record.paths)

    hub.reset_counters()
    by_name = invoke("plan", f"{TINY_REPO}:Q4_K_M", "--llama-args")  # the pulled copy: nothing read remotely
    assert by_name.code == 0 and shlex.split(by_name.stdout)[1:3] == ["-m", str(record.path)]
    assert sum(hub.bytes_sent.values()) == 0

    listed = invoke("list")
    assert listed.code == 0 and ESC not in listed.output
    assert f"{TINY_REPO}:Q4_K_M" in listed.stdout and str(record.path) in listed.stdout
    assert "fits this machine:" in listed.stdout
    (entry,) = json.loads(invoke("list", "--json").stdout)
    assert entry["name"] == f"{TINY_REPO}:Q4_K_M" and entry["fits"] is True and entry["present"] is True

    assert_one_error(invoke("rm", f"{TINY_REPO}:Q4_K_M"), "without a confirmation")  # no terminal, no --yes
    assert all(p.is_file() for p in record.paths)
    removed = invoke("rm", f"{TINY_REPO}:Q4_K_M", "--yes")
    assert removed.code == 0, removed.output
    assert removed.stdout.splitlines()[-1].startswith(f"removed {TINY_REPO}:Q4_K_M; freed ")
    assert not any(p.exists() for p in record.paths)
    assert invoke("list").stdout.startswith("no models pulled yet")


def test_pull_without_a_quant_takes_the_largest_that_fits(hub):
    ran = invoke("pull", TINY_REPO, "--yes", "--ram", "4GiB", "--cpu-only")
    assert ran.code == 0, ran.output
    assert "is the largest quant that fits this machine" in ran.stdout


def test_pull_asks_on_a_terminal_and_shows_the_plan_first(hub, tiny_files):
    pexpect = pytest.importorskip("pexpect")
    child = spawn("pull", f"{TINY_REPO}:Q8_0", HF_ENDPOINT=hub.url)
    child.expect_exact("on this machine: ")
    child.expect(r"Download [0-9.]+ MiB\? \[Y/n\]")
    assert hub.sent("Tiny-MoE-Q8_0.gguf") < tiny_files["Tiny-MoE-Q8_0.gguf"].stat().st_size / 4  # only the header
    child.sendline("n")
    child.expect_exact("nothing downloaded")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert store.list_models() == ()


@pytest.mark.parametrize(("what", "args", "fragments"), [
    ("unknown repo", ["pull", "tiny-org/Nothing-Here-GGUF", "--yes"], ["tiny-org/Nothing-Here-GGUF is not on"]),
    ("unknown tag", ["pull", f"{TINY_REPO}:Q5_K_M", "--yes"], ["has no Q5_K_M GGUF"]),
    ("gated", ["pull", GATED_REPO, "--yes"], [f"{GATED_REPO} is gated"]),
    ("local file", ["pull", "model.gguf"], ["is a local file"]),
])
def test_pull_errors_are_one_line(hub, what, args, fragments):
    ran = invoke(*args)
    assert_one_error(ran, *fragments)
    if what == "unknown tag":
        assert "tags in the repo: Q8_0, Q4_K_M, UD-Q4_K_XL, Q4_0" in ran.stderr


def test_pull_refuses_when_the_disk_is_too_small(hub, monkeypatch):
    import shutil as shutil_module

    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: real(path)._replace(free=100_000))
    ran = invoke("pull", f"{TINY_REPO}:Q4_K_M", "--yes")
    assert_one_error(ran, "not enough disk space", "still to download", "free in")
    assert store.list_models() == ()


def test_rm_asks_on_a_terminal(hub):
    assert invoke("pull", f"{TINY_REPO}:Q4_0", "--yes").code == 0
    pexpect = pytest.importorskip("pexpect")
    paths = store.get(f"{TINY_REPO}:Q4_0").paths
    child = spawn("rm", f"{TINY_REPO}:Q4_0")
    child.expect(r"Remove tiny-org/Tiny-MoE-GGUF:Q4_0 and free [0-9.]+ MiB\? \[y/N\]")
    child.sendline("n")
    child.expect_exact("nothing removed")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and all(p.is_file() for p in paths)
    child = spawn("rm", f"{TINY_REPO}:Q4_0")
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect_exact("removed tiny-org/Tiny-MoE-GGUF:Q4_0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and not any(p.exists() for p in paths)


@pytest.mark.parametrize("name", [GATED_REPO, f"{GATED_REPO}:Q4_0"])
def test_plan_of_a_gated_model_says_so(hub, name):
    assert_one_error(invoke("plan", name), f"{GATED_REPO} is gated")


@pytest.mark.parametrize("flag", ["-p", "--system"])
def test_prompt_and_system_prompt_of_invalid_utf8_are_answered(flag):
    """Issue 11, defect 1: `-p` and `--system` that are not UTF-8 (sys.argv carries such bytes as
    surrogates) crashed in the tokenizer after the model had loaded."""
    bad = os.fsdecode(b"\xff\xfe caf\xe9")
    args = ["-p", bad] if flag == "-p" else ["-p", "Hello", "--system", bad]
    ran = moecli("run", "demo", "-t", "1", "-n", "4", "--ignore-eos", *args)
    assert ran.code == 0, ran.output
    assert "Traceback" not in ran.output
    assert f"warning: {'--prompt' if flag == '-p' else '--system'} is not valid UTF-8" in ran.stderr
    assert "generation 4 tok" in ran.stderr


def test_the_tokenizer_takes_text_with_undecodable_bytes(demo_model_session):
    from moecli.engine import Engine

    with Engine(demo_model_session) as engine:
        assert engine.tokenize(os.fsdecode(b"a\xffb")) == engine.tokenize("a\ufffdb")
        assert engine.tokenize("x\ud800y") == engine.tokenize("x\ufffdy")  # any lone surrogate


def test_run_reports_the_context_llama_cpp_made():
    """Issue 11, defect 12: `run -c 1` said ctx 1; llama.cpp makes 256 (whole KV cells)."""
    ran = invoke("run", "demo", "-t", "1", "-c", "1", "-p", "Hello", "-n", "2", "--ignore-eos")
    assert ran.code == 0, ran.output
    assert ran.stderr.startswith("plan: CPU only, ctx 256 (-c 1 rounded up by llama.cpp)"), ran.stderr
    assert "llama.cpp made a context" not in ran.stderr  # the plan's figure is the one it made


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("plan", "demo"), ("plan", "demo", "--json"), ("--version",), ("plan", "--help"),
                                  ("run", "demo", "-t", "1", "-p", "Hi", "-n", "2")])
def test_stdout_on_a_full_disk_is_one_line(args):
    """Issue 11, defect 5: `moecli plan demo > /dev/full` ended in a traceback from inside rich."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "moecli", *args], stdin=subprocess.DEVNULL, stdout=full,
                              stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: cannot write to stdout: No space left on device"], done.stderr


def test_a_reader_that_leaves_the_pipe_early_gets_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "moecli", "plan", "demo"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=ROOT)
    proc.stdout.close()  # `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize("entry", ["runpy", "script"])
def test_ctrl_c_while_the_cli_is_still_importing_exits_130_quietly(entry):
    """Issue 11, defect 11: Ctrl-C in the first ~0.3 s (typer and rich importing) printed a
    KeyboardInterrupt traceback. The SIGINT is sent while `typer` is imported, as a user's would be."""
    start = ("import runpy; runpy.run_module('moecli', run_name='__main__')" if entry == "runpy" else
             "from moecli.__main__ import main; sys.exit(main())")  # what the installed `moecli` script does
    code = ("import builtins, os, signal, sys\n"
            "real = builtins.__import__\n"
            "def hooked(name, *a, **k):\n"
            "    if name == 'typer':\n"
            "        builtins.__import__ = real\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hooked\n"
            "sys.argv = ['moecli', '--version']\n" + start + "\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.stdout == ""


def test_a_full_context_with_p_gives_no_chat_commands():
    """Issue 11, defect 15: `-p` printed the chat's "/reset starts over"."""
    ran = invoke("run", "demo", "-t", "1", "-c", "256", "-p", "word " * 200, "--ignore-eos", "--seed", "1")
    assert ran.code == 0, ran.output
    assert "the context is full: a larger -c gives more room" in ran.stderr and "/reset" not in ran.stderr


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("vram", ["0", "0GiB", "0MiB"])
def test_vram_zero_suggests_what_means_no_gpu(command, vram):
    """Issue 11, defect 15: `--vram 0`'s hint suggested `0GiB`, which was then refused."""
    ran = invoke(command, "demo", "--vram", vram, *(["-p", "hi"] if command == "run" else []))
    assert_one_error(ran, f"--vram {vram}: a GPU with no memory is no GPU")
    assert "--cpu-only" in ran.stderr and "0GiB" not in ran.stderr.replace(f"--vram {vram}", "")


def test_plan_that_does_not_fit_ram_exits_1_and_says_what_would_fit():
    """Issue 11, defect 3: `plan demo --ram 1MiB` said "Verdict: fits" and exited 0."""
    ran = moecli("plan", "demo", "--ram", "1MiB")
    assert ran.code == 1, ran.output
    assert "Verdict: DOES NOT FIT" in ran.stdout and "would fit RAM with" in ran.stdout


def test_the_qwen36_header_on_8_gib_of_ram_does_not_fit_and_says_what_would(tmp_path):
    (path,) = build_recipe("qwen3.6-35b-a3b").write(tmp_path / "q36.gguf", fill="sparse")
    ran = invoke("plan", str(path), "--ram", "8GiB", "--vram", "6GiB")
    assert ran.code == 1, ran.output
    assert "Verdict: DOES NOT FIT" in ran.stdout
    assert re.search(r"would fit RAM with a quant at most \d+% the size of this one or [0-9.]+ GiB more free RAM",
                     ran.stdout), ran.stdout
    assert json.loads(invoke("plan", str(path), "--ram", "8GiB", "--vram", "6GiB", "--json").stdout)["plan"]["fits"] is False


def test_ctrl_c_during_bench_prints_what_was_measured_marked_partial(monkeypatch):
    """Issue 11, defect 10: Ctrl-C during `bench` printed nothing and dropped the finished
    repetitions. The SIGINT comes after the third tg repetition, as a user's Ctrl-C would."""
    from moecli.engine import Engine

    real, calls = Engine.bench_gen, []

    def bench_gen(self, *args, **kwargs):
        seconds = real(self, *args, **kwargs)
        calls.append(seconds)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return seconds

    monkeypatch.setattr(Engine, "bench_gen", bench_gen)
    ran = invoke("bench", "demo", "-t", "1", "-p", "16", "-n", "4", "-r", "10", "--json")
    assert ran.code == 130, ran.output
    assert "interrupted (Ctrl-C): partial results" in ran.stderr
    data = json.loads(ran.stdout)
    assert data["partial"] is True
    assert [(r["test"], len(r["samples_ns"])) for r in data["results"]] == [("pp16", 10), ("tg4", 3)]


def test_ctrl_c_during_pull_says_that_pulling_again_resumes(monkeypatch):
    from moecli import app as usecases

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(usecases, "pull", interrupted)
    ran = invoke("pull", f"{TINY_REPO}:Q4_K_M", "--yes")
    assert ran.code == 130
    assert f"`moecli pull {TINY_REPO}:Q4_K_M` again resumes it" in ran.stderr
