"""The pure parts of scripts/gpu/ (the GPU proof's driver): reading llama.cpp's tools' output, the
flags given to them, and the checks. The driver itself runs on the lent GPU machine, not in CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from moecli.params import ALL_LAYERS, TensorOverride

GPU_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "gpu"


def _load(name: str):
    sys.path.insert(0, str(GPU_SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU_SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GPU_SCRIPTS))


compare = _load("compare")
report = _load("report")

# What llama-fit-params printed on the team's H100 for a 6 GiB card (the fitter row of the H100 runs,
# in tools/fit-params/fit-params.cpp's format: stdout holds only this line, the log goes to stderr).
FITTER_LINE = ('-c 4096 -ngl 41 -ot "blk\\.5\\.ffn_(gate|up|gate_up|down).*=CPU,'
               'blk\\.6\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,blk\\.7\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU"\n')


def test_fitter_output_becomes_llama_bench_flags():
    flags = compare.parse_fit_params("some log line\n" + FITTER_LINE)
    assert (flags.n_ctx, flags.n_gpu_layers, flags.tensor_split) == (4096, 41, None)
    assert flags.overrides[0] == TensorOverride(r"blk\.5\.ffn_(gate|up|gate_up|down).*", "CPU")
    assert len(flags.overrides) == 3
    args = compare.llama_bench_args(flags.params(), threads=4, reps=3)
    # llama-bench separates overrides with ';' (',' would make three configurations of one each)
    assert args[:4] == ["-ngl", "41", "-ot", ";".join(str(o) for o in flags.overrides)]
    assert args[4:] == ["-t", "4", "-p", "512", "-n", "128", "-r", "3", "-o", "json"]
    # without a GPU it leaves -ngl alone and prints a negative count: every layer
    assert compare.parse_fit_params("-c 4096 -ngl -1\n").params().n_gpu_layers == ALL_LAYERS
    with pytest.raises(ValueError):
        compare.parse_fit_params("llama_fit_params: failed to fit CLI arguments to free memory\n")


def test_fit_print_and_fit_target():
    estimate = compare.parse_fit_print("CUDA0 4983 384 612 \nHost 15210 0 12 \n")
    assert estimate["CUDA0"]["total"] == 4983 + 384 + 612 and estimate["Host"]["model"] == 15210
    # a 6 GiB card leaves the fitter 6144 MiB, of which it keeps its own 1024 MiB free
    assert compare.fit_target_mib(81_000 * 2**20, 6 * 2**30) == 81_000 - 6144 + 1024
    assert compare.fit_target_mib(4_000 * 2**20, 6 * 2**30) == 0
    assert compare.pin_prefix(4, 16) == ["taskset", "-c", "0-3"] and compare.pin_prefix(16, 16) == []


def _run(group, kind, pp, tg, **extra):
    rec = {"id": f"{group}-{kind}", "group": group, "kind": kind, "label": kind, "tool": "llama-bench", "ctx": 4096,
           "threads": 16, "tests": {"pp": {"avg_ts": pp, "stddev_ts": 0.0}, "tg": {"avg_ts": tg, "stddev_ts": 0.0}}}
    rec.update(extra)
    return rec


def test_checks_decide_each_criterion():
    gib = 2**30
    runs = [
        _run("c4096-t16", "plan", 1300, 60.0, tool="moecli", budget_bytes=6 * gib, peak_gpu_bytes=int(5.9 * gib),
             predicted_gpu_bytes=int(5.9 * gib) + 200 * 2**20),
        _run("c4096-t16", "plan@lb", 1320, 61.0),
        _run("c4096-t16", "fitter", 290, 62.0),
        _run("c4096-t16", "naive", 210, 23.0),
        _run("c4096-t16", "sweep", 1290, 59.0, under_budget=True, label="--n-cpu-moe 34 -lm none"),
        _run("c4096-t16", "sweep", 1330, 70.0, under_budget=False, label="--n-cpu-moe 32 -lm none"),
        _run("memory", "memory", 1000, 50.0, budget_bytes=4 * gib, peak_gpu_bytes=int(4.1 * gib),
             predicted_gpu_bytes=int(4.1 * gib)),
    ]
    verdicts = {(c["criterion"], c["where"].split(",")[0]): c["verdict"] for c in report.checks({"runs": runs})}
    assert verdicts[("moecli bench vs llama-bench, same flags: decode", "c4096-t16")] == "pass"  # 60/61
    assert verdicts[("plan vs llama.cpp's fitter: decode (both by llama-bench)", "c4096-t16")] == "pass"  # 61/62
    assert verdicts[("plan vs llama.cpp's fitter: prompt (both by llama-bench)", "c4096-t16")] == "pass"  # 1320/290
    assert verdicts[("plan vs naive layer split: decode (both by llama-bench)", "c4096-t16")] == "pass"  # 61/23
    # the over-budget point (70 t/s) does not count; the one under it does
    assert verdicts[("plan vs best --n-cpu-moe point under the budget: decode", "c4096-t16")] == "pass"
    within = [c for c in report.checks({"runs": runs}) if c["criterion"] == "planned load within its budget"]
    assert [c["verdict"] for c in within] == ["pass", "FAIL"]  # 5.9 of 6 GiB; 4.1 of 4 GiB
    predicted = [c for c in report.checks({"runs": runs}) if c["criterion"].startswith("predicted")]
    assert [c["verdict"] for c in predicted] == ["FAIL", "pass"]  # 200 MiB over 3 % of 5.9 GiB; exact
    assert "FAIL" in report.render({"runs": runs, "mode": "full"})


# ---------------------------------------------------------------------------------------------
# the time budget (issue 9: 15 minutes of device time in all, machine start included)

RUN_SH = GPU_SCRIPTS / "run.sh"


def _default_run_budget() -> int:
    import re

    return int(re.search(r"budget_s=\$\{RUN_BUDGET_S:-(\d+)\}", RUN_SH.read_text()).group(1))


def test_priorities_put_memory_truth_first_then_the_6_gib_comparison():
    p = compare.run_priority
    # group 0 = context 4096 at 16 threads: the plan and the memory runs first, then the comparison
    assert p("plan", 0) == 1 and p("memory", 0) == 1
    assert {p(k, 0) for k in ("plan@lb", "fitter", "cpu-moe", "naive", "sweep")} == {2}
    assert p("sweep", 0, other_mode=True) == 2  # both load modes at 6 GiB / 4096 / 16 threads
    # then 4 threads, then context 32768, then the ceiling; the other load mode and the rest last
    assert p("plan", 1) == 3 and p("naive", 1) == 3 and p("plan", 2) == 4 and p("ceiling", 0) == 5
    assert p("sweep", 1, other_mode=True) == 6 and p("memory", 2) == 6
    assert p("plan", 3) == 7 and p("ceiling", 1) == 7


def test_deadline_file_and_timeouts(tmp_path):
    f = tmp_path / "deadline"
    assert compare.read_deadline(f, 100.0) == 100.0  # no file yet: run.sh's own deadline
    f.write_text("1234.5\n")
    assert compare.read_deadline(f, 100.0) == 1234.5  # poll.sh's RUN_END_IN moved it (later or earlier)
    f.write_text("garbage")
    assert compare.read_deadline(f, 100.0) == 100.0
    assert compare.read_deadline(None, 7.0) == 7.0
    # 4x the estimate, at least 2 minutes, but never far past the deadline
    assert compare.run_timeout(20, 1000) == 120 and compare.run_timeout(60, 1000) == 240
    assert compare.run_timeout(60, 50) == 65 and compare.run_timeout(60, -100) == 30


def test_priority_table_is_cumulative():
    runs = [compare.Run("a", 2, "g", "naive", "", "llama-bench", 4096, 16, None, None, "auto", estimate_s=30),
            compare.Run("b", 1, "g", "plan", "", "moecli", 4096, 16, None, None, "none", estimate_s=20),
            compare.Run("c", 2, "g", "sweep", "", "moecli", 4096, 16, None, None, "none", estimate_s=10)]
    assert compare.priority_table(runs) == [(1, 1, 20, 20), (2, 2, 40, 60)]


@pytest.fixture(scope="module")
def full_size_model(tmp_path_factory):
    """The Qwen3.6-35B-A3B-shaped Q4_K_M file the GPU run writes, as holes (header only on disk)."""
    from moecli.synth import build_recipe

    path = tmp_path_factory.mktemp("full") / "full.gguf"
    build_recipe("qwen3.6-35b-a3b", "Q4_K_M", tokenizer=False).write(path, fill="sparse")
    return path


def _dry_run(model, out, *extra):
    args = ["--dry-run", "--profile", "h100-80gb", "--model", str(model), "--llama-bench", "llama-bench",
            "--fit-params", "llama-fit-params", "--out", str(out), *extra]
    assert compare.main(args) == 0
    import json

    return json.loads((out / "results.json").read_text())


def test_quick_matrix_fits_the_default_run_budget(full_size_model, tmp_path):
    """--quick is priorities 1-2 (memory truth, then the 6 GiB comparison at 4096 / 16 threads):
    with the setup before it, it must fit run.sh's default budget, or a 15-minute lease that starts
    slowly measures less than the issue's first two items."""
    results = _dry_run(full_size_model, tmp_path, "--quick")
    runs = results["runs"]
    assert {r["priority"] for r in runs} == {1, 2}
    first = [r["id"] for r in runs if r["priority"] == 1]
    assert first == ["c4096-t16-plan", "memory-4gib-c4096", "memory-8gib-c4096", "memory-12gib-c4096"]
    kinds = {r["kind"] for r in runs if r["priority"] == 2}
    assert kinds == {"plan@lb", "fitter", "cpu-moe", "naive", "sweep"}
    assert {r["load_mode"] for r in runs if r["kind"] == "sweep"} == {"none", "mmap"}
    total = sum(r["estimate_s"] for r in runs)
    assert compare.SETUP_ESTIMATE_S + total <= _default_run_budget() - 60  # a minute of slack for the scale


def test_a_run_out_of_time_lists_what_it_did_not_measure(full_size_model, tmp_path):
    past = tmp_path / "deadline"
    past.write_text("1\n")  # the lease's end already passed: nothing may start
    results = _dry_run(full_size_model, tmp_path, "--quick", "--deadline-file", str(past))
    assert results["runs"] and all(r["skipped"].startswith("no time left") for r in results["runs"])
    missing = report.not_measured(results)
    assert len(missing) == len(results["runs"]) and "c4096-t16-plan (p1: no time left" in missing[0]
    assert "Not measured in this run" in report.checks_section(results)
    # a run cut off mid-way (the machine went back) still says what was running and what was queued
    cut = {"runs": [], "running": {"id": "c4096-t16-plan"}, "pending": [{"id": "x", "priority": 2, "estimate_s": 22.0}]}
    assert report.not_measured(cut) == ["c4096-t16-plan (cut off while running)", "x (p2: not reached, ~22 s)"]


def test_fatbin_headers_name_the_gpu_code():
    """check_prebuilt.sh's sm_90 check reads the fat binary's headers (the layout nvcc 13.0 wrote
    for a library built for sm_80 + sm_90 + PTX 90 here)."""
    import struct

    fatbin = _load("fatbin")

    def entry(kind: int, sm: int, payload: bytes) -> bytes:
        head = struct.pack("<HHIQ", kind, 0x101, 64, len(payload)) + struct.pack("<IIII", 0, 0, 0, sm)
        return head + bytes(64 - len(head)) + payload

    body = entry(2, 90, b"\x00" * 40) + entry(1, 90, b"ptx!") + entry(2, 80, b"")
    blob = b"junk" + struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body + b"more" * 3
    assert fatbin.images(blob) == [("ELF", 90), ("PTX", 90), ("ELF", 80)]
    assert fatbin.images(blob * 2) == fatbin.images(blob) * 2  # one fat binary per object, linked together
    assert fatbin.images(b"no GPU code here") == []
