"""How plans, benchmarks and the store look to people (rich on a terminal, plain text in a pipe).
JSON goes through each type's own `to_dict()`; nothing here decides anything."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from rich.text import Text

from moecli.bench import BenchResult
from moecli.facts import MachineFacts, ModelFacts
from moecli.output import Output
from moecli.planner import Plan
from moecli.units import fmt_bytes


def machine_lines(machine: MachineFacts) -> list[str]:
    lines = []
    for gpu in machine.gpus:
        bw = f", {gpu.bandwidth / 1e9:.0f} GB/s" if gpu.bandwidth else ""
        lines.append(f"GPU {gpu.index}: {gpu.name}, {fmt_bytes(gpu.total_bytes)} ({fmt_bytes(gpu.free_bytes)} free){bw}")
    if not machine.gpus:
        lines.append("GPU: none (everything runs on the CPU)")
    bw = f", {machine.ram_bandwidth / 1e9:.0f} GB/s" if machine.ram_bandwidth else ""
    lines.append(f"RAM: {fmt_bytes(machine.ram_total)} ({fmt_bytes(machine.ram_available)} available){bw}; "
                 f"{machine.physical_cores} physical cores")
    lines.append(f"from: {machine.source}")
    return lines


def model_lines(model: ModelFacts) -> list[str]:
    kind = (f"MoE: {model.n_expert} experts, {model.n_expert_used} active per token"
            + (f", {model.n_expert_shared} shared" if model.n_expert_shared else "")) if model.is_moe else "dense"
    quant = f" {model.file_type}" if model.file_type else ""
    shards = f" in {len(model.shards)} files" if len(model.shards) > 1 else ""
    return [
        f"{model.name} ({model.arch}{quant}), {fmt_bytes(model.n_bytes)}{shards}",
        f"{model.n_params / 1e9:.2f} B parameters, {model.n_active_params / 1e9:.2f} B read per token; {kind}",
        f"{model.n_layer} layers ({len(model.kv_layers)} with a KV cache), trained context {model.n_ctx_train:,}",
    ]


def decode_line(plan: Plan) -> str:
    d = plan.decode
    if d.bound is None:
        return d.basis
    return f"≈ {d.low:.0f}-{d.high:.0f} tok/s (estimate; bound {d.bound:.0f} tok/s)"


def llama_command(plan: Plan, model_path: str, tool: str = "llama-server") -> str:
    return shlex.join([tool, "-m", model_path, *plan.params.to_llama_args()])


def plan_report(out: Output, plan: Plan, model: ModelFacts, machine: MachineFacts, model_path: str) -> None:
    con = out.console
    con.print(Text("Machine", style="bold"))
    for line in machine_lines(machine):
        con.print(f"  {line}")
    con.print(Text("Model", style="bold"))
    for line in model_lines(model):
        con.print(f"  {line}")

    rows = [[d.device, fmt_bytes(d.weights), fmt_bytes(d.kv), fmt_bytes(d.recurrent), fmt_bytes(d.compute),
             fmt_bytes(d.overhead), fmt_bytes(d.total), fmt_bytes(d.budget) if d.budget is not None else "-",
             fmt_bytes(d.free) if d.free is not None else "-"] for d in plan.devices]
    columns = ["device", "weights", "KV cache", "recurrent", "compute", "overhead", "total", "budget", "free"]
    con.print(out.table("Memory", columns, rows, justify={c: "right" for c in columns[1:]}))

    con.print(Text("Placement", style="bold"))
    for line in plan.placement.lines():
        con.print(f"  {line}")
    p = plan.params
    con.print(Text("Context", style="bold"))
    con.print(f"  {plan.n_ctx:,} tokens, KV cache K {p.type_k} / V {p.type_v}, flash attention {p.flash_attn}; "
              f"load mode {p.load_mode}; -ub {p.n_ubatch}, -b {p.n_batch}; {p.n_threads or 'all physical'} threads")
    con.print(Text("Expected decode speed", style="bold"))
    con.print(f"  {decode_line(plan)}")
    if plan.decode.bound is not None:
        con.print(f"  {plan.decode.basis}", style="dim")

    for title, items, style in (("Gave up", plan.gave_up, "yellow"), ("Warnings", plan.warnings, "yellow"),
                                ("Notes", plan.notes, "dim")):
        if items:
            con.print(Text(title, style="bold"))
            for item in items:
                con.print(f"  - {item}", style=style)
    if plan.alternatives:
        rows = [[a.label, fmt_bytes(a.gpu_total) if a.gpu_total is not None else "-",
                 f"{a.decode_bound:.0f}" if a.decode_bound else "-", a.reason] for a in plan.alternatives]
        con.print(out.table("Alternatives considered", ["configuration", "GPU total", "bound tok/s", "why not"], rows))
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    con.print(Text(f"Verdict: {verdict}", style="bold green" if plan.fits else "bold red"))
    con.print(Text("llama.cpp equivalent", style="bold"))
    con.print(f"  {llama_command(plan, model_path)}", markup=False, highlight=False)


def plan_summary(plan: Plan) -> str:
    """One line for `run` and `bench`: what placement they use."""
    parts = []
    pl = plan.placement
    if plan.gpu is not None:
        parts.append(f"{fmt_bytes(plan.gpu.total)} on {plan.gpu.device}")
        if pl.expert_layers:
            gpu_layers = len(pl.expert_layers_gpu) + (1 if pl.partial_layer is not None else 0)
            parts.append(f"experts of {gpu_layers}/{len(pl.expert_layers)} layers on GPU")
    else:
        parts.append("CPU only")
    parts.append(f"ctx {plan.params.n_ctx}")
    if plan.params.type_k != "f16" or plan.params.type_v != "f16":
        parts.append(f"KV {plan.params.type_k}/{plan.params.type_v}")
    return "plan: " + ", ".join(parts) + " · " + " ".join(plan.params.to_llama_args())


def bench_table(out: Output, results: Sequence[BenchResult]) -> None:
    fastest = {}
    for r in results:
        key = r.test
        if key not in fastest or r.avg_ts > fastest[key].avg_ts:
            fastest[key] = r
    rows = []
    for r in results:
        mark = " *" if len({x.label for x in results}) > 1 and fastest[r.test] is r else ""
        rows.append([r.label, r.test, f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}{mark}", r.n_threads,
                     _placement(r), r.n_ctx, fmt_bytes(r.peak_ram_bytes),
                     fmt_bytes(r.peak_vram_bytes) if r.peak_vram_bytes is not None else "-"])
    out.console.print(out.table(None, ["config", "test", "t/s", "threads", "placement", "ctx", "peak RAM", "peak VRAM"],
                                rows, justify={"t/s": "right", "threads": "right", "ctx": "right"}))
    if len({x.label for x in results}) > 1:
        out.console.print("* fastest for that test", style="dim")


def _placement(r: BenchResult) -> str:
    parts = [f"-ngl {'all' if r.n_gpu_layers < 0 else r.n_gpu_layers}"]
    if r.n_cpu_moe:
        parts.append(f"--n-cpu-moe {r.n_cpu_moe}")
    if r.tensor_buft_overrides != "none":
        parts.append(f"-ot {r.tensor_buft_overrides}")
    parts.append(f"-lm {r.load_mode}")
    return " ".join(parts)


def store_table(out: Output, rows: list[list[str]]) -> None:
    out.console.print(out.table(None, ["name", "quant", "size", "pulled", "fits this machine", "path"], rows))
