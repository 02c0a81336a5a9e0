"""Loading a plan into llama.cpp and benchmarking it: what `run`, `bench` (and the server) do
between a Plan and an Engine."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from moecli import machine, measurements, planner
from moecli.cpu import logical_cores
from moecli.errors import BadInput, NotMoE
from moecli.facts import MachineFacts, ModelFacts
from moecli.params import LlamaParams

from .planning import Request, plan_for

if TYPE_CHECKING:
    from moecli import bench as benchmod
    from moecli.engine import Engine


@contextmanager
def ctrl_c_sets(flag: list[bool]) -> Iterator[None]:
    """While the block runs, Ctrl-C only raises a flag that the code polls (between tokens, between
    load steps): a KeyboardInterrupt raised inside a llama.cpp callback would be lost (ctypes
    prints and drops it) or leave llama.cpp's state unknown. SIGTERM stops the same way, then
    exits 143 once the block is left: a live display has restored the terminal (its cursor) by then."""
    terminated = [False]

    def handler(signum, frame):
        flag[0] = True
        if signum == signal.SIGTERM:
            terminated[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (tests): nothing to install
        yield
        return
    previous_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        if terminated[0]:
            raise SystemExit(128 + signal.SIGTERM)


def with_threads(params: LlamaParams) -> LlamaParams:
    """llama.cpp's default -t is the physical cores (common.cpp, cpu_get_num_math): the engine is
    given the figure rather than probing the machine itself."""
    return params if params.n_threads else params.with_(n_threads=machine.physical_cores())


def load_engine(path: Path, params: LlamaParams, *, on_progress: Callable[[float], None] | None = None,
                on_log: Callable[[str], None] | None = None, n_seq_max: int = 1, kv_unified: bool = False) -> Engine:
    """Load `params` into llama.cpp. Ctrl-C while loading stops the load cleanly
    (KeyboardInterrupt after llama.cpp has let go): it only raises a flag, which the progress
    callback turns into a cancelled load."""
    from moecli.engine import Engine

    interrupted = [False]

    def progress(fraction: float) -> None:
        if interrupted[0]:
            raise KeyboardInterrupt
        if on_progress:
            on_progress(fraction)

    with ctrl_c_sets(interrupted):
        engine = Engine.load(path, with_threads(params), on_progress=progress, on_log=on_log,
                             n_seq_max=n_seq_max, kv_unified=kv_unified)
    if interrupted[0]:  # after the weights: while the context was made
        engine.close()
        raise KeyboardInterrupt
    return engine


# --- bench ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchJob:
    """What `bench` will measure: the plan and the configurations (the plan, or it and its
    neighbours with --sweep), and the neighbours left out because they do not fit."""

    plan: planner.Plan
    configs: tuple[tuple[str, LlamaParams], ...]
    left_out: tuple[str, ...] = ()


def bench_job(facts: ModelFacts, machine_facts: MachineFacts, request: Request, spec: benchmod.BenchSpec, *,
              sweep: bool = False, ctx_given: bool = False) -> BenchJob:
    """The plan to bench, with a context large enough for the tests (llama-bench's n_prompt +
    n_gen + n_depth) unless the user gave one that is too small (then say so)."""
    if sweep and not facts.is_moe:
        raise NotMoE(f"{facts.name} is a dense model: --sweep compares expert placements, and it has no experts",
                     "bench it without --sweep")
    the_plan = plan_for(facts, machine_facts, request, planning=False)
    needed = spec.n_prompt + spec.n_gen + spec.n_depth
    if the_plan.params.n_ctx < needed:
        if ctx_given:
            raise BadInput(f"-c {the_plan.params.n_ctx} is too small for the tests: -p {spec.n_prompt} -n {spec.n_gen} "
                           f"-d {spec.n_depth} need {needed} tokens", f"give -c {needed} or more")
        the_plan = plan_for(facts, machine_facts, request, planning=False, n_ctx=needed)
    label = "plan" if request.flags is None else "your flags"
    if not sweep:
        return BenchJob(the_plan, ((label, the_plan.params),))
    from moecli import bench as benchmod  # psutil: only for a bench, not for every use of the app layer

    # without a GPU there is no placement to move: threads, micro-batch and load mode are what vary
    candidates = None if machine_facts.gpus else benchmod.cpu_neighbours(the_plan, logical_cores())
    configs, left_out = benchmod.sweep(
        the_plan, lambda p: planner.evaluate(facts, machine_facts, p, request.wishes).fits, label,
        candidates=candidates)
    return BenchJob(the_plan, tuple(configs), tuple(left_out))


@dataclass
class BenchRun:
    """The rows measured."""

    results: list[benchmod.BenchResult] = field(default_factory=list)
    partial: bool = False  # Ctrl-C: the repetitions measured until then


def run_bench(path: Path, job: BenchJob, spec: benchmod.BenchSpec, machine_facts: MachineFacts, *,
              on_config: Callable[[int, str], object] | None = None,
              on_config_done: Callable[[int, str, Sequence[benchmod.BenchResult]], None] | None = None,
              on_log: Callable[[str], None] | None = None) -> BenchRun:
    """Measure each configuration in turn. `on_config(i, label)` may return a context manager
    (a spinner) that is held while that configuration loads and runs."""
    from contextlib import nullcontext

    from moecli import bench as benchmod
    from moecli.engine import Engine

    vram_used = machine.vram_used_probe(machine_facts.gpus[0].index) if machine_facts.gpus else None
    interrupted = [False]

    def check(*_) -> None:  # Ctrl-C only raises a flag (ctrl_c_sets); it acts here
        if interrupted[0]:
            raise KeyboardInterrupt

    done = BenchRun()
    try:
        with ctrl_c_sets(interrupted):
            for i, (label, params) in enumerate(job.configs, 1):
                with (on_config(i, label) if on_config else None) or nullcontext():
                    rows = benchmod.run_config(
                        path, label, with_threads(params), spec, vram_used=vram_used, on_rep=check,
                        load=lambda p, prm: Engine.load(p, prm, on_progress=check, on_log=on_log))
                done.results += rows
                if on_config_done:
                    on_config_done(i, label, rows)
        check()
    except KeyboardInterrupt as stop:  # what was measured stays: the caller shows it, marked partial
        done.results += getattr(stop, "rows", [])
        done.partial = True
    return done


# --- RPC workers ----------------------------------------------------------------------------------
def rpc_exposed(host: str) -> bool:
    """Whether serving on `host` is reachable from other machines (ggml-rpc has no authentication)."""
    from moecli.planner.devices import is_loopback

    return not is_loopback(f"{host}:0")


def serve_rpc(host: str, port: int, *, mem: str | None = None, devices: tuple[str, ...] = (), cache: str | None = None,
              threads: int | None = None, on_ready=None) -> None:
    """Serve this machine's devices to llama.cpp clients (`moecli run --rpc`, llama-server --rpc)
    until interrupted. `mem` is refused: ggml's RPC server reports its devices' own memory and has
    no way to report less; a client plans with less through --rpc-mem."""
    from moecli.engine import rpc
    from moecli.errors import BadInput

    if mem:
        raise BadInput("--mem: ggml's RPC server reports its devices' own free memory and cannot report less",
                       f"serve without --mem; on the client, plan with less: --rpc {host}:{port} --rpc-mem {mem}")
    if not 0 < port < 65536:
        raise BadInput(f"--port {port} is not a TCP port", "e.g. --port 50052")
    rpc.serve(host, port, devices, cache, threads, on_ready=on_ready)


# --- what a bench leaves behind -----------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    """What `bench` recorded: the rows, the tuned configuration a sweep chose (None without a
    sweep), and the measurements file's one line if it had to be set aside or could not be written."""

    n_rows: int
    tuned: measurements.Tuned | None = None
    chosen: str | None = None  # the label of the fastest configuration
    note: str | None = None


def record_bench(facts: ModelFacts, machine_facts: MachineFacts, request: Request, job: BenchJob,
                 done: BenchRun, *, sweep: bool = False) -> Recorded:
    """Record every row with what decides its speed (planner.SpeedInputs of its configuration) and
    this machine's fingerprint; after a sweep, the fastest configuration as this model's tuned one."""
    from moecli import bench as benchmod

    fp = measurements.fingerprint(machine_facts)
    key = planner.model_key(facts)
    when = measurements.now()
    params_of = dict(job.configs)
    rows = []
    for r in done.results:
        params = with_threads(params_of[r.label])
        speed = planner.evaluate(facts, machine_facts, params, request.wishes).speed
        rows.append(measurements.Measurement(
            when=when, machine=fp.id, model=key, model_path=r.model_filename, label=r.label,
            test="pp" if r.n_prompt else "tg", n_prompt=r.n_prompt, n_gen=r.n_gen, n_depth=r.n_depth,
            avg_ts=r.avg_ts, stddev_ts=r.stddev_ts, samples_ts=r.samples_ts, args=tuple(params.to_llama_args()),
            n_ctx=r.n_ctx, inputs=asdict(speed.inputs) if speed else {}, sweep=sweep))
    tuned = chosen = None
    if sweep and (chosen := benchmod.fastest(done.results)) is not None:
        params = with_threads(params_of[chosen])
        figures = {("pp" if r.n_prompt else "tg"): r.avg_ts for r in done.results if r.label == chosen}
        tuned = measurements.Tuned(when=when, machine=fp.id, model=key, label=chosen,
                                   params=measurements.Tuned.params_dict(params),
                                   decode_ts=figures.get("tg"), prompt_ts=figures.get("pp"), n_ctx=params.n_ctx)
    try:
        store = measurements.add(rows, tuned)
    except OSError as exc:
        return Recorded(0, None, chosen, f"not recorded: {measurements.path()} could not be written ({exc.strerror})")
    return Recorded(len(rows), tuned, chosen, store.note)


@dataclass(frozen=True)
class History:
    measurements: tuple[measurements.Measurement, ...]  # this model on this machine, oldest first
    tuned: measurements.Tuned | None
    machine: str  # the fingerprint, for people
    other_machines: int  # rows of this model measured on other machines
    note: str | None = None


def bench_history(facts: ModelFacts, machine_facts: MachineFacts) -> History:
    """What was measured of this model on this machine, and its tuned configuration."""
    store = measurements.read()
    fp = measurements.fingerprint(machine_facts)
    key = planner.model_key(facts)
    mine = tuple(store.of(fp.id, key))
    others = sum(1 for m in store.measurements if m.model == key and m.machine != fp.id)
    return History(mine, store.tuned_for(fp.id, key), fp.describe, others, store.note)
