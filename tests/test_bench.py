"""`moecli bench` on the demo model through real llama.cpp: JSON and CSV with llama-bench's field
names, repetitions that agree, the context each row was measured with, and its refusals."""

from __future__ import annotations

import csv
import io
import json

import pytest
from cliutil import ESC, assert_one_error, invoke

from moecli.bench import FIELDS, BenchResult, agree, mean, median, stdev, to_csv
from moecli.synth import build_recipe

FAST = ("-t", "1", "-p", "32", "-n", "8", "-r", "3")  # a few tokens: the demo runs them in milliseconds

# llama-bench's own JSON fields (tools/llama-bench/llama-bench.cpp, test::get_fields) that moecli reports too
LLAMA_BENCH_FIELDS = ("model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_ubatch",
                      "n_threads", "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "tensor_buft_overrides",
                      "use_mmap", "flash_attn", "n_prompt", "n_gen", "n_depth", "avg_ns", "stddev_ns", "avg_ts",
                      "stddev_ts", "samples_ns", "samples_ts")


@pytest.fixture(scope="module")
def bench_json(demo_model_session) -> dict:
    ran = invoke("bench", "demo", *FAST, "--json")
    assert ran.code == 0, ran.output
    return json.loads(ran.stdout)


def test_json_has_pp_and_tg_rows_with_llama_bench_fields(bench_json, demo_model_session):
    rows = bench_json["results"]
    assert [(r["n_prompt"], r["n_gen"]) for r in rows] == [(32, 0), (0, 8)]
    for r in rows:
        assert set(LLAMA_BENCH_FIELDS) <= set(r)
        assert r["model_filename"].endswith(demo_model_session.name) and r["model_type"].startswith("qwen35moe")
        assert r["n_threads"] == 1 and r["n_depth"] == 0 and r["label"] == "plan"
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 3
        tokens = r["n_prompt"] + r["n_gen"]
        assert r["samples_ts"] == pytest.approx([tokens * 1e9 / ns for ns in r["samples_ns"]])
        assert r["avg_ts"] == pytest.approx(mean(r["samples_ts"])) and r["stddev_ts"] >= 0
    assert bench_json["plan"][:2] == ["-ngl", "0"]


def test_repetitions_agree(bench_json):
    """Every repetition within AGREE_FACTOR (2x) of the median: the measurement is one thing
    measured three times, not noise."""
    for r in bench_json["results"]:
        assert agree(r["samples_ts"]), (r["test"], r["samples_ts"])
        assert r["avg_ts"] > 0


def test_each_row_records_its_context(bench_json):
    """The plan's context (4096 by default), not llama-bench's n_prompt + n_gen."""
    assert {r["n_ctx"] for r in bench_json["results"]} == {4096}


def test_context_is_raised_when_a_test_needs_more():
    ran = invoke("bench", "demo", "-t", "1", "-p", "8", "-n", "0", "-d", "4096", "-r", "1", "--json")
    assert ran.code == 0, ran.output
    (row,) = json.loads(ran.stdout)["results"]
    assert row["n_ctx"] >= 4104 and (row["n_prompt"], row["n_depth"]) == (8, 4096)
    assert_one_error(invoke("bench", "demo", "-p", "4200", "-c", "4096"), "too small for the tests", "need 4328")


def test_csv_uses_llama_bench_field_names():
    ran = invoke("bench", "demo", *FAST, "--csv")
    assert ran.code == 0, ran.output
    rows = list(csv.DictReader(io.StringIO(ran.stdout)))
    assert tuple(rows[0]) == FIELDS and set(LLAMA_BENCH_FIELDS) <= set(FIELDS)
    assert [(r["n_prompt"], r["n_gen"]) for r in rows] == [("32", "0"), ("0", "8")]
    assert all(float(r["avg_ts"]) > 0 and len(r["samples_ns"].split()) == 3 for r in rows)


def test_table_is_plain_in_a_pipe():
    ran = invoke("bench", "demo", "-t", "1", "-p", "16", "-n", "4", "-r", "2")
    assert ran.code == 0, ran.output
    assert ESC not in ran.output
    assert "plan: -ngl 0 -lm mmap; ctx 4096, 1 threads" in ran.stdout
    assert "pp16" in ran.stdout and "tg4" in ran.stdout and " ± " in ran.stdout


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return build_recipe("qwen3-tiny", tokenizer=False, n_vocab=512).write(
        tmp_path_factory.mktemp("dense") / "dense.gguf", fill="sparse")[0]


def test_sweep_refusals_are_one_line(dense):
    assert_one_error(invoke("bench", str(dense), "--sweep"), "is a dense model", "--sweep")


def test_a_sweep_on_the_cpu_is_remembered_and_run_uses_it():
    """Without a GPU the sweep varies threads, -ub and the load mode; it ends with a chart, records
    the fastest as the tuned configuration, which `run` and `plan` then use and say so (unless
    --no-tuned); `bench --history` lists what was measured."""
    ran = invoke("bench", "demo", "--sweep", "-p", "16", "-n", "4", "-r", "1")
    assert ran.code == 0, ran.output
    assert "plan with -ub 256" in ran.stdout and "plan with -lm none" in ran.stdout
    assert "Sweep (bars scaled" in ran.stdout and "▶" in ran.stdout and "█" in ran.stdout
    assert "tuned: " in ran.stdout
    answered = invoke("run", "demo", "-p", "Hi", "-n", "2", "--temp", "0")
    assert answered.code == 0, answered.output
    assert "tuned: " in answered.stderr and "measured" in answered.stderr
    assert "tuned: " not in invoke("run", "demo", "-p", "Hi", "-n", "2", "--no-tuned").stderr
    assert "tuned: " not in invoke("run", "demo", "-p", "Hi", "-n", "2", "-t", "1").stderr  # the user's own flags
    planned = invoke("plan", "demo")
    assert "tuned: " in planned.stderr and "measured on" in planned.stdout
    history = invoke("bench", "--history", "demo")
    assert history.code == 0 and history.stdout.count("pp16") >= 4 and "tuned: " in history.stdout
    rows = json.loads(invoke("bench", "--history", "demo", "--json").stdout)["measurements"]
    assert {r["test"] for r in rows} == {"pp", "tg"} and all(r["inputs"]["n_layer"] for r in rows)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--json", "--csv"], "--json and --csv"),
    (["-p", "0", "-n", "0"], "nothing to measure"),
    (["-r", "0"], "nothing to measure"),
])
def test_bad_options(args, fragment):
    assert_one_error(invoke("bench", "demo", *args), fragment)


# --- the arithmetic ------------------------------------------------------------------------------------


def test_statistics_are_llama_bench_s():
    assert mean([1.0, 2.0, 6.0]) == 3.0
    assert stdev([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(2.138, abs=1e-3)  # n - 1
    assert stdev([5.0]) == 0.0 and median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_agree():
    assert agree([100.0, 110.0, 95.0])
    assert not agree([100.0, 110.0, 40.0])  # one repetition under half the median
    assert not agree([100.0, 100.0, 250.0])
    assert not agree([]) and agree([5.0])


def test_result_figures_and_csv():
    r = BenchResult(label="plan", model_filename="m.gguf", model_type="x", model_size=1, model_n_params=1,
                    n_batch=2048, n_ubatch=512, n_threads=4, type_k="f16", type_v="f16", n_gpu_layers=-1,
                    n_cpu_moe=30, tensor_buft_overrides="none", use_mmap=False, load_mode="none", flash_attn="on",
                    n_prompt=0, n_gen=128, n_depth=0, n_ctx=4096, samples_ns=(1_000_000_000, 2_000_000_000),
                    peak_ram_bytes=1, peak_vram_bytes=None)
    assert r.test == "tg128" and r.samples_ts == (128.0, 64.0) and r.avg_ts == 96.0
    assert r.avg_ns == 1_500_000_000 and r.stddev_ts == pytest.approx(45.25, abs=0.01)
    (row,) = csv.DictReader(io.StringIO(to_csv([r])))
    assert row["n_cpu_moe"] == "30" and row["samples_ts"] == "128.0 64.0" and row["peak_vram_bytes"] == ""


def test_sweep_measures_the_neighbours_that_fit(demo_model_session):
    """--sweep on a 6 GB card (a profile: the configurations are chosen, not loaded, here)."""
    from moecli import machine, planner
    from moecli.bench import sweep
    from moecli.gguf import read_model

    facts = read_model(demo_model_session)
    card = machine.load_profile("gtx1060-6gb")
    the_plan = planner.plan(facts, card, planner.Wishes())
    configs, left_out = sweep(the_plan, lambda p: planner.evaluate(facts, card, p).fits)
    labels = [label for label, _ in configs]
    assert labels[0] == "plan" and configs[0][1] == the_plan.params
    assert "all experts on CPU (--cpu-moe)" in labels and any(label.startswith("plan with -lm") for label in labels)
    assert len({params for _, params in configs}) == len(configs)  # each measured once
    assert left_out == []  # the demo is small: everything fits 6 GB
    configs, left_out = sweep(the_plan, lambda p: not p.cpu_moe, label="your flags")
    assert configs[0][0] == "your flags" and left_out == ["all experts on CPU (--cpu-moe)"]
    assert not any(params.cpu_moe for _, params in configs)
