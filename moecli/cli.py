"""The `moecli` command: each command parses its options, calls the core, and renders.

Flags keep llama.cpp's names and meanings (`-ngl`, `--n-cpu-moe`, `--cpu-moe`, `-ot`, `-c`, `-ctk`,
`-ctv`, `-ub`, `-b`, `-t`, `-lm`, `-fa`); machine options (`--vram`, `--ram`, `--cpu-only`,
`--profile`) let a user plan for a machine they do not have.
"""

from __future__ import annotations

import inspect
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from moecli import __version__
from moecli.errors import BadInput, DoesNotFit, EngineError, MoecliError, NotMoE
from moecli.output import Output


class _Commands(TyperGroup):
    """The command group: a MoecliError from any command becomes one `error:` line (and a hint),
    exit code err.exit_code, no traceback (MOECLI_DEBUG=1 shows it). Done here rather than around
    `app()` so that typer's CliRunner, which invokes the group, sees what a user sees."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MoecliError as err:
            if os.environ.get("MOECLI_DEBUG"):
                raise
            Output().error(err)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    name="moecli",
    cls=_Commands,
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
    """Entry point. Known errors are one line (see _Commands); Ctrl-C exits 130 (typer turns the
    KeyboardInterrupt into that exit code); anything else is a bug and shows a traceback."""
    try:
        app(prog_name="moecli")
    except KeyboardInterrupt:  # before typer runs (while importing)
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
    """The machine to plan for; for loading, as this llama.cpp build can use it."""
    from moecli import machine

    facts = machine.resolve(profile=profile, vram=vram, ram=ram, cpu_only=cpu_only)
    if not for_loading or not facts.gpus:
        return facts, None
    from moecli import engine  # loads libllama: only when a model will be loaded

    if not engine.gpu_offload_supported():
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


def _check_flags(facts, machine, flags, *, planning: bool) -> None:
    """Placement flags that cannot mean anything here, refused before anything is planned or loaded:
    expert flags on a dense model, GPU placement without a GPU."""
    if flags is None:
        return
    if (flags["cpu_moe"] or flags["n_cpu_moe"]) and not facts.is_moe:
        raise NotMoE(f"{facts.name} is a dense model: --cpu-moe/--n-cpu-moe move expert tensors and it has none",
                     "drop them; use -ngl to split its layers")
    if machine.gpus:
        return
    gpu_flags = [name for name, given in (("-ngl", flags.get("n_gpu_layers") not in (None, 0)),
                                          ("--n-cpu-moe", bool(flags["n_cpu_moe"])),
                                          ("--cpu-moe", flags["cpu_moe"])) if given]
    if gpu_flags:
        if planning:
            raise BadInput(f"{', '.join(gpu_flags)} place tensors between a GPU and the CPU, and the machine planned "
                           "for has no GPU", "plan for one with --vram 6GiB or --profile NAME, or drop them")
        raise EngineError(f"no GPU to load on: {', '.join(gpu_flags)} place tensors between a GPU and the CPU",
                          "drop them to run on the CPU (or install llama-cpp-python with CUDA for the GPU)")


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
    params = base.with_(n_gpu_layers=flags.get("n_gpu_layers", base.n_gpu_layers), cpu_moe=flags["cpu_moe"],
                        n_cpu_moe=flags["n_cpu_moe"], tensor_overrides=flags["tensor_overrides"])
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
    """Load with a progress bar on a terminal. Ctrl-C while loading stops the load cleanly (exit 130):
    it only raises a flag, which the progress callback turns into a cancelled load."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from moecli.chat import ctrl_c_sets
    from moecli.engine import Engine

    on_log = (lambda text: out.err.file.write(text)) if verbose else None
    interrupted = [False]
    progress = Progress(TextColumn("loading {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=out.err, transient=True, disable=not out.err.is_terminal)
    task = progress.add_task(path.name, total=1.0)

    def on_progress(fraction: float) -> None:
        if interrupted[0]:
            raise KeyboardInterrupt
        progress.update(task, completed=fraction)

    with progress, ctrl_c_sets(interrupted):
        engine = Engine.load(path, params, on_progress=on_progress, on_log=on_log)
    if interrupted[0]:  # after the weights: while the context was made
        engine.close()
        raise KeyboardInterrupt
    return engine


def _prepare_local(out: Output, model: str, machine_opts: tuple, flags):
    """For run and bench: the local files, their facts, and the machine as llama.cpp here can use it."""
    from moecli import models

    with _status(out, "building the demo model…" if model == models.DEMO else "reading the model…"):
        located = models.locate(model)
        facts = models.read_facts(located)
    machine, note = _machine(*machine_opts, for_loading=True)
    if note:
        out.note(note)
    _check_flags(facts, machine, flags, planning=False)
    return located, facts, machine


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
    """Show how MODEL fits this machine, and the llama.cpp flags for it.

    Where every tensor goes, memory per device, context and KV cache, expected decode speed, for
    this machine or another (--profile, --vram, --ram, --cpu-only). Nothing is loaded; a model on
    the Hub is read by range requests (its header only)."""
    from moecli import models, render

    out = Output(json_mode=json_out)
    wishes = _wishes(ctx=ctx, ctk=ctk, ctv=ctv, no_kv_quant=no_kv_quant, ub=ub, b=b, threads=threads,
                     load_mode=load_mode, no_mmap=no_mmap, mlock=mlock, fa=fa, margin=margin)
    machine, _ = _machine(profile, vram, ram, cpu_only)
    flags = _placement_flags(ngl, ncmoe, cmoe, ot)
    with _status(out, "reading the model header…"):
        located = models.locate(model, remote_ok=True, machine=machine)
        facts = models.read_facts(located)
    _check_flags(facts, machine, flags, planning=True)
    the_plan = _plan(facts, machine, wishes, flags)
    # a model still on the Hub: llama.cpp's own -hf fetches the same file
    path, hf = (str(located.path), False) if located.files else (located.remote_name or model, True)
    if llama_args:
        out.raw(render.llama_command(the_plan, path, hf=hf))
    elif json_out:
        out.json({"model": {"source": facts.source, "name": facts.name, "arch": facts.arch, "file_type": facts.file_type,
                            "n_params": facts.n_params, "n_active_params": facts.n_active_params, "n_bytes": facts.n_bytes,
                            "n_layer": facts.n_layer, "n_expert": facts.n_expert, "n_expert_used": facts.n_expert_used,
                            "n_ctx_train": facts.n_ctx_train, "is_moe": facts.is_moe},
                  "machine": machine, "plan": render.plan_json(the_plan)})
    else:
        render.plan_report(out, the_plan, facts, machine, path, hf=hf)
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
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never stop at an end-of-generation token (only at -n or a full context).", rich_help_panel="Sampling")] = False,
    hide_thinking: Annotated[bool, typer.Option("--hide-thinking", help="Do not show the model's <think>…</think> (it still thinks).")] = False,
    reasoning: Annotated[str, typer.Option("--reasoning", "-rea", help="Thinking: on, off (the template's enable_thinking=false) or auto (the template's default).")] = "auto",
    profile: ProfileOpt = None, vram: VramOpt = None, ram: RamOpt = None, cpu_only: CpuOnlyOpt = False, margin: MarginOpt = None,
    ctx: CtxOpt = None, ctk: CtkOpt = None, ctv: CtvOpt = None, no_kv_quant: NoKvQuantOpt = False, ub: UbOpt = None,
    b: BOpt = None, threads: ThreadsOpt = None, load_mode: LoadModeOpt = None, no_mmap: NoMmapOpt = False,
    mlock: MlockOpt = False, fa: FaOpt = None,
    ngl: NglOpt = None, ncmoe: NcmoeOpt = None, cmoe: CmoeOpt = False, ot: OtOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Chat with MODEL, or answer --prompt once.

    Streams the reply with a live tokens/s figure, then prompt and generation speed as llama.cpp
    counted them. Loads with moecli's plan unless you give llama.cpp placement flags."""
    from moecli import chat, render
    from moecli.engine import Sampling

    out = Output()
    if prompt is None and not sys.stdin.isatty():
        raise BadInput("no terminal to chat in (stdin is not a terminal)", 'give the question with -p "..."')
    # llama.cpp's -rea/--reasoning sets the template's enable_thinking the same way (common/arg.cpp)
    thinking = {"on": {"enable_thinking": True}, "off": {"enable_thinking": False}, "auto": {}}.get(reasoning.lower())
    if thinking is None:
        raise BadInput(f"--reasoning {reasoning!r} is not on, off or auto", "e.g. --reasoning off")
    typed = {k: v for k, v in dict(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                   seed=seed, n_predict=n_predict).items() if v is not None}
    Sampling(**typed)  # bad values are refused before the model is loaded
    wishes = _wishes(ctx=ctx, ctk=ctk, ctv=ctv, no_kv_quant=no_kv_quant, ub=ub, b=b, threads=threads,
                     load_mode=load_mode, no_mmap=no_mmap, mlock=mlock, fa=fa, vram=vram, margin=margin)
    flags = _placement_flags(ngl, ncmoe, cmoe, ot)
    located, facts, machine = _prepare_local(out, model, (profile, None, ram, cpu_only), flags)
    the_plan = _plan(facts, machine, wishes, flags)
    for warning in the_plan.warnings:
        out.warn(render.finding_text(warning))
    out.note(render.plan_summary(the_plan))
    engine = _load_engine(out, located.path, the_plan.params, verbose)
    with engine:
        sampling = Sampling.from_model(engine.metadata, ignore_eos=ignore_eos, **typed)
        session = chat.ChatSession(engine, sampling, out, system=system, show_thinking=not hide_thinking,
                                   template_kwargs=thinking)
        if prompt is None:
            chat.run_repl(session, _read_line, out)
            return
        figures = session.reply(prompt)
        out.note(figures.line())
        if figures.stopped:
            raise typer.Exit(130)  # Ctrl-C, as a shell expects of an interrupted command


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
    """Measure prompt (pp) and generation (tg) speed like llama-bench.

    Mean ± stddev over repetitions, with the placement, threads, context and peak RAM/VRAM of
    each row; --json and --csv use llama-bench's field names.

    Context: each configuration is loaded with the plan's context (-c, default 4096, raised to
    n_prompt + n_gen + n_depth when a test needs more), i.e. what `moecli run` uses, so that the
    peak memory figures are the ones a chat will need. llama-bench instead makes a context of exactly
    n_prompt + n_gen + n_depth tokens. The speed is the same either way, because llama.cpp's
    attention reads only the KV cells in use, padded to 256 (llama_kv_cache::get_n_kv); only the
    KV cache's size differs. For llama-bench's context exactly, give -c n_prompt+n_gen+n_depth.
    Every row records its n_ctx."""
    from dataclasses import replace

    from moecli import bench as benchmod
    from moecli import machine as machinemod
    from moecli import planner, render
    from moecli.chat import ctrl_c_sets
    from moecli.engine import Engine

    if json_out and csv_out:
        raise BadInput("--json and --csv both asked for", "choose one output format")
    if reps < 1 or n_prompt < 0 or n_gen < 0 or n_depth < 0 or n_prompt + n_gen == 0:
        raise BadInput("nothing to measure", "give -p and/or -n above 0 and -r of at least 1")
    out = Output(json_mode=json_out or csv_out)
    wishes = _wishes(ctx=ctx, ctk=ctk, ctv=ctv, no_kv_quant=no_kv_quant, ub=ub, b=b, threads=threads,
                     load_mode=load_mode, no_mmap=no_mmap, mlock=mlock, fa=fa, vram=vram, margin=margin)
    flags = _placement_flags(ngl, ncmoe, cmoe, ot)
    located, facts, machine = _prepare_local(out, model, (profile, None, ram, cpu_only), flags)
    if sweep and not facts.is_moe:
        raise NotMoE(f"{facts.name} is a dense model: --sweep compares expert placements, and it has no experts",
                     "bench it without --sweep")
    if sweep and not machine.gpus:
        raise EngineError("no GPU: --sweep compares expert placements between a GPU and the CPU",
                          "bench without --sweep, or on a machine with a GPU")
    the_plan = _plan(facts, machine, wishes, flags)
    needed = n_prompt + n_gen + n_depth  # llama-bench's context for these tests
    if the_plan.params.n_ctx < needed:
        if ctx is not None:
            raise BadInput(f"-c {the_plan.params.n_ctx} is too small for the tests: -p {n_prompt} -n {n_gen} -d {n_depth} "
                           f"need {needed} tokens", f"give -c {needed} or more")
        the_plan = _plan(facts, machine, replace(wishes, n_ctx=needed), flags)
    label = "plan" if flags is None else "your flags"
    configs = [(label, the_plan.params)]
    if sweep:
        configs, left_out = benchmod.sweep(the_plan, lambda p: planner.evaluate(facts, machine, p, wishes).fits, label)
        for name in left_out:
            out.note(f"not measured: {name} does not fit this machine")
    for warning in the_plan.warnings:
        out.warn(render.finding_text(warning))
    out.note(render.plan_summary(the_plan))
    spec = benchmod.BenchSpec(n_prompt=n_prompt, n_gen=n_gen, n_depth=n_depth, reps=reps)
    vram_used = machinemod.vram_used_probe(machine.gpus[0].index) if machine.gpus else None
    on_log = (lambda text: out.err.file.write(text)) if verbose else None
    interrupted = [False]

    def check(*_) -> None:  # Ctrl-C only raises a flag (see chat.ctrl_c_sets); it acts here
        if interrupted[0]:
            raise KeyboardInterrupt

    results = []
    with ctrl_c_sets(interrupted):
        for i, (label, params) in enumerate(configs, 1):
            with _status(out, f"[{i}/{len(configs)}] {label}: loading and measuring…"):
                rows = benchmod.run_config(located.path, label, params, spec, vram_used=vram_used, on_rep=check,
                                           load=lambda p, prm: Engine.load(p, prm, on_progress=check, on_log=on_log))
            results += rows
            out.note(f"[{i}/{len(configs)}] {label}: " + ", ".join(f"{r.test} {r.avg_ts:.2f} t/s" for r in rows))
    check()
    for r in results:
        if not benchmod.agree(r.samples_ts):
            out.warn(f"{r.label} {r.test}: the repetitions disagree ({min(r.samples_ts):.2f} to "
                     f"{max(r.samples_ts):.2f} t/s): something else ran meanwhile; compare these figures with care")
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
    model: Annotated[str, typer.Argument(help="org/repo\\[:QUANT]\\[@revision], hf.co/org/repo:QUANT, or an alias.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before downloading.")] = False,
    profile: ProfileOpt = None, vram: VramOpt = None, ram: RamOpt = None, cpu_only: CpuOnlyOpt = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub (resumable, verified).

    Shows how it would fit this machine first. Without a :QUANT, picks the largest quant that
    fits. Files go to the Hugging Face cache, where llama.cpp's -hf finds them too."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from moecli import gguf, hub, models, planner, render
    from moecli.units import fmt_bytes

    out = Output()
    machine, _ = _machine(profile, vram, ram, cpu_only)
    ask = not yes and sys.stdin.isatty()
    terminal = out.err.is_terminal

    def on_choice(choice: hub.Choice) -> None:
        """The plan is shown before anything is downloaded (the header is read by range requests)."""
        candidate = choice.candidate
        out.print(f"{candidate.name} ({fmt_bytes(candidate.size)}"
                  f"{f' in {len(candidate.files)} files' if len(candidate.files) > 1 else ''}): {choice.reason}")
        remote = hub.remote_gguf(candidate)
        try:
            facts = gguf.read_model(remote.urls[0], headers=remote.headers, source=candidate.name)
            the_plan = planner.plan(facts, machine, planner.Wishes())
            ok, why = models.fits_verdict(the_plan)
            out.print(f"on this machine: {'fits' if ok else 'does not fit'} ({why}); {render.decode_line(the_plan)}")
            out.note(render.plan_summary(the_plan))
        except MoecliError as exc:
            out.warn(f"could not plan it before downloading: {exc.message}")
        if ask and not typer.confirm(f"Download {fmt_bytes(candidate.size)}?", default=True, err=True):
            out.print("nothing downloaded")
            raise typer.Exit(1)
        if not terminal:
            out.note(f"fetching {fmt_bytes(candidate.size)} into the Hugging Face cache…")

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=out.err, transient=True, disable=not terminal) as progress:
        task = progress.add_task("checking", total=None)

        def on_progress(p: hub.Progress) -> None:
            label = {"check": "checking", "download": "downloading", "done": "done"}.get(p.stage, p.stage)
            progress.update(task, description=f"{label} {p.file_index}/{p.n_files}", completed=p.done, total=p.total)

        # the planner's verdict picks the largest quant that fits; a typed :QUANT is taken as is
        pulled = hub.pull(model, fits=models.fits_on(machine), on_choice=on_choice, on_progress=on_progress,
                          check_model=lambda paths: gguf.read_model(paths[0]))
    got = f"downloaded {fmt_bytes(pulled.downloaded)}"
    if pulled.downloaded and pulled.seconds > 0:
        got += f" in {pulled.seconds:.{1 if pulled.seconds >= 1 else 2}f} s, {fmt_bytes(pulled.downloaded / pulled.seconds)}/s"
    if pulled.reused:
        got += f", {fmt_bytes(pulled.reused)} already here"
    out.print(f"pulled {pulled.name} ({got}), verified: {pulled.paths[0]}")


@app.command("list")
def list_models(json_out: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
    """List the models pulled with moecli, and whether each fits this machine."""
    from moecli import gguf, machine, models, planner, render, store

    out = Output(json_mode=json_out)
    here = machine.probe()
    listed = []
    for record in store.list_models():
        if not record.present:
            fits, verdict = False, "its files are gone from the Hugging Face cache"
        else:
            try:
                fits, verdict = models.fits_verdict(planner.plan(gguf.read_model(record.path), here, planner.Wishes()))
            except MoecliError as exc:
                fits, verdict = False, exc.message
        listed.append((record, fits, verdict))
    if json_out:
        out.json([{"name": r.name, "repo": r.repo, "tag": r.tag, "quant": r.quant, "size": r.size,
                   "pulled_at": r.pulled_at.isoformat(), "present": r.present, "fits": fits, "why": verdict,
                   "path": str(r.path)} for r, fits, verdict in listed])
    elif not listed:
        out.print("no models pulled yet: moecli pull org/repo:QUANT")
    else:
        render.store_list(out, listed)


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="A pulled model's name (see moecli list).", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove a pulled model.

    Deletes only the files moecli downloaded, never files that were in the cache before."""
    from moecli import store
    from moecli.units import fmt_bytes

    out = Output()
    removal = store.plan_removal(name)
    for path in removal.delete:
        out.print(f"delete {path}")
    for path, why in removal.keep:
        out.print(f"keep   {path} ({why})", style="dim")
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput(f"not removing {name} without a confirmation", "add --yes to remove it without asking")
        if not typer.confirm(f"Remove {removal.model.name} and free {fmt_bytes(removal.freed)}?", default=False,
                             err=True):
            out.print("nothing removed")
            raise typer.Exit(1)
    store.remove(removal)
    out.print(f"removed {removal.model.name}; freed {fmt_bytes(removal.freed)}")


def _reflow(doc: str | None) -> str | None:
    """A docstring's paragraphs as single lines: typer's rich help keeps the source's line breaks,
    which then land in the middle of the terminal's own wrapping."""
    if not doc:
        return doc
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:
    _command.help = _reflow(_command.callback.__doc__)
