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
