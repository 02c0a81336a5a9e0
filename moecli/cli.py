"""The `moecli` command: each command parses its options, calls the core, and renders.

Flags keep llama.cpp's names and meanings (`-ngl`, `--n-cpu-moe`, `--cpu-moe`, `-ot`, `-c`, `-ctk`,
`-ctv`, `-ub`, `-b`, `-t`, `-lm`, `-fa`); machine options (`--vram`, `--ram`, `--cpu-only`,
`--profile`) let a user plan for a machine they do not have.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from moecli import __version__
from moecli.errors import BadInput, MoecliError
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
            if not getattr(err, "broken_pipe", False):  # the reader of a pipe left: nothing to say
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

# --- options (llama.cpp's names) -------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="A GGUF path, a pulled model, org/repo:QUANT, an alias, or 'demo'.", show_default=False)]
_PLACEMENT = "Placement (llama.cpp flags; default: moecli's plan)"

# The options `plan`, `run` and `bench` share, declared once: `with_plan_options` adds them to a
# command's signature and hands the command one `app.Request` built from them.
_PLAN_OPTIONS: dict[str, tuple[object, object]] = {  # name -> (annotation, default)
    "profile": (Annotated[Optional[str], typer.Option("--profile", help="Plan for a machine profile (configs/machines), e.g. gtx1060-6gb.", rich_help_panel="Machine")], None),
    "vram": (Annotated[Optional[str], typer.Option("--vram", help="The GPU memory to plan for, e.g. 6GiB (6GiB,8GiB: one per GPU).", rich_help_panel="Machine")], None),
    "ram": (Annotated[Optional[str], typer.Option("--ram", help="The machine's RAM to plan for, e.g. 32GiB.", rich_help_panel="Machine")], None),
    "cpu_only": (Annotated[bool, typer.Option("--cpu-only", help="Use no GPU.", rich_help_panel="Machine")], False),
    "rpc": (Annotated[Optional[str], typer.Option("--rpc", help="llama.cpp RPC workers HOST:PORT[,...] (moecli rpc-server); their devices come first, as in llama.cpp.", rich_help_panel="Machine")], None),
    "rpc_mem": (Annotated[Optional[str], typer.Option("--rpc-mem", help="The RPC workers' memory, one size or one per worker (plan for workers not started yet), e.g. 32GiB.", rich_help_panel="Machine")], None),
    "margin": (Annotated[Optional[str], typer.Option("--margin", help="VRAM kept free below the budget (default 256MiB).", rich_help_panel="Machine")], None),
    "ctx": (Annotated[Optional[str], typer.Option("--ctx-size", "-c", "--ctx", help="Context in tokens (8192, 32k) or 'max'. Default 4096.", rich_help_panel="Context")], None),
    "ctk": (Annotated[Optional[str], typer.Option("--cache-type-k", "-ctk", help="KV cache type for K (f16, q8_0, q4_0, ...).", rich_help_panel="Context")], None),
    "ctv": (Annotated[Optional[str], typer.Option("--cache-type-v", "-ctv", help="KV cache type for V.", rich_help_panel="Context")], None),
    "no_kv_quant": (Annotated[bool, typer.Option("--no-kv-quant", help="Never quantize the KV cache to make room.", rich_help_panel="Context")], False),
    "ub": (Annotated[Optional[int], typer.Option("--ubatch-size", "-ub", help="Physical batch size.", rich_help_panel="Context")], None),
    "b": (Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Logical batch size.", rich_help_panel="Context")], None),
    "threads": (Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: physical cores).", rich_help_panel="Context")], None),
    "load_mode": (Annotated[Optional[str], typer.Option("--load-mode", "-lm", help="auto, none (read into RAM), mmap, mlock, mmap+mlock, dio.", rich_help_panel="Context")], None),
    "no_mmap": (Annotated[bool, typer.Option("--no-mmap", help="Read the weights into RAM (= -lm none).", rich_help_panel="Context")], False),
    "mlock": (Annotated[bool, typer.Option("--mlock", help="Keep the weights in RAM (= -lm mlock).", rich_help_panel="Context")], False),
    "fa": (Annotated[Optional[str], typer.Option("--flash-attn", "-fa", help="on, off or auto.", rich_help_panel="Context")], None),
    "ngl": (Annotated[Optional[str], typer.Option("--n-gpu-layers", "-ngl", "--gpu-layers", help="Layers on the GPU: a number, 'all' (or -1), or 'auto' (default: the plan's).", rich_help_panel=_PLACEMENT)], None),
    "ncmoe": (Annotated[Optional[int], typer.Option("--n-cpu-moe", "-ncmoe", help="Keep the experts of the first N layers on the CPU.", rich_help_panel=_PLACEMENT)], None),
    "cmoe": (Annotated[bool, typer.Option("--cpu-moe", "-cmoe", help="Keep every expert on the CPU.", rich_help_panel=_PLACEMENT)], False),
    "ot": (Annotated[Optional[list[str]], typer.Option("--override-tensor", "-ot", help="PATTERN=BUFFER_TYPE[,...], e.g. 'blk\\.1[0-9]\\.ffn_.*_exps=CPU'.", rich_help_panel=_PLACEMENT)], None),
}


def with_plan_options(command: Callable) -> Callable:
    """Add the shared planning options to `command`, which takes them as one `request` argument
    (an `app.Request`) and knows whether `-c` was typed (`ctx_given`)."""
    signature = inspect.signature(command)
    def evaluated(annotation):  # this module's `from __future__ import annotations` made them strings
        return eval(annotation, globals()) if isinstance(annotation, str) else annotation  # noqa: S307

    own = [p.replace(annotation=evaluated(p.annotation)) for name, p in signature.parameters.items()
           if name not in ("request", "ctx_given")]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in _PLAN_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        from moecli import app as usecases

        options = {name: kwargs.pop(name) for name in _PLAN_OPTIONS}
        extra = {"ctx_given": options["ctx"] is not None} if "ctx_given" in signature.parameters else {}
        return command(request=usecases.Request.from_options(**options), **kwargs, **extra)

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
    del wrapper.__wrapped__  # typer must see the new signature, not the command's
    return wrapper


VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log.")]


def main() -> None:
    """Entry point. Known errors are one line (see _Commands); Ctrl-C exits 130 (typer turns the
    KeyboardInterrupt into that exit code); anything else is a bug and shows a traceback."""
    from moecli.output import OutputFailed, guarded

    sys.stdout = guarded(sys.stdout)  # typer's --help writes there too, before any command runs
    try:
        app(prog_name="moecli")
    except KeyboardInterrupt:  # before typer runs (while importing)
        sys.exit(130)
    except OutputFailed as failed:  # --help or --version on a full disk
        if os.environ.get("MOECLI_DEBUG"):
            raise
        if not failed.broken_pipe:
            Output().error(failed)
        sys.exit(failed.exit_code)


def _version(value: bool) -> None:
    if value:
        Output().raw(f"moecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False) -> None:
    pass


# --- helpers of the edge: output, spinners, progress ------------------------------------------------
def _output(context: typer.Context, **mode) -> Output:
    """The command's output; tests inject a terminal through the context object (`obj`)."""
    return Output(**(context.obj or {}), **mode)


@contextmanager
def _status(out: Output, text: str):
    """A spinner on a terminal; silence in a pipe (the result line follows anyway)."""
    if out.err.is_terminal:
        with out.err.status(text):
            yield
    else:
        yield


def _log_sink(out: Output, verbose: bool):
    return (lambda text: out.err.file.write(text)) if verbose else None


def _load(out: Output, path: Path, params, verbose: bool):
    """app.load_engine with a progress bar on a terminal."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from moecli import app as usecases

    progress = Progress(TextColumn("loading {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=out.err, transient=True, disable=not out.err.is_terminal)
    task = progress.add_task(path.name, total=1.0)
    with progress:
        return usecases.load_engine(path, params, on_progress=lambda f: progress.update(task, completed=f),
                                    on_log=_log_sink(out, verbose))


def _prepare_local(out: Output, model: str, request):
    """For run and bench: the local files, their facts, and the machine as llama.cpp here can use it."""
    from moecli import app as usecases

    with _status(out, "building the demo model…" if model == usecases.DEMO else "reading the model…"):
        located = usecases.locate(model)
        facts = usecases.read_facts(located)
    machine, note = usecases.machine_for_loading(request.machine)
    if note:
        out.note(note)
    return located, facts, machine


def _show_plan_findings(out: Output, the_plan) -> None:
    from moecli import render

    for warning in the_plan.warnings:
        out.warn(render.finding_text(warning))
    out.note(render.plan_summary(the_plan))


NoTunedOpt = Annotated[bool, typer.Option("--no-tuned", help="Use moecli's plan, not the configuration a bench --sweep found fastest here.")]


def _say_tuned(out: Output, chosen) -> None:
    """One line when a tuned configuration is used, or when it no longer fits (and why)."""
    from moecli import render

    if chosen.note:
        out.warn(chosen.note)
    if chosen.tuned is not None:
        out.note(render.tuned_line(chosen.tuned))
    elif chosen.skipped is not None:
        out.note(render.tuned_skipped_line(chosen.skipped))


# --- plan -------------------------------------------------------------------------------------------
@app.command()
@with_plan_options
def plan(
    context: typer.Context,
    model: ModelArg,
    json_out: Annotated[bool, typer.Option("--json", help="The plan as JSON.")] = False,
    llama_args: Annotated[bool, typer.Option("--llama-args", help="Only the equivalent llama-server command.")] = False,
    no_tuned: NoTunedOpt = False,
    *, request,
) -> None:
    """Show how MODEL fits this machine, and the llama.cpp flags for it.

    Where every tensor goes, memory per device, context and KV cache, expected decode speed, for
    this machine or another (--profile, --vram, --ram, --cpu-only). Nothing is loaded; a model on
    the Hub is read by range requests (its header only)."""
    from moecli import app as usecases
    from moecli import render

    out = _output(context, json_mode=json_out)
    machine = usecases.machine_for(request.machine)
    with _status(out, "reading the model header…"):
        located = usecases.locate(model, remote_ok=True, fits=usecases.HubFits(machine))
        facts = usecases.read_facts(located)
    chosen = usecases.planned(facts, machine, request, use_tuned=not no_tuned)
    the_plan = chosen.plan
    _say_tuned(out, chosen)
    # a model still on the Hub: llama.cpp's own -hf fetches the same file
    path, hf = (str(located.path), False) if located.files else (located.remote_name or model, True)
    if llama_args:
        out.raw(render.llama_command(the_plan, path, hf=hf))
    else:
        out.result(lambda: {"model": render.model_dict(facts), "machine": machine, "plan": render.plan_json(the_plan),
                    "tuned": chosen.tuned, "tuned_skipped": chosen.skipped},
                   human=lambda: render.plan_report(out, the_plan, facts, machine, path, hf=hf))
    if not the_plan.fits:
        raise typer.Exit(1)


# --- run --------------------------------------------------------------------------------------------
@app.command()
@with_plan_options
def run(
    context: typer.Context,
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
    system_file: Annotated[Optional[Path], typer.Option("--system-file", "-sysf", help="System prompt from a file.", show_default=False)] = None,
    chat_template: Annotated[Optional[str], typer.Option("--chat-template", help="One of llama.cpp's built-in chat templates (chatml, llama3, gemma, ...) instead of the GGUF's.", rich_help_panel="Template")] = None,
    chat_template_file: Annotated[Optional[Path], typer.Option("--chat-template-file", help="A Jinja chat template file instead of the GGUF's.", rich_help_panel="Template")] = None,
    no_conversation: Annotated[bool, typer.Option("--no-conversation", "-no-cnv", help="Continue the -p text as given (raw completion, no template), e.g. for base models.", rich_help_panel="Template")] = False,
    json_schema: Annotated[Optional[Path], typer.Option("--json-schema", "-jf", help="Answer -p with JSON valid against the schema in this file (a grammar constrains sampling).", show_default=False)] = None,
    verbose: VerboseOpt = False,
    no_tuned: NoTunedOpt = False,
    *, request,
) -> None:
    """Chat with MODEL, or answer --prompt once.

    Streams the reply with a live tokens/s figure, then prompt and generation speed as llama.cpp
    counted them. Loads with moecli's plan unless you give llama.cpp placement flags."""
    from moecli import app as usecases
    from moecli import chat
    from moecli.engine import Sampling

    out = _output(context)
    if prompt is None and not out.stdin_is_terminal:
        raise BadInput("no terminal to chat in (stdin is not a terminal)", 'give the question with -p "..."')
    # llama.cpp's -rea/--reasoning sets the template's enable_thinking the same way (common/arg.cpp)
    thinking = {"on": {"enable_thinking": True}, "off": {"enable_thinking": False}, "auto": {}}.get(reasoning.lower())
    if thinking is None:
        raise BadInput(f"--reasoning {reasoning!r} is not on, off or auto", "e.g. --reasoning off")
    typed = {k: v for k, v in dict(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                   seed=seed, n_predict=n_predict).items() if v is not None}
    system, grammar = usecases.chat_inputs(prompt=prompt, system=system, system_file=system_file,
                                           chat_template=chat_template, chat_template_file=chat_template_file,
                                           no_conversation=no_conversation, json_schema=json_schema, reasoning=reasoning)
    if grammar is not None:
        typed["grammar"] = grammar
        thinking = {"enable_thinking": False}  # the grammar holds from the first token
    Sampling(**typed)  # bad values are refused before the model is loaded
    prompt, system = _valid_argument(out, prompt, "--prompt"), _valid_argument(out, system, "--system")
    located, facts, machine = _prepare_local(out, model, request)
    chosen = usecases.planned(facts, machine, request, use_tuned=not no_tuned, planning=False)
    the_plan = chosen.plan
    _say_tuned(out, chosen)
    _show_plan_findings(out, the_plan)
    engine = _load(out, located.path, the_plan.params, verbose)
    with engine:
        if engine.n_ctx != the_plan.n_ctx:  # what llama.cpp made is what the chat has
            out.note(f"llama.cpp made a context of {engine.n_ctx} tokens")
        sampling = Sampling.from_model(engine.metadata, ignore_eos=ignore_eos, **typed)
        if no_conversation:
            figures = chat.complete_once(engine, prompt, sampling, out)
            out.note(figures.line())
            if figures.stopped:
                raise typer.Exit(130)
            return
        template = engine.use_chat_template(chat_template, chat_template_file)
        if template.notice:
            out.note(template.notice)
        session = chat.ChatSession(engine, sampling, out, system=system, show_thinking=not hide_thinking,
                                   template_kwargs=thinking)
        if prompt is None:
            chat.run_repl(session, _read_line, out)
            return
        figures = session.reply(prompt)
        out.note(figures.line(chat=False))
        if figures.stopped:
            raise typer.Exit(130)  # Ctrl-C, as a shell expects of an interrupted command


def _valid_argument(out: Output, text: str | None, flag: str) -> str | None:
    """An argument as valid text (bytes that are not UTF-8 reach Python as surrogates): U+FFFD
    for those bytes, said once."""
    if text is None:
        return None
    from moecli import chat

    valid, bad = chat.valid_input(text)
    if bad:
        out.warn(f"{flag} is {chat.NOT_UTF8}")
    return valid


def _read_line(prompt: str) -> str:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    # bytes that are not UTF-8 arrive as surrogates (the chat replaces them) instead of an error
    if getattr(sys.stdin, "errors", None) != "surrogateescape" and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    return input(prompt)


# --- bench ------------------------------------------------------------------------------------------
@app.command()
@with_plan_options
def bench(
    context: typer.Context,
    model: ModelArg,
    n_prompt: Annotated[int, typer.Option("--n-prompt", "-p", help="Prompt tokens of the pp test (0: skip).")] = 512,
    n_gen: Annotated[int, typer.Option("--n-gen", "-n", help="Generated tokens of the tg test (0: skip).")] = 128,
    n_depth: Annotated[int, typer.Option("--n-depth", "-d", help="Tokens already in the context.")] = 0,
    reps: Annotated[int, typer.Option("--repetitions", "-r", help="Repetitions of each test.")] = 5,
    sweep: Annotated[bool, typer.Option("--sweep", help="Also measure the plan's neighbours and remember the fastest (run and plan use it).")] = False,
    history: Annotated[bool, typer.Option("--history", help="List what was measured of MODEL on this machine (measures nothing).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Results as JSON.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Results as CSV (llama-bench's fields).")] = False,
    verbose: VerboseOpt = False,
    *, request, ctx_given: bool,
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
    Every row records its n_ctx.

    Every row is recorded on this machine (moecli's data dir): `plan` predicts decode and prompt
    speed from these runs, for other models and placements too. --sweep also measures the plan's
    neighbours (expert layers, load mode, -ub; on the CPU alone threads, -ub, load mode) and
    remembers the fastest, which `run` and `plan` then use (unless you give flags or --no-tuned).
    --history lists what was measured."""
    from moecli import app as usecases
    from moecli import bench as benchmod
    from moecli import render

    if json_out and csv_out:
        raise BadInput("--json and --csv both asked for", "choose one output format")
    if reps < 1 or n_prompt < 0 or n_gen < 0 or n_depth < 0 or n_prompt + n_gen == 0:
        raise BadInput("nothing to measure", "give -p and/or -n above 0 and -r of at least 1")
    out = _output(context, json_mode=json_out, csv_mode=csv_out)
    if history:
        _history(out, model, request)
        return
    spec = benchmod.BenchSpec(n_prompt=n_prompt, n_gen=n_gen, n_depth=n_depth, reps=reps)
    located, facts, machine = _prepare_local(out, model, request)
    job = usecases.bench_job(facts, machine, request, spec, sweep=sweep, ctx_given=ctx_given)
    for name in job.left_out:
        out.note(f"not measured: {name} does not fit this machine")
    _show_plan_findings(out, job.plan)
    n = len(job.configs)
    done = usecases.run_bench(
        located.path, job, spec, machine, on_log=_log_sink(out, verbose),
        on_config=lambda i, label: _status(out, f"[{i}/{n}] {label}: loading and measuring…"),
        on_config_done=lambda i, label, rows: out.note(
            f"[{i}/{n}] {label}: " + ", ".join(f"{r.test} {r.avg_ts:.2f} t/s" for r in rows)))
    for r in done.results:
        if not benchmod.agree(r.samples_ts):
            out.warn(f"{r.label} {r.test}: the repetitions disagree ({min(r.samples_ts):.2f} to "
                     f"{max(r.samples_ts):.2f} t/s): something else ran meanwhile; compare these figures with care")
    if done.partial:
        out.warn("interrupted (Ctrl-C): partial results, only the repetitions measured until then"
                 if done.results else "interrupted (Ctrl-C) before a repetition was measured")
    # what a whole run measured teaches the plan; an interrupted one is shown, not recorded
    recorded = usecases.record_bench(facts, machine, request, job, done, sweep=sweep) if not done.partial else None
    if recorded is not None and recorded.note:
        out.warn(recorded.note)

    def human() -> None:
        render.bench_table(out, done.results)
        if sweep and recorded is not None:
            render.sweep_chart(out, done.results, recorded.chosen)
        if recorded is not None and recorded.tuned is not None:
            out.console.print(render.tuned_line(recorded.tuned))

    if done.results:
        out.result(lambda: {"model": str(located.path), "machine": machine, "plan": job.plan.params.to_llama_args(),
                    "partial": done.partial, "results": [r.to_dict() for r in done.results],
                    "tuned": recorded.tuned if recorded is not None else None},
                   csv=lambda: benchmod.to_csv(done.results), human=human)
    if done.partial:
        raise typer.Exit(130)


def _history(out: Output, model: str, request) -> None:
    from moecli import app as usecases
    from moecli import render

    located = usecases.locate(model)
    facts = usecases.read_facts(located)
    machine = usecases.machine_for(request.machine)
    past = usecases.bench_history(facts, machine)
    if past.note:
        out.warn(past.note)

    def human() -> None:
        out.print(f"{facts.name} on this machine ({past.machine}):")
        if past.measurements:
            render.history_table(out, past.measurements, past.tuned)
        else:
            out.print("  nothing measured yet: moecli bench MODEL")
        if past.other_machines:
            out.note(f"{past.other_machines} more rows of it were measured on other machines")

    out.result(lambda: {"model": str(located.path), "machine": past.machine, "measurements": list(past.measurements),
                "tuned": past.tuned}, human=human)


# --- serve ------------------------------------------------------------------------------------------
@app.command()
@with_plan_options
def serve(
    context: typer.Context,
    model: ModelArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (llama-server's default).", rich_help_panel="Server")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", rich_help_panel="Server")] = 8080,
    parallel: Annotated[int, typer.Option("--parallel", "-np", help="Slots decoding together (-1: auto = 4 with a unified KV cache).", rich_help_panel="Server")] = -1,
    kv_unified: Annotated[Optional[bool], typer.Option("--kv-unified/--no-kv-unified", "-kvu/-no-kvu", help="One KV cache shared by the slots (default: on with auto slots); otherwise -c is divided among them.", rich_help_panel="Server", show_default=False)] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LLAMA_API_KEY", help="Require 'Authorization: Bearer KEY' (also LLAMA_API_KEY).", rich_help_panel="Server", show_default=False)] = None,
    slots_endpoint: Annotated[bool, typer.Option("--slots/--no-slots", envvar="LLAMA_ARG_ENDPOINT_SLOTS", help="GET /slots: what each slot runs and caches (default: on).", rich_help_panel="Server", show_default=False)] = True,
    metrics: Annotated[bool, typer.Option("--metrics", envvar="LLAMA_ARG_ENDPOINT_METRICS", help="GET /metrics: llama-server's Prometheus counters (default: off).", rich_help_panel="Server", show_default=False)] = False,
    alias: Annotated[Optional[str], typer.Option("--alias", "-a", help="The model's name in /v1/models (default: the file's name).", rich_help_panel="Server")] = None,
    ctx_checkpoints: Annotated[int, typer.Option("--ctx-checkpoints", "-ctxcp", help="State checkpoints kept per slot (hybrid and recurrent models).", rich_help_panel="Server")] = 32,
    checkpoint_min_step: Annotated[int, typer.Option("--checkpoint-min-step", "-cms", help="Tokens between checkpoints inside a long prompt.", rich_help_panel="Server")] = 8192,
    cache_ram: Annotated[int, typer.Option("--cache-ram", "-cram", help="MiB of RAM for checkpoints over all slots.", rich_help_panel="Server")] = 8192,
    chat_template: Annotated[Optional[str], typer.Option("--chat-template", help="One of llama.cpp's built-in chat templates (chatml, llama3, gemma, ...) instead of the GGUF's.", rich_help_panel="Template")] = None,
    chat_template_file: Annotated[Optional[Path], typer.Option("--chat-template-file", help="A Jinja chat template file instead of the GGUF's.", rich_help_panel="Template")] = None,
    no_tuned: NoTunedOpt = False,
    verbose: VerboseOpt = False,
    *, request,
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (like llama-server).

    POST /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models, /health,
    /slots and (with --metrics) /metrics.
    Loads with moecli's plan (or your placement flags) and N slots that decode together; each slot
    keeps a prompt cache, with state checkpoints for hybrid models. Ctrl-C or SIGTERM stops it."""
    import ipaddress

    from moecli import app as usecases

    out = _output(context)
    if ctx_checkpoints < 0 or cache_ram < 0 or checkpoint_min_step < 0:
        raise BadInput("--ctx-checkpoints, --cache-ram and --checkpoint-min-step must not be negative", "0 turns them off")
    usecases.Slots.resolve(parallel, kv_unified)  # a bad -np is refused before the model is read
    usecases.chat_inputs(prompt=None, system=None, system_file=None, chat_template=chat_template,
                         chat_template_file=chat_template_file, no_conversation=False, json_schema=None,
                         reasoning="auto")  # a bad template is refused before the model is read
    located, facts, machine = _prepare_local(out, model, request)
    job = usecases.serve_job(facts, machine, request, parallel, kv_unified, use_tuned=not no_tuned)
    slots = job.slots
    _show_plan_findings(out, job.plan)
    if job.note:
        out.note(job.note)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        out.warn(f"listening on {host} without --api-key: anyone who can reach this port can use the model")
    per_slot = job.n_ctx_slot
    shown = f"[{host}]" if ":" in host else host

    def ready(engine) -> None:
        out.note(f"{slots.n} slots, {per_slot} tokens of context each"
                 f"{' (one KV cache shared)' if slots.kv_unified else ''}; listening on http://{shown}:{port}/v1")

    from moecli.serve import server

    server.run(lambda: usecases.load_for_serving(located.path, job, on_log=_log_sink(out, verbose)),
               host=host, port=port, alias=alias or located.path.name, api_key=api_key, on_ready=ready,
               endpoint_slots=slots_endpoint, endpoint_metrics=metrics,
               chat_template=(chat_template, chat_template_file),
               scheduler_options={"max_checkpoints": ctx_checkpoints, "cache_ram": cache_ram * 2**20,
                                  "checkpoint_step": checkpoint_min_step or 2**31},
               log=lambda line: out.note(line))


# --- pull / list / rm / verify ------------------------------------------------------------------------
def _verified_words(report) -> str:
    """What `pull` checked, said as it is: every byte hashed, or when the files were last hashed."""
    if report.hashed_all:
        return "verified"  # every byte hashed by this run
    when = report.verified_on
    since = f"verified on {when.strftime('%Y-%m-%d')}" if when else "verified by an earlier pull"
    return (f"already present, {since} (size and modification time unchanged since; "
            f"`moecli verify {report.record.name}` or `pull --verify` re-hashes)")


@app.command()
def pull(
    context: typer.Context,
    model: Annotated[str, typer.Argument(help="org/repo\\[:QUANT]\\[@revision], hf.co/org/repo:QUANT, or an alias.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before downloading.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Hash again every file already on disk.")] = False,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Choose the quant for a machine profile.", rich_help_panel="Machine")] = None,
    vram: Annotated[Optional[str], typer.Option("--vram", help="The GPU memory to plan for, e.g. 6GiB.", rich_help_panel="Machine")] = None,
    ram: Annotated[Optional[str], typer.Option("--ram", help="The machine's RAM to plan for, e.g. 32GiB.", rich_help_panel="Machine")] = None,
    cpu_only: Annotated[bool, typer.Option("--cpu-only", help="Use no GPU.", rich_help_panel="Machine")] = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub (resumable, verified).

    Shows how it would fit this machine first. Without a :QUANT, picks the largest quant that
    fits. Files go to the Hugging Face cache, where llama.cpp's -hf finds them too."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from moecli import app as usecases
    from moecli import render
    from moecli.units import fmt_bytes

    out = _output(context)
    machine = usecases.machine_for(usecases.MachineOptions(profile, vram, ram, cpu_only))
    ask = not yes and out.stdin_is_terminal
    terminal = out.err.is_terminal

    def before_download(pre: usecases.PrePlan) -> None:
        """The plan is shown before anything is downloaded (the header is read by range requests)."""
        candidate = pre.choice.candidate
        out.print(f"{candidate.name} ({fmt_bytes(candidate.size)}"
                  f"{f' in {len(candidate.files)} files' if len(candidate.files) > 1 else ''}): {pre.choice.reason}")
        if pre.plan is None:
            out.warn(f"could not plan it before downloading: {pre.problem}")
        else:
            out.print(f"on this machine: {'fits' if pre.verdict.fits else 'does not fit'} ({pre.verdict.why}); "
                      f"{render.decode_line(pre.plan)}")
            out.note(render.plan_summary(pre.plan))
        if not pre.to_fetch:  # offline, or every byte is here: nothing to ask, nothing fetched
            return
        if ask and not out.confirm(f"Download {fmt_bytes(pre.to_fetch)}?", default=True):
            out.print("nothing downloaded")
            raise typer.Exit(1)
        if not terminal:
            out.note(f"fetching {fmt_bytes(pre.to_fetch)} into the Hugging Face cache…")

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=out.err, transient=True, disable=not terminal) as progress:
        task = progress.add_task("checking", total=None)

        def on_progress(p) -> None:
            label = {"check": "checking", "download": "downloading", "done": "done"}.get(p.stage, p.stage)
            progress.update(task, description=f"{label} {p.file_index}/{p.n_files}", completed=p.done, total=p.total)

        try:
            report = usecases.pull(model, machine, before_download=before_download, on_progress=on_progress, rehash=verify)
        except KeyboardInterrupt:
            out.note(f"interrupted: what was downloaded is kept; `moecli pull {model}` again resumes it")
            raise typer.Exit(130) from None
    pulled = report.pulled
    if report.llama_cache:
        out.warn(report.llama_cache)
    for name in report.moved:
        out.note(f"{name} is linked into the new snapshot too: `llama-server -hf` and huggingface_hub still find it")
    for name, repo_path in report.changed:
        out.warn(f"{name}: {repo_path} changed upstream at commit {pulled.candidate.commit[:12]}; llama-server -hf "
                 f"and huggingface_hub now see that commit, where it is not downloaded: `moecli pull {name}` "
                 f"fetches the new version (moecli runs the one pulled until then)")
    if report.offline:
        checked = "verified (every byte hashed again)" if verify else _verified_words(report)
        out.print(f"{pulled.name} is already pulled (offline: nothing fetched), {checked}: {pulled.paths[0]}")
        return
    got = f"downloaded {fmt_bytes(pulled.downloaded)}"
    if pulled.downloaded and pulled.seconds > 0:
        got += f" in {pulled.seconds:.{1 if pulled.seconds >= 1 else 2}f} s, {fmt_bytes(pulled.downloaded / pulled.seconds)}/s"
    if pulled.reused:
        got += f", {fmt_bytes(pulled.reused)} already here"
    out.print(f"pulled {pulled.name} ({got}), {_verified_words(report)}: {pulled.paths[0]}")


@app.command()
def verify(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="A pulled model's name (see moecli list).", show_default=False)],
) -> None:
    """Hash every file of a pulled model again against the Hub's sha256 recorded when it was pulled.

    Reads every byte; needs no network. Reports each file."""
    from moecli import app as usecases

    out = _output(context)

    def on_file(check) -> None:
        if check.ok:
            out.print(f"ok   {check.repo_path}: {check.why}")
        else:
            out.print(f"BAD  {check.repo_path}: {check.why} ({check.path})")

    with _status(out, f"hashing {name}…"):
        checks = usecases.verify(name, on_file=on_file)
    out.print(f"verified {len(checks)} file{'s' if len(checks) != 1 else ''} of {name}: every byte matches the Hub's sha256")


@app.command("list")
def list_models(context: typer.Context, json_out: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
    """List the models pulled with moecli, and whether each fits this machine.

    Also lists pulls that stopped part-way (with their progress) and records that cannot be read."""
    from moecli import app as usecases
    from moecli import machine, render

    out = _output(context, json_mode=json_out)
    listed = usecases.pulled_models(machine.probe())
    partial = usecases.partial_pulls()
    damaged = usecases.damaged_records()

    def human() -> None:
        if listed:
            render.store_list(out, listed)
        for p in partial:
            out.print(f"{p.name}  partial: {p.progress} downloaded")
            out.note(f"  the pull stopped part-way: `moecli pull {p.name}` resumes it, `moecli rm {p.name}` deletes it")
        for d in damaged:
            out.warn(f"{d.name}: its record {d.path} {d.why}")
            out.note(f"  `moecli pull {d.name}` writes it again, or `moecli rm {d.name}` forgets it")
        if not (listed or partial or damaged):
            out.print("no models pulled yet: moecli pull org/repo:QUANT")

    out.result(lambda: [*({"name": r.name, "state": "pulled", "repo": r.repo, "tag": r.tag, "quant": r.quant, "size": r.size,
                   "pulled_at": r.pulled_at.isoformat(), "present": r.present, "fits": item.verdict.fits,
                   "why": item.verdict.why, "path": str(r.path)} for item in listed for r in (item.record,)),
                *({"name": p.name, "state": "partial", "size": p.size, "downloaded": p.have} for p in partial),
                *({"name": d.name, "state": "damaged", "record": str(d.path), "why": d.why} for d in damaged)],
               human=human)


@app.command()
def rm(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="A pulled model's name (see moecli list).", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove a pulled model (or a pull that stopped part-way, or a damaged record).

    Deletes only the files moecli downloaded, never files that were in the cache before."""
    from moecli import app as usecases
    from moecli.units import fmt_bytes

    out = _output(context)
    removal = usecases.plan_removal(name)
    if not yes and not out.stdin_is_terminal:  # refused before listing what it would have deleted
        raise BadInput(f"not removing {removal.name} without a confirmation", "add --yes to remove it without asking")
    for path in removal.delete:
        out.print(f"delete {path}")
    for path, why in removal.keep:
        out.print(f"keep   {path} ({why})", style="dim")
    if removal.record is not None:
        out.print(f"forget {removal.record} (a damaged record)")
    if not yes and not out.confirm(f"Remove {removal.name} and free {fmt_bytes(removal.freed)}?", default=False):
        out.print("nothing removed")
        raise typer.Exit(1)
    usecases.remove(removal)
    out.print(f"removed {removal.name}; freed {fmt_bytes(removal.freed)}")


@app.command("rpc-server")
def rpc_server(
    context: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. ggml's RPC has no authentication: keep 127.0.0.1 unless the network is yours alone.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 50052,
    mem: Annotated[Optional[str], typer.Option("--mem", help="Memory to offer (ggml's server reports its devices' own; use --rpc-mem on the client).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", "-d", help="Devices to serve, e.g. CUDA0,CPU (default: the GPUs, else the CPU).")] = None,
    cache: Annotated[Optional[str], typer.Option("--cache", help="A directory for ggml's local tensor cache (clients then send hashes of large tensors they sent before).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: all).")] = None,
) -> None:
    """Serve this machine's devices to llama.cpp on other machines (ggml's RPC server).

    Clients add it with --rpc HOST:PORT (moecli plan/run/bench, llama-server). Runs until Ctrl-C."""
    from moecli import app as usecases

    out = _output(context)
    if usecases.rpc_exposed(host):
        out.warn(f"--host {host}: ggml's RPC server has no authentication and no encryption; anyone who reaches "
                 f"{host}:{port} can run code on this machine's devices and read what they hold. Never expose it to an "
                 "open network (llama.cpp's own README says so).")
    devices = tuple(d.strip() for d in device.split(",")) if device else ()

    def ready(names: list[str]) -> None:
        out.note(f"serving {', '.join(names)} on {host}:{port}; clients: --rpc {host}:{port}; Ctrl-C stops")

    usecases.serve_rpc(host, port, mem=mem, devices=devices, cache=cache, threads=threads, on_ready=ready)


def _reflow(doc: str | None) -> str | None:
    """A docstring's paragraphs as single lines: typer's rich help keeps the source's line breaks,
    which then land in the middle of the terminal's own wrapping."""
    if not doc:
        return doc
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:
    _command.help = _reflow(_command.callback.__doc__)
