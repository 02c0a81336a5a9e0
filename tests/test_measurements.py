"""What `bench` remembers and what `plan` and `run` do with it: the measurements file (versioned,
bounded, set aside with one line when it is not ours), the speed model fitted to recorded
measurements (made up here from a known "true" machine: no wall-clock figure is asserted), and the
tuned configuration of a sweep, used while it fits and dropped, with the reason, when it does not."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cliutil import invoke
from modelfacts import qwen36_35b_a3b

from moecli import app, measurements, planner
from moecli.facts import GpuFacts, MachineFacts
from moecli.units import GiB

CPU_BOX = MachineFacts((), 24 * GiB, 20 * GiB, 2, 20e9, source="probed")
GPU_BOX = MachineFacts((GpuFacts(0, "NVIDIA GeForce GTX 1060 6GB", 6 * GiB, 6 * GiB, 192e9, 300 << 20),),
                       24 * GiB, 20 * GiB, 4, 40e9, source="probed")


def true_speed(plan: planner.Plan) -> tuple[float, float]:
    """A made-up machine: decode at 40 % of the bandwidth bound plus 3 ms per token and 50 µs per
    layer; prompts at 25 GFLOP/s plus 0.2 ms per token."""
    x = plan.speed.inputs
    decode = sum(n / dict(x.bandwidths)[d] for d, n in x.decode_bytes) / 0.4 + 3e-3 + 50e-6 * x.n_layer
    prompt = sum(f for _, f in x.prompt_flops) / 25e9 + 2e-4
    return 1 / decode, 1 / prompt


def samples_of(plans, when="2026-12-01T10:00:00", noise=(1.0,)) -> planner.Calibration:
    out = []
    for i, p in enumerate(plans):
        tg, pp = true_speed(p)
        k = noise[i % len(noise)]
        out += [planner.SpeedSample(p.speed.inputs, "tg", tg * k, when), planner.SpeedSample(p.speed.inputs, "pp", pp / k, when)]
    return planner.Calibration(tuple(out))


def cpu_plan(n_layer: int, **wishes) -> planner.Plan:
    return planner.plan(qwen36_35b_a3b(n_layer), CPU_BOX, planner.Wishes(**wishes))


def test_without_measurements_decode_is_the_uncalibrated_range_and_prompt_has_none():
    p = planner.calibrated(cpu_plan(8), None)
    assert p.speed.decode.kind == "estimate" and p.speed.decode.low == p.decode.low
    assert p.speed.prompt.kind == "none" and p.speed.prompt.tokens_per_s is None


@pytest.mark.parametrize("n_runs", [1, 2, 5])
def test_the_fit_carries_over_to_a_model_never_measured(n_runs):
    """Calibrated on 1, 2 or 5 other sizes, the 16-layer model is predicted closely; more runs,
    more terms of the model fitted (one run: a scale of the nominal figure alone)."""
    sizes = (8, 4, 12, 6, 2)[:n_runs]
    cal = samples_of([cpu_plan(n) for n in sizes])
    target = planner.calibrated(cpu_plan(16), cal)
    tg, pp = true_speed(target)
    d, pr = target.speed.decode, target.speed.prompt
    assert d.kind == pr.kind == "calibrated" and d.n_runs == n_runs and d.n_configs == n_runs
    # one run: a scale of the nominal figure; two: two terms; more: what predicts the runs left out
    # best (here the sizes' bytes grow linearly with the layers, so two terms already fit exactly)
    assert len(d.terms) == 1 if n_runs == 1 else len(d.terms) >= 2
    assert d.tokens_per_s == pytest.approx(tg, rel=0.20 if n_runs == 1 else 0.02)
    assert pr.tokens_per_s == pytest.approx(pp, rel=0.02)  # the made-up prompt is compute + a constant
    assert all(c > 0 for _, c in d.terms)


def test_noise_does_not_make_a_term_negative():
    cal = samples_of([cpu_plan(n) for n in (8, 4, 12, 6, 2)], noise=(1.15, 0.85, 1.1, 0.9, 1.0))
    target = planner.calibrated(cpu_plan(16), cal)
    assert target.speed.decode.kind == "calibrated" and all(c > 0 for _, c in target.speed.decode.terms)
    assert target.speed.decode.tokens_per_s == pytest.approx(true_speed(target)[0], rel=0.25)


def test_a_benched_configuration_shows_what_was_measured_and_when():
    p8 = cpu_plan(8)
    cal = planner.Calibration((planner.SpeedSample(p8.speed.inputs, "tg", 9.5, "2026-12-03T18:00:00"),
                               planner.SpeedSample(p8.speed.inputs, "tg", 9.0, "2026-12-01T18:00:00"),
                               planner.SpeedSample(p8.speed.inputs, "pp", 40.0, "2026-12-03T18:00:00", 64)))
    p = planner.calibrated(p8, cal)
    assert (p.speed.decode.kind, p.speed.decode.tokens_per_s, p.speed.decode.when) == ("measured", 9.5, "2026-12-03T18:00:00")
    assert p.speed.prompt.kind == "calibrated"  # a pp64 is not the pp512 the figure is: it calibrates, not measures
    from moecli import render
    assert render.speed_text(p.speed.decode).startswith("9.5 tok/s (measured on 2026-12-03")


def test_runs_at_another_thread_count_do_not_calibrate():
    cal = samples_of([cpu_plan(8, threads=1)])
    p = planner.calibrated(cpu_plan(16), cal)
    assert p.speed.decode.kind == "estimate" and p.speed.decode.other_runs == 1


def test_a_remeasured_ram_bandwidth_does_not_move_the_prediction():
    cal = samples_of([cpu_plan(8)])
    faster = replace(CPU_BOX, ram_bandwidth=40e9)
    a = planner.calibrated(cpu_plan(16), cal).speed.decode.tokens_per_s
    b = planner.calibrated(planner.plan(qwen36_35b_a3b(16), faster), cal).speed.decode.tokens_per_s
    assert a == pytest.approx(b)


def test_the_fit_refuses_what_it_cannot_know():
    assert planner.fit([], {"x": 1.0}, (("x",),)) is None
    # two identical points: one term only; a term the target lacks: not used
    pts = [({"x": 1.0, "per token": 1.0}, 2.0), ({"x": 1.0, "per token": 1.0}, 2.2)]
    seconds, terms = planner.fit(pts, {"x": 2.0, "per token": 1.0}, (("x",), ("x", "per token")))
    assert [t for t, _ in terms] == ["x"] and seconds == pytest.approx(4.2, rel=0.05)


def test_plan_json_carries_the_figure_its_kind_and_inputs():
    ran = invoke("plan", "demo", "--json")
    assert ran.code == 0, ran.output
    speed = json.loads(ran.stdout)["plan"]["speed"]
    assert speed["decode"]["kind"] == "estimate" and speed["prompt"]["kind"] == "none"
    assert speed["inputs"]["decode_bytes"][0][0] == "CPU" and speed["inputs"]["n_layer"] > 0


# -- the file ------------------------------------------------------------------------------------
def _row(i: int, machine="m1", model="a.gguf:1") -> measurements.Measurement:
    return measurements.Measurement(
        when=f"2026-12-01T10:{i // 60:02d}:{i % 60:02d}", machine=machine, model=model, model_path="/a.gguf",
        label="plan", test="tg", n_prompt=0, n_gen=128, n_depth=0, avg_ts=10.0 + i, stddev_ts=0.1,
        samples_ts=(10.0, 10.2), args=("-ngl", "0"), n_ctx=4096, inputs={})


def test_the_file_keeps_rows_and_the_newest_tuned_configuration(monkeypatch):
    monkeypatch.setattr(measurements, "MAX_RECORDS", 5)
    params = measurements.Tuned.params_dict(cpu_plan(8).params)
    tuned = [measurements.Tuned(f"2026-12-0{i}T10:00:00", "m1", "a.gguf:1", f"t{i}", params, 9.0, 40.0, 4096)
             for i in (1, 2)]
    for i in range(8):
        measurements.add([_row(i)], tuned[0] if i == 0 else tuned[1] if i == 7 else None)
    store = measurements.read()
    assert store.note is None and [m.avg_ts for m in store.measurements] == [13.0, 14.0, 15.0, 16.0, 17.0]
    assert store.tuned_for("m1", "a.gguf:1").label == "t2" and len(store.tuned) == 1
    assert store.tuned_for("m2", "a.gguf:1") is None and store.of("m2") == []
    assert store.tuned[0].to_params(8192) == cpu_plan(8).params.with_(n_ctx=8192)
    data = json.loads(measurements.path().read_text())
    assert (data["format"], data["version"]) == ("moecli-measurements", 1)


@pytest.mark.parametrize(("text", "why"), [
    ("{not json", "not JSON"),
    ('{"format": "something-else", "version": 1}', "not a moecli measurements file"),
    ('[1, 2]', "not a moecli measurements file"),
    ('{"format": "moecli-measurements", "version": 99}', "version 99"),
    ('{"format": "moecli-measurements", "version": 1, "measurements": [{"when": 1}]}', "another shape"),
])
def test_a_corrupt_or_foreign_file_is_set_aside_with_one_line(text, why):
    file = measurements.path()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    ran = invoke("plan", "demo")
    assert ran.code == 0, ran.output
    lines = [line for line in ran.stderr.splitlines() if "measurements file" in line]
    assert len(lines) == 1 and why in lines[0] and "set aside" in lines[0] and "Traceback" not in ran.output
    assert not file.exists() and len(list(file.parent.glob("measurements.json.bad-*"))) == 1
    assert invoke("plan", "demo").stderr.count("measurements file") == 0  # once: the next run starts afresh


def test_the_fingerprint_is_the_machine_not_its_free_memory():
    a = measurements.fingerprint(GPU_BOX, build="b", cpu="c")
    less_free = replace(GPU_BOX, ram_available=1 * GiB, gpus=(replace(GPU_BOX.gpus[0], free_bytes=1 * GiB),))
    assert measurements.fingerprint(less_free, build="b", cpu="c") == a
    assert measurements.fingerprint(CPU_BOX, build="b", cpu="c").id != a.id
    assert measurements.fingerprint(GPU_BOX, build="other", cpu="c").id != a.id
    assert "GTX 1060" in a.describe


# -- the tuned configuration ---------------------------------------------------------------------
def _tune(facts, machine, params, decode=20.0) -> None:
    fp = measurements.fingerprint(machine)
    measurements.add([], measurements.Tuned("2026-12-03T18:00:00", fp.id, planner.model_key(facts), "tuned one",
                                            measurements.Tuned.params_dict(params), decode, 300.0, params.n_ctx))


def test_a_tuned_configuration_is_used_while_it_fits_and_dropped_with_the_reason_when_not():
    facts = qwen36_35b_a3b(40)
    fresh = app.plan_for(facts, GPU_BOX, app.Request())
    n = fresh.params.n_cpu_moe
    _tune(facts, GPU_BOX, fresh.params.with_(n_cpu_moe=n + 2, n_ubatch=1024, n_batch=2048))
    used = app.planned(facts, GPU_BOX, app.Request())
    assert used.tuned is not None and used.skipped is None
    assert (used.plan.params.n_cpu_moe, used.plan.params.n_ubatch) == (n + 2, 1024)
    # the user's own flags, or --no-tuned: moecli's plan
    assert app.planned(facts, GPU_BOX, app.Request.from_options(ub=256)).tuned is None
    assert app.planned(facts, GPU_BOX, app.Request.from_options(ncmoe=30)).tuned is None
    assert app.planned(facts, GPU_BOX, app.Request(), use_tuned=False).plan.params == fresh.params
    # a context the tuned placement does not fit: a fresh plan, and why
    big = app.planned(facts, GPU_BOX, app.Request.from_options(ctx="128k"))
    assert big.tuned is None and big.skipped is not None and big.skipped.device == "CUDA0"
    assert big.skipped.n_ctx == 131072 and big.skipped.needed > big.skipped.budget
    assert big.plan.fits and big.plan.params.n_ctx == 131072
    # less free memory now: dropped too
    tight = replace(GPU_BOX, gpus=(replace(GPU_BOX.gpus[0], free_bytes=5 * GiB),))
    _tune(facts, tight, fresh.params.with_(n_cpu_moe=n - 2))  # same fingerprint: free memory is not part of it
    assert app.planned(facts, tight, app.Request()).skipped is not None
    from moecli import render
    assert "planned afresh" in render.tuned_skipped_line(big.skipped)
    line = render.tuned_line(used.tuned)
    assert line.startswith(f"tuned: -ngl all --n-cpu-moe {n + 2} ") and " -ub 1024" in line
    assert "measured 20.0 tok/s decode, 300 tok/s prompt on 2026-12-03" in line


def test_a_profile_is_another_machine():
    facts = qwen36_35b_a3b(40)
    profile = replace(GPU_BOX, source="profile gtx1060-6gb")
    _tune(facts, profile, app.plan_for(facts, profile, app.Request()).params.with_(n_ubatch=1024))
    assert app.planned(facts, profile, app.Request()).tuned is None


def test_a_run_whose_repetitions_disagree_weighs_less():
    """On a busy machine one run can be 3x off; its repetitions then disagree, and it counts less."""
    p8, p4 = cpu_plan(8), cpu_plan(4)
    (tg8, _), (tg4, _) = true_speed(p8), true_speed(p4)
    cal = planner.Calibration((planner.SpeedSample(p8.speed.inputs, "tg", tg8, "2026-12-01T10:00:00", 128, 0.02),
                               planner.SpeedSample(p4.speed.inputs, "tg", tg4 * 3, "2026-12-01T10:05:00", 128, 0.6)))
    target = planner.calibrated(cpu_plan(16), cal)
    assert target.speed.decode.tokens_per_s == pytest.approx(true_speed(target)[0], rel=0.25)


def test_with_several_runs_a_term_earns_its_place_by_predicting_runs_left_out():
    """Runs of models whose bytes do not grow with the layers (a smaller
    vocabulary, other expert counts) separate a per-layer overhead from the bytes; the fit finds it."""
    from modelfacts import moe_model

    plans = [planner.plan(moe_model(n_layer=n, n_expert=e, n_vocab=v), CPU_BOX)
             for n, e, v in ((4, 8, 1024), (8, 16, 4096), (12, 8, 2048), (6, 32, 1024), (10, 16, 8192))]
    target = planner.calibrated(planner.plan(moe_model(n_layer=16, n_expert=8, n_vocab=4096), CPU_BOX), samples_of(plans))
    assert target.speed.decode.tokens_per_s == pytest.approx(true_speed(target)[0], rel=0.02)
    assert "per layer" in dict(target.speed.decode.terms) or "per token" in dict(target.speed.decode.terms)


def test_a_run_whose_devices_have_no_known_bandwidth_is_left_out_not_misfiled():
    """Neither the run nor this machine knows the RAM's bandwidth: the run cannot be used (and
    used to end in an UnboundLocalError, or be filed under the previous run's configuration)."""
    unknown = replace(CPU_BOX, ram_bandwidth=None)
    run = cpu_plan(8).speed.inputs
    cal = planner.Calibration((planner.SpeedSample(replace(run, bandwidths=(("CPU", None),)), "tg", 20.0,
                                                   "2026-12-01T10:00:00"),))
    speed = planner.calibrated(planner.plan(qwen36_35b_a3b(16), unknown), cal).speed
    assert speed.decode.kind != "calibrated" and speed.decode.tokens_per_s is None
