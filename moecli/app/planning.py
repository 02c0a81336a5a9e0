"""From what a user typed to a Plan: the machine to plan for, the wishes, the user's own placement
flags merged on top of moecli's plan, and the one verdict that `plan`, `pull` and `list` share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from moecli import gguf, machine, paths, planner
from moecli.errors import BadInput, DoesNotFit, EngineError, MoecliError, NotMoE
from moecli.facts import MachineFacts, ModelFacts
from moecli.params import LlamaParams, PlacementFlags
from moecli.units import parse_size

if TYPE_CHECKING:
    from moecli import hub, measurements


@dataclass(frozen=True)
class MachineOptions:
    """The machine to plan for: this one, a profile, and overrides (`--vram` is the GPU memory to
    plan for, the same in every command)."""

    profile: str | None = None
    vram: str | None = None
    ram: str | None = None
    cpu_only: bool = False
    rpc: str | None = None  # --rpc HOST:PORT[,...]: llama.cpp RPC workers
    rpc_mem: str | None = None  # --rpc-mem SIZE[,...]: their memory, for workers not started yet


@dataclass(frozen=True)
class Request:
    """What the user asked for, parsed: the machine, the wishes, and their own placement (None:
    moecli's plan)."""

    machine: MachineOptions = MachineOptions()
    wishes: planner.Wishes = planner.Wishes()
    flags: PlacementFlags | None = None

    @classmethod
    def from_options(cls, *, profile=None, vram=None, ram=None, cpu_only=False, margin=None, ctx=None, ctk=None,
                     ctv=None, no_kv_quant=False, ub=None, b=None, threads=None, load_mode=None, no_mmap=False,
                     mlock=False, fa=None, ngl=None, ncmoe=None, cmoe=False, ot=None, rpc=None, rpc_mem=None) -> Request:
        """The options with llama.cpp's flag names (`-c`, `-ctk`, `-ngl`, `--n-cpu-moe`, `-ot`, ...),
        as the CLI and the Python API take them."""
        if sum(bool(x) for x in (load_mode, no_mmap, mlock)) > 1:
            raise BadInput("-lm, --no-mmap and --mlock say the same thing differently", "give one of them")
        mode = load_mode or ("none" if no_mmap else "mlock" if mlock else None)
        wishes = planner.Wishes(
            n_ctx=(ctx if isinstance(ctx, int) else planner.parse_ctx(ctx)) if ctx else None,
            margin=parse_size(margin, "--margin") if margin else None,
            type_k=ctk, type_v=ctv, allow_kv_quant=not no_kv_quant, n_ubatch=ub, n_batch=b, threads=threads,
            load_mode=mode, flash_attn=fa)
        flags = PlacementFlags.parse(None if ngl is None else str(ngl), ncmoe, cmoe,
                                     [ot] if isinstance(ot, str) else ot)
        if rpc_mem and not rpc:
            raise BadInput("--rpc-mem without --rpc: whose memory is it?", "give the workers: --rpc HOST:PORT --rpc-mem 32GiB")
        machine.parse_endpoints(rpc)  # refused here, before anything is read
        return cls(MachineOptions(profile, vram, ram, cpu_only, rpc, rpc_mem), wishes, flags)


def rpc_for(options: MachineOptions) -> tuple:
    """The RPC workers' devices: sized by --rpc-mem, or asked (a running worker reports its memory)."""
    endpoints = machine.parse_endpoints(options.rpc)
    if not endpoints:
        return ()
    if options.rpc_mem:
        return machine.rpc_devices(endpoints, options.rpc_mem)
    return machine.rpc_devices(endpoints, None, *_ask(endpoints))


def _ask(endpoints: tuple[str, ...]) -> tuple[dict[str, tuple[int, int]], dict[str, float]]:
    """What the running workers report: their memory (free, total), and the round trip to each."""
    from moecli.engine import rpc  # loads libllama: only when a worker must be asked

    return {e: rpc.device_memory(e) for e in endpoints}, {e: rpc.round_trip(e) for e in endpoints}


def machine_for(options: MachineOptions) -> MachineFacts:
    """The machine to plan for (this one, a profile, overrides, RPC workers)."""
    return machine.resolve(profile=options.profile, vram=options.vram, ram=options.ram, cpu_only=options.cpu_only,
                           rpc=rpc_for(options))


def machine_for_loading(options: MachineOptions) -> tuple[MachineFacts, str | None]:
    """The machine as this llama.cpp build can use it, and a note when that differs from the
    machine: `run` and `bench` load on this machine, so `--vram` without a GPU cannot mean
    anything there."""
    if options.vram is not None:
        machine.vram_bytes(options.vram)  # a bad or zero --vram is refused as `plan` refuses it
    facts = machine.resolve(profile=options.profile, ram=options.ram, cpu_only=options.cpu_only)
    if options.rpc:  # running: the workers must be there, and report their own memory
        endpoints = machine.parse_endpoints(options.rpc)
        facts = machine.with_rpc(facts, machine.rpc_devices(endpoints, options.rpc_mem, *_ask(endpoints)))
    if facts.gpus:
        from moecli import engine  # loads libllama: only when a model will be loaded

        if not engine.gpu_offload_supported():
            facts = machine.apply_overrides(facts, cpu_only=True)
            note = ("this llama.cpp build has no GPU support: running on the CPU "
                    "(reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=on for the GPU)")
            if options.vram is not None:
                raise EngineError(f"--vram {options.vram}: this llama.cpp build cannot use the GPU",
                                  "drop --vram to run on the CPU, or plan for that GPU with moecli plan --vram")
            return facts, note
    elif options.vram is not None:
        raise EngineError(f"--vram {options.vram}: there is no GPU here to run on",
                          f"drop --vram to run on the CPU; to see the plan for a {options.vram} GPU: "
                          f"moecli plan MODEL --vram {options.vram}")
    if options.vram is not None:  # on real cards: at most that much of what is free (one size per GPU)
        sizes = [parse_size(v.strip(), "--vram") for v in options.vram.split(",")]
        gpus = tuple(replace(g, free_bytes=min(g.free_bytes, sizes[i])) if i < len(sizes) else g
                     for i, g in enumerate(facts.gpus))
        facts = replace(facts, gpus=gpus, source=f"{facts.source} + --vram {options.vram}")
    return facts, None


def check_flags(facts: ModelFacts, machine_facts: MachineFacts, flags: PlacementFlags | None, *, planning: bool) -> None:
    """Placement flags that cannot mean anything here, refused before anything is planned or
    loaded: expert flags on a dense model, GPU placement without a GPU."""
    if flags is None:
        return
    if flags.moves_experts and not facts.is_moe:
        raise NotMoE(f"{facts.name} is a dense model: --cpu-moe/--n-cpu-moe move expert tensors and it has none",
                     "drop them; use -ngl to split its layers")
    gpu_flags = flags.gpu_flags()
    if machine_facts.gpus or not gpu_flags:
        return
    if planning:
        raise BadInput(f"{', '.join(gpu_flags)} place tensors between a GPU and the CPU, and the machine planned "
                       "for has no GPU", "plan for one with --vram 6GiB or --profile NAME, or drop them")
    raise EngineError(f"no GPU to load on: {', '.join(gpu_flags)} place tensors between a GPU and the CPU",
                      "drop them to run on the CPU (or install llama-cpp-python with CUDA for the GPU)")


def plan_for(facts: ModelFacts, machine_facts: MachineFacts, request: Request, *, planning: bool = True,
             n_ctx: int | None = None) -> planner.Plan:
    """moecli's plan, or the user's own placement accounted for on top of it (its context, KV
    types, batch and threads stay the plan's). `n_ctx` replaces the wished context (bench)."""
    check_flags(facts, machine_facts, request.flags, planning=planning)
    wishes = request.wishes if n_ctx is None else replace(request.wishes, n_ctx=n_ctx)
    if request.flags is None:
        return planner.plan(facts, machine_facts, wishes)
    try:
        base = planner.plan(facts, machine_facts, wishes).params
    except DoesNotFit:
        base = LlamaParams(n_ctx=wishes.n_ctx if isinstance(wishes.n_ctx, int) else planner.DEFAULT_CTX)
    return planner.evaluate(facts, machine_facts, request.flags.apply(base), wishes)


# --- verdicts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    fits: bool
    why: str  # the figure that decides it, for people


def verdict(plan: planner.Plan) -> Verdict:
    """One line for people: fits or not, and the figure that decides it."""
    if not plan.fits:
        over = [d for d in plan.devices if not d.fits]
        return Verdict(False, "; ".join(f"needs {_gib(d.total)} on {d.device}, has {_gib(d.budget or 0)}" for d in over)
                       or "does not fit")
    gpu = plan.gpu
    where = f"{_gib(gpu.total)} of {_gib(gpu.budget or 0)} VRAM, " if gpu else ""
    return Verdict(True, f"{where}{_gib(plan.cpu.total)} of RAM at {plan.params.n_ctx} tokens of context")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class HubFits:
    """The planner's verdict on Hub candidates, from each one's remote header: does it fit this
    machine with a useful context (llama.cpp's fitter keeps at least 4096)? Remembers each plan,
    so that the plan shown before a download is the one that chose the quant (one header read)."""

    def __init__(self, machine_facts: MachineFacts) -> None:
        self.machine = machine_facts
        self._plans: dict[str, planner.Plan | MoecliError] = {}

    def plan(self, candidate: hub.Candidate) -> planner.Plan:
        """The candidate's plan (raises the MoecliError that planning it raised)."""
        if candidate.name not in self._plans:
            from moecli import hub

            remote = hub.remote_gguf(candidate)
            try:
                facts = gguf.read_model(remote.open(), open_shard=remote.open, source=candidate.name)
                self._plans[candidate.name] = planner.plan(facts, self.machine, planner.Wishes(n_ctx=planner.DEFAULT_CTX))
            except MoecliError as exc:
                self._plans[candidate.name] = exc
        result = self._plans[candidate.name]
        if isinstance(result, MoecliError):
            raise result
        return result

    def __call__(self, candidate: hub.Candidate) -> tuple[bool, str]:
        try:
            v = verdict(self.plan(candidate))
        except DoesNotFit as exc:
            return False, exc.message
        except MoecliError as exc:
            return False, f"cannot plan it: {exc.message}"
        return v.fits, v.why


# --- what this machine measured: calibration and tuned configurations ---------------------------
def this_machine(machine_facts: MachineFacts) -> bool:
    """Whether the machine planned for is this one (a profile is another machine: this one's
    measurements say nothing about it)."""
    return not machine_facts.source.startswith("profile")


def calibration_from(store: measurements.Store, machine_facts: MachineFacts) -> planner.Calibration | None:
    """This machine's measurements as the planner's facts (rows of another shape are skipped)."""
    if not this_machine(machine_facts) or not store.measurements:
        return None  # nothing measured: no need to fingerprint the machine
    from moecli import measurements

    fp = measurements.fingerprint(machine_facts)
    samples = []
    for m in store.of(fp.id):
        try:
            inputs = planner.SpeedInputs.from_dict(m.inputs)
        except (TypeError, KeyError, ValueError):
            continue
        if m.n_depth == 0 and m.avg_ts > 0:
            samples.append(planner.SpeedSample(inputs, m.test, m.avg_ts, m.when, m.n_prompt or m.n_gen,
                                                   m.stddev_ts / m.avg_ts))
    return planner.Calibration(tuple(samples))


# Wishes that are part of a tuned configuration: given by the user, theirs win and the tuned one is not used
_TUNED_WISHES = ("n_ubatch", "n_batch", "threads", "load_mode", "type_k", "type_v", "flash_attn")


@dataclass(frozen=True)
class TunedSkipped:
    """A tuned configuration that was not used because it does not fit now (as data; render words it)."""

    label: str
    args: tuple[str, ...]  # its flags
    n_ctx: int  # the context asked for now
    device: str  # the device it does not fit
    needed: int
    budget: int


@dataclass(frozen=True)
class Planned:
    """The plan a command uses, with its speed from this machine's measurements, and where a
    tuned configuration came in: `tuned` (used), `skipped` (not used, and why)."""

    plan: planner.Plan
    tuned: measurements.Tuned | None = None
    skipped: TunedSkipped | None = None
    note: str | None = None  # the measurements file was set aside (one line)


def planned(facts: ModelFacts, machine_facts: MachineFacts, request: Request, *, use_tuned: bool = True,
            planning: bool = True) -> Planned:
    """What `plan`, `run` and `serve` use: moecli's plan (or the user's flags, as `plan_for`), or,
    where a `bench --sweep` on this machine found a faster configuration for this model and the
    user gave no flags of their own, that configuration, if it fits at the context asked for now;
    its speed predicted from this machine's measurements."""
    fresh = plan_for(facts, machine_facts, request, planning=planning)
    if not paths.measurements_file().exists():  # nothing measured yet (and nothing more to import)
        return Planned(planner.calibrated(fresh, None))
    from moecli import measurements

    store = measurements.read()
    calibration = calibration_from(store, machine_facts)
    tuned = skipped = None
    own = request.flags is not None or any(getattr(request.wishes, w) is not None for w in _TUNED_WISHES)
    if use_tuned and not own and store.tuned and this_machine(machine_facts):
        record = store.tuned_for(measurements.fingerprint(machine_facts).id, planner.model_key(facts))
        if record is not None:
            params = record.to_params(fresh.params.n_ctx)
            candidate = planner.evaluate(facts, machine_facts, params, request.wishes)
            if candidate.fits:
                fresh, tuned = candidate, record
            else:
                short = next(d for d in candidate.devices if not d.fits)
                skipped = TunedSkipped(record.label, tuple(params.to_llama_args()), params.n_ctx, short.device,
                                       short.total, short.budget or 0)
    return Planned(planner.calibrated(fresh, calibration), tuned, skipped, store.note)
