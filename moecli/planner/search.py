"""`plan` decides the placement, context, KV types, batch sizes, load mode and threads for a model on
a machine; `evaluate` accounts for flags a user typed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NoReturn

from moecli.errors import BadInput, DoesNotFit
from moecli.facts import KV_CELL_PAD, GpuFacts, MachineFacts, ModelFacts
from moecli.params import ALL_LAYERS, CPU, LlamaParams
from moecli.planner.memory import OP_OFFLOAD_MIN_BATCH, _Account, _account, _kv_bytes, _runtime_overhead, _Setup
from moecli.planner.model import _Model, _prepare
from moecli.planner.placement import _describe, _expert_subsets, _load_mode, _params_for, _Where, _where, _where_from_params
from moecli.planner.speed import _decode, _speed_inputs, predict
from moecli.planner.types import (
    DEFAULT_BATCH,
    DEFAULT_CTX,
    DEFAULT_MARGIN,
    DEFAULT_UBATCH,
    GPU,
    KV_QUANT_LADDER,
    MIN_CTX,
    RAM_RESERVE,
    Alternative,
    CpuOnly,
    CtxMaxFallsBack,
    DenseModel,
    Finding,
    GaveUpCtx,
    GaveUpKvQuant,
    GaveUpLayers,
    GaveUpUbatch,
    GpuOverBudget,
    Kind,
    MmapExpertsSlowPrompt,
    MtpNotLoaded,
    NoExpertsOnGpu,
    NonExpertsOnCpu,
    OneGpu,
    Plan,
    RamLoadFails,
    RamPages,
    RamWouldFit,
    RpcWouldFit,
    ThreadsOverCores,
    UbatchBelowOffload,
    Wishes,
)
from moecli.units import fmt_bytes

if TYPE_CHECKING:
    from moecli.planner import devices as multi

# ---------------------------------------------------------------------------------------------
# helpers shared by plan and evaluate


def _pick_gpu(machine: MachineFacts, wishes: Wishes) -> GpuFacts | None:
    if not machine.gpus:
        return None
    for g in machine.gpus:
        if g.index == wishes.gpu:
            return g
    raise BadInput(f"there is no GPU {wishes.gpu} on this machine",
                   "GPUs: " + ", ".join(f"{g.index} ({g.name})" for g in machine.gpus))


def _gpu_budget(gpu: GpuFacts, wishes: Wishes) -> int:
    """Free memory (or --vram, or the wished budget) minus the margin; the runtime's overhead must
    fit inside it."""
    available = gpu.free_bytes if wishes.vram_budget is None else min(gpu.free_bytes, wishes.vram_budget)
    margin = DEFAULT_MARGIN if wishes.margin is None else wishes.margin
    budget = available - margin
    overhead = _runtime_overhead(gpu)
    if budget <= overhead:
        raise BadInput(f"a GPU budget of {fmt_bytes(available)} (minus a {fmt_bytes(margin)} margin) does not even hold "
                       f"the CUDA runtime's own {fmt_bytes(overhead)}",
                       "give more VRAM (--vram), a smaller margin, or plan with --cpu-only")
    return budget


def _ram_budget(machine: MachineFacts) -> int:
    return max(0, machine.ram_available - RAM_RESERVE)


def _check_ctx(model: ModelFacts, n_ctx: int) -> None:
    if model.n_ctx_train and n_ctx > model.n_ctx_train:
        raise BadInput(f"context {n_ctx} is above {model.name}'s training context {model.n_ctx_train}",
                       f"use --ctx {model.n_ctx_train} or less (or --ctx max)")


def _check_types(m: _Model, type_k: str, type_v: str, flash_attn: str) -> None:
    for flag, type_name, index in (("-ctk", type_k, 1), ("-ctv", type_v, 2)):
        for layer in m.kv_layers:
            n = layer[index]
            try:
                _kv_bytes(type_name, n, 1)
            except ValueError:
                raise BadInput(f"{flag} {type_name}: rows of {n} values are not whole {type_name} blocks",
                               f"use {flag} f16 for this model") from None
    if type_v not in ("f16", "f32", "bf16") and flash_attn == "off":
        raise BadInput(f"a quantized V cache (-ctv {type_v}) needs flash attention", "use -fa on (or auto)")


def _threads(machine: MachineFacts, wishes: Wishes) -> int:
    return wishes.threads or machine.physical_cores  # llama.cpp's default is the physical cores too


def _ram_findings(m: _Model, setup: _Setup, where: _Where, acc: _Account, load_mode: str, gpu: GpuFacts | None,
                  gpu_budget: int | None) -> list[Finding]:
    """When the CPU side does not fit RAM: what happens (the load fails, or the OS pages weights from
    disk), and what would fit with the same placement."""
    cpu = acc.cpu
    if cpu.budget is None or cpu.fits:
        return []
    short = RamLoadFails(cpu.total, cpu.budget) if load_mode == "none" else RamPages(cpu.total, cpu.budget)
    n_ctx = _largest(lambda c: _account(m, replace(setup, n_ctx=c), where, gpu, gpu_budget, cpu.budget).cpu.fits,
                     MIN_CTX, setup.n_ctx)
    return [short, RamWouldFit(cpu.total, cpu.budget, cpu.weights, n_ctx), RpcWouldFit(cpu.total - cpu.budget)]


def _finish(m: _Model, machine: MachineFacts, gpu: GpuFacts | None, params: LlamaParams, setup: _Setup,
            where: _Where, acc: _Account, findings: Sequence[Finding], alternatives: Sequence[Alternative] = ()) -> Plan:
    placement, rows = _describe(m, where, gpu)
    devices = (acc.gpu, acc.cpu) if acc.gpu is not None else (acc.cpu,)
    f = m.facts
    found = list(findings)
    if machine.logical_cores and params.n_threads > machine.logical_cores:
        found.append(ThreadsOverCores(params.n_threads, machine.logical_cores))
    if not m.is_moe:
        found.append(DenseModel())
    if len(machine.gpus) > 1 and gpu is not None:
        found.append(OneGpu(gpu.index))
    not_loaded = sum(t.info.n_bytes for t in m.tensors if not t.loaded)
    if not_loaded:
        found.append(MtpNotLoaded(not_loaded))
    order = (Kind.GAVE_UP, Kind.WARNING, Kind.NOTE)  # as a report reads them; each kind in the order found
    decode = _decode(m, where, machine, gpu, acc.copied)
    speed = predict(_speed_inputs(m, where, machine, gpu, params, decode), decode, None)
    return Plan(
        model=f.name, arch=f.arch, machine=machine.source, is_moe=m.is_moe, params=params, devices=devices,
        placement=placement, tensors=rows, n_ctx=setup.cells, decode=decode, speed=speed,
        findings=tuple(sorted(found, key=lambda x: order.index(x.kind))), alternatives=tuple(alternatives),
        file_bytes=f.n_bytes, copied_bytes=acc.copied, not_loaded_bytes=not_loaded,
    )


# ---------------------------------------------------------------------------------------------
# evaluate: the same accounting for flags the user typed


def evaluate(model: ModelFacts, machine: MachineFacts, params: LlamaParams, wishes: Wishes = Wishes()) -> Plan:
    """Account for a configuration as given (`-ngl`, `--cpu-moe`, `--n-cpu-moe`, `-ot`, `-c`,
    `-ctk/-ctv`, `-ub`, `-lm`): memory per device, decode estimate, and findings where it does not
    fit or will be slow. Nothing is changed."""
    m = _prepare(model)
    n_ctx = params.n_ctx or model.n_ctx_train or DEFAULT_CTX  # llama.cpp: 0 = the training context
    _check_ctx(model, n_ctx)
    _check_types(m, params.type_k, params.type_v, params.flash_attn)
    if _several(machine):
        return _evaluate_devices(m, machine, params, wishes, n_ctx)
    gpu = _pick_gpu(machine, replace(wishes, gpu=params.main_gpu) if machine.gpus else wishes)
    budget = _gpu_budget(gpu, wishes) if gpu is not None else None
    setup = _Setup(n_ctx, params.type_k, params.type_v, params.n_ubatch, params.n_batch, params.flash_attn,
                   wishes.n_seq, wishes.kv_unified)
    where = _where_from_params(m, params, gpu)
    acc = _account(m, setup, where, gpu, budget, _ram_budget(machine))
    found: list[Finding] = []
    if acc.gpu is not None and not acc.gpu.fits:
        found.append(GpuOverBudget(acc.gpu.device, acc.gpu.total, acc.gpu.budget))
    load_mode = params.load_mode if params.load_mode != "auto" else "mmap"
    found += _ram_findings(m, setup, where, acc, load_mode, gpu, budget)
    if gpu is not None and params.use_mmap and any(d == CPU and t.kind for t, d in zip(m.tensors, where.devices)):
        found.append(MmapExpertsSlowPrompt(planned=False))
    if params.n_ubatch < OP_OFFLOAD_MIN_BATCH and gpu is not None:
        found.append(UbatchBelowOffload(params.n_ubatch, OP_OFFLOAD_MIN_BATCH))
    if m.is_moe and gpu is not None and any(d == GPU for t, d in zip(m.tensors, where.devices) if t.kind) \
            and any(d == CPU for t, d in zip(m.tensors, where.devices) if not t.kind and not t.is_input and d):
        found.append(NonExpertsOnCpu())
    return _finish(m, machine, gpu, params, setup, where, acc, found)


def slot_cost(model: ModelFacts, machine: MachineFacts, params: LlamaParams, n_seq: int,
              kv_unified: bool = False) -> int:
    """Bytes that n_seq sequences (the server's -np slots) hold beyond one, over all devices, for
    the configuration `params` (a plan's own flags): a recurrent state each, a row of logits each
    in the output buffer, each stream's sliding-window cells, the cells that padding each stream's
    share of -c adds, and what the compute buffers change by (see planner.memory._activations).
    Negative where attention over each slot's share of the context costs less than over all of it."""
    one = evaluate(model, machine, params, Wishes(n_seq=1, kv_unified=kv_unified))
    more = evaluate(model, machine, params, Wishes(n_seq=n_seq, kv_unified=kv_unified))
    return sum(d.total for d in more.devices) - sum(d.total for d in one.devices)


# ---------------------------------------------------------------------------------------------
# plan: choose


def plan(model: ModelFacts, machine: MachineFacts, wishes: Wishes = Wishes()) -> Plan:
    """Decide the placement, context, KV types, batch sizes, load mode and threads for `model` on
    `machine`: everything that is not an expert on the GPU first, the remaining budget filled with
    whole layers' experts from the last layer down (llama.cpp's --n-cpu-moe keeps the FIRST N
    layers' experts on the CPU), then one layer split by tensor where that wins the last bytes."""
    m = _prepare(model)
    if isinstance(wishes.n_ctx, int):
        _check_ctx(model, wishes.n_ctx)
    threads = _threads(machine, wishes)
    if _several(machine):
        return _plan_devices(m, machine, wishes, threads)
    gpu = _pick_gpu(machine, wishes)
    if gpu is None:
        return _plan_cpu(m, machine, wishes, threads)
    budget = _gpu_budget(gpu, wishes)
    ram = _ram_budget(machine)
    search = _Search(m, machine, gpu, budget, ram, wishes)
    return search.run(threads)


def _base_setup(m: _Model, wishes: Wishes, n_ctx: int) -> _Setup:
    type_k = wishes.type_k or "f16"
    type_v = wishes.type_v or "f16"
    # llama.cpp lowers -ub to -b (llama_context: n_ubatch = min(n_batch, n_ubatch)), never raises -b
    n_batch = wishes.n_batch or DEFAULT_BATCH
    n_ubatch = min(wishes.n_ubatch or DEFAULT_UBATCH, n_batch)
    return _Setup(n_ctx, type_k, type_v, n_ubatch, n_batch, _flash_attn(wishes, type_v), wishes.n_seq,
                  wishes.kv_unified)


def _flash_attn(wishes: Wishes, type_v: str) -> str:
    if wishes.flash_attn:
        return wishes.flash_attn
    return "on" if type_v not in ("f16", "f32", "bf16") else "auto"


def _default_ctx(m: _Model) -> int:
    return min(DEFAULT_CTX, m.facts.n_ctx_train) if m.facts.n_ctx_train else DEFAULT_CTX


def _plan_cpu(m: _Model, machine: MachineFacts, wishes: Wishes, threads: int) -> Plan:
    """No GPU: everything on the CPU; what matters is RAM."""
    n_ctx = wishes.n_ctx if isinstance(wishes.n_ctx, int) else _default_ctx(m)
    setup = _base_setup(m, wishes, n_ctx)
    ram = _ram_budget(machine)
    where = _where(m, 0, has_gpu=False)
    if wishes.n_ctx == "max":
        limit = m.facts.n_ctx_train or DEFAULT_CTX
        best = _largest(lambda c: _account(m, replace(setup, n_ctx=c), where, None, None, ram).cpu.fits, MIN_CTX, limit)
        setup = replace(setup, n_ctx=best or _default_ctx(m))
    _check_types(m, setup.type_k, setup.type_v, setup.flash_attn)
    acc = _account(m, setup, where, None, None, ram)
    load_mode = wishes.load_mode or "mmap"  # no GPU copies to speed up; mmap shares the page cache
    params = _params_for(m, setup, 0, (), None, load_mode, threads)
    params = params.with_(cpu_moe=False, n_cpu_moe=0, tensor_overrides=())
    found = [CpuOnly(), *_ram_findings(m, setup, where, acc, load_mode, None, None)]
    return _finish(m, machine, None, params, setup, where, acc, found)


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest context in [low, high] (multiples of KV_CELL_PAD, and high itself) that fits."""
    if fits(high):
        return high
    low = min(low, high)
    lo, hi = low // KV_CELL_PAD, high // KV_CELL_PAD
    if lo < 1 or not fits(lo * KV_CELL_PAD):
        return None
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if fits(mid * KV_CELL_PAD):
            lo = mid
        else:
            hi = mid
    return lo * KV_CELL_PAD


@dataclass(frozen=True)
class _Step:
    """One configuration the search tries: a setup, the -ngl values to try it with (most first),
    and what taking the step gives up."""

    setup: _Setup
    ngls: tuple[int, ...]
    findings: tuple[Finding, ...] = ()


class _Search:
    """The choices of `plan` for a machine with a GPU, step by step:

    1. the wished setup (context, f16 KV, -ub 512) with every non-expert weight on the GPU;
    2. if that does not fit, give up, in order, what `ladder` lists (KV precision, micro-batch),
       then layers (-ngl), then what `rescue` lists (context, more KV precision, micro-batch),
       and raise DoesNotFit when not even -ngl 0 fits;
    3. otherwise fill the rest of the budget with experts (`fill_experts`).
    Memory freed by giving something up is not handed to experts: it went to what had not fitted.
    Were it otherwise, a little more VRAM could restore f16 KV at the price of an expert layer, and
    more VRAM would decode slower. (--ctx max is the exception: there the context comes first, then
    the experts, and a larger budget can trade a quantized cache back for f16.)
    """

    def __init__(self, m: _Model, machine: MachineFacts, gpu: GpuFacts, budget: int, ram: int, wishes: Wishes):
        self.m, self.machine, self.gpu, self.budget, self.ram, self.wishes = m, machine, gpu, budget, ram, wishes
        self.all_layers = m.n_layer_all + 1

    # -- accounting shortcuts
    def gpu_account(self, setup: _Setup, where: _Where) -> _Account:
        return _account(self.m, setup, where, self.gpu, self.budget, self.ram)

    def fits(self, setup: _Setup, ngl: int) -> bool:
        """Everything but the experts of the last ngl-1 layers and the output on the GPU fits."""
        return self.gpu_account(setup, _where(self.m, ngl, gpu_experts=())).fits_gpu

    # -- steps
    def ladder(self, setup: _Setup) -> list[tuple[_Setup, Finding]]:
        """What is given up before layers, cheapest first: KV precision (q8_0 is close to lossless),
        then the prompt micro-batch (its logits dominate the compute buffer)."""
        w, steps, s = self.wishes, [], setup
        if w.type_k is None and w.type_v is None and w.allow_kv_quant and self.kv_ok(KV_QUANT_LADDER[0]):
            s = replace(s, type_k=KV_QUANT_LADDER[0], type_v=KV_QUANT_LADDER[0], flash_attn=_flash_attn(w, KV_QUANT_LADDER[0]))
            steps.append((s, GaveUpKvQuant(setup.type_k, KV_QUANT_LADDER[0])))
        if w.n_ubatch is None and s.n_ubatch > 256:
            steps.append((replace(s, n_ubatch=256), GaveUpUbatch(s.n_ubatch, 256)))
            s = steps[-1][0]
        return steps

    def rescue(self, setup: _Setup) -> list[tuple[_Setup, Finding]]:
        """What is given up when not even -ngl 0 fits: context, then KV precision again, then the
        micro-batch down to the smallest the GPU still takes prompt work for."""
        w, steps, s = self.wishes, [], setup
        if not isinstance(w.n_ctx, int):
            while s.n_ctx // 2 >= MIN_CTX:
                s = replace(s, n_ctx=s.n_ctx // 2)
                steps.append((s, GaveUpCtx(setup.n_ctx, s.n_ctx)))
        if w.type_k is None and w.type_v is None and w.allow_kv_quant and self.kv_ok(KV_QUANT_LADDER[1]):
            steps.append((replace(s, type_k=KV_QUANT_LADDER[1], type_v=KV_QUANT_LADDER[1],
                                  flash_attn=_flash_attn(w, KV_QUANT_LADDER[1])),
                          GaveUpKvQuant(s.type_k, KV_QUANT_LADDER[1], rescue=True)))
            s = steps[-1][0]
        if w.n_ubatch is None:
            for n in (128, 64, OP_OFFLOAD_MIN_BATCH):
                if s.n_ubatch > n:
                    steps.append((replace(s, n_ubatch=n), GaveUpUbatch(s.n_ubatch, n, rescue=True)))
                    s = steps[-1][0]
        return steps

    def kv_ok(self, type_name: str) -> bool:
        try:
            _check_types(self.m, type_name, type_name, _flash_attn(self.wishes, type_name))
            return True
        except BadInput:
            return False

    def max_ctx(self, setup: _Setup, ngl: int) -> int | None:
        limit = self.m.facts.n_ctx_train or DEFAULT_CTX
        return _largest(lambda c: self.fits(replace(setup, n_ctx=c), ngl), MIN_CTX, limit)

    def steps(self, setup: _Setup) -> Iterator[_Step]:
        """What the search tries, in order, each step giving up one more thing: the wish with every
        layer on the GPU; `ladder`'s steps (MoE: every layer still on the GPU); the most layers
        that fit below all of them; `rescue`'s steps with -ngl 0. Computed as the search reaches
        them."""
        m, w, top = self.m, self.wishes, self.all_layers
        yield _Step(setup, (top,))
        ladder = self.ladder(setup) if m.is_moe else []  # a dense model's CPU layers keep their KV in RAM
        for candidate, finding in ladder:
            if w.n_ctx == "max":
                candidate = replace(candidate, n_ctx=self.max_ctx(candidate, top) or MIN_CTX)
            yield _Step(candidate, (top,), (finding,))
        split = ladder[-1][0] if ladder else setup
        falls_back: tuple[Finding, ...] = ()
        if w.n_ctx == "max" and m.is_moe:
            split = replace(split, n_ctx=_default_ctx(m))
            falls_back = (CtxMaxFallsBack(split.n_ctx, moe=True),)
        yield _Step(split, tuple(range(top - 1, -1, -1)), falls_back)
        rescue = self.ladder(split) if not m.is_moe else []
        rescue += self.rescue(rescue[-1][0] if rescue else split)
        for candidate, finding in rescue:
            yield _Step(candidate, (0,), (finding,))

    def walk(self, setup: _Setup) -> tuple[list[_Step], int]:
        """The steps up to the first that fits, and the -ngl it fits with; DoesNotFit when none does."""
        taken = []
        for step in self.steps(setup):
            taken.append(step)
            ngl = next((n for n in step.ngls if self.fits(step.setup, n)), None)
            if ngl is not None:
                return taken, ngl
        self.does_not_fit(taken[-1].setup)

    def run(self, threads: int) -> Plan:
        m, w = self.m, self.wishes
        found: list[Finding] = []
        start = _default_ctx(m) if w.n_ctx in (None, "max") else w.n_ctx
        setup = _base_setup(m, w, start)
        _check_types(m, setup.type_k, setup.type_v, setup.flash_attn)
        if w.n_ctx == "max":
            setup, quantized = self.choose_max_ctx(setup)
            found += quantized
            if not self.fits(setup, self.all_layers) and not m.is_moe:
                setup = replace(setup, n_ctx=_default_ctx(m))
                found.append(CtxMaxFallsBack(setup.n_ctx, moe=False))

        taken, ngl = self.walk(setup)
        setup = taken[-1].setup
        found += [f for step in taken for f in step.findings]
        if ngl < self.all_layers:
            found.append(GaveUpLayers(ngl, m.n_layer_all))

        gpu_layers: tuple[int, ...] = ()
        partial = None
        if m.is_moe and len(taken) == 1:  # nothing given up: the rest of the budget holds experts
            gpu_layers, partial = self.fill_experts(setup)
        elif m.is_moe and ngl == self.all_layers:
            found.append(NoExpertsOnGpu())
        where = _where(m, ngl, gpu_experts=gpu_layers, partial=partial)
        acc = self.gpu_account(setup, where)
        assert acc.fits_gpu, "the search keeps to the budget"

        load_mode, why = self.load_mode(setup, where)
        found += why
        params = _params_for(m, setup, ngl, gpu_layers, partial, load_mode, threads)
        exact = _where_from_params(m, params, self.gpu)
        assert exact.devices == where.devices, "the flags express exactly the placement planned"
        acc = self.gpu_account(setup, exact)
        found += _ram_findings(m, setup, exact, acc, load_mode, self.gpu, self.budget)
        if load_mode == "mmap" and any(d == CPU and t.kind for t, d in zip(m.tensors, where.devices)):
            found.append(MmapExpertsSlowPrompt(planned=True))
        alternatives = self.alternatives(setup, ngl, gpu_layers, partial, params, acc, threads)
        return _finish(m, self.machine, self.gpu, params, setup, exact, acc, found, alternatives)

    def choose_max_ctx(self, setup: _Setup) -> tuple[_Setup, list[Finding]]:
        """--ctx max: the largest context up to the training context with the non-expert weights on
        the GPU; f16 KV unless only a quantized cache reaches further."""
        m, w = self.m, self.wishes
        limit = m.facts.n_ctx_train or DEFAULT_CTX
        best = self.max_ctx(setup, self.all_layers)
        auto_kv = w.type_k is None and w.type_v is None and w.allow_kv_quant
        if m.is_moe and auto_kv and (best or 0) < limit and self.kv_ok(KV_QUANT_LADDER[0]):
            quant = replace(setup, type_k=KV_QUANT_LADDER[0], type_v=KV_QUANT_LADDER[0],
                            flash_attn=_flash_attn(w, KV_QUANT_LADDER[0]))
            best_q = self.max_ctx(quant, self.all_layers)
            if best_q and best_q > (best or 0):
                return (replace(quant, n_ctx=best_q),
                        [GaveUpKvQuant(setup.type_k, KV_QUANT_LADDER[0], n_ctx=best_q, n_ctx_before=best or 0)])
        return replace(setup, n_ctx=best or MIN_CTX), []

    def fill_experts(self, setup: _Setup) -> tuple[tuple[int, ...], tuple[int, tuple[str, ...]] | None]:
        """The most whole layers' experts that fit, counted from the last layer down (llama.cpp's
        --n-cpu-moe keeps a prefix of layers on the CPU), then the subset of the next layer's expert
        tensors with the most bytes that still fits. Every prefix is tried, fewest CPU layers first:
        fit is not monotonic in the last steps, because the GPU's compute buffer holds a copy of the
        largest CPU-resident expert tensor for prompt batches, and that copy goes away (or shrinks)
        as the last CPU layers move over."""
        m = self.m
        layers = m.expert_layers
        gpu_layers: tuple[int, ...] = ()
        for n_cpu in range(len(layers) + 1):
            trial = tuple(layers[n_cpu:])
            if self.gpu_account(setup, _where(m, self.all_layers, gpu_experts=trial)).fits_gpu:
                gpu_layers = trial
                break
        remaining = [layer for layer in m.expert_layers if layer not in gpu_layers]
        if not remaining:
            return gpu_layers, None
        boundary = remaining[-1]
        for names in _expert_subsets(m, boundary):
            partial = (boundary, names)
            if self.gpu_account(setup, _where(m, self.all_layers, gpu_experts=gpu_layers, partial=partial)).fits_gpu:
                return gpu_layers, partial
        return gpu_layers, None

    def load_mode(self, setup: _Setup, where: _Where) -> tuple[str, list[Finding]]:
        return _load_mode(self.m, where.devices, self.gpu_account(setup, where).cpu, self.wishes.load_mode)

    def does_not_fit(self, setup: _Setup) -> NoReturn:
        acc = self.gpu_account(setup, _where(self.m, 0, gpu_experts=()))
        short = acc.gpu.total - acc.gpu.budget
        raise DoesNotFit(
            f"{self.m.facts.name} does not fit CUDA{self.gpu.index}: even with every layer on the CPU the GPU needs "
            f"{fmt_bytes(acc.gpu.total)} (compute {fmt_bytes(acc.gpu.compute)} + runtime {fmt_bytes(acc.gpu.overhead)}) "
            f"of a {fmt_bytes(acc.gpu.budget)} budget: short by {fmt_bytes(short)} ({short} bytes)",
            "plan with --cpu-only, or free GPU memory",
        )

    def alternatives(self, setup: _Setup, ngl: int, gpu_layers, partial, params: LlamaParams, acc: _Account,
                     threads: int) -> list[Alternative]:
        m, out = self.m, []
        decode = _decode(m, _where(m, ngl, gpu_experts=gpu_layers, partial=partial), self.machine, self.gpu, acc.copied).bound

        def alt(label: str, where: _Where, alt_params: LlamaParams, reason: str, alt_setup: _Setup = setup) -> None:
            a = self.gpu_account(alt_setup, where)
            out.append(Alternative(label, alt_params, a.gpu.total if a.gpu else None,
                                   _decode(m, where, self.machine, self.gpu, a.copied).bound, reason))

        # llama.cpp's usual answer for a small GPU: a layer split without overrides
        naive = next((n for n in range(self.all_layers, -1, -1)
                      if self.gpu_account(setup, _where(m, n)).fits_gpu), None)
        all_on_gpu = ngl == self.all_layers and len(gpu_layers) == len(m.expert_layers)
        if naive is not None and naive != ngl and not (m.is_moe and all_on_gpu):
            naive_params = params.with_(n_gpu_layers=ALL_LAYERS if naive == self.all_layers else naive, cpu_moe=False,
                                        n_cpu_moe=0, tensor_overrides=())
            where = _where(m, naive)
            a = self.gpu_account(setup, where)
            bound = _decode(m, where, self.machine, self.gpu, a.copied).bound
            if m.is_moe:
                reason = ("a layer split keeps whole layers, experts included, on the GPU: every token then reads the "
                          "other layers' attention and shared weights from RAM")
                if bound and decode and bound > decode:
                    reason = "faster by the estimate, but chosen against: " + reason
                out.append(Alternative(f"naive layer split -ngl {naive}", naive_params, a.gpu.total, bound, reason))
        if m.is_moe and gpu_layers:
            alt("all experts on CPU (--cpu-moe)", _where(m, self.all_layers, gpu_experts=()),
                params.with_(cpu_moe=True, n_cpu_moe=0, tensor_overrides=()),
                "leaves GPU memory unused that could hold expert layers")
        if m.is_moe and ngl == self.all_layers and not all_on_gpu and self.wishes.n_ubatch is None \
                and setup.n_batch >= 2048:  # a -b the user typed stays as typed
            big = replace(setup, n_ubatch=2048)
            if big.reserve_tokens > setup.reserve_tokens:
                a = self.gpu_account(big, _where(m, ngl, gpu_experts=gpu_layers, partial=partial))
                extra = a.gpu.total - acc.gpu.total
                out.append(Alternative("-ub 2048", params.with_(n_ubatch=2048, n_batch=big.n_batch), a.gpu.total, decode,
                                       f"a larger micro-batch amortises expert copies on long prompts but needs "
                                       f"{fmt_bytes(extra)} more GPU memory (logits of 2048 tokens), which holds experts "
                                       "that every generated token uses"))
        if setup.type_k != "f16" and self.wishes.type_k is None:
            out.append(Alternative("f16 KV cache", params.with_(type_k="f16", type_v="f16", flash_attn="auto"), None, None,
                                   "does not fit with the non-expert weights at this context"))
        return out


# ---------------------------------------------------------------------------------------------
# several devices: local GPUs and RPC workers (planner.devices)


def _several(machine: MachineFacts) -> bool:
    """Plans over devices: more than one GPU, or any RPC worker."""
    return len(machine.gpus) > 1 or bool(machine.rpc)


def _plan_devices(m: _Model, machine: MachineFacts, wishes: Wishes, threads: int) -> Plan:
    from moecli.planner import devices as multi  # several devices: imported only for them

    devs = multi.machine_devices(machine, wishes)
    ram = _ram_budget(machine)
    setup = _base_setup(m, wishes, wishes.n_ctx if isinstance(wishes.n_ctx, int) else _default_ctx(m))
    _check_types(m, setup.type_k, setup.type_v, setup.flash_attn)
    search = multi._DeviceSearch(m, machine, devs, ram, wishes)
    if wishes.n_ctx == "max":  # the largest context with every non-expert weight on the devices
        limit = m.facts.n_ctx_train or DEFAULT_CTX
        best = _largest(lambda c: search.fits(replace(setup, n_ctx=c), search.top), MIN_CTX, limit)
        setup = replace(setup, n_ctx=best or _default_ctx(m))
    ladder = [(setup, ())]
    if m.is_moe:
        helper = _Search(m, machine, GpuFacts(0, "", 1, 1), 1, ram, wishes)  # its ladder only: KV, micro-batch
        ladder += [(s, (f,)) for s, f in helper.ladder(setup)]
    chosen = search.run(ladder, threads)
    found = list(chosen.findings)
    found += _ram_findings_devices(m, chosen, devs, ram)
    return _finish_devices(m, machine, devs, chosen.params, chosen.setup, chosen.where, chosen.account, found,
                           chosen.alternatives)


def _evaluate_devices(m: _Model, machine: MachineFacts, params: LlamaParams, wishes: Wishes, n_ctx: int) -> Plan:
    from moecli.planner import devices as multi  # several devices: imported only for them

    devs = multi.machine_devices(machine, wishes)
    ram = _ram_budget(machine)
    setup = _Setup(n_ctx, params.type_k, params.type_v, params.n_ubatch, params.n_batch, params.flash_attn,
                   wishes.n_seq, wishes.kv_unified)
    where, acc, found = multi.evaluate_devices(m, setup, params, devs, ram)
    chosen = multi.DevicePlan(params, setup, where, acc, (), {})
    found += _ram_findings_devices(m, chosen, devs, ram)
    return _finish_devices(m, machine, devs, params, setup, where, acc, found)


def _ram_findings_devices(m: _Model, chosen: multi.DevicePlan, devs, ram: int) -> list[Finding]:
    from moecli.planner import devices as multi  # several devices: imported only for them

    cpu = chosen.account.cpu
    if cpu.budget is None or cpu.fits:
        return []
    load_mode = chosen.params.load_mode if chosen.params.load_mode != "auto" else "mmap"
    short = RamLoadFails(cpu.total, cpu.budget) if load_mode == "none" else RamPages(cpu.total, cpu.budget)
    n_ctx = _largest(lambda c: multi._account(m, replace(chosen.setup, n_ctx=c), chosen.where, devs, ram).cpu.fits,
                     MIN_CTX, chosen.setup.n_ctx)
    return [short, RamWouldFit(cpu.total, cpu.budget, cpu.weights, n_ctx), RpcWouldFit(cpu.total - cpu.budget)]


def _finish_devices(m: _Model, machine: MachineFacts, devs, params: LlamaParams, setup: _Setup, where, acc,
                    findings: Sequence[Finding], alternatives: Sequence[Alternative] = ()) -> Plan:
    from moecli.planner import devices as multi  # several devices: imported only for them

    placement, rows = multi.describe(m, where, devs)
    f = m.facts
    found = list(findings)
    if not m.is_moe:
        found.append(DenseModel())
    not_loaded = sum(t.info.n_bytes for t in m.tensors if not t.loaded)
    if not_loaded:
        found.append(MtpNotLoaded(not_loaded))
    order = (Kind.GAVE_UP, Kind.WARNING, Kind.NOTE)
    return Plan(
        model=f.name, arch=f.arch, machine=machine.source, is_moe=m.is_moe, params=params, devices=acc.devices,
        placement=placement, tensors=rows, n_ctx=setup.cells, decode=multi.decode(m, where, machine, devs, acc.copied),
        findings=tuple(sorted(found, key=lambda x: order.index(x.kind))), alternatives=tuple(alternatives),
        file_bytes=f.n_bytes, copied_bytes=acc.copied, not_loaded_bytes=not_loaded,
    )
