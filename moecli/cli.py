"""The `moecli` command: each command parses its options, calls the core, and renders.

Flags keep llama.cpp's names and meanings (`-ngl`, `--n-cpu-moe`, `--cpu-moe`, `-ot`, `-c`, `-ctk`,
`-ctv`, `-ub`, `-b`, `-t`, `-lm`, `-fa`); machine options (`--vram`, `--ram`, `--cpu-only`,
`--profile`) let a user plan for a machine they do not have.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from moecli import __version__
from moecli.errors import BadInput, DoesNotFit, EngineError, MoecliError, NotMoE
from moecli.output import Output

app = typer.Typer(
    name="moecli",
    help="Run big Mixture-of-Experts models on small GPUs: plan where every tensor goes, pull GGUFs "
    "from the Hugging Face Hub, chat, and benchmark — through llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- options shared by several commands (llama.cpp's names) ---------------------------------------
ModelArg = Annotated[str, typer.Argument(help="A GGUF path, a pulled model, org/repo:QUANT, an alias, or 'demo'.", show_default=False)]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Plan for a machine profile (configs/machines), e.g. gtx1060-6gb.", rich_help_panel="Machine")]
VramOpt = Annotated[Optional[str], typer.Option("--vram", help="The GPU's memory to plan for, e.g. 6GiB.", rich_help_panel="Machine")]
RamOpt = Annotated[Optional[str], typer.Option("--ram", help="The machine's RAM to plan for, e.g. 32GiB.", rich_help_panel="Machine")]
CpuOnlyOpt = Annotated[bool, typer.Option("--cpu-only", help="Use no GPU.", rich_help_panel="Machine")]
MarginOpt = Annotated[Optional[str], typer.Option("--margin", help="VRAM kept free below the budget (default 256MiB).", rich_help_panel="Machine")]
CtxOpt = Annotated[Optional[str], typer.Option("--ctx-size", "-c", "--ctx", help="Context in tokens (8192, 32k) or 'max'. Default 4096.", rich_help_panel="Context")]
CtkOpt = Annotated[Optional[str], typer.Option("--cache-type-k", "-ctk", help="KV cache type for K (f16, q8_0, q4_0, ...).", rich_help_panel="Context")]
CtvOpt = Annotated[Optional[str], typer.Option("--cache-type-v", "-ctv", help="KV cache type for V.", rich_help_panel="Context")]
NoKvQuantOpt = Annotated[bool, typer.Option("--no-kv-quant", help="Never quantize the KV cache to make room.", rich_help_panel="Context")]
UbOpt = Annotated[Optional[int], typer.Option("--ubatch-size", "-ub", help="Physical batch size.", rich_help_panel="Context")]
BOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Logical batch size.", rich_help_panel="Context")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: physical cores).", rich_help_panel="Context")]
LoadModeOpt = Annotated[Optional[str], typer.Option("--load-mode", "-lm", help="auto, none (read into RAM), mmap, mlock, mmap+mlock, dio.", rich_help_panel="Context")]
NoMmapOpt = Annotated[bool, typer.Option("--no-mmap", help="Read the weights into RAM (= -lm none).", rich_help_panel="Context")]
MlockOpt = Annotated[bool, typer.Option("--mlock", help="Keep the weights in RAM (= -lm mlock).", rich_help_panel="Context")]
FaOpt = Annotated[Optional[str], typer.Option("--flash-attn", "-fa", help="on, off or auto.", rich_help_panel="Context")]
NglOpt = Annotated[Optional[str], typer.Option("--n-gpu-layers", "-ngl", "--gpu-layers", help="Layers on the GPU: a number or 'all' (default: the plan's).", rich_help_panel="Placement (llama.cpp flags; default: moecli's plan)")]
NcmoeOpt = Annotated[Optional[int], typer.Option("--n-cpu-moe", "-ncmoe", help="Keep the experts of the first N layers on the CPU.", rich_help_panel="Placement (llama.cpp flags; default: moecli's plan)")]
CmoeOpt = Annotated[bool, typer.Option("--cpu-moe", "-cmoe", help="Keep every expert on the CPU.", rich_help_panel="Placement (llama.cpp flags; default: moecli's plan)")]
OtOpt = Annotated[Optional[list[str]], typer.Option("--override-tensor", "-ot", help="PATTERN=BUFFER_TYPE[,...], e.g. 'blk\\.1[0-9]\\.ffn_.*_exps=CPU'.", rich_help_panel="Placement (llama.cpp flags; default: moecli's plan)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log.")]


def main() -> None:
    """Entry point: one line for a known error, a traceback only for bugs (or MOECLI_DEBUG=1)."""
    out = Output()
    try:
        app(prog_name="moecli")
    except MoecliError as err:
        if os.environ.get("MOECLI_DEBUG"):
            raise
        out.error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        out.err.print("interrupted", style="dim")
        sys.exit(130)


def _version(value: bool) -> None:
    if value:
        print(f"moecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False) -> None:
    pass


# --- building the core's inputs from options -------------------------------------------------------
def _machine(profile, vram, ram, cpu_only, *, for_loading: bool = False):
    from moecli import engine, machine

    facts = machine.resolve(profile=profile, vram=vram, ram=ram, cpu_only=cpu_only)
    if for_loading and facts.gpus and not engine.gpu_offload_supported():
        return machine.apply_overrides(facts, cpu_only=True), (
            "this llama.cpp build has no GPU support: running on the CPU "
            "(reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=on for the GPU)")
    return facts, None


def _wishes(*, ctx=None, ctk=None, ctv=None, no_kv_quant=False, ub=None, b=None, threads=None, load_mode=None,
            no_mmap=False, mlock=False, fa=None, vram=None, margin=None):
    from moecli import planner
    from moecli.units import parse_size

    if sum(bool(x) for x in (load_mode, no_mmap, mlock)) > 1:
        raise BadInput("-lm, --no-mmap and --mlock say the same thing differently", "give one of them")
    mode = load_mode or ("none" if no_mmap else "mlock" if mlock else None)
    return planner.Wishes(
        n_ctx=planner.parse_ctx(ctx) if ctx else None,
        vram_budget=parse_size(vram, "--vram") if vram else None,
        margin=parse_size(margin, "--margin") if margin else None,
        type_k=ctk, type_v=ctv, allow_kv_quant=not no_kv_quant, n_ubatch=ub, n_batch=b, threads=threads,
        load_mode=mode, flash_attn=fa,
    )


def _placement_flags(ngl, ncmoe, cmoe, ot) -> dict | None:
    """The placement the user typed, in LlamaParams fields; None when they left it to the plan."""
    from moecli.params import ALL_LAYERS, TensorOverride

    if ngl is None and ncmoe is None and not cmoe and not ot:
        return None
    flags: dict = {}
    if ngl is not None:
        if ngl.lower() in ("all", "-1", "999", "99"):
            flags["n_gpu_layers"] = ALL_LAYERS
        elif ngl.lower() == "auto":
            pass
        elif ngl.isdigit():
            flags["n_gpu_layers"] = int(ngl)
        else:
            raise BadInput(f"-ngl {ngl!r} is not a number of layers", "give a number, 'all' or 'auto'")
    flags["cpu_moe"] = cmoe
    flags["n_cpu_moe"] = ncmoe or 0
    flags["tensor_overrides"] = tuple(o for text in ot or () for o in TensorOverride.parse_list(text))
    return flags


def _plan(facts, machine, wishes, flags):
    """moecli's plan, or the user's own placement accounted for on top of it."""
    from moecli import planner
    from moecli.params import LlamaParams

    if flags is None:
        return planner.plan(facts, machine, wishes)
    try:
        base = planner.plan(facts, machine, wishes).params
    except DoesNotFit:
        base = LlamaParams(n_ctx=wishes.n_ctx if isinstance(wishes.n_ctx, int) else planner.DEFAULT_CTX)
    params = base.with_(n_gpu_layers=flags.get("n_gpu_layers", LlamaParams.n_gpu_layers), cpu_moe=flags["cpu_moe"],
                        n_cpu_moe=flags["n_cpu_moe"], tensor_overrides=flags["tensor_overrides"])
    if (params.cpu_moe or params.n_cpu_moe) and not facts.is_moe:
        raise NotMoE(f"{facts.name} is a dense model: --cpu-moe/--n-cpu-moe move expert tensors and it has none",
                     "drop them; use -ngl to split its layers")
    return planner.evaluate(facts, machine, params, wishes)


@contextmanager
def _status(out: Output, text: str):
    """A spinner on a terminal; silence in a pipe (the result line follows anyway)."""
    if out.err.is_terminal:
        with out.err.status(text):
            yield
    else:
        yield


def _load_engine(out: Output, path: Path, params, verbose: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from moecli.engine import Engine

    on_log = (lambda text: out.err.file.write(text)) if verbose else None
    if not out.err.is_terminal:
        return Engine.load(path, params, on_log=on_log)
    with Progress(TextColumn("loading {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=out.err, transient=True) as progress:
        task = progress.add_task(path.name, total=1.0)
        return Engine.load(path, params, on_progress=lambda f: progress.update(task, completed=f), on_log=on_log)


def _prepare_local(out: Output, model: str, machine_opts: tuple, wishes, flags):
    """For run and bench: the local files, their facts, the machine as llama.cpp here can use it,
    and the plan."""
    from moecli import models

    with _status(out, "building the demo model…" if model == models.DEMO else "reading the model…"):
        located = models.locate(model)
        facts = models.read_facts(located)
    machine, note = _machine(*machine_opts, for_loading=True)
    if note:
        out.note(note)
        if flags and (flags.get("n_gpu_layers") not in (None, 0) and flags["n_gpu_layers"] != -1 or flags["n_cpu_moe"] or flags["cpu_moe"]):
            raise EngineError("no GPU: the placement flags (-ngl, --n-cpu-moe, --cpu-moe) need one",
                              "drop them to run on the CPU, or install llama-cpp-python with CUDA")
    plan = _plan(facts, machine, wishes, flags)
    return located, facts, machine, plan


# --- plan -------------------------------------------------------------------------------------------
@app.command()
def plan(
    model: ModelArg,
    json_out: Annotated[bool, typer.Option("--json", help="The plan as JSON.")] = False,
    llama_args: Annotated[bool, typer.Option("--llama-args", help="Only the equivalent llama-server command.")] = False,
    profile: ProfileOpt = None, vram: VramOpt = None, ram: RamOpt = None, cpu_only: CpuOnlyOpt = False, margin: MarginOpt = None,
    ctx: CtxOpt = None, ctk: CtkOpt = None, ctv: CtvOpt = None, no_kv_quant: NoKvQuantOpt = False, ub: UbOpt = None,
    b: BOpt = None, threads: ThreadsOpt = None, load_mode: LoadModeOpt = None, no_mmap: NoMmapOpt = False,
    mlock: MlockOpt = False, fa: FaOpt = None,
    ngl: NglOpt = None, ncmoe: NcmoeOpt = None, cmoe: CmoeOpt = False, ot: OtOpt = None,
) -> None:
    """Show how MODEL fits this machine (or --profile / --vram / --ram): where every tensor goes,
    memory per device, context and KV cache, expected speed, and the llama.cpp flags. Nothing is
    loaded; a Hub model is read by range requests (its header only)."""
    from moecli import models, render

    out = Output(json_mode=json_out)
    wishes = _wishes(ctx=ctx, ctk=ctk, ctv=ctv, no_kv_quant=no_kv_quant, ub=ub, b=b, threads=threads,
                     load_mode=load_mode, no_mmap=no_mmap, mlock=mlock, fa=fa, margin=margin)
    machine, _ = _machine(profile, vram, ram, cpu_only)
    flags = _placement_flags(ngl, ncmoe, cmoe, ot)
    with _status(out, "reading the model header…"):
        located = models.locate(model, remote_ok=True, machine=machine)
        facts = models.read_facts(located)
    the_plan = _plan(facts, machine, wishes, flags)
    path = str(located.path) if located.files else (located.remote_name or model)
    if llama_args:
        out.raw(render.llama_command(the_plan, path))
    elif json_out:
        out.json({"model": {"source": facts.source, "name": facts.name, "arch": facts.arch, "file_type": facts.file_type,
                            "n_params": facts.n_params, "n_active_params": facts.n_active_params, "n_bytes": facts.n_bytes,
                            "n_layer": facts.n_layer, "n_expert": facts.n_expert, "n_expert_used": facts.n_expert_used,
                            "n_ctx_train": facts.n_ctx_train, "is_moe": facts.is_moe},
                  "machine": machine, "plan": the_plan})
    else:
        render.plan_report(out, the_plan, facts, machine, path)
    if not the_plan.fits:
        raise typer.Exit(1)


# --- run --------------------------------------------------------------------------------------------
@app.command()
def run(
    model: ModelArg,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit (no chat).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-sys", help="System prompt.")] = None,
    n_predict: Annotated[int, typer.Option("--n-predict", "-n", help="Tokens to generate at most (-1: until the model stops).", rich_help_panel="Sampling")] = -1,
    temp: Annotated[Optional[float], typer.Option("--temp", help="Temperature (default: the model's, else 0.8).", rich_help_panel="Sampling")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", rich_help_panel="Sampling")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", rich_help_panel="Sampling")] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", rich_help_panel="Sampling")] = None,
    repeat_penalty: Annotated[Optional[float], typer.Option("--repeat-penalty", rich_help_panel="Sampling")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", "-s", rich_help_panel="Sampling")] = None,
    hide_thinking: Annotated[bool, typer.Option("--hide-thinking", help="Do not show <think>…</think>.")] = False,
    profile: ProfileOpt = None, vram: VramOpt = None, ram: RamOpt = None, cpu_only: CpuOnlyOpt = False, margin: MarginOpt = None,
    ctx: CtxOpt = None, ctk: CtkOpt = None, ctv: CtvOpt = None, no_kv_quant: NoKvQuantOpt = False, ub: UbOpt = None,
    b: BOpt = None, threads: ThreadsOpt = None, load_mode: LoadModeOpt = None, no_mmap: NoMmapOpt = False,
    mlock: MlockOpt = False, fa: FaOpt = None,
    ngl: NglOpt = None, ncmoe: NcmoeOpt = None, cmoe: CmoeOpt = False, ot: OtOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Chat with MODEL (or answer --prompt once), streaming tokens with live tokens/s. Loads with
    moecli's plan unless you give llama.cpp placement flags."""
    from moecli import chat, render
    from moecli.engine import Sampling

    out = Output()
    wishes = _wishes(ctx=ctx, ctk=ctk, ctv=ctv, no_kv_quant=no_kv_quant, ub=ub, b=b, threads=threads,
                     load_mode=load_mode, no_mmap=no_mmap, mlock=mlock, fa=fa, vram=vram, margin=margin)
    flags = _placement_flags(ngl, ncmoe, cmoe, ot)
    located, facts, machine, the_plan = _prepare_local(out, model, (profile, None, ram, cpu_only), wishes, flags)
    for warning in the_plan.warnings:
        out.warn(warning)
    out.note(render.plan_summary(the_plan))
    typed = {k: v for k, v in dict(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                   seed=seed, n_predict=n_predict).items() if v is not None}
    engine = _load_engine(out, located.path, the_plan.params, verbose)
    with engine:
        sampling = Sampling.from_model(engine.metadata, **typed)
        session = chat.ChatSession(engine, sampling, out, system=system, show_thinking=not hide_thinking)
        if prompt is not None:
            figures = session.reply(prompt)
            out.note(figures.line())
            return
        if not sys.stdin.isatty():
            raise BadInput("no terminal to chat in (stdin is not a terminal)", 'give the question with -p "..."')
        chat.run_repl(session, _read_line, out)


def _read_line(prompt: str) -> str:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    return input(prompt)


# --- bench ------------------------------------------------------------------------------------------
@app.command()
def bench(
    model: ModelArg,
    n_prompt: Annotated[int, typer.Option("--n-prompt", "-p", help="Prompt tokens of the pp test (0: skip).")] = 512,
    n_gen: Annotated[int, typer.Option("--n-gen", "-n", help="Generated tokens of the tg test (0: skip).")] = 128,
    n_depth: Annotated[int, typer.Option("--n-depth", "-d", help="Tokens already in the context.")] = 0,
    reps: Annotated[int, typer.Option("--repetitions", "-r", help="Repetitions of each test.")] = 5,
    sweep: Annotated[bool, typer.Option("--sweep", help="Also measure the plan's neighbours (MoE only).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Results as JSON.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Results as CSV (llama-bench's fields).")] = False,
    profile: ProfileOpt = None, vram: VramOpt = None, ram: RamOpt = None, cpu_only: CpuOnlyOpt = False, margin: MarginOpt = None,
    ctx: CtxOpt = None, ctk: CtkOpt = None, ctv: CtvOpt = None, no_kv_quant: NoKvQuantOpt = False, ub: UbOpt = None,
    b: BOpt = None, threads: ThreadsOpt = None, load_mode: LoadModeOpt = None, no_mmap: NoMmapOpt = False,
    mlock: MlockOpt = False, fa: FaOpt = None,
    ngl: NglOpt = None, ncmoe: NcmoeOpt = None, cmoe: CmoeOpt = False, ot: OtOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Measure prompt (pp) and generation (tg) throughput of MODEL like llama-bench: mean ± stddev
    over repetitions, with the placement, threads, context and peak RAM/VRAM of each row."""
    from moecli import bench as benchmod
    from moecli import machine as machinemod
    from moecli import planner, render
    from moecli.engine import Engine

    if json_out and csv_out:
        raise BadInput("--json and --csv both asked for", "choose one output format")
    if reps < 1 or n_prompt < 0 or n_gen < 0 or n_depth < 0 or n_prompt + n_gen == 0:
        raise BadInput("nothing to measure", "give -p and/or -n above 0 and -r of at least 1")
    out = Output(json_mode=json_out or csv_out)
    wishes = _wishes(ctx=ctx, ctk=ctk, ctv=ctv, no_kv_quant=no_kv_quant, ub=ub, b=b, threads=threads,
                     load_mode=load_mode, no_mmap=no_mmap, mlock=mlock, fa=fa, vram=vram, margin=margin)
    flags = _placement_flags(ngl, ncmoe, cmoe, ot)
    located, facts, machine, the_plan = _prepare_local(out, model, (profile, None, ram, cpu_only), wishes, flags)
    configs = [("plan" if flags is None else "your flags", the_plan.params)]
    if sweep:
        if not facts.is_moe:
            raise NotMoE(f"{facts.name} is a dense model: --sweep compares expert placements",
                         "bench it without --sweep")
        if not machine.gpus:
            raise EngineError("no GPU: --sweep compares placements between the GPU and the CPU",
                              "bench without --sweep, or on a machine with a GPU")
        configs += planner.neighbours(the_plan)
    for warning in the_plan.warnings:
        out.warn(warning)
    out.note(render.plan_summary(the_plan))
    spec = benchmod.BenchSpec(n_prompt=n_prompt, n_gen=n_gen, n_depth=n_depth, reps=reps)
    vram_used = machinemod.vram_used_probe(machine.gpus[0].index) if machine.gpus else None
    on_log = (lambda text: out.err.file.write(text)) if verbose else None
    results = []
    for i, (label, params) in enumerate(configs, 1):
        with _status(out, f"[{i}/{len(configs)}] {label}: loading and measuring…"):
            results += benchmod.run_config(located.path, label, params, spec, vram_used=vram_used,
                                           load=lambda p, prm: Engine.load(p, prm, on_log=on_log))
        if not (json_out or csv_out):
            out.note(f"[{i}/{len(configs)}] {label}: " + ", ".join(f"{r.test} {r.avg_ts:.2f} t/s" for r in results[-2:] if r.label == label))
    if json_out:
        out.json({"model": str(located.path), "machine": machine, "plan": the_plan.params.to_llama_args(),
                  "results": [r.to_dict() for r in results]})
    elif csv_out:
        out.raw(benchmod.to_csv(results))
    else:
        render.bench_table(out, results)


# --- pull / list / rm -------------------------------------------------------------------------------
@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="org/repo[:QUANT][@revision], hf.co/org/repo:QUANT, or an alias.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before downloading.")] = False,
    profile: ProfileOpt = None, vram: VramOpt = None, ram: RamOpt = None, cpu_only: CpuOnlyOpt = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub into its cache (resumable, verified), after
    showing how it would fit this machine. Without a :QUANT, picks the largest quant that fits."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from moecli import gguf, hub, models, planner, render

    out = Output()
    machine, _ = _machine(profile, vram, ram, cpu_only)
    ask = not yes and sys.stdin.isatty()

    def on_choice(choice: hub.Choice) -> None:
        out.print(f"{choice.candidate.name}: {choice.reason}")
        remote = hub.remote_gguf(choice.candidate)
        try:
            facts = gguf.read_model(remote.urls[0], headers=remote.headers, source=choice.candidate.name)
            the_plan = planner.plan(facts, machine, planner.Wishes())
            ok, why = models.fits_verdict(the_plan)
            out.print(f"on this machine: {'fits' if ok else 'does not fit'} ({why}); {render.decode_line(the_plan)}")
            out.note(render.plan_summary(the_plan))
        except MoecliError as exc:
            out.warn(f"could not plan it before downloading: {exc.message}")
        if ask and not typer.confirm(f"Download {choice.candidate.size / 2**30:.2f} GiB?", default=True, err=True):
            raise MoecliError("nothing downloaded", "run it again when you want it")

    fits = None if model.partition("@")[0].count(":") else models.fits_on(machine)
    terminal = out.err.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=out.err, transient=True, disable=not terminal) as progress:
        task = progress.add_task("checking", total=None)

        def on_progress(p: hub.Progress) -> None:
            label = {"check": "checking", "download": "downloading", "done": "done"}.get(p.stage, p.stage)
            progress.update(task, description=f"{label} {p.file_index}/{p.n_files}", completed=p.done, total=p.total)

        pulled = hub.pull(model, fits=fits, on_choice=on_choice, on_progress=on_progress,
                          check_model=lambda paths: gguf.read_model(paths[0]))
    got = f"downloaded {pulled.downloaded / 2**30:.2f} GiB" + (f", {pulled.reused / 2**30:.2f} GiB were already here" if pulled.reused else "")
    out.print(f"pulled {pulled.name} ({got}), verified: {pulled.paths[0]}")


@app.command("list")
def list_models(json_out: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
    """The models pulled with moecli, and whether each fits this machine."""
    from moecli import gguf, machine, models, planner, render, store

    out = Output(json_mode=json_out)
    here = machine.probe()
    rows, records = [], []
    for record in store.list_models():
        if not record.present:
            verdict = "files missing"
        else:
            try:
                ok, why = models.fits_verdict(planner.plan(gguf.read_model(record.path), here, planner.Wishes()))
                verdict = ("yes: " if ok else "no: ") + why
            except MoecliError as exc:
                verdict = f"no: {exc.message}"
        rows.append([record.name, record.quant, f"{record.size / 2**30:.2f} GiB", record.pulled_at.strftime("%Y-%m-%d %H:%M"),
                     verdict, str(record.path)])
        records.append({"name": record.name, "repo": record.repo, "quant": record.quant, "size": record.size,
                        "pulled_at": record.pulled_at.isoformat(), "fits": verdict, "path": str(record.path)})
    if json_out:
        out.json(records)
    elif not rows:
        out.print("no models pulled yet: moecli pull org/repo:QUANT")
    else:
        render.store_table(out, rows)


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="A pulled model's name (see moecli list).", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove a pulled model: only the files moecli downloaded, never files it did not."""
    from moecli import store

    out = Output()
    removal = store.plan_removal(name)
    for path in removal.delete:
        out.print(f"delete {path}")
    for path, why in removal.keep:
        out.print(f"keep   {path} ({why})", style="dim")
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput(f"not removing {name} without a confirmation", "add --yes to remove it without asking")
        if not typer.confirm(f"Remove {name} and free {removal.freed / 2**30:.2f} GiB?", default=False, err=True):
            raise MoecliError("nothing removed", "")
    store.remove(removal)
    out.print(f"removed {name}; freed {removal.freed / 2**30:.2f} GiB")
