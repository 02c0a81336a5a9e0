"""How plans, benchmarks and the store look to people (rich on a terminal, plain text in a pipe).
JSON goes through each type's own `to_dict()`; nothing here decides anything.

Everything must stay readable on an 80-column terminal: prose is indented with rich's Padding so
that wrapped lines keep their indent, tables have few, short columns (the memory table has a column
per device, not per kind of memory), and the llama.cpp command is printed as one soft-wrapped line
so that copying it from the terminal gives one line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from moecli.facts import MachineFacts, ModelFacts
from moecli.measurements import Measurement, Tuned
from moecli.output import Output
from moecli.params import EXPS_REGEX
from moecli.planner import Alternative, Finding, GaveUpKvQuant, Placement, Plan, RamWouldFit, SpeedFigure
from moecli.units import fmt_bytes

if TYPE_CHECKING:
    from moecli.app.planning import TunedSkipped
    from moecli.bench import BenchResult


def machine_lines(machine: MachineFacts) -> list[str]:
    lines = []
    for gpu in machine.gpus:
        bw = f", {gpu.bandwidth / 1e9:.0f} GB/s" if gpu.bandwidth else ""
        lines.append(f"GPU {gpu.index}: {gpu.name}, {fmt_bytes(gpu.total_bytes)} ({fmt_bytes(gpu.free_bytes)} free){bw}")
    for d in machine.rpc:
        how = "as the worker reports it" if d.reported else "--rpc-mem, the worker not asked"
        lines.append(f"{d.name_llama}: RPC worker {d.endpoint}, {fmt_bytes(d.free_bytes)} free ({how})")
    if not machine.gpus and not machine.rpc:
        lines.append("GPU: none (everything runs on the CPU)")
    bw = f", {machine.ram_bandwidth / 1e9:.0f} GB/s" if machine.ram_bandwidth else ""
    lines.append(f"RAM: {fmt_bytes(machine.ram_total)} ({fmt_bytes(machine.ram_available)} available){bw}; "
                 f"{machine.physical_cores} physical cores")
    lines.append(f"from: {machine.source}")
    return lines


def model_lines(model: ModelFacts) -> list[str]:
    kind = (f"MoE: {model.n_expert} experts, {model.n_expert_used} active per token"
            + (f", {model.n_expert_shared} shared" if model.n_expert_shared else "")) if model.is_moe else "dense (no experts)"
    quant = f" {model.file_type}" if model.file_type else ""
    shards = f" in {len(model.shards)} files" if len(model.shards) > 1 else ""
    return [
        f"{model.name} ({model.arch}{quant}), {fmt_bytes(model.n_bytes)}{shards}",
        f"{model.n_params / 1e9:.2f} B parameters, {model.n_active_params / 1e9:.2f} B read per token; {kind}",
        f"{model.n_layer} layers ({len(model.kv_layers)} with a KV cache), trained context {model.n_ctx_train:,}",
    ]


def model_dict(model: ModelFacts) -> dict:
    """The model's headline facts, for `plan --json`."""
    return {"source": model.source, "name": model.name, "arch": model.arch, "file_type": model.file_type,
            "n_params": model.n_params, "n_active_params": model.n_active_params, "n_bytes": model.n_bytes,
            "n_layer": model.n_layer, "n_expert": model.n_expert, "n_expert_used": model.n_expert_used,
            "n_ctx_train": model.n_ctx_train, "is_moe": model.is_moe}


# ---------------------------------------------------------------------------------------------
# the planner's findings in words: one function per code, the figures from the finding's fields


def _ram_would_fit(x: RamWouldFit) -> str:
    ways = []
    if x.n_ctx:
        ways.append(f"a context of {x.n_ctx:,} tokens (-c {x.n_ctx})")
    room = x.budget - (x.needed - x.weights)  # what the weights may take beside the rest of the CPU side
    if x.weights and room > 0:
        ways.append(f"a quant at most {100 * room // x.weights}% the size of this one")
    ways.append(f"{fmt_bytes(x.needed - x.budget)} more free RAM")
    return "would fit RAM with " + (", ".join(ways[:-1]) + " or " if len(ways) > 1 else "") + ways[-1]


def _ceil_gib(n: int) -> int:
    return max(1, -(-n // 2**30))


def _kv_quant(x: GaveUpKvQuant) -> str:
    if x.rescue:
        return f"KV cache precision: -> {x.after}"
    reach = f" to reach a {x.n_ctx}-token context ({x.before}: {x.n_ctx_before})" if x.n_ctx is not None else ""
    return f"KV cache precision: {x.before} -> {x.after}{reach}"


_TEXT: dict[str, Callable] = {
    "gpu_over_budget": lambda x: (f"does not fit: {x.device} needs {fmt_bytes(x.needed)} but the budget is "
                                  f"{fmt_bytes(x.budget)} (short by {fmt_bytes(x.needed - x.budget)}): llama.cpp will "
                                  "fail to allocate, or run out of memory at the first prompt"),
    "ram_load_fails": lambda x: (f"RAM is short: the CPU side needs {fmt_bytes(x.needed)} but about {fmt_bytes(x.budget)} "
                                 "is available: loading into RAM (-lm none) may fail or swap; use -lm mmap or more RAM"),
    "ram_pages": lambda x: (f"RAM is short: the weights kept on the CPU and their buffers need {fmt_bytes(x.needed)} but "
                            f"about {fmt_bytes(x.budget)} is available: the OS will page weights from disk for every "
                            "token and speed will collapse"),
    "ram_would_fit": _ram_would_fit,
    "rpc_would_fit": lambda x: (f"or RPC workers with {fmt_bytes(x.missing)} free beyond this plan's: start "
                                "`moecli rpc-server` on other machines and plan with --rpc HOST:PORT "
                                f"(--rpc-mem SIZE before they run), e.g. --rpc HOST:50052 --rpc-mem {_ceil_gib(x.missing)}GiB"),
    # the measured ~8 and ~55 GB/s: see moecli.planner.MmapExpertsSlowPrompt
    "mmap_experts_slow_prompt": lambda x: ("expert weights on the CPU with mmap: prompt processing is ~5x slower than with "
                                           "-lm none " + ("(pageable memory is copied to the GPU more slowly); more free "
                                                          "RAM would allow -lm none" if x.planned else
                                                          "(pageable memory is copied to the GPU at ~8 instead of ~55 GB/s)")),
    "ubatch_below_offload": lambda x: (f"-ub {x.n_ubatch} is below {x.min_batch}: CPU-resident weights are not copied to "
                                       "the GPU for prompts, which then run on the CPU"),
    "threads_over_cores": lambda x: (f"-t {x.threads} is more threads than the {x.logical_cores} this machine has: the "
                                     "extra ones only wait for each other, and each token can take many times longer; "
                                     f"use -t {x.logical_cores} or fewer (default: the physical cores)"),
    "non_experts_on_cpu": lambda x: ("some non-expert weights are on the CPU while experts are on the GPU: the GPU's memory "
                                     "does more for speed holding the non-expert weights, which every token reads"),
    "gave_up_kv_quant": _kv_quant,
    "gave_up_ubatch": lambda x: (f"prompt micro-batch: -ub {x.after}"
                                 + ("" if x.rescue else " (a smaller compute buffer, slower prompts)")),
    "gave_up_ctx": lambda x: f"context: {x.before} -> {x.after} tokens",
    "gave_up_layers": lambda x: (f"layers: {max(0, x.n_gpu_layers - 1)} of {x.n_layer} layers on the GPU"
                                 f"{', with the output head' if x.n_gpu_layers else ''} (-ngl {x.n_gpu_layers}); the rest "
                                 "run on the CPU"),
    "ctx_max_falls_back": lambda x: (("the non-expert weights do not fit the GPU" if x.moe else
                                      "the model does not fit the GPU whole")
                                     + f": --ctx max falls back to {x.n_ctx} tokens with a layer split"),
    "no_experts_on_gpu": lambda x: ("no expert layers on the GPU: the memory freed by what was given up holds the "
                                    "non-expert weights, not experts"),
    "crossings_weighed": lambda x: (f"experts kept with their layers: filling every device's room with experts would cross "
                                    f"between devices {x.fill_crossings} times per token ({x.fill_link_ms:.2f} ms over the "
                                    f"links, {x.crossing_ms:.2f} ms a crossing to {x.device} over {x.via}) against "
                                    f"{x.crossings} here ({x.link_ms:.2f} ms): {x.fill_bound:.1f} against {x.bound:.1f} "
                                    "tok/s by the estimate"),
    "device_unused": lambda x: (f"{x.device} ({x.via}) holds nothing: the rest fits the other devices, and a token "
                                f"passing through {x.device} would cross between devices twice more, {x.crossing_ms:.2f} ms "
                                "each, slower by the estimate"),
    "load_into_ram": lambda x: ("load into RAM (-lm none): the GPU copies CPU-resident weights for prompts from pinned "
                                "memory, ~5x faster prompt processing than with mmap"),
    "mmap_ram_short": lambda x: (f"mmap: loading into RAM needs {fmt_bytes(x.needed)} but about {fmt_bytes(x.budget)} "
                                 "is available"),
    "cpu_only": lambda x: "no GPU: every tensor on the CPU",
    "dense_model": lambda x: ("dense model: expert placement (--cpu-moe, --n-cpu-moe, expert -ot) does not apply; "
                              "layers are split with -ngl"),
    "one_gpu": lambda x: (f"planned for CUDA{x.gpu} alone: load with split mode none and main GPU {x.gpu} "
                          "(llama.cpp otherwise spreads layers over every GPU)"),
    "mtp_not_loaded": lambda x: f"{fmt_bytes(x.n_bytes)} of MTP/NextN layers are in the file but llama.cpp does not load them",
}


def finding_text(finding: Finding) -> str:
    """A finding of the planner in words."""
    return _TEXT[finding.code](finding)


def plan_json(plan: Plan) -> dict:
    """`moecli plan --json`'s plan: `Plan.to_dict()` (findings as code and figures) with each
    finding's words, and the words of each kind as lists (`warnings`, `gave_up`, `notes`)."""
    data = plan.to_dict()
    data["findings"] = [{**d, "text": finding_text(x)} for d, x in zip(data["findings"], plan.findings)]
    for key, items in (("warnings", plan.warnings), ("gave_up", plan.gave_up), ("notes", plan.notes)):
        data[key] = [finding_text(x) for x in items]
    return data


# ---------------------------------------------------------------------------------------------
# plans


def placement_lines(placement: Placement) -> list[str]:
    """The compact picture of a placement, a few lines for people."""
    p = placement
    out = ["input: token embedding on CPU (llama.cpp never offloads it)"]
    if p.by_device:
        for device, layers, expert_layers in p.by_device:
            out.append(f"{device}: layers {_ranges(layers) or 'none'}; experts of layers {_ranges(expert_layers) or 'none'}")
        last = next((d for d, layers, _ in p.by_device if p.n_layer - 1 in layers), "CPU")
        out.append(f"output head on {last if p.output_on_gpu else 'CPU'}; "
                   f"experts on CPU: layers {_ranges(p.expert_layers_cpu) or 'none'}")
        for layer, parts in p.split_layers:
            out.append(f"layer {layer} split: " + "; ".join(f"{', '.join(_kind(n) for n in names)} on {device}"
                                                             for device, names in parts))
        return out
    out.append(f"layers on GPU: {_ranges(p.gpu_layers) or 'none'} of 0-{p.n_layer - 1}; "
               f"output head on {'GPU' if p.output_on_gpu else 'CPU'}")
    if p.expert_layers:
        out.append(f"experts on GPU: layers {_ranges(p.expert_layers_gpu) or 'none'}")
        out.append(f"experts on CPU: layers {_ranges(p.expert_layers_cpu) or 'none'}")
        if p.partial_layer is not None:
            out.append(f"layer {p.partial_layer} split: {', '.join(_kind(n) for n in p.partial_gpu)} on GPU, "
                       f"{', '.join(_kind(n) for n in p.partial_cpu)} on CPU")
    return out


def _ranges(values: Iterable[int]) -> str:
    values = sorted(values)
    if not values:
        return ""
    parts, start, prev = [], values[0], values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = v
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(parts)


_EXPERT_KIND = re.compile(EXPS_REGEX)


def _kind(name: str) -> str:
    match = _EXPERT_KIND.search(name)
    return f"{match.group(1)}_exps" if match else name


def decode_line(plan: Plan) -> str:
    if plan.speed is not None and plan.speed.decode.kind in ("measured", "calibrated"):
        return speed_text(plan.speed.decode)
    d = plan.decode
    if d.bound is None:
        return d.basis
    return f"≈ {d.low:.0f}-{d.high:.0f} tok/s (estimate; bound {d.bound:.0f} tok/s)"


def _tps(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _date(when: str | None) -> str:
    return (when or "")[:10]


def speed_text(x: SpeedFigure, *, this_machine: bool = True) -> str:
    """One speed figure and its basis, for people (`this_machine`: False for a profile, which no
    measurement here calibrates)."""
    if x.kind == "measured":
        runs = f", newest of {x.n_runs} runs" if x.n_runs > 1 else ""
        return f"{_tps(x.tokens_per_s)} tok/s (measured on {_date(x.when)}: this configuration on this machine{runs})"
    if x.kind == "calibrated":
        configs = f" of {x.n_configs} configurations" if x.n_configs > 1 else ""
        return (f"≈ {_tps(x.tokens_per_s)} tok/s (calibrated from {x.n_runs} run{'s' if x.n_runs != 1 else ''}"
                f"{configs} on this machine)")
    if x.kind == "estimate":
        return f"≈ {x.low:.0f}-{x.high:.0f} tok/s (uncalibrated estimate; bound {x.bound:.0f} tok/s)"
    if x.test == "pp" and not this_machine:
        return "no estimate (only measurements calibrate it, and they are of this machine, not of a profile)"
    if x.test == "pp":
        return "no estimate before this machine has been measured (moecli bench MODEL calibrates it)"
    return "no estimate"


def speed_basis(x: SpeedFigure) -> str | None:
    """The fitted terms of a calibrated figure, or why the runs here did not apply."""
    if x.kind == "calibrated" and x.terms:
        return "fitted: " + ", ".join(_term(name, c) for name, c in x.terms)
    if x.kind in ("estimate", "none") and x.other_runs:
        return (f"{x.other_runs} run{'s' if x.other_runs != 1 else ''} on this machine used another thread count "
                "or device: they do not calibrate this configuration")
    return None


def _term(name: str, c: float) -> str:
    if name.startswith(("bytes/bandwidth", "compute", "weights", "copies")):
        return f"{name} x {c:.2f}"
    if name == "per layer":
        return f"{c * 1e6:.0f} µs per layer"
    return f"{c * 1e3:.2f} ms per token"


def tuned_line(tuned: Tuned) -> str:
    """`run`/`plan` using a sweep's configuration."""
    args = tuned.to_params().to_llama_args()
    flags = " ".join(a for i, a in enumerate(args) if a != "--fit" and args[i - 1:i] != ["--fit"]
                     and a != "-c" and args[i - 1:i] != ["-c"])
    figures = [f"{tuned.decode_ts:.1f} tok/s decode" if tuned.decode_ts else None,
               f"{tuned.prompt_ts:.0f} tok/s prompt" if tuned.prompt_ts else None]
    return (f"tuned: {flags}, measured {', '.join(f for f in figures if f)} on {_date(tuned.when)} "
            f"(bench --sweep; --no-tuned for moecli's plan)")


def tuned_skipped_line(x: TunedSkipped) -> str:
    return (f"not using the tuned configuration ({x.label}): at -c {x.n_ctx} it needs {fmt_bytes(x.needed)} on "
            f"{x.device}, which has {fmt_bytes(x.budget)}; planned afresh")


def llama_command(plan: Plan, model: str, tool: str = "llama-server", *, hf: bool = False) -> str:
    """The llama.cpp command for this plan, one line to paste. `hf`: `model` is a Hub
    `org/repo:TAG`, which llama.cpp fetches itself with -hf (the same file moecli would pull)."""
    return shlex.join([tool, "-hf" if hf else "-m", model, *plan.params.to_llama_args()])


def _heading(out: Output, title: str) -> None:
    out.console.print(Text(title, style="bold"))


def _line(out: Output, text: str, style: str | None = None, indent: int = 2) -> None:
    """An indented line of prose: wrapped under its indent on a terminal, one line in a pipe."""
    if out.is_terminal:
        out.console.print(Padding(Text(text, style=style or ""), (0, 0, 0, indent), expand=False))
    else:
        out.console.print(Text(" " * indent + text, style=style or ""))


def _item(out: Output, text: str, style: str | None = None) -> None:
    """A bullet item: on a terminal its wrapped lines hang under the text, not under the bullet."""
    if not out.is_terminal:
        _line(out, f"- {text}", style=style)
        return
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(no_wrap=True)
    grid.add_column()
    grid.add_row("-", Text(text, style=style or ""))
    out.console.print(Padding(grid, (0, 0, 0, 2), expand=False))


def memory_table(out: Output, plan: Plan):
    """Devices as columns, kinds of memory as rows: a few narrow columns fit any terminal."""
    devices = plan.devices
    kinds = [("weights", lambda d: d.weights), ("KV cache", lambda d: d.kv), ("recurrent state", lambda d: d.recurrent),
             ("compute buffers", lambda d: d.compute), ("runtime overhead", lambda d: d.overhead),
             ("total", lambda d: d.total), ("budget", lambda d: d.budget), ("free", lambda d: d.free)]
    rows = []
    for name, value in kinds:
        cells = [value(d) for d in devices]
        if name in ("recurrent state", "runtime overhead") and not any(cells):
            continue
        rows.append([Text(name, style="bold" if name == "total" else ""),
                     *(Text("-" if v is None else fmt_bytes(v),
                            style="red" if name == "free" and v is not None and v < 0 else "") for v in cells)])
    columns = ["", *(d.device for d in devices)]
    return out.table(None, columns, rows, justify={d.device: "right" for d in devices})


def plan_report(out: Output, plan: Plan, model: ModelFacts, machine: MachineFacts, model_path: str, *,
                hf: bool = False) -> None:
    _heading(out, "Machine")
    for line in machine_lines(machine):
        _line(out, line)
    _heading(out, "Model")
    for line in model_lines(model):
        _line(out, line)
    _heading(out, "Memory")
    out.console.print(Padding(memory_table(out, plan), (0, 0, 0, 2), expand=False))

    _heading(out, "Placement")
    for line in placement_lines(plan.placement) if plan.gpu is not None else ["every tensor on the CPU (no GPU)"]:
        _line(out, line)
    p = plan.params
    _heading(out, "Context")
    _line(out, f"{plan.n_ctx:,} tokens, KV cache K {p.type_k} / V {p.type_v}, flash attention {p.flash_attn}; "
               f"load mode {p.load_mode}; -ub {p.n_ubatch}, -b {p.n_batch}; {p.n_threads or 'all physical'} threads")
    _heading(out, "Expected decode speed")
    _line(out, decode_line(plan))
    speed = plan.speed
    if speed is not None and speed.decode.kind in ("measured", "calibrated"):
        basis = speed_basis(speed.decode)
        if basis:
            _line(out, basis, style="dim")
    elif plan.decode.bound is not None:
        _line(out, plan.decode.basis, style="dim")
    if speed is not None:
        _heading(out, "Expected prompt speed (pp512)")
        _line(out, speed_text(speed.prompt, this_machine=not machine.source.startswith("profile")))
        basis = speed_basis(speed.prompt)
        if basis:
            _line(out, basis, style="dim")

    for title, items, style in (("Gave up", plan.gave_up, "yellow"), ("Warnings", plan.warnings, "yellow"),
                                ("Notes", plan.notes, "dim")):
        if items:
            _heading(out, title)
            for item in items:
                _item(out, finding_text(item), style=style)
    if plan.alternatives:
        _heading(out, "Alternatives considered")
        for a in plan.alternatives:
            figures = [*_alternative_memory(a), f"bound {a.decode_bound:.0f} tok/s" if a.decode_bound else None]
            figures_text = ", ".join(f for f in figures if f)
            _item(out, a.label + (f" ({figures_text})" if figures_text else ""))
            _line(out, a.reason, style="dim", indent=4)
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    out.console.print(Text(f"Verdict: {verdict}", style="bold green" if plan.fits else "bold red"))
    _heading(out, "llama.cpp equivalent")
    out.console.print(Text("  " + llama_command(plan, model_path, hf=hf)), soft_wrap=True)


def _alternative_memory(a: Alternative) -> list[str | None]:
    """One GPU: its total; several devices: each one's (and its budget where it does not fit)."""
    if not a.devices:
        return [f"{fmt_bytes(a.gpu_total)} on the GPU" if a.gpu_total is not None else None]
    return [f"{fmt_bytes(d.total)} on {d.device}" + ("" if d.fits else f" of {fmt_bytes(d.budget or 0)}")
            for d in a.devices if d.device != "CPU"]


def plan_summary(plan: Plan) -> str:
    """One line for `run` and `bench`: what placement they use."""
    parts = []
    pl = plan.placement
    if pl.by_device:  # several devices: each one's total, and how many layers' experts the devices hold
        parts.append(", ".join(f"{fmt_bytes(d.total)} on {d.device}" for d in plan.devices if d.device != "CPU"))
        if pl.expert_layers:
            parts.append(f"experts of {len(pl.expert_layers_gpu)}/{len(pl.expert_layers)} layers off the CPU")
    elif plan.gpu is not None:
        parts.append(f"{fmt_bytes(plan.gpu.total)} on {plan.gpu.device}")
        if pl.expert_layers:
            gpu_layers = len(pl.expert_layers_gpu) + (1 if pl.partial_layer is not None else 0)
            parts.append(f"experts of {gpu_layers}/{len(pl.expert_layers)} layers on GPU")
    else:
        parts.append("CPU only")
    # the context llama.cpp makes: -c rounded up to whole KV cells (256), as the plan's report says
    made = f"ctx {plan.n_ctx}"
    if plan.params.n_ctx and plan.n_ctx != plan.params.n_ctx:
        made += f" (-c {plan.params.n_ctx} rounded up by llama.cpp)"
    parts.append(made)
    if plan.params.type_k != "f16" or plan.params.type_v != "f16":
        parts.append(f"KV {plan.params.type_k}/{plan.params.type_v}")
    return "plan: " + ", ".join(parts) + " · " + " ".join(plan.params.to_llama_args())


def bench_table(out: Output, results: Sequence[BenchResult]) -> None:
    """llama-bench's table, narrowed: the configurations are listed once above it (placement,
    context, threads), and the table's rows refer to them by number."""
    labels = list(dict.fromkeys(r.label for r in results))
    several = len(labels) > 1
    _heading(out, "Configurations" if several else "Configuration")
    for i, label in enumerate(labels, 1):
        r = next(x for x in results if x.label == label)
        _line(out, f"{f'{i}  ' if several else ''}{label}: {_placement(r)}; ctx {r.n_ctx}, {r.n_threads} threads")
    fastest: dict[str, BenchResult] = {}
    for r in results:
        if r.test not in fastest or r.avg_ts > fastest[r.test].avg_ts:
            fastest[r.test] = r
    rows = []
    for r in results:
        mark = " *" if several and fastest[r.test] is r else ""
        rows.append([*([str(labels.index(r.label) + 1)] if several else []), r.test,
                     f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}{mark}", fmt_bytes(r.peak_ram_bytes),
                     fmt_bytes(r.peak_vram_bytes) if r.peak_vram_bytes is not None else "-"])
    columns = [*(["#"] if several else []), "test", "t/s", "peak RAM", "peak VRAM"]
    out.console.print(out.table(None, columns, rows, justify={"#": "right", "t/s": "right", "peak RAM": "right",
                                                               "peak VRAM": "right"}))
    if several:
        out.console.print(Text("* fastest for that test", style="dim"))


def _placement(r: BenchResult) -> str:
    parts = [f"-ngl {'all' if r.n_gpu_layers < 0 else r.n_gpu_layers}"]
    if r.n_cpu_moe:
        parts.append(f"--n-cpu-moe {r.n_cpu_moe}")
    if r.tensor_buft_overrides != "none":
        parts.append(f"-ot {r.tensor_buft_overrides}")
    parts.append(f"-lm {r.load_mode}")
    return " ".join(parts)


def store_list(out: Output, listed) -> None:
    """`moecli list`: one block per model (name, size, date; whether it fits; its path), which reads
    at any width, unlike a table with a path column."""
    for item in listed:
        record, fits, why = item.record, item.verdict.fits, item.verdict.why
        out.console.print(Text.assemble((record.name, "bold"), f"  {fmt_bytes(record.size)}, "
                                        f"pulled {record.pulled_at.strftime('%Y-%m-%d %H:%M')}"))
        _line(out, f"{'fits this machine' if fits else 'does not fit this machine'}: {why}",
              style="green" if fits else "yellow")
        _line(out, str(record.path), style="dim")


# ---------------------------------------------------------------------------------------------
# sweeps and history


def sweep_chart(out: Output, results: Sequence[BenchResult], chosen: str | None, width: int = 28) -> None:
    """Decode and prompt tok/s per configuration as bars of text, each test scaled to its fastest,
    the chosen configuration marked: a trade-off reads faster from a picture than from a table."""
    labels = list(dict.fromkeys(r.label for r in results))
    by = {(r.label, "tg" if r.n_gen and not r.n_prompt else "pp"): r.avg_ts for r in results}
    top = {t: max((v for (_, tt), v in by.items() if tt == t), default=0.0) for t in ("tg", "pp")}
    _heading(out, "Sweep (bars scaled to the fastest of each test)")
    name_width = min(34, max(len(label) for label in labels) + 2)
    for i, label in enumerate(labels, 1):
        mark = "▶" if label == chosen else " "
        out.console.print(Text(f"{mark}{i:>2} {label[:name_width - 2]}", style="bold" if label == chosen else ""))
        for test, word, style in (("tg", "decode", "green"), ("pp", "prompt", "cyan")):
            value = by.get((label, test))
            if value is None or not top[test]:
                continue
            n = max(1, round(width * value / top[test]))
            out.console.print(Text.assemble(f"     {word:<7}", ("█" * n, style), " " * (width - n + 1),
                                            f"{_tps(value)} tok/s"))
    if chosen:
        out.console.print(Text("▶ chosen: the fastest decode (and among equal ones, within 5 %, the fastest prompt)",
                               style="dim"))


def history_table(out: Output, rows: Sequence[Measurement], tuned: Tuned | None) -> None:
    """`bench --history`: every measured row of a model on this machine, oldest first."""
    table_rows = []
    for m in rows:
        flags = " ".join(a for i, a in enumerate(m.args) if a != "--fit" and m.args[i - 1:i] != ("--fit",))
        table_rows.append([_date(m.when) + " " + m.when[11:16], m.label, m.test + str(m.n_prompt or m.n_gen),
                           f"{m.avg_ts:.2f} ± {m.stddev_ts:.2f}", flags])
    out.console.print(out.table(None, ["when", "configuration", "test", "t/s", "flags"], table_rows,
                                justify={"t/s": "right"}))
    if tuned is not None:
        _line(out, tuned_line(tuned), indent=0)
