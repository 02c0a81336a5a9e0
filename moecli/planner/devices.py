"""Plans over several devices: local GPUs and llama.cpp RPC workers beside the CPU.

llama.cpp's rules for several devices, as the vendored source has them:
- device order (src/llama.cpp, llama_model_load_from_file_impl): RPC devices first ("add RPC servers
  at the front of the list"), then the GPUs; `-dev` gives the order explicitly.
- layers (src/llama-model.cpp, load_tensors): the split points are the cumulative `-ts` weights
  normalised to 1 (float), i_gpu_start = max(n_layer_all + 1 - ngl, 0), act = min(ngl, n_layer_all + 1);
  layer il (the output layer is il = n_layer_all) goes to the CPU below i_gpu_start, else to
  devices[upper_bound(splits, float(il - i_gpu_start) / act)]. With `-ts` = the number of layers
  each device holds, device k holds exactly the k-th block of consecutive layers.
- `-ot PATTERN=BUFT` wins over the layer's device (the first match); `--cpu-moe` comes after the
  explicit ones, so per-device expert patterns first, then --cpu-moe, say "these experts there, the
  rest on the CPU" (llama.cpp's own --n-cpu-moe is device-blind: the experts left to the GPUs follow
  their layers, llama.cpp issues #15136, #15263).
- buffer types: CUDA<k>; RPC<d>[host:port] with d the device's index on its server.
- a CPU-resident weight is multiplied for prompt batches (>= 32 tokens) on the first device whose
  backend offloads ops (ggml_backend_sched: the first backend with offload_op): CUDA; RPC has none.

The search: every layer on the devices when the non-expert weights fit (KV precision, then the
micro-batch, then layers given up as in the single-GPU search), the layers split by `-ts` in
proportion to each device's budget; then each device takes the experts of its own layers, from the
back of its block, while everything fits; then what room is left takes the CPU's remaining expert
layers (the budget fill); then each device takes some expert tensors of one more CPU layer by
tensor (the single-GPU rule, placement._expert_subsets; its own block's first), as -ot per tensor
kind and device, kept where the estimate says it is faster (`partial`). An expert layer away from
its layer's device costs two crossings per token (there and back; a layer split by tensor, two for
each device holding some of its experts), 0.5 ms each to a worker on this machine, which the fill
of whole layers does not weigh; so the search also weighs candidates that cross less, each as explicit flags (-dev, -ts with the layers
each device holds, -ot): the budget split with each device holding only its own layers' experts;
whole layers packed onto the devices from the back (a layer split: the CPU's layers first, then
each device's block in llama.cpp's order, three crossings for a worker and a card), alone and with
the room left taking CPU layers' experts (every device, or the local GPUs only); and the
alternatives below with their default split written out as -ts. It keeps the one with the best
decode bound of its own estimate (`decode`); a tie keeps the budget fill; without a bound (a
bandwidth unknown), the fill. A note says so when the choice crosses less than the fill.

The alternatives a plan lists are what a llama.cpp user types for several devices, placed by
`where_from_params` as llama.cpp places them: no -ts (the default split, by each device's free
memory), `-ngl all --n-cpu-moe N` (the experts left to the devices follow their layers, onto the
card holding the last ones), the layer split `-ngl N`, and `--cpu-moe`. Being among the search's
candidates, none that fits is faster by the plan's estimate.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from moecli.errors import BadInput, DoesNotFit
from moecli.facts import GpuFacts, MachineFacts, RpcFacts
from moecli.params import ALL_LAYERS, CPU, EXPS_REGEX, LlamaParams
from moecli.planner.memory import (
    CUDA_ALIGNMENT,
    CUDA_COMPUTE_SLACK,
    OFFLOAD_COPY_SLACK,
    OP_OFFLOAD_MIN_BATCH,
    _activations,
    _kv_bytes,
    _output_buffer,
    _output_bytes,
    _pool_growth,
    _runtime_overhead,
    _Setup,
)
from moecli.planner.model import _Model
from moecli.planner.placement import _expert_subsets, _load_mode
from moecli.planner.speed import EFFICIENCY, _tensor_bytes_per_token
from moecli.planner.types import (
    DEFAULT_MARGIN,
    Alternative,
    CrossingsWeighed,
    DecodeEstimate,
    DeviceUnused,
    Finding,
    GaveUpLayers,
    GpuOverBudget,
    MemoryBreakdown,
    Placement,
    TensorPlacement,
    Wishes,
)
from moecli.units import fmt_bytes

PCIE_BANDWIDTH = 15.75e9  # bytes/s: PCIe 3.0 x16, what a GPU without a known link gets
PCIE_LATENCY = 10e-6  # s per transfer between the host and a GPU (a launch and a sync)
# An RPC crossing is several round trips (set the input, send the graph, compute, read the output)
# and a wake-up of the worker. Measured on the project's 2-core dev box, idle, with the demo model
# (moecli bench demo --cpu-only -p 0 -n 128 -r 10 -t 1, workers `moecli rpc-server --threads 1`,
# 2026-12-01): local 916 t/s; one worker 447 t/s (2 crossings: +1.15 ms/token); two workers with
# layer 1's experts on the other one 325 t/s (4 crossings, two of them worker to worker: +1.99
# ms/token). So about 0.5-0.57 ms a crossing, worker to worker no dearer than host to worker; on
# the same box loaded by other work, 0.7-1.1 ms. The lowest figure keeps the bound a bound.
# The same runs timed one RPC round trip (GET_DEVICE_MEMORY, engine.rpc.round_trip) at 137-208 us,
# median 170: a crossing is about three round trips (set the input, compute, read the output).
# A worker that is running gets its round trip measured; one planned with --rpc-mem, the figures below.
CROSSING_ROUND_TRIPS = 3
LOOPBACK_BANDWIDTH = 4e9  # bytes/s over 127.0.0.1
LOOPBACK_LATENCY = 0.5e-3  # s per crossing over 127.0.0.1 (measured, above)
LAN_BANDWIDTH = 125e6  # bytes/s: gigabit Ethernet, for an RPC worker without a known link
LAN_LATENCY = LOOPBACK_LATENCY + CROSSING_ROUND_TRIPS * 0.2e-3  # the same, plus a LAN's 0.2 ms a round trip


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class _Dev:
    """A device besides the CPU, as the planner works with it."""

    name: str  # llama.cpp's device name: "CUDA1", "RPC0"
    buffer_type: str  # what -ot names: "CUDA1", "RPC0[127.0.0.1:50052]"
    cuda: bool
    budget: int  # bytes the plan may use there
    overhead: int  # the runtime's own memory (CUDA) or what the worker keeps
    free: int  # what llama.cpp sees free (its default -ts weights)
    bandwidth: float | None  # bytes/s of its memory
    link_bandwidth: float  # bytes/s to the host
    link_latency: float  # s per crossing to the host
    gpu: GpuFacts | None = None
    endpoint: str | None = None
    round_trip: float | None = None  # an RPC worker's, measured (link_latency is then made of it)


def machine_devices(machine: MachineFacts, wishes: Wishes) -> list[_Dev]:
    """The devices in llama.cpp's order with their budgets: free memory (or --vram) minus the margin."""
    margin = DEFAULT_MARGIN if wishes.margin is None else wishes.margin
    out = []
    for d in machine.devices:
        if isinstance(d, RpcFacts):
            loop = is_loopback(d.endpoint)
            bandwidth = d.bandwidth or (machine.ram_bandwidth if loop else None)  # a worker on this machine uses its RAM
            latency = d.link_latency or (CROSSING_ROUND_TRIPS * d.round_trip if d.round_trip else None)
            out.append(_Dev(d.name_llama, d.buffer_type, False, d.free_bytes - margin, d.runtime_overhead, d.free_bytes,
                            bandwidth, d.link_bandwidth or (LOOPBACK_BANDWIDTH if loop else LAN_BANDWIDTH),
                            latency or (LOOPBACK_LATENCY if loop else LAN_LATENCY), endpoint=d.endpoint,
                            round_trip=None if d.link_latency else d.round_trip))
        else:
            available = d.free_bytes if wishes.vram_budget is None else min(d.free_bytes, wishes.vram_budget)
            out.append(_Dev(d.name_llama, d.name_llama, True, available - margin, _runtime_overhead(d), d.free_bytes,
                            d.bandwidth, d.link_bandwidth or PCIE_BANDWIDTH, PCIE_LATENCY, gpu=d))
    for dev in out:
        if dev.budget <= dev.overhead:
            runtime = f", not even its runtime's {fmt_bytes(dev.overhead)}" if dev.overhead else ""
            raise BadInput(f"{dev.name} has {fmt_bytes(dev.free)} free and a budget of {fmt_bytes(max(dev.budget, 0))} "
                           f"after the {fmt_bytes(margin)} margin{runtime}",
                           "give it more memory (--vram / --rpc-mem), a smaller --margin, or leave it out")
    return out


# ---------------------------------------------------------------------------------------------
# placement: llama.cpp's rules for -ngl, -ts, -dev, -ot, --cpu-moe


@dataclass(frozen=True)
class _DWhere:
    devices: tuple[str | None, ...]  # per _Model.tensors: a device name, "CPU", or None (not loaded)
    layers: tuple[str, ...]  # per layer 0 .. n_layer_all (the last is the output layer)
    n_gpu_layers: int

    def output(self) -> str:
        return self.layers[-1]


def _layer_devices(n_layer_all: int, ngl: int, order: Sequence[str], weights: Sequence[float]) -> tuple[str, ...]:
    """load_tensors' split: float split points, upper_bound of (il - i_gpu_start) / act_gpu_layers."""
    n = n_layer_all
    ngl = n + 1 if ngl < 0 else ngl
    splits, total = [], 0.0
    for w in weights:
        total = _f32(total + _f32(w))  # float splits[i] = free (or -ts), summed in float
        splits.append(total)
    splits = [_f32(s / total) if total else 0.0 for s in splits]
    start = max(n + 1 - ngl, 0)
    act = min(ngl, n + 1) if order else 0
    out = []
    for il in range(n + 1):
        if il < start or il - start >= act:
            out.append(CPU)
            continue
        x = _f32((il - start) / act)
        k = next((i for i, s in enumerate(splits) if s > x), len(splits))
        out.append(order[min(k, len(order) - 1)])
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _matches(pattern: str, names: tuple[str, ...]) -> tuple[bool, ...]:
    """Which tensor names an -ot pattern matches (re.search, as llama.cpp's std::regex_search):
    the search tries the same few patterns on the same tensors many times."""
    compiled = re.compile(pattern)
    return tuple(bool(compiled.search(name)) for name in names)


def _place(m: _Model, layers: tuple[str, ...], overrides: Sequence[tuple[str, str]] = (),
           experts: dict[int, str] | None = None, ngl: int = -1, split: dict[str, str] | None = None) -> _DWhere:
    """Each loaded tensor's device: the first matching override (pattern, device); the input on
    the CPU; a routed expert where `split` says (its name -> device: layers split by tensor), else
    where `experts` says (its layer -> device; absent: the CPU) when given; else its layer's."""
    matched = [(_matches(pattern, m.tensor_names), device) for pattern, device in overrides]
    out: list[str | None] = []
    for i, t in enumerate(m.tensors):
        if not t.loaded:
            out.append(None)
            continue
        device = next((d for hits, d in matched if hits[i]), None) if matched else None
        if device is not None:
            out.append(device)
        elif t.is_input:
            out.append(CPU)
        elif t.kind and experts is not None:
            out.append((split or {}).get(t.info.name) or experts.get(t.layer, CPU))
        else:
            out.append(layers[m.n_layer_all if t.layer is None else t.layer])
    return _DWhere(tuple(out), layers, ngl)


def _buffer_device(buffer_type: str, devs: Sequence[_Dev]) -> str:
    name = buffer_type.strip()
    if name.upper().startswith("CPU") or name.upper() == "CUDA_HOST":
        return CPU
    for d in devs:
        if name == d.buffer_type or name.upper() == d.buffer_type.upper():
            return d.name
    raise BadInput(f"buffer type {buffer_type!r} is not one of this plan's devices",
                   "use one of: CPU, " + ", ".join(d.buffer_type for d in devs))


def where_from_params(m: _Model, params: LlamaParams, devs: Sequence[_Dev]) -> _DWhere:
    """llama.cpp's placement for the flags on these devices."""
    by_name = {d.name: d for d in devs}
    order = [by_name[n] for n in params.devices if n in by_name] if params.devices else list(devs)
    weights = params.tensor_split or tuple(float(d.free) for d in order)
    if len(weights) < len(order):
        weights = (*weights, *([0.0] * (len(order) - len(weights))))
    layers = _layer_devices(m.n_layer_all, params.n_gpu_layers, [d.name for d in order], weights[:len(order)])
    overrides = tuple((o.pattern, _buffer_device(o.buffer_type, devs)) for o in params.overrides())
    return _place(m, layers, overrides, ngl=params.n_gpu_layers)


def expert_pattern(layers: Sequence[int]) -> str:
    """One -ot pattern for the routed experts of these layers: blk\\.(3|4|5)\\.ffn_..._exps."""
    alternatives = "|".join(str(i) for i in sorted(layers))
    return rf"blk\.({alternatives}){EXPS_REGEX}"


# ---------------------------------------------------------------------------------------------
# memory: the single-GPU rules (planner.memory), per device


@dataclass(frozen=True)
class _DAccount:
    devices: tuple[MemoryBreakdown, ...]  # devs' order, then the CPU
    copied: int

    @property
    def cpu(self) -> MemoryBreakdown:
        return self.devices[-1]

    @property
    def fits_devices(self) -> bool:
        return all(d.fits for d in self.devices[:-1])


def _account(m: _Model, setup: _Setup, where: _DWhere, devs: Sequence[_Dev], ram_budget: int | None) -> _DAccount:
    names = [d.name for d in devs]
    weights = dict.fromkeys([*names, CPU], 0)
    padding = dict.fromkeys(names, 0)
    cuda = {d.name for d in devs if d.cuda}
    largest_cpu = 0
    for t, device in zip(m.tensors, where.devices):
        if device is None:
            continue
        weights[device] += t.info.n_bytes
        if device in cuda:
            padding[device] += t.cuda_bytes
        elif device == CPU and not t.is_input:
            largest_cpu = max(largest_cpu, t.info.n_bytes)
    copied = 0
    out_dev = where.output()
    if m.tied_output is not None and out_dev != CPU:
        copied = m.tied_output.n_bytes  # TENSOR_DUPLICATED: the output head is a second copy there
        weights[out_dev] += copied
        if out_dev in cuda:
            padding[out_dev] += CUDA_ALIGNMENT

    kv = dict.fromkeys(weights, 0)
    largest_cpu_kv = 0
    scratch = dict.fromkeys(weights, 0)
    for layer, n_k, n_v, window in m.kv_layers:
        layer_cells = setup.layer_cells(window)
        size = _kv_bytes(setup.type_k, n_k, layer_cells) + _kv_bytes(setup.type_v, n_v, layer_cells)
        device = where.layers[layer]
        kv[device] += size
        if device == CPU:
            largest_cpu_kv = max(largest_cpu_kv, size)
        if device in cuda and (setup.type_k != "f16" or setup.type_v != "f16"):
            scratch[device] = max(scratch[device], layer_cells * 2 * (n_k * (setup.type_k != "f16")
                                                                      + n_v * (setup.type_v != "f16")))
    recurrent = dict.fromkeys(weights, 0)
    for layer, size in m.recurrent_per_layer:  # one state per sequence, as in planner.memory
        recurrent[where.layers[layer]] += size * max(1, setup.n_seq)

    # compute buffers (see planner.memory._compute for the terms and their calibration)
    f = m.facts
    n_tokens = setup.graph_tokens
    tail, layer_act = _activations(m, setup)
    out_one, out_more = _output_buffer(m, setup)
    first_cuda = next((d.name for d in devs if d.cuda), None)
    offload = n_tokens >= OP_OFFLOAD_MIN_BATCH and first_cuda is not None
    holds = {d: any(x == d for x in where.layers) or any(x == d for x in where.devices) for d in names}
    compute = dict.fromkeys(weights, 0)
    for d in names:
        if not holds[d] and not (offload and d == first_cuda):
            continue
        c = max(tail if out_dev == d else 0, layer_act + scratch[d])
        if d == first_cuda and offload:
            copies = largest_cpu + largest_cpu_kv
            output_copy = _output_bytes(m) if out_dev == CPU else 0
            c = max(c, layer_act + scratch[d] + copies, tail + output_copy if output_copy else 0)
            if copies or output_copy:
                c += OFFLOAD_COPY_SLACK
        compute[d] = c + (CUDA_COMPUTE_SLACK if d in cuda else 0)
    cpu_compute = n_tokens * f.n_embd * 4 * 4 + out_one
    if not offload and largest_cpu:
        cpu_compute = max(cpu_compute, layer_act)  # the CPU runs its layers' work itself
    if out_dev == CPU and not offload:
        cpu_compute = max(cpu_compute, tail)
    compute[CPU] = cpu_compute + out_more  # the output buffer's rows of the other sequences

    rows = []
    for d in devs:
        overhead = d.overhead + padding[d.name] + (_pool_growth(m, setup) if d.cuda else 0)
        rows.append(MemoryBreakdown(d.name, weights[d.name], kv[d.name], recurrent[d.name], compute[d.name], overhead,
                                    d.budget))
    rows.append(MemoryBreakdown(CPU, weights[CPU], kv[CPU], recurrent[CPU], compute[CPU], 0, ram_budget))
    return _DAccount(tuple(rows), copied)


# ---------------------------------------------------------------------------------------------
# the search


def _split_weights(n_slots: int, devs: Sequence[_Dev]) -> list[int]:
    """Layers per device (largest remainders), in proportion to each device's budget beyond its overhead."""
    room = [max(1, d.budget - d.overhead) for d in devs]
    total = sum(room)
    exact = [n_slots * r / total for r in room]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(devs)), key=lambda i: (-(exact[i] - counts[i]), i))[: n_slots - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class DevicePlan:
    """What `plan_devices` decided, for search._finish to turn into a Plan."""

    params: LlamaParams
    setup: _Setup
    where: _DWhere
    account: _DAccount
    findings: tuple[Finding, ...]
    experts: dict[int, str]
    alternatives: tuple[Alternative, ...] = ()


class _DeviceSearch:
    def __init__(self, m: _Model, machine: MachineFacts, devs: list[_Dev], ram: int, wishes: Wishes):
        self.m, self.machine, self.devs, self.ram, self.wishes = m, machine, devs, ram, wishes
        self.top = m.n_layer_all + 1

    def layout(self, ngl: int) -> tuple[tuple[str, ...], list[int]]:
        slots = min(ngl, self.top)
        counts = _split_weights(slots, self.devs)
        layers = _layer_devices(self.m.n_layer_all, slots, [d.name for d in self.devs], counts)
        return layers, counts

    def account(self, setup: _Setup, layers: tuple[str, ...], experts: dict[int, str], ngl: int,
                split: dict[str, str] | None = None) -> _DAccount:
        return _account(self.m, setup, _place(self.m, layers, experts=experts, ngl=ngl, split=split), self.devs,
                        self.ram)

    def fits(self, setup: _Setup, ngl: int) -> bool:
        layers, _ = self.layout(ngl)
        return self.account(setup, layers, {}, ngl).fits_devices

    def run(self, setups: Sequence[tuple[_Setup, Sequence[Finding]]], threads: int) -> DevicePlan:
        """`setups`: the wish, then what the single-GPU ladder gives up (KV precision, micro-batch)."""
        m = self.m
        found: list[Finding] = []
        chosen = None
        tried = []
        for candidate, given_up in setups:
            tried.append(candidate)
            found += given_up
            if self.fits(candidate, self.top):
                chosen = (candidate, self.top)
                break
        if chosen is None:
            last = tried[-1]
            ngl = next((n for n in range(self.top - 1, -1, -1) if self.fits(last, n)), None)
            if ngl is None:
                self.does_not_fit(last)
            chosen = (last, ngl)
            found.append(GaveUpLayers(ngl, m.n_layer_all))
        setup, ngl = chosen
        layers, counts = self.layout(ngl)
        experts: dict[int, str] = {}
        split: dict[str, str] = {}
        if m.is_moe and ngl == self.top:
            experts = self.fill(setup, layers, ngl)
            split = self.partial(setup, layers, ngl, experts, self.devs)
        where = _place(m, layers, experts=experts if m.is_moe else None, ngl=ngl, split=split)
        acc = _account(m, setup, where, self.devs, self.ram)
        assert acc.fits_devices, "the search keeps to every device's budget"
        params = self.params_for(setup, ngl, counts, experts, "auto", threads, split=split)
        exact = where_from_params(m, params, self.devs)
        assert exact.devices == where.devices, "the flags express exactly the placement planned"
        if m.is_moe:
            params, exact, acc, weighed = self.weigh(setup, params, exact, acc, self.candidates(setup, ngl, layers, threads))
            found += weighed
        load_mode, why = self.load_mode(exact, acc)
        found += why
        found += [DeviceUnused(d.name, d.endpoint or "PCIe", _crossing_seconds(m, d) * 1e3)
                  for d in self.devs if d.name not in exact.devices]
        params = params.with_(load_mode=load_mode)
        experts = {layer: d for layer, d in _expert_devices(m, exact).items() if d != CPU}
        alternatives = self.alternatives(setup, params, exact, acc)
        return DevicePlan(params, setup, exact, acc, tuple(found), experts, alternatives)

    def candidates(self, setup: _Setup, ngl: int, layers: tuple[str, ...], threads: int) -> list[LlamaParams]:
        """Other placements that weigh the crossings between devices, each as explicit flags (-dev,
        -ts with the layers each device holds, -ot): the split by budget with each device holding
        only its own layers' experts (the rest on the CPU); the whole layers packed onto the devices
        from the back (a layer split: three crossings for a worker and a card), alone and with the
        room left taking CPU layers' experts (on every device, or on the local GPUs only); each with
        one more layer by tensor per device where the estimate says it is faster (`partial`; own
        layers only in the first); and what
        a llama.cpp user types (`typed`), with the split it gives written out as -ts."""
        m, out = self.m, []
        names = [d.name for d in self.devs]
        if ngl == self.top:
            own = self.own(setup, layers, ngl)
            own_split = self.partial(setup, layers, ngl, own, self.devs, own_only=True)
            out.append(self.params_for(setup, ngl, self.layout(ngl)[1], own, "auto", threads, split=own_split))
        packed = self.packed(setup)
        if packed:
            n_packed = int(sum(packed))
            p_layers = _layer_devices(m.n_layer_all, n_packed, names, packed)
            with_layers = {layer: p_layers[layer] for layer in m.expert_layers if p_layers[layer] != CPU}
            out.append(self.params_for(setup, n_packed, packed, with_layers, "auto", threads, follow=p_layers))
            local = [d for d in self.devs if d.cuda]
            for targets in dict.fromkeys((tuple(self.devs), tuple(local))):
                if targets:
                    spilled = self.spill(setup, p_layers, n_packed, with_layers, targets)
                    split = self.partial(setup, p_layers, n_packed, spilled, targets)
                    if spilled != with_layers or split:
                        out.append(self.params_for(setup, n_packed, packed, spilled, "auto", threads,
                                                   follow=p_layers, split=split))
        typed = out[0].with_(devices=(), tensor_split=(), tensor_overrides=(), cpu_moe=False, n_cpu_moe=0) if out else None
        if typed is None:
            typed = self.params_for(setup, ngl, self.layout(ngl)[1], {}, "auto", threads).with_(
                devices=(), tensor_split=(), tensor_overrides=(), cpu_moe=False, n_cpu_moe=0)
        for alt in self.typed_flags(setup, typed).values():
            alt_where = where_from_params(m, alt, self.devs)
            counts = tuple(float(sum(1 for x in alt_where.layers if x == n)) for n in names)
            explicit = alt.with_(devices=tuple(names), tensor_split=counts)
            if where_from_params(m, explicit, self.devs).devices == alt_where.devices:
                out.append(explicit)
        return out

    def weigh(self, setup: _Setup, params: LlamaParams, where: _DWhere, acc: _DAccount,
              candidates: Sequence[LlamaParams]) -> tuple[LlamaParams, _DWhere, _DAccount, list[Finding]]:
        """The candidate that fits with the best decode bound of the plan's own estimate; a tie keeps
        the budget fill (`params`). Says so when it crosses between devices less than the fill."""
        m = self.m
        fill_bound = decode(m, where, self.machine, self.devs, acc.copied).bound
        if fill_bound is None:
            return params, where, acc, []
        best = (fill_bound, params, where, acc)
        for candidate in candidates:
            c_where, c_acc = self.typed(setup, candidate)
            if not c_acc.fits_devices:
                continue
            bound = decode(m, c_where, self.machine, self.devs, c_acc.copied).bound
            if bound is not None and bound > best[0]:
                best = (bound, candidate, c_where, c_acc)
        bound, params_best, where_best, acc_best = best
        if params_best is params:
            return params, where, acc, []
        n_fill, s_fill = _crossings(m, where, self.devs)
        n_best, s_best = _crossings(m, where_best, self.devs)
        found: list[Finding] = []
        if n_best < n_fill:
            slow = max(self.devs, key=lambda d: d.link_latency)
            found.append(CrossingsWeighed(n_best, s_best * 1e3, n_fill, s_fill * 1e3, bound, fill_bound, slow.name,
                                          slow.endpoint or "PCIe", _crossing_seconds(m, slow) * 1e3))
        return params_best, where_best, acc_best, found

    def packed(self, setup: _Setup) -> list[float] | None:
        """Whole layers (experts included) on the devices, packed from the back: the last device in
        the order takes as many of the last layers as fit, then the one before it, and so on."""
        names = [d.name for d in self.devs]
        counts = [0.0] * len(self.devs)
        for k in reversed(range(len(self.devs))):
            while sum(counts) < self.top:
                trial = [*counts[:k], counts[k] + 1, *counts[k + 1:]]
                layers = _layer_devices(self.m.n_layer_all, int(sum(trial)), names, trial)
                where = _place(self.m, layers, ngl=int(sum(trial)))
                if not _account(self.m, setup, where, self.devs, self.ram).fits_devices:
                    break
                counts = trial
        return counts if sum(counts) else None

    def fill(self, setup: _Setup, layers: tuple[str, ...], ngl: int) -> dict[int, str]:
        """Each device takes its own layers' experts from the back of its block while everything
        fits; then the room left takes the CPU's remaining expert layers, last layers first."""
        return self.spill(setup, layers, ngl, self.own(setup, layers, ngl), self.devs)

    def own(self, setup: _Setup, layers: tuple[str, ...], ngl: int) -> dict[int, str]:
        """Each device takes its own layers' experts from the back of its block while everything fits."""
        m, experts = self.m, {}
        for d in self.devs:
            own = [layer for layer in reversed(m.expert_layers) if layers[layer] == d.name]
            for layer in own:
                trial = {**experts, layer: d.name}
                if not self.account(setup, layers, trial, ngl).fits_devices:
                    break
                experts = trial
        return experts

    def spill(self, setup: _Setup, layers: tuple[str, ...], ngl: int, experts: dict[int, str],
              targets: Sequence[_Dev]) -> dict[int, str]:
        """The room left on `targets` takes the remaining expert layers, last layers first, each on
        the target with the most room."""
        m = self.m
        for layer in reversed(m.expert_layers):
            if layer in experts:
                continue
            acc = self.account(setup, layers, experts, ngl)
            by_room = sorted((i for i, d in enumerate(self.devs) if d in targets), key=lambda i: -(acc.devices[i].free or 0))
            for i in by_room:
                trial = {**experts, layer: self.devs[i].name}
                if self.account(setup, layers, trial, ngl).fits_devices:
                    experts = trial
                    break
        return experts

    def partial(self, setup: _Setup, layers: tuple[str, ...], ngl: int, experts: dict[int, str],
                targets: Sequence[_Dev], own_only: bool = False) -> dict[str, str]:
        """Each of `targets` takes some expert tensors of one more layer whose experts are on the
        CPU, by tensor as for one GPU (placement._expert_subsets: the subset with the most bytes
        that fits its room): the last such layer of its own block, else (unless `own_only`) the last
        one left. A layer away from its own device costs two more crossings, so a split is kept only
        when the estimate's bound is higher with it; without a bound (a bandwidth unknown), when it
        crosses no more. Returns tensor name -> device."""
        m = self.m
        split: dict[str, str] = {}

        def judge(trial: dict[str, str]) -> tuple[float | None, int] | None:
            where = _place(m, layers, experts=experts, ngl=ngl, split=trial)
            acc = _account(m, setup, where, self.devs, self.ram)
            if not acc.fits_devices:
                return None
            return decode(m, where, self.machine, self.devs, acc.copied).bound, _crossings(m, where, self.devs)[0]

        best = judge(split)
        if best is None:
            return split
        for d in targets:
            taken = {t.layer for t in m.tensors if t.info.name in split}
            left = [layer for layer in reversed(m.expert_layers) if layer not in experts and layer not in taken]
            mine = [layer for layer in left if layers[layer] == d.name]
            order = mine if own_only else mine + [layer for layer in left if layers[layer] != d.name]
            if not order:
                continue
            for names in _expert_subsets(m, order[0]):
                trial = {**split, **dict.fromkeys(names, d.name)}
                got = judge(trial)
                if got is None:
                    continue
                (bound, n), (best_bound, best_n) = got, best
                if bound > best_bound if bound is not None and best_bound is not None else n <= best_n:
                    split, best = trial, got
                break
        return split

    def load_mode(self, where: _DWhere, acc: _DAccount) -> tuple[str, list[Finding]]:
        return _load_mode(self.m, where.devices, acc.cpu, self.wishes.load_mode)

    def params_for(self, setup: _Setup, ngl: int, counts: Sequence[float], experts: dict[int, str], load_mode: str,
                   threads: int, follow: tuple[str, ...] | None = None, split: dict[str, str] | None = None
                   ) -> LlamaParams:
        """The flags; with `follow` (the layers' devices), -ot only for the experts away from their
        layer, and --cpu-moe only when some expert of a layer on a device stays on the CPU. `split`
        (tensor name -> device, layers split by tensor): one -ot per kind and device
        (blk\\.N\\.ffn_down_(ch|)exps=CUDA0); the rest of such a layer's experts on the CPU."""
        from moecli.params import TensorOverride, layer_tensor_pattern

        split = split or {}
        on_cpu = self.m.is_moe and any(layer not in experts and (follow is None or follow[layer] != CPU)
                                       for layer in self.m.expert_layers)
        if on_cpu:
            follow = None  # --cpu-moe would take the experts left to follow their layers too
        overrides = []
        for d in self.devs:
            mine = [layer for layer, name in experts.items() if name == d.name and (follow is None or follow[layer] != name)]
            if mine:
                overrides.append(TensorOverride(expert_pattern(mine), d.buffer_type))
            kinds = dict.fromkeys((t.layer, t.kind) for t in self.m.tensors if split.get(t.info.name) == d.name)
            overrides += [TensorOverride(layer_tensor_pattern(layer, kind), d.buffer_type) for layer, kind in kinds]
        rpc = tuple(dict.fromkeys(d.endpoint for d in self.devs if d.endpoint))
        return LlamaParams(
            n_gpu_layers=ALL_LAYERS if ngl >= self.top else ngl, cpu_moe=on_cpu, tensor_overrides=tuple(overrides),
            n_ctx=setup.n_ctx, n_batch=setup.n_batch, n_ubatch=setup.n_ubatch, type_k=setup.type_k,
            type_v=setup.type_v, flash_attn=setup.flash_attn, load_mode=load_mode, n_threads=threads,
            tensor_split=tuple(float(c) for c in counts), devices=tuple(d.name for d in self.devs), rpc_servers=rpc,
        )

    # -- what a llama.cpp user would type instead

    def typed(self, setup: _Setup, params: LlamaParams) -> tuple[_DWhere, _DAccount]:
        """llama.cpp's placement for flags, and its memory."""
        where = where_from_params(self.m, params, self.devs)
        return where, _account(self.m, setup, where, self.devs, self.ram)

    def alternatives(self, setup: _Setup, params: LlamaParams, where: _DWhere, acc: _DAccount) -> tuple[
            Alternative, ...]:
        """The flags a llama.cpp user types for these devices, with llama.cpp's default split (no
        -ts, no -dev): `-ngl all --n-cpu-moe N` with the smallest N that fits, the layer split
        `-ngl N` that fits, and `--cpu-moe` when the plan keeps experts off the CPU; each with its
        memory per device, the decode bound of the plan's estimate, and why it was not chosen."""
        m, out = self.m, []
        plan_bound = decode(m, where, self.machine, self.devs, acc.copied).bound
        plan_experts = _expert_devices(m, where)
        plan_off = [layer for layer, d in plan_experts.items() if d != CPU]
        typed = params.with_(devices=(), tensor_split=(), tensor_overrides=(), cpu_moe=False, n_cpu_moe=0)
        caveat = self.split_caveat()

        def add(label: str, alt_params: LlamaParams, alt_where: _DWhere, alt_acc: _DAccount, reason: str) -> None:
            bound = decode(m, alt_where, self.machine, self.devs, alt_acc.copied).bound
            if not alt_acc.fits_devices:
                reason = f"does not fit: {_over(alt_acc)}; " + reason
            elif bound and plan_bound and bound > plan_bound:  # the search weighs these (candidates): not expected
                reason = (f"faster by the estimate ({bound:.1f} against the plan's {plan_bound:.1f} tok/s), but chosen "
                          "against: " + reason)
            devices = alt_acc.devices
            out.append(Alternative(label, alt_params, sum(d.total for d in devices[:-1]), bound, reason + caveat,
                                   devices=devices))

        flags = self.typed_flags(setup, typed)
        # --n-cpu-moe N: the experts of layers 0..N-1 on the CPU, the others with their layers
        if flags.get("n_cpu_moe") and flags["n_cpu_moe"].n_cpu_moe:
            alt_params = flags["n_cpu_moe"]
            alt_where, alt_acc = self.typed(setup, alt_params)
            n = alt_params.n_cpu_moe
            kept = {layer: d for layer, d in _expert_devices(m, alt_where).items() if d != CPU}
            split = f"the default split ({_blocks(alt_where, self.devs)})"
            sits = _where_kept(kept, alt_where, alt_acc, self.devs)
            if len(kept) < len(plan_off):
                reason = (f"--n-cpu-moe is blind to devices: with {split} the experts it leaves to the devices "
                          f"stay with their layers: {len(kept)} expert layers against the plan's "
                          f"{len(plan_off)}, {sits}")
            elif alt_where.devices == where.devices:
                reason = (f"places every tensor where the plan does, with {split}; but that split follows "
                          "the free memory llama.cpp sees when it loads, which the plan's -ts does not")
            else:
                reason = (f"with {split} it keeps {len(kept)} expert layers on the devices "
                          f"({'as many as' if len(kept) == len(plan_off) else 'more than'} the plan's "
                          f"{len(plan_off)}), {sits}; but that split follows the free memory llama.cpp sees "
                          "when it loads, which the plan's -ts does not")
            add(f"-ngl all --n-cpu-moe {n}, llama.cpp's default split", alt_params, alt_where, alt_acc, reason)

        # the layer split without overrides, experts included
        naive = flags.get("layer_split")
        all_off = m.is_moe and len(plan_off) == len(m.expert_layers)
        if naive is not None and not all_off and (m.is_moe or naive.n_gpu_layers != where.n_gpu_layers):
            alt_params = naive
            alt_where, alt_acc = self.typed(setup, alt_params)
            naive_n = self.top if naive.n_gpu_layers == ALL_LAYERS else naive.n_gpu_layers
            on_cpu = sum(1 for layer in alt_where.layers[:-1] if layer == CPU)
            if m.is_moe and alt_where.devices == where.devices:
                reason = (f"places every tensor where the plan does, with the default split "
                          f"({_blocks(alt_where, self.devs)}); but that split follows the free memory llama.cpp sees "
                          "when it loads, which the plan's -ts does not")
            elif m.is_moe:
                reason = (f"a layer split keeps whole layers, experts included, on the devices "
                          f"({_blocks(alt_where, self.devs)}): every token then reads the attention and shared "
                          f"weights of the {on_cpu} layer{'s' if on_cpu != 1 else ''} left to the CPU from RAM")
            else:
                reason = (f"the default split ({_blocks(alt_where, self.devs)}) leaves {on_cpu} layers to the CPU "
                          f"where the plan's split, by each device's room, leaves "
                          f"{sum(1 for x in where.layers[:-1] if x == CPU)}")
            add(f"naive layer split -ngl {naive_n}, llama.cpp's default split", alt_params, alt_where, alt_acc, reason)

        # every routed expert on the CPU
        if m.is_moe and plan_off:
            alt_params = flags["cpu_moe"]
            alt_where, alt_acc = self.typed(setup, alt_params)
            free = [(d.device, d.free or 0) for d in alt_acc.devices[:-1]]
            add("all experts on CPU (--cpu-moe)", alt_params, alt_where, alt_acc,
                f"leaves {fmt_bytes(sum(max(0, x) for _, x in free))} of the devices' memory unused ("
                + ", ".join(f"{name} {fmt_bytes(max(0, x))}" for name, x in free)
                + f"), which in the plan holds the experts of {len(plan_off)} layers")
        return tuple(out)

    def typed_flags(self, setup: _Setup, typed: LlamaParams) -> dict[str, LlamaParams]:
        """What a llama.cpp user types, with the default split: `-ngl all --n-cpu-moe N` with the
        smallest N that fits ("n_cpu_moe"), the layer split `-ngl N` that fits ("layer_split"), and
        `--cpu-moe` ("cpu_moe", fitting or not)."""
        m, out = self.m, {}
        if m.is_moe:
            for n in range(m.expert_layers[-1] + 1):  # 0 is the layer split, below; the last one --cpu-moe
                alt_params = typed.with_(n_gpu_layers=ALL_LAYERS, n_cpu_moe=n)
                if self.typed(setup, alt_params)[1].fits_devices:
                    out["n_cpu_moe"] = alt_params
                    break
        naive = next((n for n in range(self.top, -1, -1)
                      if self.typed(setup, typed.with_(n_gpu_layers=n))[1].fits_devices), None)
        if naive is not None:
            out["layer_split"] = typed.with_(n_gpu_layers=ALL_LAYERS if naive >= self.top else naive)
        if m.is_moe:
            out["cpu_moe"] = typed.with_(n_gpu_layers=ALL_LAYERS, cpu_moe=True)
        return out

    def split_caveat(self) -> str:
        """llama.cpp splits by the free memory each device reports at load: a worker not asked yet
        reports what it has, not --rpc-mem."""
        guessed = [d.name_llama for d in self.machine.rpc if not d.reported]
        if not guessed:
            return ""
        return (f" (the default split taken with {', '.join(guessed)}'s free memory as --rpc-mem says; llama.cpp "
                "splits by what the worker reports)")

    def does_not_fit(self, setup: _Setup):
        layers, _ = self.layout(0)
        acc = self.account(setup, layers, {}, 0)
        over = [d for d in acc.devices[:-1] if not d.fits]
        short = sum(d.total - (d.budget or 0) for d in over)
        raise DoesNotFit(
            f"{self.m.facts.name} does not fit these devices: even with every layer on the CPU "
            + ", ".join(f"{d.device} needs {fmt_bytes(d.total)} of a {fmt_bytes(d.budget or 0)} budget" for d in over)
            + f": short by {fmt_bytes(short)}",
            "leave the small device out, or plan with --cpu-only",
        )


def _expert_devices(m: _Model, where: _DWhere) -> dict[int, str]:
    """Each expert layer's device: where its first routed expert tensor is."""
    out: dict[int, str] = {}
    for t, device in zip(m.tensors, where.devices):
        if t.kind and t.layer is not None and device is not None:
            out.setdefault(t.layer, device)
    return out


def _expert_holders(m: _Model, where: _DWhere) -> dict[int, tuple[str, ...]]:
    """Each expert layer's devices: every device holding some of its routed experts, in tensor order."""
    out: dict[int, dict[str, None]] = {}
    for t, device in zip(m.tensors, where.devices):
        if t.kind and t.layer is not None and device is not None:
            out.setdefault(t.layer, {})[device] = None
    return {layer: tuple(ds) for layer, ds in out.items()}


def _blocks(where: _DWhere, devs: Sequence[_Dev]) -> str:
    """Which layers each device holds: "CUDA0 layers 0-16, CUDA1 layers 17-39"."""
    parts = []
    for d in devs:
        mine = [i for i, x in enumerate(where.layers[:-1]) if x == d.name]
        parts.append(f"{d.name} " + (f"layers {mine[0]}-{mine[-1]}" if len(mine) > 1 else
                                     f"layer {mine[0]}" if mine else "no layer"))
    return ", ".join(parts)


def _where_kept(kept: dict[int, str], where: _DWhere, acc: _DAccount, devs: Sequence[_Dev]) -> str:
    """Where the expert layers left to the devices sit, and the room the others keep unused."""
    last = where.layers[-2] if len(where.layers) > 1 else where.output()
    word = "card" if any(d.name == last and d.cuda for d in devs) else "device"
    holders = sorted(set(kept.values()), key=[d.name for d in devs].index)
    rest = [d for d in acc.devices[:-1] if d.device not in holders]
    unused = (" while " + ", ".join(f"{d.device} keeps {fmt_bytes(max(0, d.free or 0))} free" for d in rest)) if rest else ""
    if holders == [last]:
        return f"all on {last}, the {word} holding the last layers" + (f",{unused}" if unused else "")
    return ", ".join(f"{sum(1 for x in kept.values() if x == d)} on {d}" for d in holders) + unused


def _over(acc: _DAccount) -> str:
    return ", ".join(f"{d.device} needs {fmt_bytes(d.total)} of a {fmt_bytes(d.budget or 0)} budget"
                     for d in acc.devices[:-1] if not d.fits)


def evaluate_devices(m: _Model, setup: _Setup, params: LlamaParams, devs: Sequence[_Dev], ram: int) -> tuple[
        _DWhere, _DAccount, list[Finding]]:
    where = where_from_params(m, params, devs)
    acc = _account(m, setup, where, devs, ram)
    found: list[Finding] = [GpuOverBudget(d.device, d.total, d.budget) for d in acc.devices[:-1] if not d.fits]
    return where, acc, found


# ---------------------------------------------------------------------------------------------
# describing and estimating


def describe(m: _Model, where: _DWhere, devs: Sequence[_Dev]) -> tuple[Placement, tuple[TensorPlacement, ...]]:
    rows = []
    by_device: dict[str, tuple[list[int], list[int]]] = {d.name: ([], []) for d in devs}
    expert_dev: dict[int, set[str]] = {}
    expert_tensors: dict[int, dict[str, list[str]]] = {}  # layer -> device -> its expert tensors there
    other_cpu = []
    for t, device in zip(m.tensors, where.devices):
        rows.append(TensorPlacement(t.info.name, t.info.layer, t.info.role.value, t.info.ggml_type, t.info.n_bytes, device))
        if t.kind and t.layer is not None and device is not None:
            expert_dev.setdefault(t.layer, set()).add(device)
            expert_tensors.setdefault(t.layer, {}).setdefault(device, []).append(t.info.name)
        elif device == CPU and not t.is_input:
            other_cpu.append(t.info.name)
    if m.tied_output is not None and where.output() != CPU:
        t = m.tied_output
        rows.append(TensorPlacement(t.name, None, "output", t.ggml_type, t.n_bytes, where.output(), copy=True))
    for layer in range(m.n_layer_all):
        if where.layers[layer] in by_device:
            by_device[where.layers[layer]][0].append(layer)
    for layer, ds in expert_dev.items():
        for d in ds:
            if d in by_device:
                by_device[d][1].append(layer)
    on_gpu = tuple(layer for layer in range(m.n_layer_all) if where.layers[layer] != CPU)
    order = [d.name for d in devs] + [CPU]  # llama.cpp's, the CPU last
    gpu_exp = tuple(sorted(layer for layer, ds in expert_dev.items() if CPU not in ds))
    cpu_exp = tuple(sorted(layer for layer, ds in expert_dev.items() if ds == {CPU}))
    placement = Placement(
        n_layer=m.n_layer_all, gpu_layers=on_gpu, output_on_gpu=where.output() != CPU, expert_layers=m.expert_layers,
        expert_layers_gpu=gpu_exp, expert_layers_cpu=cpu_exp, partial_layer=None, partial_gpu=(), partial_cpu=(),
        other_cpu=tuple(other_cpu),
        by_device=tuple((name, tuple(ls), tuple(sorted(es))) for name, (ls, es) in by_device.items()),
        split_layers=tuple((layer, tuple((d, tuple(expert_tensors[layer][d])) for d in order if d in expert_tensors[layer]))
                           for layer in sorted(expert_tensors) if len(expert_tensors[layer]) > 1),
    )
    return placement, tuple(rows)


def _crossing_seconds(m: _Model, d: _Dev) -> float:
    """One crossing of a token's activations over a device's link: one row of n_embd f32 and the
    router's choice, at the link's latency and bandwidth."""
    return d.link_latency + (m.facts.n_embd + m.facts.n_expert) * 4 / d.link_bandwidth


def _crossings(m: _Model, where: _DWhere, devs: Sequence[_Dev]) -> tuple[int, float]:
    """How often one token's activations cross between devices, and the seconds that takes. The
    path of a token: the embedding on the CPU, each layer's own device, its experts' device when
    elsewhere (and back; a layer split by tensor goes there and back for each device holding some
    of its experts), the output's device, the logits back to the host; each crossing moves one
    row of n_embd f32 (and the router's choice) at the latency of the slower of the two devices'
    links (measured: worker to worker costs what host to worker does, see LOOPBACK_LATENCY)."""
    by = {d.name: d for d in devs}
    holders = _expert_holders(m, where)
    path = [CPU]
    for layer in range(m.n_layer_all):
        here = where.layers[layer]
        path.append(here)
        for device in holders.get(layer, ()):  # a layer split by tensor: there and back for each device
            if device != here:
                path += [device, here]
    path += [where.output(), CPU]

    def hop(device: str) -> float:
        d = by.get(device)
        return 0.0 if d is None else _crossing_seconds(m, d)

    crossings = [(a, b) for a, b in zip(path, path[1:]) if a != b]
    return len(crossings), sum(max(hop(a), hop(b)) for a, b in crossings)


def _latency_source(d: _Dev) -> str:
    """Where an RPC worker's crossing latency comes from, for the estimate's basis."""
    if d.endpoint is None:
        return ""
    if d.round_trip:
        return f" ({CROSSING_ROUND_TRIPS} round trips of {d.round_trip * 1e6:.0f} us, measured)"
    return " (assumed: the worker was not asked)"


def decode(m: _Model, where: _DWhere, machine: MachineFacts, devs: Sequence[_Dev], copied: int) -> DecodeEstimate:
    """The bytes each token reads on each device over its bandwidth, plus the activations that
    cross from device to device: each crossing moves one row of n_embd f32 (and the router's
    choice) over the links between the two devices and the host, at their latency."""
    f = m.facts
    by = {d.name: d for d in devs}
    per = dict.fromkeys([*by, CPU], 0)
    _tensor_bytes_per_token(m, where.devices, per)
    if copied:
        per[where.output()] += copied
    for layer, size in m.recurrent_per_layer:
        per[where.layers[layer]] += 2 * size
    n_crossings, link_seconds = _crossings(m, where, devs)
    bandwidth = {**{n: d.bandwidth for n, d in by.items()}, CPU: machine.ram_bandwidth}
    used = [d for d in [*by, CPU] if per[d]]
    bytes_out = tuple((d, per[d]) for d in used)
    bw_out = tuple((d, bandwidth[d]) for d in used)
    missing = [d for d in used if not bandwidth[d]]
    if missing:
        return DecodeEstimate(None, None, None, bytes_out, bw_out,
                              f"no estimate: the memory bandwidth of {', '.join(missing)} is unknown "
                              "(give a machine profile, or let moecli probe this machine)")
    reading = sum(per[d] / bandwidth[d] for d in used)
    seconds = reading + link_seconds
    bound = 1.0 / seconds if seconds > 0 else None
    # the efficiency band is of memory bandwidth: the links' latency is paid whole (measured: one
    # loopback worker ran the demo at 90 % of its bound, where the band's top said 60 %)
    low, high = ((1.0 / (reading / e + link_seconds) if reading / e + link_seconds > 0 else None) for e in EFFICIENCY)
    parts = ", ".join(f"{fmt_bytes(per[d])} from {d} at {bandwidth[d] / 1e9:.0f} GB/s" for d in used)
    basis = (f"estimate: each token reads {parts} (routed experts: {f.n_expert_used} of {f.n_expert}; recurrent "
             f"state read and written), and crosses between devices {n_crossings} times "
             f"({link_seconds * 1e3:.2f} ms per token over the links: "
             + ", ".join(f"{d.name} {d.link_bandwidth / 1e9:g} GB/s, {d.link_latency * 1e6:.0f} us{_latency_source(d)}"
                         for d in devs)
             + f"); bound {bound:.0f} tok/s; real systems reach {EFFICIENCY[0]:.0%}-{EFFICIENCY[1]:.0%} of the memory "
             "bandwidth, and pay the links' latency whole"
             if bound else "estimate: nothing to read")
    return DecodeEstimate(bound, low, high, bytes_out, bw_out, basis)
