"""The use-case layer and what the CLI gets from it: the Python API, placement flags with
llama.cpp's meaning, one meaning of --vram, the plan a pull shows being the one that chose the
quant, and questions asked through an injected terminal."""

from __future__ import annotations

import io

import pytest
from cliutil import assert_one_error, invoke
from hubserver import TINY_REPO

import moecli
from moecli import app, gguf, machine, store
from moecli.errors import BadInput, EngineError
from moecli.facts import MachineFacts
from moecli.output import Output
from moecli.params import ALL_LAYERS, PlacementFlags

NO_GPU = MachineFacts((), 16 << 30, 16 << 30, 2)


# --- placement flags -----------------------------------------------------------------------------
@pytest.mark.parametrize(("typed", "layers"), [("99", 99), ("999", 999), ("0", 0), ("7", 7), ("all", ALL_LAYERS),
                                               ("-1", ALL_LAYERS), ("ALL", ALL_LAYERS), ("auto", None)])
def test_ngl_means_what_it_means_in_llama_cpp(typed, layers):
    assert PlacementFlags.parse(typed).n_gpu_layers == layers


def test_ngl_refuses_what_is_not_a_number_of_layers():
    with pytest.raises(BadInput, match="not a number of layers"):
        PlacementFlags.parse("lots")


def test_no_placement_flags_leave_it_to_the_plan():
    assert PlacementFlags.parse() is None
    assert PlacementFlags.parse(n_cpu_moe=3) == PlacementFlags(n_cpu_moe=3)


def test_ngl_99_is_printed_as_99_layers_not_all():
    ran = invoke("plan", "demo", "--vram", "6GiB", "-ngl", "99", "--llama-args")
    assert ran.code == 0, ran.output
    assert "-ngl 99 " in ran.stdout
    all_layers = invoke("plan", "demo", "--vram", "6GiB", "-ngl", "all", "--llama-args")
    assert "-ngl all " in all_layers.stdout


def test_ngl_2_puts_two_layers_on_the_gpu():
    the_plan = moecli.plan("demo", vram="6GiB", ngl="2")
    assert the_plan.params.n_gpu_layers == 2
    # -ngl counts the output layer too (llama.cpp: i_gpu_start = n_layer + 1 - ngl)
    assert the_plan.placement.gpu_layers == (3,) and the_plan.placement.output_on_gpu


# --- --vram: the GPU memory to plan for ------------------------------------------------------------
@pytest.fixture
def no_gpu_here(monkeypatch):
    monkeypatch.setattr(machine, "probe_gpus", lambda: ())


@pytest.mark.parametrize("command", [("run", "demo", "-p", "hi"), ("bench", "demo", "-r", "1", "-p", "8", "-n", "4")])
def test_run_and_bench_with_vram_and_no_gpu_say_so(no_gpu_here, command):
    assert_one_error(invoke(*command, "--vram", "6GiB"), "--vram 6GiB", "no GPU here")


def test_machine_for_loading_refuses_vram_without_a_gpu(no_gpu_here):
    with pytest.raises(EngineError, match="no GPU here"):
        app.machine_for_loading(app.MachineOptions(vram="6GiB"))
    facts, note = app.machine_for_loading(app.MachineOptions())
    assert facts.gpus == () and note is None


def test_plan_with_vram_plans_for_that_gpu(no_gpu_here):
    the_plan = moecli.plan("demo", vram="6GiB")
    assert the_plan.gpu is not None and the_plan.gpu.budget < 6 << 30


# --- the Python API --------------------------------------------------------------------------------
def test_the_python_api_plans_and_loads_like_the_cli():
    from moecli.engine import Sampling

    the_plan = moecli.plan("demo", ctx=8192, ctk="q8_0", cpu_only=True)
    assert the_plan.params.n_ctx == 8192 and the_plan.params.type_k == "q8_0" and the_plan.gpu is None
    with moecli.load("demo", ctx=2048, cpu_only=True) as engine:
        assert engine.n_ctx == 2048
        reply = "".join(engine.chat([{"role": "user", "content": "Hello"}], Sampling(n_predict=8, seed=1)))
        assert reply.strip() and engine.last_timings.predicted_n > 0


def test_the_python_api_refuses_bad_options_in_one_line():
    with pytest.raises(BadInput, match="-lm, --no-mmap and --mlock"):
        moecli.plan("demo", load_mode="none", mlock=True)


# --- pull: the plan shown is the one that chose the quant ----------------------------------------
def test_pull_without_a_quant_reads_each_header_once(hub, monkeypatch):
    reads: list[str] = []
    real = gguf.read_model

    def counting(location, *args, **kwargs):
        reads.append(str(getattr(location, "location", location)))  # a path or a byte source
        return real(location, *args, **kwargs)

    monkeypatch.setattr(gguf, "read_model", counting)
    shown: list[app.PrePlan] = []
    pulled = app.pull(TINY_REPO, NO_GPU, before_download=shown.append)
    remote = [r for r in reads if r.startswith("http")]
    assert len(remote) == len(set(remote)) and remote  # each candidate's header read once at most
    assert shown[0].plan is not None and shown[0].verdict.fits
    assert shown[0].choice.candidate.name == pulled.name


# --- questions through an injected terminal ------------------------------------------------------
def test_pull_asks_and_a_no_downloads_nothing(hub):
    ran = invoke("pull", f"{TINY_REPO}:Q8_0", input="n\n", stdin_is_terminal=True)
    assert ran.code == 1, ran.output
    assert "Download" in ran.stderr and "[Y/n]" in ran.stderr
    assert "nothing downloaded" in ran.stdout
    assert store.list_models() == ()


def test_pull_asks_and_an_empty_answer_downloads(hub):
    ran = invoke("pull", f"{TINY_REPO}:Q8_0", input="\n", stdin_is_terminal=True)
    assert ran.code == 0, ran.output
    assert [m.name for m in store.list_models()] == [f"{TINY_REPO}:Q8_0"]


def test_rm_asks_and_defaults_to_no(hub):
    assert invoke("pull", f"{TINY_REPO}:Q8_0", "--yes").code == 0
    kept = invoke("rm", f"{TINY_REPO}:Q8_0", input="\n", stdin_is_terminal=True)
    assert kept.code == 1 and "[y/N]" in kept.stderr and "nothing removed" in kept.stdout
    assert store.list_models()
    gone = invoke("rm", f"{TINY_REPO}:Q8_0", input="maybe\nyes\n", stdin_is_terminal=True)
    assert gone.code == 0, gone.output
    assert "please answer y or n" in gone.stderr
    assert store.list_models() == ()


def test_confirm_reads_the_injected_stdin():
    out = Output(stdin=io.StringIO("y\n"), stdout=io.StringIO(), stderr=io.StringIO(), stdin_is_terminal=True)
    assert out.confirm("Go?", default=False) is True
    assert out.confirm("Again?", default=True) is True  # end of input: the default
    assert "Go? [y/N]: " in out.stderr.getvalue()


# --- output modes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "expected"), [({}, "for people\n"), ({"json_mode": True}, '{\n  "a": 1\n}\n'),
                                                ({"csv_mode": True}, "a\n1\n")])
def test_a_result_is_rendered_in_the_mode_chosen_once(mode, expected):
    stdout = io.StringIO()
    out = Output(stdout=stdout, stderr=io.StringIO(), **mode)
    out.result(lambda: {"a": 1}, human=lambda: out.raw("for people"), csv=lambda: "a\n1")
    assert stdout.getvalue() == expected


def test_plan_run_and_bench_share_every_planning_option():
    from typer.main import get_command

    from moecli.cli import _PLAN_OPTIONS
    from moecli.cli import app as cli_app

    group = get_command(cli_app)
    for name in ("plan", "run", "bench"):
        params = {p.name for p in group.commands[name].params}
        assert set(_PLAN_OPTIONS) <= params, name
